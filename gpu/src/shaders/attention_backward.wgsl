// The shared part of the training attention backward (attention_backward_query.wgsl,
// attention_backward_key.wgsl; philox.wgsl, f16_round.wgsl, attention_tile.wgsl and this file
// are prepended to the kernel file, which declares the bindings these helpers read: dcontext and
// dtable besides attention_tile.wgsl's). The forward is fused_attention.wgsl with statistics and
// dropout.
//
// FlashAttention-2 for the disentangled scores: the forward keeps one statistic per query row,
// the logsumexp `lse_i = m_i + log(l_i)` of its masked scores, instead of the probabilities; the
// backward recomputes `P[i,j] = exp(score(i,j) − lse_i)` tile pair by tile pair, the scores
// summed by the forward's own code (`stage_score_chunk`, `add_score_dots`, `masked_scores`),
// dP in the same pass over the head's columns. Each workgroup owns a tile of ATTN_TILE output
// rows (queries in the dQ/dc2p pass, keys in the dK/dV/dp2c pass) and walks the tiles of the
// other side: per tile pair each thread computes its ATTN_BLOCK × ATTN_BLOCK block of the
// score gradients `dS = P ∘ (dP − drows)`, `dP = dropout(dO·Vᵀ)`, stages them as a coefficient
// tile, and adds coefficient × row products to the rows it owns: the other side's rows (K for
// dQ; dO for dV; Q for dK) staged at full head width, then the position rows (Kr for dQ, Qr for
// dK) from the tile pair's band, one half of the head's columns at a time. Every output element
// has one owning thread, which adds the other side's rows in order: no atomics, deterministic
// results. The c2p (p2c) table gradient row of a query (key) has one owning thread too, which
// adds its terms to it in key (query) order.
//
// Semantics are the unfused path's (Hugging Face 5.x): masked keys weigh 0; a padded query row
// is uniform over all len keys and passes no gradient to the scores; attention dropout keeps
// element ((b·heads + h)·len + i)·len + j of the probabilities when word of that index of the
// stream is ≥ p (dropout.wgsl's mask over the same tensor), scaled by 1/(1 − p). Under mixed
// precision (`f16_operands`) every product's operands are rounded to binary16 where they are
// loaded, as in the forward: Q, K, Kr, Qr, V, dO and the probability and score-gradient
// coefficients of dQ, dK and dV; the c2p/p2c table gradients, the softmax backward and every sum
// stay f32.

// The context gradient's rows (`operand_row4`).
const ROWS_DCONTEXT: u32 = 5u;

// The staging array (attention_tile.wgsl): WebGPU's 16 KiB of workgroup memory. The score phase
// also holds chunks of dO (query rows) and V (key rows).
const SHARED_VECS: u32 = 1024u;
var<workgroup> staged: array<vec4<f32>, SHARED_VECS>;
const DOUT_AT: u32 = SCORE_PHASE;
const VALUE_AT: u32 = DOUT_AT + ATTN_TILE * CHUNK_VECS;
const_assert VALUE_AT + ATTN_TILE * CHUNK_VECS <= SHARED_VECS;

// Coefficient phases of `staged`: a coefficient tile [other row u][ti], a vec4 over the lanes
// a of the owning thread's rows ti + ATTN_THREADS·a, then either the other side's rows at full
// head width [u][head vector] or one half of a band [slot][the half's head vectors].
const COEF_AT: u32 = 0u;
const ROWS_AT: u32 = COEF_AT + ATTN_TILE * ATTN_THREADS;
const HALF_VECS: u32 = HEAD_VECS / COL_GROUPS;
const_assert HALF_VECS == ATTN_THREADS;
const_assert ROWS_AT + ATTN_TILE * HEAD_VECS <= SHARED_VECS;
const_assert ROWS_AT + BAND * HALF_VECS <= SHARED_VECS;

// `row4` over the backward's operands: also the context gradient.
fn operand_row4(which: u32, at: u32, c: u32) -> vec4<f32> {
    if (which != ROWS_DCONTEXT) {
        return row4(which, at, c);
    }
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < params.head_dim) {
            v[u] = dcontext[at + c + u];
        }
    }
    return operand4(v);
}

// The window-relative index idx(i, j) of one pair.
fn relative_index(i: u32, j: u32) -> u32 {
    return index[i * params.len + j];
}

// What the passes need of one tile pair: the thread's block of masked scores and of dP before
// dropout, dO_i·V_j.
struct PairBlock {
    scores: ScoreBlock,
    dout_value: array<vec4<f32>, 4>,
}

// The scores of the tile pair (query tile from `i0`, key tile from `j0`) as the forward sums
// them (attention_tile.wgsl), and dO_i·V_j summed the same way — four-wide dot products in
// column order — from chunks of dO and V staged beside the score chunks (every thread calls
// it: it stages through workgroup memory, and `staged` is free again when it returns).
fn tile_pair(tokens0: u32, column0: u32, i0: u32, j0: u32, ti: u32, tj: u32,
             lid: u32) -> PairBlock {
    let len = params.len;
    let width = params.width;
    let band = band_rows(i0, j0, lid);
    var sums: ScoreSums;
    var dp: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < params.head_dim; k0 += ATTN_CHUNK) {
        stage_score_chunk(tokens0, column0, i0, j0, k0, lid, band);
        for (var e = lid; e < ATTN_TILE * CHUNK_VECS; e += THREADS) {
            let r = e / CHUNK_VECS;
            let c = k0 + 4u * (e % CHUNK_VECS);
            var o = vec4<f32>(0.0);
            if (i0 + r < len) {
                o = operand_row4(ROWS_DCONTEXT, (tokens0 + i0 + r) * width + column0, c);
            }
            staged[DOUT_AT + e] = o;
            var v = vec4<f32>(0.0);
            if (j0 + r < len) {
                v = row4(ROWS_VALUE, (tokens0 + j0 + r) * width + column0, c);
            }
            staged[VALUE_AT + e] = v;
        }
        workgroupBarrier();
        for (var w = 0u; w < CHUNK_VECS; w += 1u) {
            add_score_dots(&sums, w, ti, tj);
            var o: array<vec4<f32>, 4>;
            var v: array<vec4<f32>, 4>;
            for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                o[a] = staged[DOUT_AT + (ti + ATTN_THREADS * a) * CHUNK_VECS + w];
                v[a] = staged[VALUE_AT + (tj + ATTN_THREADS * a) * CHUNK_VECS + w];
            }
            for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                dp[a] += vec4<f32>(dot(o[a], v[0]), dot(o[a], v[1]), dot(o[a], v[2]),
                                   dot(o[a], v[3]));
            }
        }
        workgroupBarrier();
    }
    return PairBlock(masked_scores(sums, tokens0, i0, j0, ti, tj), dp);
}

// Stages the thread's block `c` (c[a][b]: query row ti + ATTN_THREADS·a, key column
// tj + ATTN_THREADS·b) as the coefficient tile of the query-owned pass: the owners are the
// queries, the other rows the keys.
fn stage_query_coefficients(c: array<vec4<f32>, 4>, ti: u32, tj: u32) {
    for (var b = 0u; b < ATTN_BLOCK; b += 1u) {
        staged[COEF_AT + (tj + ATTN_THREADS * b) * ATTN_THREADS + ti] =
            vec4<f32>(c[0][b], c[1][b], c[2][b], c[3][b]);
    }
}

// The same block as the coefficient tile of the key-owned pass: the owners are the keys, the
// other rows the queries.
fn stage_key_coefficients(c: array<vec4<f32>, 4>, ti: u32, tj: u32) {
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        staged[COEF_AT + (ti + ATTN_THREADS * a) * ATTN_THREADS + tj] = c[a];
    }
}

// The coefficient of owned row `own` (0 .. ATTN_TILE) and other row `u`, as staged (f32).
fn coefficient(own: u32, u: u32) -> f32 {
    return staged[COEF_AT + u * ATTN_THREADS + own % ATTN_THREADS][own / ATTN_THREADS];
}

// Stages rows other0 .. other0 + ATTN_TILE of `which` at full head width as operands (zeros
// beyond the sequence and the head).
fn stage_rows(which: u32, tokens0: u32, column0: u32, other0: u32, lid: u32) {
    for (var e = lid; e < ATTN_TILE * HEAD_VECS; e += THREADS) {
        let r = e / HEAD_VECS;
        let c = 4u * (e % HEAD_VECS);
        var v = vec4<f32>(0.0);
        if (other0 + r < params.len && c < params.head_dim) {
            v = operand_row4(which, (tokens0 + other0 + r) * params.width + column0, c);
        }
        staged[ROWS_AT + e] = v;
    }
}

// Stages half `g` of the band of the tile pair (query tile i0, key tile j0) of position rows
// `which` (ROWS_POS_KEY or ROWS_POS_QUERY): head vectors HALF_VECS·g .. of slot
// (i − i0) − (j − j0) + ATTN_TILE − 1, as operands.
fn stage_band(which: u32, column0: u32, i0: u32, j0: u32, g: u32, lid: u32) {
    let delta0 = i32(i0) - i32(j0) - i32(ATTN_TILE - 1u);
    for (var e = lid; e < BAND * HALF_VECS; e += THREADS) {
        let slot = e / HALF_VECS;
        let c = 4u * (HALF_VECS * g + e % HALF_VECS);
        let row = band_row(delta0 + i32(slot));
        var v = vec4<f32>(0.0);
        if (row >= 0 && c < params.head_dim) {
            v = row4(which, u32(row) * params.width + column0, c);
        }
        staged[ROWS_AT + e] = v;
    }
}

// acc[a·COL_GROUPS + g] += Σ_u coefficient(ti + ATTN_THREADS·a, u) · rows[u], for the head
// columns 4·(tj + ATTN_THREADS·g) .. of the staged full-width rows, u in order (`count` other
// rows).
fn accumulate_rows(acc: ptr<function, array<vec4<f32>, 8>>, ti: u32, tj: u32, count: u32) {
    for (var u = 0u; u < count; u += 1u) {
        let cu = operand4(staged[COEF_AT + u * ATTN_THREADS + ti]);
        for (var g = 0u; g < COL_GROUPS; g += 1u) {
            let column = tj + ATTN_THREADS * g;
            if (4u * column < params.head_dim) {
                let v = staged[ROWS_AT + u * HEAD_VECS + column];
                for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                    (*acc)[a * COL_GROUPS + g] += cu[a] * v;
                }
            }
        }
    }
}

// The same over the staged half `g` of a band: the owned row o = ti + ATTN_THREADS·a and other
// row u meet at slot o − u + ATTN_TILE − 1 when the owners are queries (`query_owned`), else
// u − o + ATTN_TILE − 1.
fn accumulate_band(acc: ptr<function, array<vec4<f32>, 8>>, g: u32, ti: u32, tj: u32,
                   count: u32, query_owned: bool) {
    for (var u = 0u; u < count; u += 1u) {
        let cu = operand4(staged[COEF_AT + u * ATTN_THREADS + ti]);
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            let own = ti + ATTN_THREADS * a;
            var slot = u + (ATTN_TILE - 1u) - own;
            if (query_owned) {
                slot = own + (ATTN_TILE - 1u) - u;
            }
            (*acc)[a * COL_GROUPS + g] += cu[a] * staged[ROWS_AT + slot * HALF_VECS + tj];
        }
    }
}

// Adds the staged (position) coefficients of owned row `own` (local; `own_row` in the sequence)
// against other rows other0 .. other0 + count to that row's table gradient, which starts at
// `dtable[table]`: term by term in order, each to the window row of its pair (one thread per
// owned row; terms that are exactly 0, e.g. of masked pairs, are skipped).
//
// Four terms at a time: their window rows' values are all read before any is written, so that
// the four reads are in flight together instead of each waiting for the write before it (a
// compiler cannot move a read of device memory above a write that may alias it, and on a GPU
// every read-modify-write would otherwise cost a full memory latency). Terms of one group may
// share a window row (log buckets): each row's value then takes the group's terms of that row
// in order, as the term-by-term loop adds them, and every term of the row stores the same sum.
fn add_table_row(table: u32, own: u32, own_row: u32, other0: u32, count: u32,
                 query_owned: bool) {
    for (var u0 = 0u; u0 < count; u0 += 4u) {
        var x = vec4<f32>(0.0);
        var r = vec4<u32>(0u);
        for (var q = 0u; q < 4u; q += 1u) {
            let u = u0 + q;
            if (u < count) {
                x[q] = coefficient(own, u);
                r[q] = relative_index(other0 + u, own_row);
                if (query_owned) {
                    r[q] = relative_index(own_row, other0 + u);
                }
            }
        }
        var v = vec4<f32>(0.0);
        for (var q = 0u; q < 4u; q += 1u) {
            if (x[q] != 0.0) {
                v[q] = dtable[table + r[q]];
            }
        }
        for (var q = 0u; q < 4u; q += 1u) {
            if (x[q] != 0.0) {
                var sum = v[q];
                for (var t = 0u; t < 4u; t += 1u) {
                    if (x[t] != 0.0 && r[t] == r[q]) {
                        sum += x[t];
                    }
                }
                dtable[table + r[q]] = sum;
            }
        }
    }
}
