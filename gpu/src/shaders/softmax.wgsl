// Masked softmax over attention scores [batch, heads, len, len] (Hugging Face 5.x padding
// semantics: masked keys get exactly 0, padded query rows are uniform) and its backward. One
// workgroup per score row; max and sums are fixed-order workgroup reductions (row_reduce.wgsl,
// prepended).

struct Params {
    rows: u32,
    heads: u32,
    len: u32,
    uniform_value: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// masked_softmax: the scores, softmaxed in place. masked_softmax_backward: dP in, dS out.
@group(0) @binding(1) var<storage, read_write> values: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read> probs: array<f32>;

@compute @workgroup_size(ROW_WG)
fn masked_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  thread: RowThread) {
    let lid = row_thread(thread);
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) {
        return;
    }
    let len = params.len;
    let base = row * len;
    let keys = (row / (params.heads * len)) * len;
    let query = row % len;
    if (mask[keys + query] == 0.0) {
        for (var j = lid; j < len; j += ROW_WG) {
            values[base + j] = params.uniform_value;
        }
        return;
    }
    // The lowest finite f32 stands in for -inf: a valid query always has itself as a valid key.
    var m = -3.4028235e38;
    for (var j = lid; j < len; j += ROW_WG) {
        if (mask[keys + j] != 0.0) {
            m = max(m, values[base + j]);
        }
    }
    let row_max = workgroup_max(lid, m);
    var s = 0.0;
    for (var j = lid; j < len; j += ROW_WG) {
        var e = 0.0;
        if (mask[keys + j] != 0.0) {
            e = exp(values[base + j] - row_max);
        }
        values[base + j] = e;
        s += e;
    }
    let inv = 1.0 / workgroup_sum(lid, s);
    for (var j = lid; j < len; j += ROW_WG) {
        values[base + j] = values[base + j] * inv;
    }
}

@compute @workgroup_size(ROW_WG)
fn masked_softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           thread: RowThread) {
    let lid = row_thread(thread);
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) {
        return;
    }
    let len = params.len;
    let base = row * len;
    let keys = (row / (params.heads * len)) * len;
    let query = row % len;
    if (mask[keys + query] == 0.0) {
        for (var j = lid; j < len; j += ROW_WG) {
            values[base + j] = 0.0;
        }
        return;
    }
    var d = 0.0;
    for (var j = lid; j < len; j += ROW_WG) {
        d += values[base + j] * probs[base + j];
    }
    let dot = workgroup_sum(lid, d);
    for (var j = lid; j < len; j += ROW_WG) {
        var g = 0.0;
        if (mask[keys + j] != 0.0) {
            g = probs[base + j] * (values[base + j] - dot);
        }
        values[base + j] = g;
    }
}
