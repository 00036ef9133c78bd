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
    let share = workgroup_share(wid.z);
    let bases = share.bases;
    let k_begin = share.k_begin;
    let k_end = share.k_end;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = local.x;
    let ty = local.y;
    // acc_i_j: row ty + 16·i, column tx + 16·j of the tile.
    // @accumulators
    // @prefetch_first
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // TILE·TILE_K elements of each operand, BLOCK per thread: e = lid + 256·q.
        // @stage
        workgroupBarrier();
        // @prefetch_next
        for (var kk = 0u; kk < TILE_K; kk += 1u) {
            // a_i, b_j: the thread's rows of A and columns of B at this kk; acc_i_j += a_i·b_j.
            // @multiply_accumulate
        }
        workgroupBarrier();
    }
    // store_tile_output(bases.c, the row of acc_i_j, its column, acc_i_j) for every i, j.
    // @store
}

// Stores element `e` of A's (B's) tile where the block reads it: k · TILE_STRIDE + row (column).
fn stage_a_element(e: u32, value: Operand) {
    let place = a_place(e);
    stage_a(place.y * TILE_STRIDE + place.x, value);
}

fn stage_b_element(e: u32, value: Operand) {
    let place = b_place(e);
    stage_b(place.y * TILE_STRIDE + place.x, value);
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
        acc += f32(to_operand(a[ai])) * f32(to_operand(b[bi]));
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
