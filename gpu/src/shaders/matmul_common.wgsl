// The parameters, bindings and output helpers every matmul kernel shares (prepended to the
// kernel file after its `Operand` header: matmul.wgsl, matmul_cooperative.wgsl). Operand
// layouts are strided (row, column and two batch strides and an offset per operand), so that
// transposed operands and batched views need no copies.

struct Params {
    batch1: u32,
    m: u32,
    n: u32,
    k: u32,
    a_offset: u32,
    a_row_stride: u32,
    a_col_stride: u32,
    a_batch_stride0: u32,
    a_batch_stride1: u32,
    b_offset: u32,
    b_row_stride: u32,
    b_col_stride: u32,
    b_batch_stride0: u32,
    b_batch_stride1: u32,
    c_offset: u32,
    c_row_stride: u32,
    c_col_stride: u32,
    c_batch_stride0: u32,
    c_batch_stride1: u32,
    // First batch entry of this dispatch (entries beyond 65535, or one at a time).
    entry_base: u32,
    // 1 when A's k index is its unit stride (A row-major), 0 when its row index is.
    a_k_contiguous: u32,
    // 1 when B's k index is its unit stride (B transposed), 0 when its column index is.
    b_k_contiguous: u32,
    alpha: f32,
    beta: f32,
    // Split-K: inner-dimension elements per split (0: no split) and the number of splits.
    k_split: u32,
    splits: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

struct Bases {
    a: u32,
    b: u32,
    c: u32,
}

fn batch_bases(entry: u32) -> Bases {
    let outer = entry / params.batch1;
    let inner = entry % params.batch1;
    return Bases(
        params.a_offset + outer * params.a_batch_stride0 + inner * params.a_batch_stride1,
        params.b_offset + outer * params.b_batch_stride0 + inner * params.b_batch_stride1,
        params.c_offset + outer * params.c_batch_stride0 + inner * params.c_batch_stride1,
    );
}

fn store_output(base: u32, row: u32, col: u32, acc: f32) {
    let idx = base + row * params.c_row_stride + col * params.c_col_stride;
    if (params.beta == 0.0) {
        c[idx] = params.alpha * acc;
    } else {
        c[idx] = params.alpha * acc + params.beta * c[idx];
    }
}
