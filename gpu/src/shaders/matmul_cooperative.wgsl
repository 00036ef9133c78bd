// C = α·A·B + β·C per batch entry on cooperative matrices (tensor cores): the f16 products of
// mixed precision, on a device opened with cooperative matrices (the host prepends `enable f16;
// enable wgpu_cooperative_matrix;`, the f16 operand header matmul_f16.wgsl and f16_round.wgsl,
// and appends matmul_common.wgsl, with the parameters, bindings and output helpers). The host
// (matmul_source.rs) writes the `// @shape` line for the configuration the adapter reports and
// the kernel's blocking: the side COOP_SIDE of the square f16 matrices A and B and of the f32
// accumulator (16 on NVIDIA's tensor cores, 8 on Mesa's lavapipe), the subgroup width
// COOP_THREADS the adapter runs (exactly), COOP_SPLIT, the subgroups along each side of the
// workgroup's tile (1: a workgroup of one subgroup; 2: four subgroups sharing each staged step),
// COOP_BLOCK, the accumulators along each side of a subgroup's part (4, or 2 for small
// products), and the aliases CoopA, CoopB, CoopC of the three matrix types; the `// @groups`
// line, the thread's share of a step's operands; and the `// @accumulators`, `// @multiply`
// and `// @store` lines, the subgroup's accumulators (constant names: no array for a compiler
// to spill), their step and their stores.
//
// Each subgroup computes a COOP_PART × COOP_PART part of the workgroup's tile of C (COOP_PART =
// COOP_BLOCK·COOP_SIDE, the tile COOP_SPLIT parts wide) as COOP_BLOCK × COOP_BLOCK
// accumulators. Per step of COOP_K = COOP_SIDE along k the workgroup's threads stage A's
// COOP_TILE × COOP_K operands and B's COOP_K × COOP_TILE, rounded to binary16 as the f16 tiled
// kernels round them (zeros beyond the matrices), row-major in workgroup memory, from registers
// they read them into during the step before; then each subgroup loads the COOP_BLOCK +
// COOP_BLOCK matrices of its part from there and does COOP_BLOCK² multiply-adds while the next
// step's operands arrive. With four subgroups each staged operand feeds two of them, so a
// workgroup reads half the device memory per multiply-add; with 2 × 2 accumulators a product
// has four times the subgroups of 4 × 4 to spread over the multiprocessors. At the end each
// accumulator goes to C straight from the matrix where nothing is added (`stores_directly`),
// else through the subgroup's own block of workgroup memory (α, β, bias, residual, the matrix
// bounds). Split-K as in the tiled kernels: with `k_split` > 0, workgroup z sums k in
// [z·k_split, (z+1)·k_split) into its own slab. The sums run in the hardware's order and
// precision, so the results are not the register-blocked kernels' bits (within the same f16
// bound of the f32 product); every element of C gets the same multiply-adds in the same order
// whatever the split and the block, so all give the same bits.

// @shape
const COOP_PART: u32 = COOP_BLOCK * COOP_SIDE;
const COOP_TILE: u32 = COOP_SPLIT * COOP_PART;
const COOP_INVOCATIONS: u32 = COOP_SPLIT * COOP_SPLIT * COOP_THREADS;
const COOP_K: u32 = COOP_SIDE;
// The names matmul_common.wgsl's operand loads read.
const TILE: u32 = COOP_TILE;
const TILE_K: u32 = COOP_K;

// A's operands [row][k] and B's [k][column], row-major; one accumulator [row][column] per
// subgroup.
var<workgroup> staged_a: array<f16, COOP_TILE * COOP_K>;
var<workgroup> staged_b: array<f16, COOP_K * COOP_TILE>;
var<workgroup> block_out: array<f32, COOP_SPLIT * COOP_SPLIT * COOP_SIDE * COOP_SIDE>;
// Each thread loads COOP_GROUPS groups of four operands of A and of B per step.
const_assert COOP_TILE * COOP_K == COOP_GROUPS * 4u * COOP_INVOCATIONS;

// @groups

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

// Whether the workgroup's accumulators go straight from the matrices to C (every subgroup's,
// so the choice is the workgroup's): nothing is added as they are stored (α = 1, β = 0, no
// bias, no residual: the value stored is the accumulator, as `store_output` would store it),
// the whole tile lies inside C, and C's rows are contiguous with a stride and start that keep
// every matrix row on a 16-byte boundary (the alignment matrix stores need).
fn stores_directly(base: u32, row0: u32, col0: u32) -> bool {
    return params.alpha == 1.0 && params.beta == 0.0 && params.has_bias == 0u
        && params.has_residual == 0u && params.c_col_stride == 1u
        && params.c_row_stride % 4u == 0u && base % 4u == 0u
        && row0 + COOP_TILE <= params.m && col0 + COOP_TILE <= params.n;
}

// Writes accumulator `m` (rows row0 .., columns col0 ..) of subgroup `subgroup` into C through
// the subgroup's block of `block_out` (every subgroup calls it, each with its own accumulator).
fn store_block(m: CoopC, base: u32, row0: u32, col0: u32, subgroup: u32, lane: u32) {
    let block = subgroup * COOP_SIDE * COOP_SIDE;
    coopStoreT(m, &block_out[block], COOP_SIDE);
    workgroupBarrier();
    for (var e = lane; e < COOP_SIDE * COOP_SIDE; e += COOP_THREADS) {
        let row = row0 + e / COOP_SIDE;
        let col = col0 + e % COOP_SIDE;
        if (row < params.m && col < params.n) {
            store_output(base, row, col, block_out[block + e]);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(COOP_INVOCATIONS)
fn matmul_cooperative(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32,
                      @builtin(subgroup_id) subgroup: u32,
                      @builtin(subgroup_invocation_id) lane: u32) {
    let share = workgroup_share(wid.z);
    let bases = share.bases;
    let k_begin = share.k_begin;
    let k_end = share.k_end;
    let row0 = wid.y * COOP_TILE;
    let col0 = wid.x * COOP_TILE;
    // The subgroup's part of the tile: its first row and column within it.
    let part_row = (subgroup / COOP_SPLIT) * COOP_PART;
    let part_col = (subgroup % COOP_SPLIT) * COOP_PART;
    // c_i_j: rows row0 + part_row + COOP_SIDE·i .., columns col0 + part_col + COOP_SIDE·j .. of C
    // (i, j < COOP_BLOCK).
    // @accumulators
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
        // @multiply
        // Every matrix is loaded before the next step overwrites the staged operands.
        workgroupBarrier();
    }
    // @store
}
