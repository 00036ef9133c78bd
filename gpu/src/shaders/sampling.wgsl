// Inverse-transform sampling from softmax(logits) at temperature one, evaluated exactly like
// core's `kernels::sample_categorical`: the same uniforms (philox.wgsl, prepended), a port of
// libm's `expf` (FreeBSD e_expf.c) and sequential sums in id order, so on a device with IEEE
// f32 add/mul/div the drawn ids are identical to the CPU's. One workgroup per row: its threads
// evaluate exponentials in parallel, its first thread adds them in order.

const SCATTER_WG: u32 = 64u;

struct Params {
    rows: u32,
    vocab: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    // Always 0. OR-ed into intermediate products so that no compiler can fuse them into FMAs,
    // which would change the rounding of `expf`.
    zero: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;

// libm's constants, by their bits.
const INV_LN2: u32 = 0x3fb8aa3bu;
const LN2_HI: u32 = 0x3f317200u;
const LN2_LO: u32 = 0x35bfbe8eu;
const EXP_P1: u32 = 0x3e2aaa8fu;
const EXP_P2: u32 = 0xbb355215u;

var<private> opaque_zero: u32;
var<workgroup> exps: array<f32, SCATTER_WG>;
var<workgroup> row_max_shared: array<f32, SCATTER_WG>;
var<workgroup> done: u32;

// The value itself, hidden from the optimiser.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | opaque_zero);
}

// libm's `expf`, operation for operation.
fn expf(x_in: f32) -> f32 {
    var x = x_in;
    var hx = bitcast<u32>(x);
    let sign = hx >> 31u;
    hx &= 0x7fffffffu;
    if (hx >= 0x42aeac50u) {
        if (hx > 0x7f800000u) {
            return x;
        }
        if (hx >= 0x42b17218u && sign == 0u) {
            return x * bitcast<f32>(0x7f000000u);
        }
        if (sign != 0u && hx >= 0x42cff1b5u) {
            return 0.0;
        }
    }
    var k: i32;
    var hi: f32;
    var lo: f32;
    if (hx > 0x3eb17218u) {
        if (hx > 0x3f851592u) {
            let half = select(0.5, -0.5, sign != 0u);
            k = i32(opaque(bitcast<f32>(INV_LN2) * x) + half);
        } else {
            k = 1 - i32(sign) - i32(sign);
        }
        let kf = f32(k);
        hi = x - opaque(kf * bitcast<f32>(LN2_HI));
        lo = opaque(kf * bitcast<f32>(LN2_LO));
        x = hi - lo;
    } else if (hx > 0x39000000u) {
        k = 0;
        hi = x;
        lo = 0.0;
    } else {
        return 1.0 + x;
    }
    let xx = opaque(x * x);
    let c = x - opaque(xx * (bitcast<f32>(EXP_P1) + opaque(xx * bitcast<f32>(EXP_P2))));
    let y = 1.0 + (opaque(x * c) / (2.0 - c) - lo + hi);
    if (k == 0) {
        return y;
    }
    // scalbnf(y, k), as libm scales: exact for normal results (k ≥ −126 here). Below that the
    // result is subnormal and a device that flushes subnormals returns 0; such terms cannot
    // change a sum that includes the row maximum's exp(0) = 1.
    if (k > 127) {
        return y * bitcast<f32>(0x7f000000u) * bitcast<f32>(u32(k) << 23u);
    }
    if (k < -126) {
        // y · 2^-102 · 2^(k+102)
        return y * bitcast<f32>(25u << 23u) * bitcast<f32>(u32(k + 229) << 23u);
    }
    return y * bitcast<f32>(u32(127 + k) << 23u);
}

@compute @workgroup_size(SCATTER_WG)
fn sample_categorical(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    opaque_zero = params.zero;
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) {
        return;
    }
    let vocab = params.vocab;
    let base = row * vocab;
    // The maximum (order-independent).
    var m = bitcast<f32>(0xff800000u);
    for (var c = lid; c < vocab; c += SCATTER_WG) {
        m = max(m, logits[base + c]);
    }
    row_max_shared[lid] = m;
    workgroupBarrier();
    for (var stride = SCATTER_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            row_max_shared[lid] = max(row_max_shared[lid], row_max_shared[lid + stride]);
        }
        workgroupBarrier();
    }
    let row_max = row_max_shared[0];
    // Σ exp(z − max) in id order.
    var total = 0.0;
    for (var first = 0u; first < vocab; first += SCATTER_WG) {
        if (first + lid < vocab) {
            exps[lid] = expf(logits[base + first + lid] - row_max);
        }
        workgroupBarrier();
        if (lid == 0u) {
            let count = min(SCATTER_WG, vocab - first);
            for (var q = 0u; q < count; q += 1u) {
                total += exps[q];
            }
        }
        workgroupBarrier();
    }
    // The first id whose running sum exceeds u·total.
    let block = row / 4u;
    let bits = philox_block(block, vec2<u32>(params.seed_lo, params.seed_hi), params.step, params.stream);
    let target_sum = bits_to_uniform(bits[row % 4u]) * total;
    var acc = 0.0;
    var pick = vocab - 1u;
    if (lid == 0u) {
        done = 0u;
    }
    for (var first = 0u; first < vocab; first += SCATTER_WG) {
        if (workgroupUniformLoad(&done) != 0u) {
            break;
        }
        if (first + lid < vocab) {
            exps[lid] = expf(logits[base + first + lid] - row_max);
        }
        workgroupBarrier();
        if (lid == 0u) {
            let count = min(SCATTER_WG, vocab - first);
            for (var q = 0u; q < count; q += 1u) {
                acc += exps[q];
                if (acc > target_sum) {
                    pick = first + q;
                    done = 1u;
                    break;
                }
            }
        }
    }
    if (lid == 0u) {
        out[row] = pick;
    }
}
