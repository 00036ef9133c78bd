// Workgroup reductions as a tree in workgroup memory (see row_reduce.wgsl): log2(ROW_WG) halving
// steps, a barrier each.

struct RowThread {
    @builtin(local_invocation_index) lid: u32,
}

// The thread's index in the workgroup.
fn row_thread(thread: RowThread) -> u32 {
    return thread.lid;
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
