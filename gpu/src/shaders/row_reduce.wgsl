// Workgroup reductions shared by the kernels that give one workgroup of ROW_WG threads to a row
// (softmax, loss, layer norm) or to a group of elements (reduce); prepended to their shaders as
// philox.wgsl is to the random ones. Each thread contributes one value; the workgroup combines
// them in a fixed tree order in workgroup memory, so every run adds in the same order.

const ROW_WG: u32 = 128u;

var<workgroup> scratch: array<f32, ROW_WG>;

// The flat index of this workgroup in a two-dimensional grid.
fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Σ over the workgroup of each thread's `value`, in a fixed tree order.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = ROW_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            scratch[lid] = scratch[lid] + scratch[lid + stride];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

// The maximum over the workgroup of each thread's `value`.
fn workgroup_max(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var stride = ROW_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            scratch[lid] = max(scratch[lid], scratch[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

