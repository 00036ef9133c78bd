// Philox4x32-10, bit-identical to `deberta_core::random` (a library prepended to the kernels
// that draw random numbers; it declares no bindings).

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// The full 64-bit product of two u32 as (high word, low word), from 16-bit halves.
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_hi = a_hi * b_hi;
    // At most 0xffff + 0xffff + 0xfffe0001 = 0xffffffff: no overflow.
    let cross = (lo_lo >> 16u) + (hi_lo & 0xffffu) + lo_hi;
    let hi = hi_hi + (hi_lo >> 16u) + (cross >> 16u);
    let lo = (cross << 16u) | (lo_lo & 0xffffu);
    return vec2<u32>(hi, lo);
}

fn philox4x32(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round += 1u) {
        if (round > 0u) {
            k = vec2<u32>(k.x + PHILOX_W0, k.y + PHILOX_W1);
        }
        let p0 = mul_hi_lo(PHILOX_M0, c.x);
        let p1 = mul_hi_lo(PHILOX_M1, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

// The four 32-bit draws `bits(4·block .. 4·block + 4)` of a stream (`RandomStream::bits`) for a
// block index below 2^32.
fn philox_block(block: u32, seed: vec2<u32>, step: u32, stream: u32) -> vec4<u32> {
    return philox4x32(vec4<u32>(block, 0u, step, stream), seed);
}

// `RandomStream::uniform`: 24 random bits scaled to [0, 1) (exact in f32).
fn bits_to_uniform(bits: u32) -> f32 {
    return f32(bits >> 8u) * (1.0 / 16777216.0);
}

// The inverted-dropout multiplier of element `e` of a tensor whose mask is drawn from the
// stream (seed, step, stream): 1/(1 − p) (`keep_scale`, the host's f32 value) where uniform(e)
// ≥ p, else 0 — the dropout kernel's mask, element by element.
fn dropout_multiplier(e: u32, seed: vec2<u32>, step: u32, stream: u32, p: f32,
                      keep_scale: f32) -> f32 {
    let bits = philox_block(e / 4u, seed, step, stream);
    if (bits_to_uniform(bits[e % 4u]) >= p) {
        return keep_scale;
    }
    return 0.0;
}
