// The first stage of the sums of squares of up to SUM_SOURCES tensors in one dispatch (the
// gradient-norm measurement of an optimizer's many parameters; row_reduce.wgsl is prepended).
// The grid holds every source's workgroups one after the other: workgroup first_group[t] + g
// sums the squares of elements g·ROW_WG·SUM_ITEMS .. of source t exactly as `reduce_sum` sums
// them (reduce.wgsl: each thread a strided handful in order, then the workgroup sum) and writes
// the partial to dst[row[t] + g], so that every partial is `reduce_sum`'s bit for bit. A source
// of no elements has no workgroup (its partials stay the zeros the host cleared them to).

const SUM_ITEMS: u32 = 8u;
const SUM_SOURCES: u32 = 7u;

struct Params {
    // Elements of source t: n[t / 4][t % 4] (sources past `count` are not read).
    n: array<vec4<u32>, 2>,
    // Where source t's partials start in dst.
    row: array<vec4<u32>, 2>,
    // Source t's first workgroup in the grid.
    first_group: array<vec4<u32>, 2>,
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
// The sources' bindings `src0` .. (bindings 2 ..) and `source_squares(t, first, n, lid)`, the
// thread's sum of the squares of its elements of source t: a switch over t (the same for the
// whole workgroup) whose every case is the loop over its own binding, written out by the host
// (gpu/src/kernels.rs), so that no element load is a switch.
// @sources

@compute @workgroup_size(ROW_WG)
fn reduce_squares_many(@builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>, thread: RowThread) {
    let lid = row_thread(thread);
    let w = workgroup_index(wid, nwg);
    // The last source that starts at or before this workgroup (the same for every thread).
    var t = 0u;
    for (var u = 1u; u < params.count; u += 1u) {
        if (params.first_group[u / 4u][u % 4u] <= w) {
            t = u;
        }
    }
    let g = w - params.first_group[t / 4u][t % 4u];
    let n = params.n[t / 4u][t % 4u];
    let first = g * ROW_WG * SUM_ITEMS;
    // Uniform across the workgroup: either every thread returns or none does (the grid's
    // rounding to whole rows of workgroups).
    if (first >= n) {
        return;
    }
    let total = workgroup_sum(lid, source_squares(t, first, n, lid));
    if (lid == 0u) {
        dst[params.row[t / 4u][t % 4u] + g] = total;
    }
}
