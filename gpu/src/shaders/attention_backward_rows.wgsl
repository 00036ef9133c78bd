// The helpers the two backward passes of the training attention share (appended after
// attention_rows.wgsl; they read the backward's `dcontext` and `value` bindings).

// dO_i·V_j over one head (operands as `operand`).
fn dout_dot_value(tq: u32, tk: u32, column0: u32) -> f32 {
    let q_at = tq * params.width + column0;
    let k_at = tk * params.width + column0;
    var x = 0.0;
    for (var c = 0u; c < params.head_dim; c += 1u) {
        x += operand(dcontext[q_at + c]) * operand(value[k_at + c]);
    }
    return x;
}
