// Rounding of f32 values to binary16 and back, in integer arithmetic (prepended to the kernels
// that round operands under mixed precision: the attention kernels, which do so without
// `enable f16;`, and the f16 matmuls, which round before converting): round to nearest, ties to
// even; f16 subnormals kept (steps of 2⁻²⁴), magnitudes that round past 65504 become infinities
// (the overflow dynamic loss scaling watches for), NaN and infinities unchanged. Explicit because
// a shader's f32 → f16 conversion rounds as the driver likes (SPIR-V's default rounding mode is
// the implementation's): Mesa 26's lavapipe truncates, so that 1e5 became 65504 instead of
// infinity and the overflow went unseen; a value this rounding returns converts exactly.

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
