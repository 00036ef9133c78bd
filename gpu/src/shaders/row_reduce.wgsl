// What the kernels that give one workgroup of ROW_WG threads to a row (softmax, loss, layer
// norm) or to a group of elements (reduce) share, prepended to their shaders with one of the two
// implementations of the workgroup reductions: row_reduce_tree.wgsl (every adapter) or
// row_reduce_subgroup.wgsl (adapters with subgroup operations). Both define `RowThread`, the
// builtins the reducing entry points take, `row_thread`, which each such entry point calls
// first, and `workgroup_sum` / `workgroup_max`, which every thread of the workgroup must reach
// together (as a barrier). Each thread contributes one value, combined in an order fixed by the
// implementation and the device, so every run adds in the same order.

const ROW_WG: u32 = 128u;

var<workgroup> scratch: array<f32, ROW_WG>;

// The flat index of this workgroup in a two-dimensional grid.
fn workgroup_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}
