enable f16;
// The operands of the f16 products (prepended to matmul.wgsl; adapters with SHADER_F16):
// rounded to binary16 as they are loaded (an f32 beyond f16's range becomes ±inf, which the
// loss scaler of mixed-precision training catches), staged in workgroup memory at half the
// width, and multiplied in f32 — exactly, as a binary16 product fits f32's significand — into
// f32 sums: what f16 tensor cores compute.
alias Operand = f16;

// `x` as an operand: rounded to binary16 in integer arithmetic first (f16_round.wgsl, appended),
// so that the conversion is exact whatever rounding the driver's conversion takes.
fn to_operand(x: f32) -> f16 {
    return f16(f16_round(x));
}

fn to_operand4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(f16_round4(v));
}
