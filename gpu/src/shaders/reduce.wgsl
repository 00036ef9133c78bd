// Fixed-order reductions. `reduce_sum`: each workgroup sums SUM_ITEMS·ROW_WG consecutive
// elements (each thread a strided handful in order, then row_reduce.wgsl's workgroup sum, prepended)
// into one partial; the host chains stages until one workgroup remains. `sum_columns`: each thread sums
// one column over a chunk of rows in row order (bias gradients); `sum_column_pairs` sums both
// halves of `[rows, 2·cols]` into two outputs (a LayerNorm's γ/β gradients from their partials).

const SUM_ITEMS: u32 = 8u;

struct Params {
    n: u32,
    cols: u32,
    src_offset: u32,
    src_stride: u32,
    chunk_rows: u32,
    accumulate: u32,
    square: u32,
    dst_index: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

// dst[dst_index + g] = alpha · Σ (src or src²) over group g's elements.
@compute @workgroup_size(ROW_WG)
fn reduce_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              thread: RowThread) {
    let lid = row_thread(thread);
    let g = workgroup_index(wid, nwg);
    let first = g * ROW_WG * SUM_ITEMS;
    var s = 0.0;
    for (var q = 0u; q < SUM_ITEMS; q += 1u) {
        let e = first + q * ROW_WG + lid;
        if (e < params.n) {
            let v = src[e];
            if (params.square != 0u) {
                s += v * v;
            } else {
                s += v;
            }
        }
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u && first < max(params.n, 1u)) {
        dst[params.dst_index + g] = params.alpha * total;
    }
}

// dst[chunk, c] (+)= Σ_{r in chunk} src[src_offset + r·src_stride + c] over `n` rows.
@compute @workgroup_size(ROW_WG)
fn sum_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               thread: RowThread) {
    let lid = row_thread(thread);
    let e = workgroup_index(wid, nwg) * ROW_WG + lid;
    let chunks = (params.n + params.chunk_rows - 1u) / params.chunk_rows;
    if (e >= max(chunks, 1u) * params.cols) {
        return;
    }
    let chunk = e / params.cols;
    let c = e % params.cols;
    let first = chunk * params.chunk_rows;
    let end = min(first + params.chunk_rows, params.n);
    var acc = 0.0;
    for (var r = first; r < end; r += 1u) {
        acc += src[params.src_offset + r * params.src_stride + c];
    }
    if (params.accumulate != 0u) {
        dst[e] = dst[e] + acc;
    } else {
        dst[e] = acc;
    }
}

// The second output of `sum_column_pairs` (a LayerNorm's β gradient beside its γ gradient).
@group(0) @binding(3) var<storage, read_write> dst_second: array<f32>;

// dst[c] += Σ_r src[r·2·cols + c] and dst_second[c] += Σ_r src[r·2·cols + cols + c] over `n`
// rows in row order, for every c < cols: `sum_columns` of each half of `[n, 2·cols]` partials
// in one dispatch (the same sums, the same bits).
@compute @workgroup_size(ROW_WG)
fn sum_column_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    thread: RowThread) {
    let lid = row_thread(thread);
    let e = workgroup_index(wid, nwg) * ROW_WG + lid;
    let cols = params.cols;
    if (e >= 2u * cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < params.n; r += 1u) {
        acc += src[r * 2u * cols + e];
    }
    if (e < cols) {
        dst[e] = dst[e] + acc;
    } else {
        dst_second[e - cols] = dst_second[e - cols] + acc;
    }
}
