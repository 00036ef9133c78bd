enable f16;
// The driver's own f32 → f16 conversion, probed once per device: output[i] = f32(f16(input[i]))
// for a handful of values whose correct rounding (to nearest, ties to even, overflow to
// infinity) the host knows. SPIR-V leaves the conversion's rounding mode to the driver, and
// Mesa 26's lavapipe truncates; where the probe finds anything but round-to-nearest-even the
// f16 matmuls round their operands themselves (f16_round.wgsl) before converting.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const ELEMENTWISE_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> output: array<f32>;
@group(0) @binding(2) var<storage, read> input: array<f32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn f16_probe(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < params.n) {
        output[id.x] = f32(f16(input[id.x]));
    }
}
