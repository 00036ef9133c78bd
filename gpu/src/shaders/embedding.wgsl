// Embedding-table lookups and their scatter-add backward. In the backward, the workgroup of the
// first position holding an id owns that table row: it adds the rows of every later position
// with the same id in position order — the CPU kernel's order, so the sums are bit-identical.

const ELEMENTWISE_WG: u32 = 256u;
const SCATTER_WG: u32 = 64u;

struct Params {
    positions: u32,
    dim: u32,
    table_rows: u32,
    accumulate: u32,
    has_skip: u32,
    skip: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// embedding_lookup
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read> ids_fwd: array<u32>;

// embedding_backward
@group(0) @binding(1) var<storage, read_write> dtable: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;

// out[r, c] (+)= table[ids[r], c]; ids beyond the table leave their row untouched (ids are
// validated on the host).
@compute @workgroup_size(ELEMENTWISE_WG)
fn embedding_lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let e = (wid.y * nwg.x + wid.x) * ELEMENTWISE_WG + lid;
    if (e >= params.positions * params.dim) {
        return;
    }
    let r = e / params.dim;
    let c = e % params.dim;
    let id = ids_fwd[r];
    if (id >= params.table_rows) {
        return;
    }
    let v = table[id * params.dim + c];
    if (params.accumulate != 0u) {
        out[e] = out[e] + v;
    } else {
        out[e] = v;
    }
}

// dtable[ids[r], :] += dout[r, :] for every position r in order, except ids equal to `skip`.
@compute @workgroup_size(SCATTER_WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= params.positions) {
        return;
    }
    let id = ids[r];
    if ((params.has_skip != 0u && id == params.skip) || id >= params.table_rows) {
        return;
    }
    for (var earlier = 0u; earlier < r; earlier += 1u) {
        if (ids[earlier] == id) {
            // An earlier position owns this row.
            return;
        }
    }
    let row = id * params.dim;
    for (var c = lid; c < params.dim; c += SCATTER_WG) {
        var acc = dtable[row + c];
        for (var later = r; later < params.positions; later += 1u) {
            if (ids[later] == id) {
                acc += dout[later * params.dim + c];
            }
        }
        dtable[row + c] = acc;
    }
}
