// Fused disentangled self-attention forward (inference): for one (sequence, head) and a tile of
// ATTN_TILE queries, one pass over the keys in tiles of ATTN_TILE computes
//
//   score[i,j] = (Q_i·K_j)·(1/s) + ((Q_i·Kr[idx(i,j)])/s + (K_j·Qr[idx(i,j)])/s)
//
// masks it, folds it into an online softmax (running max and sum per query) and accumulates
// P·V, writing only the context. Neither the [len, len] scores nor the [heads, tokens, R] c2p/p2c
// tables ever reach memory. Semantics are those of the unfused path (Hugging Face 5.x): masked
// keys weigh exactly 0; a padded query row is uniform over all len keys (its context is the mean
// of V); every valid query has itself as a valid key, so its sum is never 0.
//
// Position terms. Instead of gathering from precomputed tables Q·Krᵀ and K·Qrᵀ (which cost
// 2·len·R·d per head, R ≈ 2·len, and a round trip through memory), the kernel dots the query and
// key rows with the position projections directly (2·len²·d). The relative index depends on i − j
// only, so a (query tile, key tile) pair reads just the 2·ATTN_TILE − 1 rows of Kr and Qr of its
// differences i − j: this band is staged in workgroup memory (ATTN_CHUNK columns of d at a time)
// next to the key chunk, and slot (i − j) − (i0 − j0) + ATTN_TILE − 1 of the band serves every
// (i, j) of the tile with no per-element index reads. The band row of a difference δ is the
// index's first column (δ ≥ 0: idx[δ, 0]) or first row (δ < 0: idx[0, −δ]).
//
// Threads. 16 × 16 threads; thread (ti, tj) computes the score of (i0 + ti, j0 + tj), and in the
// P·V step owns columns tj, tj + 16, tj + 32, tj + 48 of query row i0 + ti, so the running max and
// sum of a row are kept (identically) by the 16 threads of that row. Workgroup memory: the query
// tile (resident for the whole pass), one key chunk, the two bands, the value tile and the
// probability tile: 14.6 KB, under WebGPU's 16 KB default. Heads wider than ATTN_MAX_HEAD_DIM use
// the unfused kernels (the host decides).

const ATTN_TILE: u32 = 16u;
const ATTN_CHUNK: u32 = 16u;
const ATTN_MAX_HEAD_DIM: u32 = 64u;
// Rows of a band: the differences i − j of one tile pair.
const BAND: u32 = 2u * ATTN_TILE - 1u;
// Padded row strides of the chunked tiles (conflict-free column reads).
const CHUNK_STRIDE: u32 = 17u;
const P_STRIDE: u32 = 17u;
// Columns of the context each thread owns (the lanes of its vec4 accumulator).
const COLS_PER_THREAD: u32 = ATTN_MAX_HEAD_DIM / ATTN_TILE;
const_assert COLS_PER_THREAD == 4u;
// One key-chunk element per thread.
const_assert ATTN_CHUNK == ATTN_TILE;
// Stands in for -inf in the running max: every real score is far above it.
const LOWEST: f32 = -3.4028235e38;

struct Params {
    batch: u32,
    heads: u32,
    len: u32,
    head_dim: u32,
    // heads · head_dim: the row width of Q, K, V, the context and the projections.
    width: u32,
    // Row of Kr / Qr holding window row 0.
    first_row: u32,
    // Query tiles per (sequence, head).
    tiles: u32,
    has_c2p: u32,
    has_p2c: u32,
    inv_scale: f32,
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> context: array<f32>;
@group(0) @binding(2) var<storage, read> query: array<f32>;
@group(0) @binding(3) var<storage, read> key: array<f32>;
@group(0) @binding(4) var<storage, read> value: array<f32>;
@group(0) @binding(5) var<storage, read> pos_key: array<f32>;
@group(0) @binding(6) var<storage, read> pos_query: array<f32>;
@group(0) @binding(7) var<storage, read> index: array<u32>;
@group(0) @binding(8) var<storage, read> mask: array<f32>;

var<workgroup> q_tile: array<f32, ATTN_TILE * ATTN_MAX_HEAD_DIM>;
var<workgroup> k_chunk: array<f32, ATTN_TILE * CHUNK_STRIDE>;
var<workgroup> kr_band: array<f32, BAND * CHUNK_STRIDE>;
var<workgroup> qr_band: array<f32, BAND * CHUNK_STRIDE>;
var<workgroup> v_tile: array<f32, ATTN_TILE * ATTN_MAX_HEAD_DIM>;
var<workgroup> p_tile: array<f32, ATTN_TILE * P_STRIDE>;

// The projection row (window row + first_row) of the relative difference `delta`, or -1 when
// no (i, j) of the sequence has that difference (the band slot is then unused).
fn band_row(delta: i32) -> i32 {
    let len = i32(params.len);
    if (delta <= -len || delta >= len) {
        return -1;
    }
    var r: u32;
    if (delta >= 0) {
        r = index[u32(delta) * params.len];
    } else {
        r = index[u32(-delta)];
    }
    return i32(r + params.first_row);
}

@compute @workgroup_size(ATTN_TILE, ATTN_TILE, 1)
fn fused_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) local: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let group = wid.y * nwg.x + wid.x;
    // Uniform across the workgroup: either every thread returns or none does.
    if (group >= params.batch * params.heads * params.tiles) {
        return;
    }
    let len = params.len;
    let d = params.head_dim;
    let width = params.width;
    let bh = group / params.tiles;
    let b = bh / params.heads;
    let h = bh % params.heads;
    let i0 = (group % params.tiles) * ATTN_TILE;
    let ti = local.y;
    let tj = local.x;
    let i = i0 + ti;
    let tokens0 = b * len;
    let column0 = h * d;
    let threads = ATTN_TILE * ATTN_TILE;
    let relative = params.has_c2p != 0u || params.has_p2c != 0u;

    // The query tile, zero beyond the sequence and the head.
    for (var e = lid; e < ATTN_TILE * ATTN_MAX_HEAD_DIM; e += threads) {
        let r = e / ATTN_MAX_HEAD_DIM;
        let c = e % ATTN_MAX_HEAD_DIM;
        var v = 0.0;
        if (i0 + r < len && c < d) {
            v = query[(tokens0 + i0 + r) * width + column0 + c];
        }
        q_tile[e] = v;
    }
    var query_valid = false;
    if (i < len) {
        query_valid = mask[tokens0 + i] != 0.0;
    }

    var row_max = LOWEST;
    var row_sum = 0.0;
    var acc = vec4<f32>(0.0);

    for (var j0 = 0u; j0 < len; j0 += ATTN_TILE) {
        let j = j0 + tj;
        // δ of band slot 0.
        let delta0 = i32(i0) - i32(j0) - i32(ATTN_TILE - 1u);
        let slot = ti + (ATTN_TILE - 1u) - tj;
        var s_qk = 0.0;
        var s_c2p = 0.0;
        var s_p2c = 0.0;
        for (var k0 = 0u; k0 < d; k0 += ATTN_CHUNK) {
            // Key chunk: row r, columns k0 .. k0 + ATTN_CHUNK (one element per thread).
            {
                let r = lid / ATTN_CHUNK;
                let kk = lid % ATTN_CHUNK;
                var v = 0.0;
                if (j0 + r < len && k0 + kk < d) {
                    v = key[(tokens0 + j0 + r) * width + column0 + k0 + kk];
                }
                k_chunk[r * CHUNK_STRIDE + kk] = v;
            }
            if (relative) {
                for (var e = lid; e < BAND * ATTN_CHUNK; e += threads) {
                    let s = e / ATTN_CHUNK;
                    let kk = e % ATTN_CHUNK;
                    let row = band_row(delta0 + i32(s));
                    var kr = 0.0;
                    var qr = 0.0;
                    if (row >= 0 && k0 + kk < d) {
                        let at = u32(row) * width + column0 + k0 + kk;
                        if (params.has_c2p != 0u) {
                            kr = pos_key[at];
                        }
                        if (params.has_p2c != 0u) {
                            qr = pos_query[at];
                        }
                    }
                    kr_band[s * CHUNK_STRIDE + kk] = kr;
                    qr_band[s * CHUNK_STRIDE + kk] = qr;
                }
            }
            workgroupBarrier();
            let qi = ti * ATTN_MAX_HEAD_DIM + k0;
            let kj = tj * CHUNK_STRIDE;
            let band = slot * CHUNK_STRIDE;
            if (relative) {
                for (var kk = 0u; kk < ATTN_CHUNK; kk += 1u) {
                    let q = q_tile[qi + kk];
                    let k = k_chunk[kj + kk];
                    s_qk += q * k;
                    s_c2p += q * kr_band[band + kk];
                    s_p2c += k * qr_band[band + kk];
                }
            } else {
                for (var kk = 0u; kk < ATTN_CHUNK; kk += 1u) {
                    s_qk += q_tile[qi + kk] * k_chunk[kj + kk];
                }
            }
            workgroupBarrier();
        }

        // The value tile for P·V.
        for (var e = lid; e < ATTN_TILE * ATTN_MAX_HEAD_DIM; e += threads) {
            let r = e / ATTN_MAX_HEAD_DIM;
            let c = e % ATTN_MAX_HEAD_DIM;
            var v = 0.0;
            if (j0 + r < len && c < d) {
                v = value[(tokens0 + j0 + r) * width + column0 + c];
            }
            v_tile[e] = v;
        }
        // Mask: a padded query attends uniformly to every key (score 0); a valid one to the
        // valid keys only.
        var live = false;
        var score = 0.0;
        if (i < len && j < len) {
            if (!query_valid) {
                live = true;
            } else if (mask[tokens0 + j] != 0.0) {
                live = true;
                score = s_qk * params.inv_scale;
                let s = params.scale;
                if (params.has_c2p != 0u && params.has_p2c != 0u) {
                    score = score + (s_c2p / s + s_p2c / s);
                } else if (params.has_c2p != 0u) {
                    score = score + s_c2p / s;
                } else if (params.has_p2c != 0u) {
                    score = score + s_p2c / s;
                }
            }
        }
        p_tile[ti * P_STRIDE + tj] = select(LOWEST, score, live);
        workgroupBarrier();

        // Online softmax: the tile's max of this row, then its probabilities.
        var tile_max = LOWEST;
        for (var c = 0u; c < ATTN_TILE; c += 1u) {
            tile_max = max(tile_max, p_tile[ti * P_STRIDE + c]);
        }
        let new_max = max(row_max, tile_max);
        workgroupBarrier();
        p_tile[ti * P_STRIDE + tj] = select(0.0, exp(score - new_max), live);
        workgroupBarrier();

        let correction = exp(row_max - new_max);
        var tile_sum = 0.0;
        var pv = vec4<f32>(0.0);
        for (var c = 0u; c < ATTN_TILE; c += 1u) {
            let p = p_tile[ti * P_STRIDE + c];
            tile_sum += p;
            let v = c * ATTN_MAX_HEAD_DIM + tj;
            pv += p * vec4<f32>(v_tile[v], v_tile[v + ATTN_TILE], v_tile[v + 2u * ATTN_TILE],
                                v_tile[v + 3u * ATTN_TILE]);
        }
        row_sum = row_sum * correction + tile_sum;
        acc = acc * correction + pv;
        row_max = new_max;
        workgroupBarrier();
    }

    if (i < len) {
        let out = (tokens0 + i) * width + column0;
        let inv = 1.0 / row_sum;
        for (var u = 0u; u < COLS_PER_THREAD; u += 1u) {
            let c = tj + u * ATTN_TILE;
            if (c < d) {
                context[out + c] = acc[u] * inv;
            }
        }
    }
}
