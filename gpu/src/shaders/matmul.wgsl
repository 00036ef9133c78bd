// Batched strided matrix multiplication C = α·A·B + β·C for every batch entry, accumulated in
// f32. In `matmul_tiled` each of the 16×16 threads holds a BLOCK×BLOCK block of C in
// registers, and the workgroup stages (16·BLOCK)×16 / 16×(16·BLOCK) tiles of A and B in
// workgroup memory: BLOCK 2, 4 and 8 give 32-, 64- and 128-wide tiles. The block is either
// strided (outputs 16 apart, so that neighbouring threads read neighbouring workgroup-memory
// words: one scalar load per operand) or contiguous (BLOCK neighbouring rows and columns, read
// from tiles of vec4s: a quarter of the loads). The load
// mapping follows whichever stride of an operand is 1, so row-major and transposed operands
// are both read coalesced. `matmul_small` is the general fallback for thin products: one
// thread per element of C. Every variant sums over k in the same order, so they give the same
// bits.
//
// This file is a template (gpu/src/matmul_source.rs fills it in): it follows a header that
// declares `Operand`, the type operands are converted to as they are loaded (f32:
// matmul_f32.wgsl, the reference; f16: matmul_f16.wgsl, the products of mixed-precision
// training; products and sums are f32 either way), `BLOCK`, and matmul_common.wgsl (the
// parameters, bindings and output helpers); the line marked `@tiles`
// becomes the workgroup tiles of the block's layout, and the lines marked `@accumulators`,
// `@multiply_accumulate` and `@store` become the register block's straight-line code — one
// scalar per output, constant names, no loop for a compiler to unroll — so that the
// accumulators stay in registers on every driver (an array indexed in loops can be placed in
// local memory instead: three times slower on an H200).
//
// Split-K (tall-skinny products such as weight gradients, whose k is the token count): with
// `k_split` > 0, workgroup z of `matmul_tiled` sums only k in [z·k_split, (z+1)·k_split) into
// its own row-major m×n slab of the bound output (a scratch buffer, α = 1, β = 0), and
// `matmul_sum_splits` then adds the `splits` slabs (bound as A) in order into C.

const TILE_K: u32 = 16u;
const MATMUL_THREADS: u32 = 16u;
// The side of C's tile: MATMUL_THREADS·BLOCK.
const TILE: u32 = MATMUL_THREADS * BLOCK;

// The staged tiles of A and B (TILE_K rows of TILE operands, TILE_STRIDE apart), and
// `stage_a`/`stage_b`, which store one operand at a flat index of them.
// @tiles

@compute @workgroup_size(MATMUL_THREADS, MATMUL_THREADS, 1)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_id) local: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    var bases: Bases;
    var k_begin = 0u;
    var k_end = params.k;
    if (params.k_split == 0u) {
        bases = batch_bases(params.entry_base + wid.z);
    } else {
        bases = batch_bases(params.entry_base);
        bases.c += wid.z * params.m * params.n;
        k_begin = wid.z * params.k_split;
        k_end = min(params.k, k_begin + params.k_split);
    }
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = local.x;
    let ty = local.y;
    // acc_i_j: row ty + 16·i, column tx + 16·j of the tile.
    // @accumulators
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // TILE·TILE_K elements of each operand, BLOCK per thread.
        for (var q = 0u; q < BLOCK; q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var r: u32;
            var kk: u32;
            if (params.a_k_contiguous != 0u) {
                kk = e % TILE_K;
                r = e / TILE_K;
            } else {
                r = e % TILE;
                kk = e / TILE;
            }
            let gr = row0 + r;
            let gk = k0 + kk;
            var v = 0.0;
            if (gr < params.m && gk < k_end) {
                v = a[bases.a + gr * params.a_row_stride + gk * params.a_col_stride];
            }
            stage_a(kk * TILE_STRIDE + r, Operand(v));
        }
        for (var q = 0u; q < BLOCK; q += 1u) {
            let e = lid + q * MATMUL_THREADS * MATMUL_THREADS;
            var col: u32;
            var kk: u32;
            if (params.b_k_contiguous != 0u) {
                kk = e % TILE_K;
                col = e / TILE_K;
            } else {
                col = e % TILE;
                kk = e / TILE;
            }
            let gc = col0 + col;
            let gk = k0 + kk;
            var v = 0.0;
            if (gc < params.n && gk < k_end) {
                v = b[bases.b + gk * params.b_row_stride + gc * params.b_col_stride];
            }
            stage_b(kk * TILE_STRIDE + col, Operand(v));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk += 1u) {
            // a_i, b_j: the thread's rows of A and columns of B at this kk; acc_i_j += a_i·b_j.
            // @multiply_accumulate
        }
        workgroupBarrier();
    }
    // store_tile_output(bases.c, the row of acc_i_j, its column, acc_i_j) for every i, j.
    // @store
}

fn store_tile_output(base: u32, row: u32, col: u32, acc: f32) {
    if (row < params.m && col < params.n) {
        store_output(base, row, col, acc);
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
        acc += f32(Operand(a[ai])) * f32(Operand(b[bi]));
        ai += params.a_col_stride;
        bi += params.b_row_stride;
    }
    store_output(bases.c, row, col, acc);
}

@compute @workgroup_size(MATMUL_THREADS, MATMUL_THREADS, 1)
fn matmul_sum_splits(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    if (row >= params.m || col >= params.n) {
        return;
    }
    let slab = params.m * params.n;
    var acc = 0.0;
    for (var s = 0u; s < params.splits; s += 1u) {
        acc += a[s * slab + row * params.n + col];
    }
    store_output(batch_bases(params.entry_base).c, row, col, acc);
}
