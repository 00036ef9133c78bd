// Inverted dropout with the counter-based mask of core's `kernels::dropout`: element i is kept
// iff uniform(i) ≥ p (Philox4x32-10 from philox.wgsl, prepended). One thread per block of four
// elements, which one Philox evaluation covers.

const ELEMENTWISE_WG: u32 = 256u;

struct Params {
    n: u32,
    p: f32,
    // 1/(1 − p), computed on the host exactly as the CPU kernel does.
    scale: f32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let block = (wid.y * nwg.x + wid.x) * ELEMENTWISE_WG + lid;
    let first = block * 4u;
    if (block >= (params.n + 3u) / 4u) {
        return;
    }
    let bits = philox_block(block, vec2<u32>(params.seed_lo, params.seed_hi), params.step, params.stream);
    for (var w = 0u; w < 4u; w += 1u) {
        let i = first + w;
        if (i < params.n) {
            if (bits_to_uniform(bits[w]) >= params.p) {
                x[i] = x[i] * params.scale;
            } else {
                x[i] = 0.0;
            }
        }
    }
}
