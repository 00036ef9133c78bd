// Fused disentangled self-attention forward, for inference and for training (philox.wgsl and
// f16_round.wgsl are prepended): for one (sequence, head) and a tile of ATTN_TILE queries, one pass over the keys
// in tiles of ATTN_TILE computes
//
//   score[i,j] = (Q_i·K_j)·(1/s) + ((Q_i·Kr[idx(i,j)])/s + (K_j·Qr[idx(i,j)])/s)
//
// masks it, folds it into an online softmax (running max and sum per query) and accumulates
// P·V, writing only the context. Neither the [len, len] scores nor the [heads, tokens, R] c2p/p2c
// tables ever reach memory. Semantics are those of the unfused path (Hugging Face 5.x): masked
// keys weigh exactly 0; a padded query row is uniform over all len keys (its context is the mean
// of V); every valid query has itself as a valid key, so its sum is never 0.
//
// Training (the forward of the fused training attention, attention_rows.wgsl): with dropout the
// probabilities are multiplied by the dropout mask of element ((b·heads + h)·len + i)·len + j
// before P·V (the row sums are of the kept-and-dropped probabilities alike), and with `stats`
// each query row's logsumexp `m + log(l)` goes to stats[(b·heads + h)·len + i], which the
// row-owned backward recomputes the probabilities from. Under mixed precision (`f16_operands`)
// every operand of a product is rounded to binary16 as it is loaded: Q, K, V, Kr, Qr and the
// unnormalised probabilities P·V multiplies; the sums, the softmax and its statistics stay f32.
//
// Position terms. Instead of gathering from precomputed tables Q·Krᵀ and K·Qrᵀ (2·len·R·d
// multiply-adds per head with R up to 2·len − 1, and a round trip of both tables through
// memory), the kernel dots the query and key rows with the position projections directly
// (2·len²·d). The relative index depends on i − j only, so a (query tile, key tile) pair reads
// just the BAND = 2·ATTN_TILE − 1 rows of Kr and Qr of its differences i − j: this band is staged
// in workgroup memory next to the query and key chunks, band slot (i − j) − (i0 − j0) +
// ATTN_TILE − 1 serving every (i, j) of the pair with no per-element index reads. The
// projection row of a difference δ comes from the index's first column (δ ≥ 0: idx[δ, 0]) or
// first row (δ < 0: idx[0, −δ]).
//
// Threads. ATTN_THREADS² threads; thread (ti, tj) owns the ATTN_BLOCK × ATTN_BLOCK scores of
// rows ti + ATTN_THREADS·a and columns tj + ATTN_THREADS·b of the tile (register blocking, as
// in the tiled matmul), so per step of four head columns it loads 4 + 4 query/key vectors and
// 7 + 7 band vectors for 48 four-wide dot products. In the P·V step it owns the same rows and
// the column groups tj, tj + ATTN_THREADS of the head (four columns each), so a row's running
// max and sum are kept, identically, by the threads of that row. Workgroup memory holds either
// the chunks of the score phase (query, key, two bands) or the value tile and the probabilities
// of the P·V phase (one array, reused), plus the per-thread partial row maxima and sums: 14.3
// KB, under WebGPU's 16 KB default. Heads wider than ATTN_MAX_HEAD_DIM use the unfused kernels (the host
// decides).

const ATTN_TILE: u32 = 32u;
const ATTN_THREADS: u32 = 8u;
const ATTN_BLOCK: u32 = 4u;
const ATTN_CHUNK: u32 = 16u;
const ATTN_MAX_HEAD_DIM: u32 = 64u;
const_assert ATTN_TILE == ATTN_THREADS * ATTN_BLOCK;
// Every per-thread array below is written out for ATTN_BLOCK = 4 (vec4 lanes, 7 band offsets).
const_assert ATTN_BLOCK == 4u;

// Rows of a band: the differences i − j of one tile pair.
const BAND: u32 = 2u * ATTN_TILE - 1u;
// Four-float vectors per chunk row and per head row.
const CHUNK_VECS: u32 = ATTN_CHUNK / 4u;
const HEAD_VECS: u32 = ATTN_MAX_HEAD_DIM / 4u;
// Column groups (of four) of the context per thread.
const COL_GROUPS: u32 = HEAD_VECS / ATTN_THREADS;
const_assert COL_GROUPS == 2u;
const THREADS: u32 = ATTN_THREADS * ATTN_THREADS;

// Score phase layout of `staged`: query chunk, key chunk, Kr band, Qr band.
const Q_AT: u32 = 0u;
const K_AT: u32 = Q_AT + ATTN_TILE * CHUNK_VECS;
const KR_AT: u32 = K_AT + ATTN_TILE * CHUNK_VECS;
const QR_AT: u32 = KR_AT + BAND * CHUNK_VECS;
const SCORE_PHASE: u32 = QR_AT + BAND * CHUNK_VECS;
// P·V phase layout: value tile [key][head vector], probabilities [key][ti] as vec4 over a.
const V_AT: u32 = 0u;
const P_AT: u32 = V_AT + ATTN_TILE * HEAD_VECS;
const PV_PHASE: u32 = P_AT + ATTN_TILE * ATTN_THREADS;
const SHARED_VECS: u32 = 768u;
const_assert SCORE_PHASE <= SHARED_VECS && PV_PHASE <= SHARED_VECS;

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
    // 1: write each row's logsumexp to `stats`.
    has_stats: u32,
    // 1: dropout with probability p (keep_scale = 1/(1 − p)) from the Philox stream below.
    has_dropout: u32,
    p: f32,
    keep_scale: f32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    // 1: every operand of a product is rounded to binary16 as it is loaded (mixed precision).
    f16_operands: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> context: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<storage, read> query: array<f32>;
@group(0) @binding(4) var<storage, read> key: array<f32>;
@group(0) @binding(5) var<storage, read> value: array<f32>;
@group(0) @binding(6) var<storage, read> pos_key: array<f32>;
@group(0) @binding(7) var<storage, read> pos_query: array<f32>;
@group(0) @binding(8) var<storage, read> index: array<u32>;
@group(0) @binding(9) var<storage, read> mask: array<f32>;

var<workgroup> staged: array<vec4<f32>, SHARED_VECS>;
// Partial row maxima and sums of one key tile: [ti][tj], vec4 over the thread's rows a.
var<workgroup> partial_max: array<vec4<f32>, THREADS>;
var<workgroup> partial_sum: array<vec4<f32>, THREADS>;

// Four consecutive head columns c .. c + 3 of a row starting at `at` (zero at and beyond d),
// as an operand (`operand4`, f16_round.wgsl).
fn query4(at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            v[u] = query[at + c + u];
        }
    }
    return operand4(v);
}

fn key4(at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            v[u] = key[at + c + u];
        }
    }
    return operand4(v);
}

fn value4(at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            v[u] = value[at + c + u];
        }
    }
    return operand4(v);
}

fn pos_key4(at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            v[u] = pos_key[at + c + u];
        }
    }
    return operand4(v);
}

fn pos_query4(at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            v[u] = pos_query[at + c + u];
        }
    }
    return operand4(v);
}

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

@compute @workgroup_size(ATTN_THREADS, ATTN_THREADS, 1)
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
    let tokens0 = b * len;
    let column0 = h * d;
    let c2p = params.has_c2p != 0u;
    let p2c = params.has_p2c != 0u;
    let relative = c2p || p2c;
    let s = params.scale;

    // Which of this thread's rows are queries of the sequence, and which of those are valid.
    var row_in = vec4<bool>(false);
    var row_valid = vec4<bool>(false);
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        let i = i0 + ti + ATTN_THREADS * a;
        if (i < len) {
            row_in[a] = true;
            row_valid[a] = mask[tokens0 + i] != 0.0;
        }
    }

    var row_max = vec4<f32>(LOWEST);
    var row_sum = vec4<f32>(0.0);
    // acc[a * COL_GROUPS + g]: row a, head columns 4·(tj + ATTN_THREADS·g) ..
    var acc: array<vec4<f32>, 8>;
    for (var e = 0u; e < 8u; e += 1u) {
        acc[e] = vec4<f32>(0.0);
    }

    for (var j0 = 0u; j0 < len; j0 += ATTN_TILE) {
        // The band rows this thread stages: slots lid / CHUNK_VECS + (THREADS / CHUNK_VECS)·r.
        let delta0 = i32(i0) - i32(j0) - i32(ATTN_TILE - 1u);
        var rows: array<i32, 4>;
        for (var r = 0u; r < 4u; r += 1u) {
            rows[r] = band_row(delta0 + i32(lid / CHUNK_VECS + (THREADS / CHUNK_VECS) * r));
        }

        // s_qk[a][b], s_c2p[a][b], s_p2c[a][b] for row a, column b of the thread's block.
        var s_qk: array<vec4<f32>, 4>;
        var s_c2p: array<vec4<f32>, 4>;
        var s_p2c: array<vec4<f32>, 4>;
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            s_qk[a] = vec4<f32>(0.0);
            s_c2p[a] = vec4<f32>(0.0);
            s_p2c[a] = vec4<f32>(0.0);
        }
        for (var k0 = 0u; k0 < d; k0 += ATTN_CHUNK) {
            // Query and key chunks: ATTN_TILE rows × CHUNK_VECS vectors each.
            for (var e = lid; e < ATTN_TILE * CHUNK_VECS; e += THREADS) {
                let r = e / CHUNK_VECS;
                let c = k0 + 4u * (e % CHUNK_VECS);
                var q = vec4<f32>(0.0);
                if (i0 + r < len) {
                    q = query4((tokens0 + i0 + r) * width + column0, c);
                }
                staged[Q_AT + e] = q;
                var k = vec4<f32>(0.0);
                if (j0 + r < len) {
                    k = key4((tokens0 + j0 + r) * width + column0, c);
                }
                staged[K_AT + e] = k;
            }
            if (relative) {
                for (var r = 0u; r < 4u; r += 1u) {
                    let e = lid + THREADS * r;
                    if (e < BAND * CHUNK_VECS) {
                        let c = k0 + 4u * (e % CHUNK_VECS);
                        var kr = vec4<f32>(0.0);
                        var qr = vec4<f32>(0.0);
                        if (rows[r] >= 0) {
                            let at = u32(rows[r]) * width + column0;
                            if (c2p) {
                                kr = pos_key4(at, c);
                            }
                            if (p2c) {
                                qr = pos_query4(at, c);
                            }
                        }
                        staged[KR_AT + e] = kr;
                        staged[QR_AT + e] = qr;
                    }
                }
            }
            workgroupBarrier();
            for (var v = 0u; v < CHUNK_VECS; v += 1u) {
                var q: array<vec4<f32>, 4>;
                var k: array<vec4<f32>, 4>;
                for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                    q[a] = staged[Q_AT + (ti + ATTN_THREADS * a) * CHUNK_VECS + v];
                    k[a] = staged[K_AT + (tj + ATTN_THREADS * a) * CHUNK_VECS + v];
                }
                for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                    s_qk[a] += vec4<f32>(dot(q[a], k[0]), dot(q[a], k[1]), dot(q[a], k[2]),
                                         dot(q[a], k[3]));
                }
                if (relative) {
                    // Band offsets o = a − b + 3 of the block: slot (ti − tj) + 8·(o − 3) + 31.
                    var kr: array<vec4<f32>, 7>;
                    var qr: array<vec4<f32>, 7>;
                    for (var o = 0u; o < 7u; o += 1u) {
                        let slot = ti + ATTN_THREADS * o + (ATTN_TILE - 1u) - tj
                            - ATTN_THREADS * (ATTN_BLOCK - 1u);
                        kr[o] = staged[KR_AT + slot * CHUNK_VECS + v];
                        qr[o] = staged[QR_AT + slot * CHUNK_VECS + v];
                    }
                    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                        s_c2p[a] += vec4<f32>(dot(q[a], kr[a + 3u]), dot(q[a], kr[a + 2u]),
                                              dot(q[a], kr[a + 1u]), dot(q[a], kr[a]));
                        s_p2c[a] += vec4<f32>(dot(k[0], qr[a + 3u]), dot(k[1], qr[a + 2u]),
                                              dot(k[2], qr[a + 1u]), dot(k[3], qr[a]));
                    }
                }
            }
            workgroupBarrier();
        }

        // Masked scores (LOWEST where excluded) and this thread's partial row maxima.
        var key_in = vec4<bool>(false);
        var key_valid = vec4<bool>(false);
        for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
            let j = j0 + tj + ATTN_THREADS * bb;
            if (j < len) {
                key_in[bb] = true;
                key_valid[bb] = mask[tokens0 + j] != 0.0;
            }
        }
        var score: array<vec4<f32>, 4>;
        var live: array<vec4<bool>, 4>;
        var local_max = vec4<f32>(LOWEST);
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            var rel = vec4<f32>(0.0);
            if (c2p && p2c) {
                rel = s_c2p[a] / s + s_p2c[a] / s;
            } else if (c2p) {
                rel = s_c2p[a] / s;
            } else if (p2c) {
                rel = s_p2c[a] / s;
            }
            var x = s_qk[a] * params.inv_scale;
            if (relative) {
                x = x + rel;
            }
            // A padded query attends uniformly to every key (score 0); a valid one to the valid
            // keys only.
            live[a] = vec4<bool>(row_in[a]) & key_in & (key_valid | vec4<bool>(!row_valid[a]));
            x = select(vec4<f32>(0.0), x, vec4<bool>(row_valid[a]));
            score[a] = select(vec4<f32>(LOWEST), x, live[a]);
            local_max[a] = max(max(score[a].x, score[a].y), max(score[a].z, score[a].w));
        }
        partial_max[ti * ATTN_THREADS + tj] = local_max;
        // The value tile (over the score-phase chunks, which every thread is done reading).
        for (var e = lid; e < ATTN_TILE * HEAD_VECS; e += THREADS) {
            let r = e / HEAD_VECS;
            let c = 4u * (e % HEAD_VECS);
            var v = vec4<f32>(0.0);
            if (j0 + r < len && c < d) {
                v = value4((tokens0 + j0 + r) * width + column0, c);
            }
            staged[V_AT + e] = v;
        }
        workgroupBarrier();

        // Online softmax: the tile's row maxima, the rescaling of what was accumulated, and
        // this tile's probabilities, stored [key][ti] as vec4 over the thread's rows.
        var tile_max = vec4<f32>(LOWEST);
        for (var c = 0u; c < ATTN_THREADS; c += 1u) {
            tile_max = max(tile_max, partial_max[ti * ATTN_THREADS + c]);
        }
        let new_max = max(row_max, tile_max);
        let correction = exp(row_max - new_max);
        row_max = new_max;
        row_sum = row_sum * correction;
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                acc[a * COL_GROUPS + g] = acc[a * COL_GROUPS + g] * correction[a];
            }
        }
        var p: array<vec4<f32>, 4>;
        var local_sum = vec4<f32>(0.0);
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            p[a] = select(vec4<f32>(0.0), exp(score[a] - vec4<f32>(new_max[a])), live[a]);
            local_sum[a] = (p[a].x + p[a].y) + (p[a].z + p[a].w);
        }
        partial_sum[ti * ATTN_THREADS + tj] = local_sum;
        if (params.has_dropout != 0u) {
            let seed = vec2<u32>(params.seed_lo, params.seed_hi);
            for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                let row = (bh * len + i0 + ti + ATTN_THREADS * a) * len;
                for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
                    let j = j0 + tj + ATTN_THREADS * bb;
                    if (live[a][bb]) {
                        p[a][bb] *= dropout_multiplier(row + j, seed, params.step,
                                                       params.stream, params.p,
                                                       params.keep_scale);
                    }
                }
            }
        }
        // The (unnormalised, dropped) probabilities as P·V's operand.
        for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
            staged[P_AT + (tj + ATTN_THREADS * bb) * ATTN_THREADS + ti] =
                operand4(vec4<f32>(p[0][bb], p[1][bb], p[2][bb], p[3][bb]));
        }
        workgroupBarrier();

        // The row sums (every thread of a row adds the same partials in the same order), then
        // P·V for the thread's rows and column groups.
        for (var c = 0u; c < ATTN_THREADS; c += 1u) {
            row_sum += partial_sum[ti * ATTN_THREADS + c];
        }
        let keys = min(ATTN_TILE, len - j0);
        for (var j = 0u; j < keys; j += 1u) {
            let pj = staged[P_AT + j * ATTN_THREADS + ti];
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let column = tj + ATTN_THREADS * g;
                if (4u * column < d) {
                    let v = staged[V_AT + j * HEAD_VECS + column];
                    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                        acc[a * COL_GROUPS + g] += pj[a] * v;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        if (row_in[a]) {
            let i = i0 + ti + ATTN_THREADS * a;
            if (params.has_stats != 0u && tj == 0u) {
                stats[bh * len + i] = row_max[a] + log(row_sum[a]);
            }
            let out = (tokens0 + i) * width + column0;
            let inv = 1.0 / row_sum[a];
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let c = 4u * (tj + ATTN_THREADS * g);
                let x = acc[a * COL_GROUPS + g] * inv;
                for (var u = 0u; u < 4u; u += 1u) {
                    if (c + u < d) {
                        context[out + c + u] = x[u];
                    }
                }
            }
        }
    }
}
