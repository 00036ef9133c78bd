// Row-wise LayerNorm (biased variance, PyTorch `nn.LayerNorm`) and its backward. One workgroup
// per row; sums are fixed-order workgroup reductions (row_reduce.wgsl and its tree or subgroup
// implementation, prepended). The γ/β gradients are
// column sums: `layer_norm_param_partials` sums each chunk of PARAM_CHUNK_ROWS rows in order and
// reduce.wgsl's `sum_columns` adds the chunks in order.

const PARAM_CHUNK_ROWS: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    has_stats: u32,
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// layer_norm
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(3) var<storage, read> x_fwd: array<f32>;
@group(0) @binding(4) var<storage, read> gamma_fwd: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;

// layer_norm_backward
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;

// layer_norm_param_partials: [chunks, 2·cols], the dγ partials then the dβ partials.
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
@group(0) @binding(2) var<storage, read> x_par: array<f32>;
@group(0) @binding(3) var<storage, read> stats_par: array<f32>;
@group(0) @binding(4) var<storage, read> dout_par: array<f32>;

@compute @workgroup_size(ROW_WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              thread: RowThread) {
    let lid = row_thread(thread);
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    let n = f32(params.cols);
    var s = 0.0;
    for (var c = lid; c < params.cols; c += ROW_WG) {
        s += x_fwd[base + c];
    }
    let mean = workgroup_sum(lid, s) / n;
    var v = 0.0;
    for (var c = lid; c < params.cols; c += ROW_WG) {
        let d = x_fwd[base + c] - mean;
        v += d * d;
    }
    let variance = workgroup_sum(lid, v) / n;
    let rstd = 1.0 / sqrt(max(variance, 0.0) + params.eps);
    for (var c = lid; c < params.cols; c += ROW_WG) {
        out[base + c] = (x_fwd[base + c] - mean) * rstd * gamma_fwd[c] + beta[c];
    }
    if (params.has_stats != 0u && lid == 0u) {
        stats_out[2u * row] = mean;
        stats_out[2u * row + 1u] = rstd;
    }
}

@compute @workgroup_size(ROW_WG)
fn layer_norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       thread: RowThread) {
    let lid = row_thread(thread);
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) {
        return;
    }
    let base = row * params.cols;
    let n = f32(params.cols);
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var c = lid; c < params.cols; c += ROW_WG) {
        let xhat = (x[base + c] - mean) * rstd;
        let gg = dout[base + c] * gamma[c];
        sum_g += gg;
        sum_gx += gg * xhat;
    }
    let mean_g = workgroup_sum(lid, sum_g) / n;
    let mean_gx = workgroup_sum(lid, sum_gx) / n;
    for (var c = lid; c < params.cols; c += ROW_WG) {
        let xhat = (x[base + c] - mean) * rstd;
        let d = rstd * (dout[base + c] * gamma[c] - mean_g - xhat * mean_gx);
        if (params.accumulate != 0u) {
            dx[base + c] = dx[base + c] + d;
        } else {
            dx[base + c] = d;
        }
    }
}

@compute @workgroup_size(ROW_WG)
fn layer_norm_param_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             thread: RowThread) {
    let lid = row_thread(thread);
    let i = workgroup_index(wid, nwg) * ROW_WG + lid;
    let chunks = (params.rows + PARAM_CHUNK_ROWS - 1u) / PARAM_CHUNK_ROWS;
    if (i >= chunks * params.cols) {
        return;
    }
    let chunk = i / params.cols;
    let c = i % params.cols;
    let first = chunk * PARAM_CHUNK_ROWS;
    let end = min(first + PARAM_CHUNK_ROWS, params.rows);
    var dgamma = 0.0;
    var dbeta = 0.0;
    for (var r = first; r < end; r += 1u) {
        let g = dout_par[r * params.cols + c];
        let xhat = (x_par[r * params.cols + c] - stats_par[2u * r]) * stats_par[2u * r + 1u];
        dgamma += g * xhat;
        dbeta += g;
    }
    partials[chunk * 2u * params.cols + c] = dgamma;
    partials[chunk * 2u * params.cols + params.cols + c] = dbeta;
}
