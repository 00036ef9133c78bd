// Inverse-transform sampling from softmax(logits) at temperature one, evaluated exactly like
// core's `kernels::sample_categorical`: the same uniforms (philox.wgsl, prepended), a port of
// core's `fast_math::exp` and the same sums (chunks of 16 ids added in id order from 0, the
// chunk sums added in order), so on a device with IEEE f32 add/mul the drawn ids are identical
// to the CPU's. One workgroup per row: its threads evaluate exponentials in parallel, one thread
// per chunk sums it, the first thread adds the chunk sums in order.

const SCATTER_WG: u32 = 64u;

struct Params {
    rows: u32,
    vocab: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    // Always 0. OR-ed into intermediate products so that no compiler can fuse them into FMAs,
    // which would change the rounding of `fast_exp`.
    zero: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> logits: array<f32>;

// fast_math::exp's constants, by their bits.
const EXP_LOG2E: u32 = 0x3fb8aa3bu;
const EXP_LN2_HI: u32 = 0x3f318000u;
const EXP_LN2_LO: u32 = 0xb95e8083u;
const EXP_MAX: u32 = 0x42b17217u;
const EXP_MIN: u32 = 0xc2aeac4fu;
const EXP_ROUND: u32 = 0x4b400000u;
const EXP_P0: u32 = 0x39506967u;
const EXP_P1: u32 = 0x3ab743ceu;
const EXP_P2: u32 = 0x3c088908u;
const EXP_P3: u32 = 0x3d2aa9c1u;
const EXP_P4: u32 = 0x3e2aaaaau;
// Ids per chunk sum (core's `kernels::lanes::LANES`).
const CHUNK: u32 = 16u;
const CHUNKS_PER_WG: u32 = 4u; // SCATTER_WG / CHUNK

var<private> opaque_zero: u32;
var<workgroup> exps: array<f32, SCATTER_WG>;
var<workgroup> chunk_sums: array<f32, CHUNKS_PER_WG>;
var<workgroup> row_max_shared: array<f32, SCATTER_WG>;
var<workgroup> done: u32;

// The value itself, hidden from the optimiser.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | opaque_zero);
}

// core's `fast_math::exp`, operation for operation: every product that feeds a sum, and every
// intermediate of a chain the optimiser could reassociate, is hidden behind `opaque`.
fn fast_exp(x: f32) -> f32 {
    let lo = bitcast<f32>(EXP_MIN);
    let hi = bitcast<f32>(EXP_MAX);
    let round = bitcast<f32>(EXP_ROUND);
    let clamped = min(max(x, lo), hi);
    let shifted = opaque(clamped * bitcast<f32>(EXP_LOG2E)) + round;
    // Hidden too: an optimiser that treats float ops as reassociable folds (a + c) − c to a,
    // which would drop the rounding to an integer.
    let n = opaque(shifted) - round;
    let n_int = bitcast<i32>(shifted) - bitcast<i32>(EXP_ROUND);
    let r = opaque(clamped - opaque(n * bitcast<f32>(EXP_LN2_HI))) - opaque(n * bitcast<f32>(EXP_LN2_LO));
    let r2 = opaque(r * r);
    var p = opaque(bitcast<f32>(EXP_P0) * r) + bitcast<f32>(EXP_P1);
    p = opaque(p * r) + bitcast<f32>(EXP_P2);
    p = opaque(p * r) + bitcast<f32>(EXP_P3);
    p = opaque(p * r) + bitcast<f32>(EXP_P4);
    p = opaque(p * r) + 0.5;
    let e_r = opaque(opaque(p * r2) + r) + 1.0;
    let half = n_int >> 1u;
    let scale_a = bitcast<f32>(u32(half + 127) << 23u);
    let scale_b = bitcast<f32>(u32(n_int - half + 127) << 23u);
    let y = opaque(e_r * scale_a) * scale_b;
    if (x < lo) {
        return 0.0;
    }
    if (x > hi) {
        return bitcast<f32>(0x7f800000u);
    }
    if ((bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u) {
        return x;
    }
    return y;
}

// Adds exps[0..count) chunk by chunk: thread c < CHUNKS_PER_WG sums chunk c in id order from 0.
fn sum_chunks(lid: u32, count: u32) {
    if (lid < CHUNKS_PER_WG) {
        var sum = 0.0;
        let first = lid * CHUNK;
        for (var q = first; q < min(first + CHUNK, count); q += 1u) {
            sum += exps[q];
        }
        chunk_sums[lid] = sum;
    }
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
        let count = min(SCATTER_WG, vocab - first);
        if (lid < count) {
            exps[lid] = fast_exp(logits[base + first + lid] - row_max);
        }
        workgroupBarrier();
        sum_chunks(lid, count);
        workgroupBarrier();
        if (lid == 0u) {
            for (var c = 0u; c * CHUNK < count; c += 1u) {
                total += chunk_sums[c];
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
        let count = min(SCATTER_WG, vocab - first);
        if (lid < count) {
            exps[lid] = fast_exp(logits[base + first + lid] - row_max);
        }
        workgroupBarrier();
        sum_chunks(lid, count);
        workgroupBarrier();
        if (lid == 0u) {
            for (var c = 0u; c * CHUNK < count && done == 0u; c += 1u) {
                let sum = chunk_sums[c];
                if (acc + sum > target_sum) {
                    var prefix = 0.0;
                    for (var q = c * CHUNK; q < min(c * CHUNK + CHUNK, count); q += 1u) {
                        prefix += exps[q];
                        if (acc + prefix > target_sum) {
                            pick = first + q;
                            done = 1u;
                            break;
                        }
                    }
                }
                acc += sum;
            }
        }
    }
    if (lid == 0u) {
        out[row] = pick;
    }
}
