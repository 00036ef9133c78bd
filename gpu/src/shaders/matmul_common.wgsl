// The parameters, bindings, operand loads and output helpers every matmul kernel shares
// (joined to the kernel file, matmul.wgsl or matmul_cooperative.wgsl, which declares the side
// TILE of C's tile and TILE_K, the depth of one step along k, and to the operand header,
// matmul_f32.wgsl or matmul_f16.wgsl, which declares `Operand` and `to_operand`). Operand layouts are
// strided (row, column and two batch strides and an offset per operand), so that transposed
// operands and batched views need no copies; where an operand's unit stride, offset and other
// strides allow, the kernels read it four elements at a time through a second, vec4 view of
// its buffer (`load_a4`, `load_b4`).

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
    // 1 when A's (B's) elements can be read four at a time: its staged neighbours (along the
    // unit stride that `a_k_contiguous` names) are neighbours in memory, and its offset, other
    // strides and split depth are multiples of 4, so that every group of four the kernels read
    // starts on a vec4.
    a_vector_loads: u32,
    b_vector_loads: u32,
    // 1: `bias[col]` is added to every output as it is stored (a linear layer's bias).
    has_bias: u32,
    // 1: then `residual` at the output's own index (C is then a dense [m, n] from element 0).
    has_residual: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
// n elements where `has_bias` (else any buffer, not read).
@group(0) @binding(2) var<storage, read> bias: array<f32>;
// m·n elements where `has_residual` (else any buffer, not read).
@group(0) @binding(3) var<storage, read> residual: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read> b: array<f32>;
// The same buffers as A and B, read four elements at a time (`load_a4`, `load_b4`).
@group(0) @binding(6) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> b4: array<vec4<f32>>;

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

// C's element (row, col) from the sum `acc`: α·acc (+ β·C) (+ bias[col]) (+ residual), each
// addition rounded as the separate kernels round it.
fn store_output(base: u32, row: u32, col: u32, acc: f32) {
    let idx = base + row * params.c_row_stride + col * params.c_col_stride;
    var out = params.alpha * acc;
    if (params.beta != 0.0) {
        out += params.beta * c[idx];
    }
    if (params.has_bias != 0u) {
        out += bias[col];
    }
    if (params.has_residual != 0u) {
        out += residual[idx];
    }
    c[idx] = out;
}

// What one workgroup of a tiled kernel computes: its batch entry's bases and the range of k it
// sums. Without split-K, workgroup z takes batch entry entry_base + z and every k; with
// `k_split` > 0 it sums k in [z·k_split, (z+1)·k_split) of the one entry into its own
// row-major m×n slab of the bound output.
struct WorkgroupShare {
    bases: Bases,
    k_begin: u32,
    k_end: u32,
}

fn workgroup_share(z: u32) -> WorkgroupShare {
    if (params.k_split == 0u) {
        return WorkgroupShare(batch_bases(params.entry_base + z), 0u, params.k);
    }
    var bases = batch_bases(params.entry_base);
    bases.c += z * params.m * params.n;
    let k_begin = z * params.k_split;
    return WorkgroupShare(bases, k_begin, min(params.k, k_begin + params.k_split));
}

// Where element `e` (0 .. TILE·TILE_K) of a staged tile of A comes from: its row within the
// tile and its k within the step. Neighbouring elements follow whichever stride of A is 1.
fn a_place(e: u32) -> vec2<u32> {
    if (params.a_k_contiguous != 0u) {
        return vec2<u32>(e / TILE_K, e % TILE_K);
    }
    return vec2<u32>(e % TILE, e / TILE);
}

// The same for B: the element's column within the tile and its k.
fn b_place(e: u32) -> vec2<u32> {
    if (params.b_k_contiguous != 0u) {
        return vec2<u32>(e / TILE_K, e % TILE_K);
    }
    return vec2<u32>(e % TILE, e / TILE);
}

// Element `e` of A's tile at rows row0 .. and k0 .. (k below k_end), as an operand; 0 beyond.
fn load_a(base: u32, row0: u32, k0: u32, k_end: u32, e: u32) -> Operand {
    let place = a_place(e);
    let row = row0 + place.x;
    let k = k0 + place.y;
    var v = 0.0;
    if (row < params.m && k < k_end) {
        v = a[base + row * params.a_row_stride + k * params.a_col_stride];
    }
    return to_operand(v);
}

// Element `e` of B's tile at columns col0 .. and k0 .., as an operand; 0 beyond.
fn load_b(base: u32, col0: u32, k0: u32, k_end: u32, e: u32) -> Operand {
    let place = b_place(e);
    let col = col0 + place.x;
    let k = k0 + place.y;
    var v = 0.0;
    if (col < params.n && k < k_end) {
        v = b[base + k * params.b_row_stride + col * params.b_col_stride];
    }
    return to_operand(v);
}

// Elements 4g .. 4g + 3 of A's staged tile (as `load_a` loads them, 0 beyond the product and
// k_end): four neighbours along the unit stride `a_place` follows, read with one vec4 load where
// A allows it (`a_vector_loads`, the same for every thread) and with four scalar loads
// elsewhere. Branch-free in the position: every thread loads (an index past the buffer is
// clamped, as every index of these kernels is) and zeroes its lanes outside the product after,
// so that a subgroup stays converged through the loads (the cooperative-matrix kernel issues
// them next to its matrix operations).
fn load_a4(base: u32, row0: u32, k0: u32, k_end: u32, g: u32) -> vec4<Operand> {
    let place = a_place(4u * g);
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let along_k = params.a_k_contiguous != 0u;
    let rows = vec4<u32>(row0 + place.x) + select(lanes, vec4<u32>(0u), along_k);
    let ks = vec4<u32>(k0 + place.y) + select(vec4<u32>(0u), lanes, along_k);
    let inside = (rows < vec4<u32>(params.m)) & (ks < vec4<u32>(k_end));
    let idx = vec4<u32>(base) + rows * params.a_row_stride + ks * params.a_col_stride;
    var v: vec4<f32>;
    if (params.a_vector_loads != 0u) {
        v = a4[idx.x / 4u];
    } else {
        v = vec4<f32>(a[idx.x], a[idx.y], a[idx.z], a[idx.w]);
    }
    return to_operand4(select(vec4<f32>(0.0), v, inside));
}

// The same for B: elements 4g .. 4g + 3 of its staged tile (along k or its columns).
fn load_b4(base: u32, col0: u32, k0: u32, k_end: u32, g: u32) -> vec4<Operand> {
    let place = b_place(4u * g);
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    let along_k = params.b_k_contiguous != 0u;
    let cols = vec4<u32>(col0 + place.x) + select(lanes, vec4<u32>(0u), along_k);
    let ks = vec4<u32>(k0 + place.y) + select(vec4<u32>(0u), lanes, along_k);
    let inside = (cols < vec4<u32>(params.n)) & (ks < vec4<u32>(k_end));
    let idx = vec4<u32>(base) + ks * params.b_row_stride + cols * params.b_col_stride;
    var v: vec4<f32>;
    if (params.b_vector_loads != 0u) {
        v = b4[idx.x / 4u];
    } else {
        v = vec4<f32>(b[idx.x], b[idx.y], b[idx.z], b[idx.w]);
    }
    return to_operand4(select(vec4<f32>(0.0), v, inside));
}
