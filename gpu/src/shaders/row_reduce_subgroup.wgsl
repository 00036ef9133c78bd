// Workgroup reductions over subgroups (see row_reduce.wgsl; devices opened with `SUBGROUP`):
// each subgroup combines its values with one subgroup operation, its first invocation stores the
// result at the subgroup's index, and after one barrier every thread adds those partials in
// subgroup order — two barriers per reduction instead of the tree's log2(ROW_WG) + 2. Which
// invocations form a subgroup is the device's choice: `subgroup_id` and `num_subgroups` say it,
// so nothing here assumes a size or a layout.

struct RowThread {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
}

var<private> row_lane: u32;
var<private> row_subgroup: u32;
var<private> row_subgroups: u32;

// Keeps the thread's subgroup builtins for the reductions; returns its index in the workgroup.
fn row_thread(thread: RowThread) -> u32 {
    row_lane = thread.lane;
    row_subgroup = thread.subgroup;
    row_subgroups = thread.subgroups;
    return thread.lid;
}

// Σ over the workgroup of each thread's `value`: per subgroup, then the partials in order.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    let partial = subgroupAdd(value);
    if (row_lane == 0u) {
        scratch[row_subgroup] = partial;
    }
    workgroupBarrier();
    var total = scratch[0];
    for (var g = 1u; g < row_subgroups; g += 1u) {
        total += scratch[g];
    }
    workgroupBarrier();
    return total;
}

// The maximum over the workgroup of each thread's `value`.
fn workgroup_max(lid: u32, value: f32) -> f32 {
    let partial = subgroupMax(value);
    if (row_lane == 0u) {
        scratch[row_subgroup] = partial;
    }
    workgroupBarrier();
    var total = scratch[0];
    for (var g = 1u; g < row_subgroups; g += 1u) {
        total = max(total, scratch[g]);
    }
    workgroupBarrier();
    return total;
}
