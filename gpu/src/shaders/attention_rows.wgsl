// The shared part of the row-owned training attention backward (attention_backward_query.wgsl,
// attention_backward_key.wgsl; philox.wgsl, f16_round.wgsl and this file are prepended, then
// attention_backward_rows.wgsl and the kernel file, which declares the bindings these helpers
// read). The forward is fused_attention.wgsl with statistics and dropout.
//
// FlashAttention-2 for the disentangled scores: the forward keeps one statistic per query row,
// the logsumexp `lse_i = m_i + log(l_i)` of its masked scores, instead of the probabilities; the
// backward recomputes `P[i,j] = exp(score(i,j) − lse_i)` pair by pair from Q, K, Kr, Qr and the
// index. Every output row has one owning workgroup (a query row in the dQ/dc2p pass, a key row
// in the dK/dV/dp2c pass), whose threads add its terms in a fixed order: no atomics,
// deterministic results. Semantics are the unfused path's (Hugging Face 5.x): masked keys weigh
// 0; a padded query row is uniform over all len keys and passes no gradient to the scores;
// attention dropout keeps element ((b·heads + h)·len + i)·len + j of the probabilities when word
// of that index of the stream is ≥ p (dropout.wgsl's mask over the same tensor), scaled by
// 1/(1 − p). Under mixed precision (`f16_operands`) every product's operands are rounded to
// binary16 where they are loaded, as in the forward: Q, K, Kr, Qr, V, dO and the probability and
// score-gradient factors of dQ, dK and dV; the c2p/p2c table gradients, the softmax backward and
// every sum stay f32.

const ATTN_ROWS_WG: u32 = 64u;
const ATTN_MAX_HEAD_DIM: u32 = 64u;
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
    // Window rows R of the c2p/p2c tables [heads, tokens, R].
    rows: u32,
    has_c2p: u32,
    has_p2c: u32,
    has_dropout: u32,
    inv_scale: f32,
    scale: f32,
    // 1/len, the probability of a padded query row (computed on the host as the softmax does).
    uniform: f32,
    // Dropout probability and 1/(1 − p) (the host's f32 arithmetic, as the dropout kernel's).
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

// The window-relative index idx(i, j) of one pair.
fn relative_index(i: u32, j: u32) -> u32 {
    return index[i * params.len + j];
}

// Four consecutive elements of a row of `values` from `at`, zero from column `d` on, as an
// operand.
fn row4(at: u32, c: u32, d: u32, which: u32) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    for (var u = 0u; u < 4u; u += 1u) {
        if (c + u < d) {
            switch which {
                case 0u: { v[u] = query[at + u]; }
                case 1u: { v[u] = key[at + u]; }
                case 2u: { v[u] = pos_key[at + u]; }
                default: { v[u] = pos_query[at + u]; }
            }
        }
    }
    return operand4(v);
}

// The unscaled score terms of query token `tq` and key token `tk` of head column `column0`:
// (Q_i·K_j, Q_i·Kr[idx], K_j·Qr[idx]), each summed as the forward (fused_attention.wgsl) sums
// it — four-wide dot products added in column order — so that the probabilities recomputed
// from the forward's logsumexp are the forward's, bit for bit where the driver evaluates `dot`
// alike in both.
fn score_terms(tq: u32, tk: u32, column0: u32, i: u32, j: u32) -> vec3<f32> {
    let width = params.width;
    let q_at = tq * width + column0;
    let k_at = tk * width + column0;
    var qk = 0.0;
    var c2p = 0.0;
    var p2c = 0.0;
    var r_at = 0u;
    if (params.has_c2p != 0u || params.has_p2c != 0u) {
        r_at = (relative_index(i, j) + params.first_row) * width + column0;
    }
    let d = params.head_dim;
    for (var c = 0u; c < d; c += 4u) {
        let q = row4(q_at + c, c, d, 0u);
        let k = row4(k_at + c, c, d, 1u);
        qk += dot(q, k);
        if (params.has_c2p != 0u) {
            c2p += dot(q, row4(r_at + c, c, d, 2u));
        }
        if (params.has_p2c != 0u) {
            p2c += dot(k, row4(r_at + c, c, d, 3u));
        }
    }
    return vec3<f32>(qk, c2p, p2c);
}

// The score of a valid query against a key: Q_i·K_j/s + (c2p/s + p2c/s).
fn score(tq: u32, tk: u32, column0: u32, i: u32, j: u32) -> f32 {
    let t = score_terms(tq, tk, column0, i, j);
    var relative = 0.0;
    if (params.has_c2p != 0u) {
        relative = t.y / params.scale;
    }
    if (params.has_p2c != 0u) {
        relative = relative + t.z / params.scale;
    }
    return t.x * params.inv_scale + relative;
}

// The dropout multiplier of element `e` of the probabilities (1 without dropout).
fn dropout_factor(e: u32) -> f32 {
    if (params.has_dropout == 0u) {
        return 1.0;
    }
    return dropout_multiplier(e, vec2<u32>(params.seed_lo, params.seed_hi), params.step,
                              params.stream, params.p, params.keep_scale);
}
