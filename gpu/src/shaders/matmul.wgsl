// Batched strided matrix multiplication C = α·A·B + β·C for every batch entry, accumulated in
// f32. `matmul_tiled` stages 64×16 / 16×64 tiles of A and B in workgroup memory and gives each
// of its 16×16 threads a 4×4 block of C; the load mapping follows whichever stride of an operand
// is 1, so row-major and transposed operands are both read coalesced. `matmul_tiled32` is the
// same with 32×32 tiles and 2×2 blocks: four times as many workgroups, for products too small
// to fill a large GPU with 64×64 tiles. `matmul_small` is the general fallback for thin
// products: one thread per element of C. All three sum over k in the same order.

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;
const MATMUL_THREADS: u32 = 16u;
// Each thread owns BLOCK × BLOCK outputs, strided by MATMUL_THREADS.
const BLOCK: u32 = 4u;
// Padded tile rows avoid bank conflicts when the k-contiguous mapping stores a column.
const A_STRIDE: u32 = 65u;
const B_STRIDE: u32 = 65u;
// `matmul_tiled32`: 32×32 tiles, 2×2 blocks per thread.
const SMALL_TILE: u32 = 32u;
const SMALL_BLOCK: u32 = 2u;
const SMALL_STRIDE: u32 = 33u;

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
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

var<workgroup> a_tile: array<f32, TILE_K * A_STRIDE>;
var<workgroup> b_tile: array<f32, TILE_K * B_STRIDE>;
var<workgroup> a_small_tile: array<f32, TILE_K * SMALL_STRIDE>;
var<workgroup> b_small_tile: array<f32, TILE_K * SMALL_STRIDE>;

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

@compute @workgroup_size(MATMUL_THREADS, MATMUL_THREADS, 1)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_id) local: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let bases = batch_bases(params.entry_base + wid.z);
    let row0 = wid.y * TILE_M;
    let col0 = wid.x * TILE_N;
    let tx = local.x;
    let ty = local.y;
    // Row i of this thread's 4×4 block is acc[i]; columns are the vector lanes.
    var acc = array<vec4<f32>, BLOCK>();
    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        for (var q = 0u; q < (TILE_M * TILE_K) / (MATMUL_THREADS * MATMUL_THREADS); q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var r: u32;
            var kk: u32;
            if (params.a_k_contiguous != 0u) {
                kk = e % TILE_K;
                r = e / TILE_K;
            } else {
                r = e % TILE_M;
                kk = e / TILE_M;
            }
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < params.m && gk < params.k) {
                v = a[bases.a + gr * params.a_row_stride + gk * params.a_col_stride];
            }
            a_tile[kk * A_STRIDE + r] = v;
        }
        for (var q = 0u; q < (TILE_N * TILE_K) / (MATMUL_THREADS * MATMUL_THREADS); q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var col: u32;
            var kk: u32;
            if (params.b_k_contiguous != 0u) {
                kk = e % TILE_K;
                col = e / TILE_K;
            } else {
                col = e % TILE_N;
                kk = e / TILE_N;
            }
            let gc = col0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if (gc < params.n && gk < params.k) {
                v = b[bases.b + gk * params.b_row_stride + gc * params.b_col_stride];
            }
            b_tile[kk * B_STRIDE + col] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk += 1u) {
            let ai = kk * A_STRIDE + ty;
            let bi = kk * B_STRIDE + tx;
            let av = vec4<f32>(a_tile[ai], a_tile[ai + MATMUL_THREADS],
                               a_tile[ai + 2u * MATMUL_THREADS], a_tile[ai + 3u * MATMUL_THREADS]);
            let bv = vec4<f32>(b_tile[bi], b_tile[bi + MATMUL_THREADS],
                               b_tile[bi + 2u * MATMUL_THREADS], b_tile[bi + 3u * MATMUL_THREADS]);
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < BLOCK; i += 1u) {
        let row = row0 + ty + i * MATMUL_THREADS;
        for (var j = 0u; j < BLOCK; j += 1u) {
            let col = col0 + tx + j * MATMUL_THREADS;
            if (row < params.m && col < params.n) {
                store_output(bases.c, row, col, acc[i][j]);
            }
        }
    }
}

@compute @workgroup_size(MATMUL_THREADS, MATMUL_THREADS, 1)
fn matmul_tiled32(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_id) local: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let bases = batch_bases(params.entry_base + wid.z);
    let row0 = wid.y * SMALL_TILE;
    let col0 = wid.x * SMALL_TILE;
    let tx = local.x;
    let ty = local.y;
    var acc = array<vec2<f32>, SMALL_BLOCK>();
    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        for (var q = 0u; q < (SMALL_TILE * TILE_K) / (MATMUL_THREADS * MATMUL_THREADS); q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var r: u32;
            var kk: u32;
            if (params.a_k_contiguous != 0u) {
                kk = e % TILE_K;
                r = e / TILE_K;
            } else {
                r = e % SMALL_TILE;
                kk = e / SMALL_TILE;
            }
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < params.m && gk < params.k) {
                v = a[bases.a + gr * params.a_row_stride + gk * params.a_col_stride];
            }
            a_small_tile[kk * SMALL_STRIDE + r] = v;
        }
        for (var q = 0u; q < (SMALL_TILE * TILE_K) / (MATMUL_THREADS * MATMUL_THREADS); q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var col: u32;
            var kk: u32;
            if (params.b_k_contiguous != 0u) {
                kk = e % TILE_K;
                col = e / TILE_K;
            } else {
                col = e % SMALL_TILE;
                kk = e / SMALL_TILE;
            }
            let gc = col0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if (gc < params.n && gk < params.k) {
                v = b[bases.b + gk * params.b_row_stride + gc * params.b_col_stride];
            }
            b_small_tile[kk * SMALL_STRIDE + col] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk += 1u) {
            let ai = kk * SMALL_STRIDE + ty;
            let bi = kk * SMALL_STRIDE + tx;
            let av = vec2<f32>(a_small_tile[ai], a_small_tile[ai + MATMUL_THREADS]);
            let bv = vec2<f32>(b_small_tile[bi], b_small_tile[bi + MATMUL_THREADS]);
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < SMALL_BLOCK; i += 1u) {
        let row = row0 + ty + i * MATMUL_THREADS;
        for (var j = 0u; j < SMALL_BLOCK; j += 1u) {
            let col = col0 + tx + j * MATMUL_THREADS;
            if (row < params.m && col < params.n) {
                store_output(bases.c, row, col, acc[i][j]);
            }
        }
    }
}

@compute @workgroup_size(MATMUL_THREADS, MATMUL_THREADS, 1)
fn matmul_small(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(workgroup_id) wid: vec3<u32>) {
    let bases = batch_bases(params.entry_base + wid.z);
    let col = gid.x;
    let row = gid.y;
    if (row >= params.m || col >= params.n) {
        return;
    }
    var acc = 0.0;
    var ai = bases.a + row * params.a_row_stride;
    var bi = bases.b + col * params.b_col_stride;
    for (var t = 0u; t < params.k; t += 1u) {
        acc += a[ai] * b[bi];
        ai += params.a_col_stride;
        bi += params.b_row_stride;
    }
    store_output(bases.c, row, col, acc);
}
