// Rounding of f32 values to binary16 and back, in integer arithmetic (prepended to the kernels
// that round operands under mixed precision without `enable f16;`, which `pack2x16float` would
// need a downlevel capability for): round to nearest, ties to even, as the f16 matmul kernels'
// conversions; f16 subnormals kept (steps of 2⁻²⁴), magnitudes that round past 65504 become
// infinities (the overflow dynamic loss scaling watches for), NaN and infinities unchanged.
// `operand`/`operand4` read the `f16_operands` flag of the kernel file's `params`.

fn f16_round(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let sign = bits & 0x80000000u;
    let magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) {
        return x;
    }
    // 65520 (halfway from 65504 to 65536) and beyond round to 2¹⁶: infinity in binary16.
    if (magnitude >= 0x477ff000u) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    // Below 2⁻¹⁴, binary16 is subnormal: multiples of 2⁻²⁴ (the scalings are exact, and WGSL's
    // `round` takes ties to even).
    if (magnitude < 0x38800000u) {
        let steps = round(bitcast<f32>(magnitude) * 16777216.0);
        return bitcast<f32>(sign | bitcast<u32>(steps * 5.9604645e-8));
    }
    // Normal: keep 10 of the 23 fraction bits, ties to even (a carry moves into the exponent).
    let odd = (magnitude >> 13u) & 1u;
    return bitcast<f32>(sign | ((magnitude + 0x0fffu + odd) & 0xffffe000u));
}

fn f16_round4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(f16_round(v.x), f16_round(v.y), f16_round(v.z), f16_round(v.w));
}

// `x` as a product's operand: rounded to binary16 (and back) under mixed precision
// (`params.f16_operands`), as the f16 matmul kernels round theirs, so that the attention
// kernels and the composed attention of mixed precision multiply numbers of the same format.
fn operand(x: f32) -> f32 {
    if (params.f16_operands == 0u) {
        return x;
    }
    return f16_round(x);
}

fn operand4(v: vec4<f32>) -> vec4<f32> {
    if (params.f16_operands == 0u) {
        return v;
    }
    return f16_round4(v);
}
