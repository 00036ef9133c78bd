enable f16;
enable wgpu_cooperative_matrix;
// C = α·A·B + β·C per batch entry on cooperative matrices (tensor cores): the f16 products of
// mixed precision, on a device opened with cooperative matrices (matmul_common.wgsl, with the
// parameters, bindings and output helpers, is appended). Each multiply-add takes 16×16 f16
// matrices of A and B and a 16×16 f32 accumulator; the host uses this kernel only where the
// adapter reports that configuration at subgroup scope and runs subgroups of exactly
// COOP_THREADS invocations, so that one workgroup is one subgroup.
//
// The workgroup computes a COOP_TILE × COOP_TILE tile of C as 4 × 4 accumulators (constant
// names: no array for a compiler to spill). Per step of COOP_K along k its threads stage A's
// COOP_TILE × COOP_K operands and B's COOP_K × COOP_TILE, rounded to binary16 as the f16 tiled
// kernels round them (zeros beyond the matrices), row-major in workgroup memory, from registers
// they read them into during the step before; then the subgroup loads 4 + 4 matrices from there
// and does 16 multiply-adds while the next step's operands arrive. At the end each
// accumulator goes through workgroup memory to C (α, β, the matrix bounds). Split-K as in the
// tiled kernels: with `k_split` > 0, workgroup z sums k in [z·k_split, (z+1)·k_split) into its
// own slab. The sums run in the hardware's order and precision, so the results are not the
// register-blocked kernels' bits (within the same f16 bound of the f32 product).

const COOP_THREADS: u32 = 32u;
const COOP_TILE: u32 = 64u;
const COOP_K: u32 = 16u;
// The side of one cooperative matrix.
const COOP_SIDE: u32 = 16u;
const_assert COOP_TILE == 4u * COOP_SIDE && COOP_K == COOP_SIDE;
// The names matmul_common.wgsl's operand loads read.
alias Operand = f16;
const TILE: u32 = COOP_TILE;
const TILE_K: u32 = COOP_K;

// A's operands [row][k] and B's [k][column], row-major; one accumulator [row][column].
var<workgroup> staged_a: array<f16, 1024>;
var<workgroup> staged_b: array<f16, 1024>;
var<workgroup> block_out: array<f32, 256>;
const_assert COOP_TILE * COOP_K == 1024u && COOP_SIDE * COOP_SIDE == 256u;
// Each thread loads 8 groups of four operands of A and of B per step.
const_assert COOP_TILE * COOP_K == 8u * 4u * COOP_THREADS;

// A thread's groups of four operands of one step of A or B: groups lid + COOP_THREADS·q of
// the staged tile, q < 8 (neighbouring threads read neighbouring words of whichever stride of
// an operand is 1, one vec4 where the operand allows; matmul_common.wgsl's loads, rounded to
// binary16 as the f16 tiled kernels round). Named members, not an array: registers.
struct Groups {
    q0: vec4<f16>,
    q1: vec4<f16>,
    q2: vec4<f16>,
    q3: vec4<f16>,
    q4: vec4<f16>,
    q5: vec4<f16>,
    q6: vec4<f16>,
    q7: vec4<f16>,
}

// The thread's groups of A's step at k0 (zeros beyond k_end and the matrix).
fn load_groups_a(base: u32, row0: u32, k0: u32, k_end: u32, lid: u32) -> Groups {
    let t = COOP_THREADS;
    return Groups(load_a4(base, row0, k0, k_end, lid), load_a4(base, row0, k0, k_end, lid + t),
                  load_a4(base, row0, k0, k_end, lid + 2u * t),
                  load_a4(base, row0, k0, k_end, lid + 3u * t),
                  load_a4(base, row0, k0, k_end, lid + 4u * t),
                  load_a4(base, row0, k0, k_end, lid + 5u * t),
                  load_a4(base, row0, k0, k_end, lid + 6u * t),
                  load_a4(base, row0, k0, k_end, lid + 7u * t));
}

// The same for B's step at k0.
fn load_groups_b(base: u32, col0: u32, k0: u32, k_end: u32, lid: u32) -> Groups {
    let t = COOP_THREADS;
    return Groups(load_b4(base, col0, k0, k_end, lid), load_b4(base, col0, k0, k_end, lid + t),
                  load_b4(base, col0, k0, k_end, lid + 2u * t),
                  load_b4(base, col0, k0, k_end, lid + 3u * t),
                  load_b4(base, col0, k0, k_end, lid + 4u * t),
                  load_b4(base, col0, k0, k_end, lid + 5u * t),
                  load_b4(base, col0, k0, k_end, lid + 6u * t),
                  load_b4(base, col0, k0, k_end, lid + 7u * t));
}

// Stores group `g` of the step's operands (elements 4g .. 4g + 3 of each tile, as `load_a4`
// and `load_b4` read them) where the matrix loads read them.
fn stage_group(g: u32, four_a: vec4<f16>, four_b: vec4<f16>) {
    for (var i = 0u; i < 4u; i += 1u) {
        let place_a = a_place(4u * g + i);
        staged_a[place_a.x * COOP_K + place_a.y] = four_a[i];
        let place_b = b_place(4u * g + i);
        staged_b[place_b.y * COOP_TILE + place_b.x] = four_b[i];
    }
}

// Stores the thread's groups of a step of A and B.
fn stage_groups(a: Groups, b: Groups, lid: u32) {
    let t = COOP_THREADS;
    stage_group(lid, a.q0, b.q0);
    stage_group(lid + t, a.q1, b.q1);
    stage_group(lid + 2u * t, a.q2, b.q2);
    stage_group(lid + 3u * t, a.q3, b.q3);
    stage_group(lid + 4u * t, a.q4, b.q4);
    stage_group(lid + 5u * t, a.q5, b.q5);
    stage_group(lid + 6u * t, a.q6, b.q6);
    stage_group(lid + 7u * t, a.q7, b.q7);
}

// Writes accumulator `m` (rows row0 .., columns col0 ..) into C through `block_out` (the whole
// subgroup calls it).
fn store_block(m: coop_mat16x16<f32, C>, base: u32, row0: u32, col0: u32, lid: u32) {
    coopStoreT(m, &block_out[0], COOP_SIDE);
    workgroupBarrier();
    for (var e = lid; e < COOP_SIDE * COOP_SIDE; e += COOP_THREADS) {
        let row = row0 + e / COOP_SIDE;
        let col = col0 + e % COOP_SIDE;
        if (row < params.m && col < params.n) {
            store_output(base, row, col, block_out[e]);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(COOP_THREADS)
fn matmul_cooperative(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let share = workgroup_share(wid.z);
    let bases = share.bases;
    let k_begin = share.k_begin;
    let k_end = share.k_end;
    let row0 = wid.y * COOP_TILE;
    let col0 = wid.x * COOP_TILE;
    // c_i_j: rows row0 + 16·i .., columns col0 + 16·j .. of C.
    var c_0_0 = coop_mat16x16<f32, C>();
    var c_0_1 = coop_mat16x16<f32, C>();
    var c_0_2 = coop_mat16x16<f32, C>();
    var c_0_3 = coop_mat16x16<f32, C>();
    var c_1_0 = coop_mat16x16<f32, C>();
    var c_1_1 = coop_mat16x16<f32, C>();
    var c_1_2 = coop_mat16x16<f32, C>();
    var c_1_3 = coop_mat16x16<f32, C>();
    var c_2_0 = coop_mat16x16<f32, C>();
    var c_2_1 = coop_mat16x16<f32, C>();
    var c_2_2 = coop_mat16x16<f32, C>();
    var c_2_3 = coop_mat16x16<f32, C>();
    var c_3_0 = coop_mat16x16<f32, C>();
    var c_3_1 = coop_mat16x16<f32, C>();
    var c_3_2 = coop_mat16x16<f32, C>();
    var c_3_3 = coop_mat16x16<f32, C>();
    // The thread's operands of each step, read into registers during the step before, so that
    // their device-memory latency overlaps that step's multiply-adds.
    var next_a = load_groups_a(bases.a, row0, k_begin, k_end, lid);
    var next_b = load_groups_b(bases.b, col0, k_begin, k_end, lid);
    for (var k0 = k_begin; k0 < k_end; k0 += COOP_K) {
        stage_groups(next_a, next_b, lid);
        workgroupBarrier();
        // The next step's (beyond k_end: zeros, never staged).
        next_a = load_groups_a(bases.a, row0, k0 + COOP_K, k_end, lid);
        next_b = load_groups_b(bases.b, col0, k0 + COOP_K, k_end, lid);
        let a_0 = coopLoadT<coop_mat16x16<f16, A>>(&staged_a[0u * COOP_SIDE * COOP_K], COOP_K);
        let a_1 = coopLoadT<coop_mat16x16<f16, A>>(&staged_a[1u * COOP_SIDE * COOP_K], COOP_K);
        let a_2 = coopLoadT<coop_mat16x16<f16, A>>(&staged_a[2u * COOP_SIDE * COOP_K], COOP_K);
        let a_3 = coopLoadT<coop_mat16x16<f16, A>>(&staged_a[3u * COOP_SIDE * COOP_K], COOP_K);
        let b_0 = coopLoadT<coop_mat16x16<f16, B>>(&staged_b[0u * COOP_SIDE], COOP_TILE);
        let b_1 = coopLoadT<coop_mat16x16<f16, B>>(&staged_b[1u * COOP_SIDE], COOP_TILE);
        let b_2 = coopLoadT<coop_mat16x16<f16, B>>(&staged_b[2u * COOP_SIDE], COOP_TILE);
        let b_3 = coopLoadT<coop_mat16x16<f16, B>>(&staged_b[3u * COOP_SIDE], COOP_TILE);
        c_0_0 = coopMultiplyAdd(a_0, b_0, c_0_0);
        c_0_1 = coopMultiplyAdd(a_0, b_1, c_0_1);
        c_0_2 = coopMultiplyAdd(a_0, b_2, c_0_2);
        c_0_3 = coopMultiplyAdd(a_0, b_3, c_0_3);
        c_1_0 = coopMultiplyAdd(a_1, b_0, c_1_0);
        c_1_1 = coopMultiplyAdd(a_1, b_1, c_1_1);
        c_1_2 = coopMultiplyAdd(a_1, b_2, c_1_2);
        c_1_3 = coopMultiplyAdd(a_1, b_3, c_1_3);
        c_2_0 = coopMultiplyAdd(a_2, b_0, c_2_0);
        c_2_1 = coopMultiplyAdd(a_2, b_1, c_2_1);
        c_2_2 = coopMultiplyAdd(a_2, b_2, c_2_2);
        c_2_3 = coopMultiplyAdd(a_2, b_3, c_2_3);
        c_3_0 = coopMultiplyAdd(a_3, b_0, c_3_0);
        c_3_1 = coopMultiplyAdd(a_3, b_1, c_3_1);
        c_3_2 = coopMultiplyAdd(a_3, b_2, c_3_2);
        c_3_3 = coopMultiplyAdd(a_3, b_3, c_3_3);
        // Every matrix is loaded before the next step overwrites the staged operands.
        workgroupBarrier();
    }
    store_block(c_0_0, bases.c, row0 + 0u * COOP_SIDE, col0 + 0u * COOP_SIDE, lid);
    store_block(c_0_1, bases.c, row0 + 0u * COOP_SIDE, col0 + 1u * COOP_SIDE, lid);
    store_block(c_0_2, bases.c, row0 + 0u * COOP_SIDE, col0 + 2u * COOP_SIDE, lid);
    store_block(c_0_3, bases.c, row0 + 0u * COOP_SIDE, col0 + 3u * COOP_SIDE, lid);
    store_block(c_1_0, bases.c, row0 + 1u * COOP_SIDE, col0 + 0u * COOP_SIDE, lid);
    store_block(c_1_1, bases.c, row0 + 1u * COOP_SIDE, col0 + 1u * COOP_SIDE, lid);
    store_block(c_1_2, bases.c, row0 + 1u * COOP_SIDE, col0 + 2u * COOP_SIDE, lid);
    store_block(c_1_3, bases.c, row0 + 1u * COOP_SIDE, col0 + 3u * COOP_SIDE, lid);
    store_block(c_2_0, bases.c, row0 + 2u * COOP_SIDE, col0 + 0u * COOP_SIDE, lid);
    store_block(c_2_1, bases.c, row0 + 2u * COOP_SIDE, col0 + 1u * COOP_SIDE, lid);
    store_block(c_2_2, bases.c, row0 + 2u * COOP_SIDE, col0 + 2u * COOP_SIDE, lid);
    store_block(c_2_3, bases.c, row0 + 2u * COOP_SIDE, col0 + 3u * COOP_SIDE, lid);
    store_block(c_3_0, bases.c, row0 + 3u * COOP_SIDE, col0 + 0u * COOP_SIDE, lid);
    store_block(c_3_1, bases.c, row0 + 3u * COOP_SIDE, col0 + 1u * COOP_SIDE, lid);
    store_block(c_3_2, bases.c, row0 + 3u * COOP_SIDE, col0 + 2u * COOP_SIDE, lid);
    store_block(c_3_3, bases.c, row0 + 3u * COOP_SIDE, col0 + 3u * COOP_SIDE, lid);
}
