// The disentangled c2p/p2c terms: gather from the projected position tables [heads, batch,
// len, rows] into the scores [batch, heads, len, len], and the scatter that is its backward.
// In the backward every output row of dc2p (one query i) and of dp2c (one key j) has one owner
// workgroup whose first thread adds the scores in index order into a workgroup-memory
// accumulator — the order of the CPU kernel, so the sums are bit-identical to it.

const ELEMENTWISE_WG: u32 = 256u;
const SCATTER_WG: u32 = 64u;
// Window rows accumulated per pass in workgroup memory.
const SCATTER_CHUNK: u32 = 2048u;

struct Params {
    batch: u32,
    heads: u32,
    len: u32,
    rows: u32,
    scale: f32,
    has_c2p: u32,
    has_p2c: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// add_relative_scores
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read> c2p: array<f32>;
@group(0) @binding(3) var<storage, read> p2c: array<f32>;
@group(0) @binding(4) var<storage, read> index_fwd: array<u32>;

// relative_scores_backward_c2p / _p2c
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dscores: array<f32>;
@group(0) @binding(3) var<storage, read> index: array<u32>;

var<workgroup> acc: array<f32, SCATTER_CHUNK>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn add_relative_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * ELEMENTWISE_WG + lid;
    let len = params.len;
    let total = params.batch * params.heads * len * len;
    if (e >= total) {
        return;
    }
    let j = e % len;
    let i = (e / len) % len;
    let bh = e / (len * len);
    let h = bh % params.heads;
    let b = bh / params.heads;
    let t = (h * params.batch + b) * len * params.rows;
    let r = index_fwd[i * len + j];
    let s = params.scale;
    if (params.has_c2p != 0u && params.has_p2c != 0u) {
        scores[e] = scores[e] + (c2p[t + i * params.rows + r] / s + p2c[t + j * params.rows + r] / s);
    } else if (params.has_c2p != 0u) {
        scores[e] = scores[e] + c2p[t + i * params.rows + r] / s;
    } else {
        scores[e] = scores[e] + p2c[t + j * params.rows + r] / s;
    }
}

// The (batch, head) of a backward workgroup, and which line (query i or key j) it owns.
struct Line {
    b: u32,
    h: u32,
    line: u32,
    valid: bool,
}

fn line_of(wid: vec3<u32>, nwg: vec3<u32>) -> Line {
    let g = wid.y * nwg.x + wid.x;
    let len = params.len;
    let line = g % len;
    let bh = g / len;
    return Line(bh / params.heads, bh % params.heads, line, g < params.batch * params.heads * len);
}

// dc2p[h, b, i, r] = Σ_{j: idx[i,j] = r} dscores[b, h, i, j] / s, j ascending.
@compute @workgroup_size(SCATTER_WG)
fn relative_scores_backward_c2p(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let line = line_of(wid, nwg);
    if (!line.valid) {
        return;
    }
    let len = params.len;
    let i = line.line;
    let src = ((line.b * params.heads + line.h) * len + i) * len;
    let dst = ((line.h * params.batch + line.b) * len + i) * params.rows;
    for (var first = 0u; first < params.rows; first += SCATTER_CHUNK) {
        let count = min(SCATTER_CHUNK, params.rows - first);
        for (var q = lid; q < count; q += SCATTER_WG) {
            acc[q] = 0.0;
        }
        workgroupBarrier();
        if (lid == 0u) {
            for (var j = 0u; j < len; j += 1u) {
                let r = index[i * len + j];
                if (r >= first && r < first + count) {
                    acc[r - first] += dscores[src + j] / params.scale;
                }
            }
        }
        workgroupBarrier();
        for (var q = lid; q < count; q += SCATTER_WG) {
            dtable[dst + first + q] = acc[q];
        }
        workgroupBarrier();
    }
}

// dp2c[h, b, j, r] = Σ_{i: idx[i,j] = r} dscores[b, h, i, j] / s, i ascending.
@compute @workgroup_size(SCATTER_WG)
fn relative_scores_backward_p2c(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let line = line_of(wid, nwg);
    if (!line.valid) {
        return;
    }
    let len = params.len;
    let j = line.line;
    let src = (line.b * params.heads + line.h) * len * len;
    let dst = ((line.h * params.batch + line.b) * len + j) * params.rows;
    for (var first = 0u; first < params.rows; first += SCATTER_CHUNK) {
        let count = min(SCATTER_CHUNK, params.rows - first);
        for (var q = lid; q < count; q += SCATTER_WG) {
            acc[q] = 0.0;
        }
        workgroupBarrier();
        if (lid == 0u) {
            for (var i = 0u; i < len; i += 1u) {
                let r = index[i * len + j];
                if (r >= first && r < first + count) {
                    acc[r - first] += dscores[src + i * len + j] / params.scale;
                }
            }
        }
        workgroupBarrier();
        for (var q = lid; q < count; q += SCATTER_WG) {
            dtable[dst + first + q] = acc[q];
        }
        workgroupBarrier();
    }
}
