// The tiled disentangled-attention scores shared by the forward (fused_attention.wgsl) and the
// two passes of the training backward (attention_backward*.wgsl): philox.wgsl and
// f16_round.wgsl are prepended, the kernel file (which declares the storage bindings these
// helpers read: query, key, value, pos_key, pos_query, index, mask) is appended.
//
// One workgroup takes a tile of ATTN_TILE queries and one of ATTN_TILE keys of one (sequence,
// head) at a time and computes
//
//   score[i,j] = (Q_i·K_j)·(1/s) + ((Q_i·Kr[idx(i,j)])/s + (K_j·Qr[idx(i,j)])/s)
//
// for the tile pair. Neither the [len, len] scores nor the [heads, tokens, R] c2p/p2c tables
// ever reach memory. Semantics are those of the unfused path (Hugging Face 5.x): masked keys
// weigh exactly 0; a padded query row is uniform over all len keys (score 0 for every key);
// every valid query has itself as a valid key.
//
// Position terms. Instead of gathering from precomputed tables Q·Krᵀ and K·Qrᵀ (2·len·R·d
// multiply-adds per head with R up to 2·len − 1, and a round trip of both tables through
// memory), the scores dot the query and key rows with the position projections directly
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
// 7 + 7 band vectors for 48 four-wide dot products. The kernels then reuse the one staging array
// for their own phases (value and probability tiles; coefficient tiles and full-width row tiles
// or bands). Under mixed precision (`f16_operands`) every operand of a product is rounded to
// binary16 as it is loaded (`operand4`); sums stay f32.

const ATTN_TILE: u32 = 32u;
const ATTN_THREADS: u32 = 8u;
const ATTN_BLOCK: u32 = 4u;
const ATTN_CHUNK: u32 = 16u;
const ATTN_MAX_HEAD_DIM: u32 = 64u;
const_assert ATTN_TILE == ATTN_THREADS * ATTN_BLOCK;
// Every per-thread array is written out for ATTN_BLOCK = 4 (vec4 lanes, 7 band offsets).
const_assert ATTN_BLOCK == 4u;

// Rows of a band: the differences i − j of one tile pair.
const BAND: u32 = 2u * ATTN_TILE - 1u;
// Four-float vectors per chunk row and per head row.
const CHUNK_VECS: u32 = ATTN_CHUNK / 4u;
const HEAD_VECS: u32 = ATTN_MAX_HEAD_DIM / 4u;
// Column groups (of four) of a head per thread: tj and tj + ATTN_THREADS.
const COL_GROUPS: u32 = HEAD_VECS / ATTN_THREADS;
const_assert COL_GROUPS == 2u;
const THREADS: u32 = ATTN_THREADS * ATTN_THREADS;

// Score phase layout of `staged`: query chunk, key chunk, Kr band, Qr band.
const Q_AT: u32 = 0u;
const K_AT: u32 = Q_AT + ATTN_TILE * CHUNK_VECS;
const KR_AT: u32 = K_AT + ATTN_TILE * CHUNK_VECS;
const QR_AT: u32 = KR_AT + BAND * CHUNK_VECS;
const SCORE_PHASE: u32 = QR_AT + BAND * CHUNK_VECS;
// Each kernel file declares `staged`, SHARED_VECS vec4s of workgroup memory.
const_assert SCORE_PHASE <= SHARED_VECS;

// Stands in for -inf in the running max: every real score is far above it.
const LOWEST: f32 = -3.4028235e38;

// The parameters of the three attention kernels (`AttentionParams` on the host).
struct Params {
    batch: u32,
    heads: u32,
    len: u32,
    head_dim: u32,
    // heads · head_dim: the row width of Q, K, V, the context and the projections.
    width: u32,
    // Row of Kr / Qr holding window row 0.
    first_row: u32,
    // Window rows R of the c2p/p2c tables [heads, tokens, R] (the backward's table gradients).
    rows: u32,
    // Tiles of ATTN_TILE queries (keys) per (sequence, head).
    tiles: u32,
    has_c2p: u32,
    has_p2c: u32,
    inv_scale: f32,
    scale: f32,
    // 1/len, the probability of a padded query row (computed on the host as the softmax does).
    uniform: f32,
    // Forward: 1: write each row's logsumexp to `stats`.
    has_stats: u32,
    // 1: dropout with probability p (keep_scale = 1/(1 − p), the host's f32 arithmetic, as the
    // dropout kernel's) from the Philox stream below.
    has_dropout: u32,
    p: f32,
    keep_scale: f32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    // 1: every operand of a product is rounded to binary16 as it is loaded (mixed precision).
    f16_operands: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

// `x` as a product's operand: rounded to binary16 (and back) under mixed precision
// (`params.f16_operands`), as the f16 matmul kernels round theirs, so that the attention
// kernels and the composed attention of mixed precision multiply numbers of the same format.
fn operand(x: f32) -> f32 {
    if (params.f16_operands == 0u) {
        return x;
    }
    return f16_round(x);
}

fn operand4(v: vec4<f32>) -> vec4<f32> {
    if (params.f16_operands == 0u) {
        return v;
    }
    return f16_round4(v);
}

// Which of a tile's operand rows a staging loop reads (`row4`).
const ROWS_QUERY: u32 = 0u;
const ROWS_KEY: u32 = 1u;
const ROWS_VALUE: u32 = 2u;
const ROWS_POS_KEY: u32 = 3u;
const ROWS_POS_QUERY: u32 = 4u;

// Four consecutive head columns c .. c + 3 of the row of `which` starting at `at` (zero at and
// beyond d), as an operand (`operand4`, f16_round.wgsl).
fn row4(which: u32, at: u32, c: u32) -> vec4<f32> {
    let d = params.head_dim;
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            switch which {
                case 0u: { v[u] = query[at + c + u]; }
                case 1u: { v[u] = key[at + c + u]; }
                case 2u: { v[u] = value[at + c + u]; }
                case 3u: { v[u] = pos_key[at + c + u]; }
                default: { v[u] = pos_query[at + c + u]; }
            }
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

// The thread's rows of a tile: which are queries of the sequence (`inside`) and which of those
// are valid (`valid`; a padded query row is inside and not valid).
struct TileRows {
    inside: vec4<bool>,
    valid: vec4<bool>,
}

// Rows r0 + lane0 + ATTN_THREADS·a of the sequence starting at token `tokens0`.
fn tile_rows(tokens0: u32, r0: u32, lane0: u32) -> TileRows {
    var rows: TileRows;
    rows.inside = vec4<bool>(false);
    rows.valid = vec4<bool>(false);
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        let r = r0 + lane0 + ATTN_THREADS * a;
        if (r < params.len) {
            rows.inside[a] = true;
            rows.valid[a] = mask[tokens0 + r] != 0.0;
        }
    }
    return rows;
}

// A thread's block of one tile pair: score[a][b] of query row ti + ATTN_THREADS·a and key
// column tj + ATTN_THREADS·b (LOWEST where excluded), and which pairs take part (`live`: a
// valid query and a valid key, or a padded query and any key of the sequence).
struct ScoreBlock {
    score: array<vec4<f32>, 4>,
    live: array<vec4<bool>, 4>,
}

// The unscaled sums of a thread's block: qk[a][b], c2p[a][b], p2c[a][b].
struct ScoreSums {
    qk: array<vec4<f32>, 4>,
    c2p: array<vec4<f32>, 4>,
    p2c: array<vec4<f32>, 4>,
}

// The projection rows of the band slots this thread stages (slots lid / CHUNK_VECS +
// (THREADS / CHUNK_VECS)·r) for the tile pair (i0, j0).
fn band_rows(i0: u32, j0: u32, lid: u32) -> array<i32, 4> {
    let delta0 = i32(i0) - i32(j0) - i32(ATTN_TILE - 1u);
    var band: array<i32, 4>;
    for (var r = 0u; r < 4u; r += 1u) {
        band[r] = band_row(delta0 + i32(lid / CHUNK_VECS + (THREADS / CHUNK_VECS) * r));
    }
    return band;
}

// Stages head columns k0 .. k0 + ATTN_CHUNK of the query and key tiles and of the band (the
// score phase layout of `staged`; a barrier must follow before `add_score_dots`).
fn stage_score_chunk(tokens0: u32, column0: u32, i0: u32, j0: u32, k0: u32, lid: u32,
                     band: array<i32, 4>) {
    let len = params.len;
    let width = params.width;
    let c2p = params.has_c2p != 0u;
    let p2c = params.has_p2c != 0u;
    // Query and key chunks: ATTN_TILE rows × CHUNK_VECS vectors each.
    for (var e = lid; e < ATTN_TILE * CHUNK_VECS; e += THREADS) {
        let r = e / CHUNK_VECS;
        let c = k0 + 4u * (e % CHUNK_VECS);
        var q = vec4<f32>(0.0);
        if (i0 + r < len) {
            q = row4(ROWS_QUERY, (tokens0 + i0 + r) * width + column0, c);
        }
        staged[Q_AT + e] = q;
        var k = vec4<f32>(0.0);
        if (j0 + r < len) {
            k = row4(ROWS_KEY, (tokens0 + j0 + r) * width + column0, c);
        }
        staged[K_AT + e] = k;
    }
    if (c2p || p2c) {
        for (var r = 0u; r < 4u; r += 1u) {
            let e = lid + THREADS * r;
            if (e < BAND * CHUNK_VECS) {
                let c = k0 + 4u * (e % CHUNK_VECS);
                var kr = vec4<f32>(0.0);
                var qr = vec4<f32>(0.0);
                if (band[r] >= 0) {
                    let at = u32(band[r]) * width + column0;
                    if (c2p) {
                        kr = row4(ROWS_POS_KEY, at, c);
                    }
                    if (p2c) {
                        qr = row4(ROWS_POS_QUERY, at, c);
                    }
                }
                staged[KR_AT + e] = kr;
                staged[QR_AT + e] = qr;
            }
        }
    }
}

// Adds the four-wide dot products of staged chunk vector `v` to the thread's sums.
fn add_score_dots(sums: ptr<function, ScoreSums>, v: u32, ti: u32, tj: u32) {
    var q: array<vec4<f32>, 4>;
    var k: array<vec4<f32>, 4>;
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        q[a] = staged[Q_AT + (ti + ATTN_THREADS * a) * CHUNK_VECS + v];
        k[a] = staged[K_AT + (tj + ATTN_THREADS * a) * CHUNK_VECS + v];
    }
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        (*sums).qk[a] += vec4<f32>(dot(q[a], k[0]), dot(q[a], k[1]), dot(q[a], k[2]),
                                   dot(q[a], k[3]));
    }
    if (params.has_c2p != 0u || params.has_p2c != 0u) {
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
            (*sums).c2p[a] += vec4<f32>(dot(q[a], kr[a + 3u]), dot(q[a], kr[a + 2u]),
                                        dot(q[a], kr[a + 1u]), dot(q[a], kr[a]));
            (*sums).p2c[a] += vec4<f32>(dot(k[0], qr[a + 3u]), dot(k[1], qr[a + 2u]),
                                        dot(k[2], qr[a + 1u]), dot(k[3], qr[a]));
        }
    }
}

// The masked scores of the thread's block from its sums.
fn masked_scores(sums: ScoreSums, tokens0: u32, i0: u32, j0: u32, ti: u32,
                 tj: u32) -> ScoreBlock {
    let c2p = params.has_c2p != 0u;
    let p2c = params.has_p2c != 0u;
    let s = params.scale;
    let rows = tile_rows(tokens0, i0, ti);
    let keys = tile_rows(tokens0, j0, tj);
    var block: ScoreBlock;
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        var rel = vec4<f32>(0.0);
        if (c2p && p2c) {
            rel = sums.c2p[a] / s + sums.p2c[a] / s;
        } else if (c2p) {
            rel = sums.c2p[a] / s;
        } else if (p2c) {
            rel = sums.p2c[a] / s;
        }
        var x = sums.qk[a] * params.inv_scale;
        if (c2p || p2c) {
            x = x + rel;
        }
        // A padded query attends uniformly to every key (score 0); a valid one to the valid
        // keys only.
        block.live[a] = vec4<bool>(rows.inside[a]) & keys.inside
            & (keys.valid | vec4<bool>(!rows.valid[a]));
        x = select(vec4<f32>(0.0), x, vec4<bool>(rows.valid[a]));
        block.score[a] = select(vec4<f32>(LOWEST), x, block.live[a]);
    }
    return block;
}

// The masked scores of the query tile from `i0` and the key tile from `j0` of the sequence
// starting at token `tokens0`, head columns from `column0` (every thread calls it: it stages
// through workgroup memory, and `staged` is free again when it returns).
fn tile_scores(tokens0: u32, column0: u32, i0: u32, j0: u32, ti: u32, tj: u32,
               lid: u32) -> ScoreBlock {
    let band = band_rows(i0, j0, lid);
    var sums: ScoreSums;
    for (var k0 = 0u; k0 < params.head_dim; k0 += ATTN_CHUNK) {
        stage_score_chunk(tokens0, column0, i0, j0, k0, lid, band);
        workgroupBarrier();
        for (var v = 0u; v < CHUNK_VECS; v += 1u) {
            add_score_dots(&sums, v, ti, tj);
        }
        workgroupBarrier();
    }
    return masked_scores(sums, tokens0, i0, j0, ti, tj);
}

// The dropout multiplier of element `e` of the probabilities (1 without dropout).
fn dropout_factor(e: u32) -> f32 {
    if (params.has_dropout == 0u) {
        return 1.0;
    }
    return dropout_multiplier(e, vec2<u32>(params.seed_lo, params.seed_hi), params.step,
                              params.stream, params.p, params.keep_scale);
}
