// Embedding-table lookups and their scatter-add backward. In the backward, the workgroup of the
// first position holding an id owns that table row: it adds the rows of every later position
// with the same id in position order — the CPU kernel's order, so the sums are bit-identical.
// Its threads look for earlier and later positions with the id SCATTER_WG positions at a time,
// so a batch of T tokens costs T²/2 id comparisons in all rather than per thread.

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

// Whether some earlier position holds the workgroup's id (any thread may set it).
var<workgroup> earlier_found: atomic<u32>;
var<workgroup> owned_elsewhere: u32;
// The later positions start .. start + SCATTER_WG of one step holding the id, a bit each
// (bit p % 32 of word p / 32).
var<workgroup> later_found: array<atomic<u32>, 2>;
const_assert SCATTER_WG == 64u;

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
    if (lid == 0u) {
        atomicStore(&earlier_found, 0u);
        atomicStore(&later_found[0], 0u);
        atomicStore(&later_found[1], 0u);
    }
    workgroupBarrier();
    for (var earlier = lid; earlier < r; earlier += SCATTER_WG) {
        if (ids[earlier] == id) {
            atomicStore(&earlier_found, 1u);
            break;
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        owned_elsewhere = atomicLoad(&earlier_found);
    }
    // An earlier position owns this row.
    if (workgroupUniformLoad(&owned_elsewhere) != 0u) {
        return;
    }
    let row = id * params.dim;
    for (var start = r; start < params.positions; start += SCATTER_WG) {
        let later = start + lid;
        if (later < params.positions && ids[later] == id) {
            atomicOr(&later_found[lid / 32u], 1u << (lid % 32u));
        }
        workgroupBarrier();
        let words = vec2<u32>(atomicLoad(&later_found[0]), atomicLoad(&later_found[1]));
        // Every thread has read the step's bits before they are cleared for the next.
        workgroupBarrier();
        if (lid == 0u) {
            atomicStore(&later_found[0], 0u);
            atomicStore(&later_found[1], 0u);
        }
        // Thread `lid` owns columns lid, lid + SCATTER_WG, …: it adds the step's positions in
        // order.
        for (var w = 0u; w < 2u; w += 1u) {
            var bits = words[w];
            while (bits != 0u) {
                let at = (start + 32u * w + firstTrailingBit(bits)) * params.dim;
                bits &= bits - 1u;
                for (var c = lid; c < params.dim; c += SCATTER_WG) {
                    dtable[row + c] += dout[at + c];
                }
            }
        }
        // The bits are cleared before the next step sets them.
        workgroupBarrier();
    }
}
