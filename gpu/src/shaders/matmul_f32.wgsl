// The operands of the f32 products (prepended to matmul.wgsl): stored and multiplied as loaded.
alias Operand = f32;

fn to_operand(x: f32) -> f32 {
    return x;
}

fn to_operand4(v: vec4<f32>) -> vec4<f32> {
    return v;
}
