//! The WGSL text of the matmul kernels for one register block, block layout and operand type:
//! the operand header, `BLOCK`, and `matmul.wgsl` with the workgroup tiles of the layout and the
//! tiled kernel's register block written out as straight-line code.
//!
//! Written out rather than looped over: accumulators in an array indexed inside loops stay in
//! registers only if the driver unrolls those loops, and naga's SPIR-V (whose loops carried an
//! extra iteration bound then: see `DeviceOptions::loop_bounds`) left them in local memory on
//! an NVIDIA H200 — the 128-wide kernel ran at a third of the speed of the hand-unrolled 64-wide
//! one it replaced. Scalars with constant names have nowhere else to go. The same holds for the
//! registers a thread prefetches the next step's operands into.

use std::fmt::Write;

use crate::adapter::CooperativeShape;
use crate::kernels::MATMUL_THREADS;

/// The marker lines of `matmul.wgsl` that this module fills in.
const TILES: &str = "// @tiles";
const ACCUMULATORS: &str = "// @accumulators";
const MULTIPLY_ACCUMULATE: &str = "// @multiply_accumulate";
const STORE: &str = "// @store";
const PREFETCH_FIRST: &str = "// @prefetch_first";
const STAGE: &str = "// @stage";
const PREFETCH_NEXT: &str = "// @prefetch_next";

/// Which outputs of C's tile a thread of the tiled kernel holds, and so how it reads the staged
/// operands. Both sum every output over k in the same order: the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BlockLayout {
    /// Rows `ty + 16·i` and columns `tx + 16·j`: neighbouring threads read neighbouring
    /// workgroup-memory words, one scalar load per operand (`2·BLOCK` loads per step of k).
    Strided,
    /// Rows `ty·BLOCK + i` and columns `tx·BLOCK + j`: each thread's operands are `BLOCK`
    /// neighbouring words, staged in tiles of vec4s and read four at a time (`BLOCK / 2` loads
    /// per step of k). Needs `BLOCK` a multiple of 4.
    Contiguous,
}

impl BlockLayout {
    /// Words between two rows of a staged tile of side `tile`: padded by one word (strided:
    /// the k-contiguous staging then stores a column without bank conflicts) or by one vec4
    /// (contiguous: rows stay whole vec4s).
    pub(crate) const fn tile_stride(self, tile: u32) -> u32 {
        match self {
            BlockLayout::Strided => tile + 1,
            BlockLayout::Contiguous => tile + 4,
        }
    }
}

/// What a matmul kernel multiplies: the f32 values it loads, or those values converted to f16
/// as it loads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operands {
    /// f32 operands (`matmul_f32.wgsl`).
    F32,
    /// f16 operands (`matmul_f16.wgsl`, `enable f16;`): `rounded`, rounded to nearest even by
    /// the kernel (`f16_round.wgsl`) before the conversion, so that it is exact; else converted
    /// by the driver alone, for drivers whose conversion the device's probe found rounding to
    /// nearest even (the same bits, fewer instructions).
    F16 {
        /// Whether the kernel rounds before converting.
        rounded: bool,
    },
}

impl Operands {
    /// The operand header: `Operand`, `to_operand` and `to_operand4` (and f16_round.wgsl where
    /// the kernel rounds).
    fn header(self) -> String {
        const CONVERTED: &str = "fn to_operand(x: f32) -> f16 {\n    return f16(x);\n}\n\
            fn to_operand4(v: vec4<f32>) -> vec4<f16> {\n    return vec4<f16>(v);\n}\n";
        const ROUNDED: &str = "fn to_operand(x: f32) -> f16 {\n    return f16(f16_round(x));\n}\n\
            fn to_operand4(v: vec4<f32>) -> vec4<f16> {\n    return vec4<f16>(f16_round4(v));\n}\n";
        match self {
            Operands::F32 => include_str!("shaders/matmul_f32.wgsl").to_string(),
            Operands::F16 { rounded: false } => {
                [include_str!("shaders/matmul_f16.wgsl"), CONVERTED].concat()
            }
            Operands::F16 { rounded: true } => [
                include_str!("shaders/matmul_f16.wgsl"),
                ROUNDED,
                include_str!("shaders/f16_round.wgsl"),
            ]
            .concat(),
        }
    }
}

/// The matmul shader (`matmul_tiled`, `matmul_small`, `matmul_sum_splits`) whose tiled kernel
/// holds a `block × block` register block of C per thread in `layout`, with `operands`, and
/// (`prefetched`) reads each step's operands into registers during the step before, or at the
/// step itself. Either way the same sums.
pub(crate) fn matmul_source(
    block: u32,
    layout: BlockLayout,
    operands: Operands,
    prefetched: bool,
) -> String {
    assert!(
        layout == BlockLayout::Strided || block.is_multiple_of(4),
        "a contiguous block is read as vec4s"
    );
    let header = operands.header();
    let mut text = format!(
        "{header}// Outputs per thread along each side of C's tile.\nconst BLOCK: u32 = {block}u;\n{}",
        include_str!("shaders/matmul_common.wgsl")
    );
    for line in include_str!("shaders/matmul.wgsl").lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        match line.trim() {
            TILES => tiles(&mut text, layout),
            ACCUMULATORS => accumulators(&mut text, indent, block),
            MULTIPLY_ACCUMULATE => multiply_accumulate(&mut text, indent, block, layout),
            STORE => store(&mut text, indent, block, layout),
            PREFETCH_FIRST if prefetched => prefetch(&mut text, indent, block, "k_begin", "var "),
            STAGE => stage(&mut text, indent, block, prefetched),
            PREFETCH_NEXT if prefetched => prefetch(&mut text, indent, block, "k0 + TILE_K", ""),
            PREFETCH_FIRST | PREFETCH_NEXT => {}
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// `TILE_STRIDE`, the two staged tiles and `stage_a`/`stage_b` for `layout`.
fn tiles(text: &mut String, layout: BlockLayout) {
    let (pad, element, store) = match layout {
        BlockLayout::Strided => (1, "Operand", "[index]"),
        BlockLayout::Contiguous => (4, "vec4<Operand>", "[index / 4u][index % 4u]"),
    };
    debug_assert_eq!(layout.tile_stride(0), pad);
    let words = match layout {
        BlockLayout::Strided => "TILE_K * TILE_STRIDE",
        BlockLayout::Contiguous => "TILE_K * TILE_STRIDE / 4u",
    };
    let _ = writeln!(text, "const TILE_STRIDE: u32 = TILE + {pad}u;");
    for side in ["a", "b"] {
        let _ = writeln!(
            text,
            "var<workgroup> {side}_tile: array<{element}, {words}>;\n\
             fn stage_{side}(index: u32, value: Operand) {{\n    {side}_tile{store} = value;\n}}"
        );
    }
}

/// How a thread of the tiled kernel loads its `block` elements of each operand per step:
/// `block / 4` groups of four neighbours (`load_a4`/`load_b4`, elements 4g .. 4g + 3 of
/// g = lid + 256·q: one vec4 load each where the operand allows) where `block` is a multiple
/// of 4, else `block` single elements (`load_a`/`load_b`, element lid + 256·q). Returns the
/// number of loads and whether they are groups.
fn operand_loads(block: u32) -> (u32, bool) {
    match block.is_multiple_of(4) {
        true => (block / 4, true),
        false => (block, false),
    }
}

/// The thread's operands of the step at `k0` read into registers (`next_a_q`, `next_b_q`, one
/// per load of [`operand_loads`], declared with `declare`): issued before the block's
/// multiply-adds of the current step (prefetched), so that their latency overlaps them, or at
/// the step itself.
fn prefetch(text: &mut String, indent: &str, block: u32, k0: &str, declare: &str) {
    let threads = MATMUL_THREADS * MATMUL_THREADS;
    let (loads, grouped) = operand_loads(block);
    let four = if grouped { "4" } else { "" };
    for q in 0..loads {
        let index = format!("lid + {}u", q * threads);
        let _ = writeln!(
            text,
            "{indent}{declare}next_a_{q} = load_a{four}(bases.a, row0, {k0}, k_end, {index});\n\
             {indent}{declare}next_b_{q} = load_b{four}(bases.b, col0, {k0}, k_end, {index});"
        );
    }
}

/// The step's operands into the workgroup tiles: from the registers prefetched in the step
/// before, or (`prefetched` false) loaded here.
fn stage(text: &mut String, indent: &str, block: u32, prefetched: bool) {
    const LANES: [&str; 4] = ["x", "y", "z", "w"];
    if !prefetched {
        prefetch(text, indent, block, "k0", "let ");
    }
    let threads = MATMUL_THREADS * MATMUL_THREADS;
    let (loads, grouped) = operand_loads(block);
    for q in 0..loads {
        let index = format!("lid + {}u", q * threads);
        let elements: Vec<(String, String)> = match grouped {
            true => LANES
                .iter()
                .enumerate()
                .map(|(i, lane)| (format!("4u * ({index}) + {i}u"), format!("_{q}.{lane}")))
                .collect(),
            false => vec![(index, format!("_{q}"))],
        };
        for (e, value) in elements {
            let _ = writeln!(
                text,
                "{indent}stage_a_element({e}, next_a{value});\n\
                 {indent}stage_b_element({e}, next_b{value});"
            );
        }
    }
}

/// `var acc_i_j = 0.0;` for every output of the block.
fn accumulators(text: &mut String, indent: &str, block: u32) {
    for i in 0..block {
        for j in 0..block {
            let _ = writeln!(text, "{indent}var acc_{i}_{j} = 0.0;");
        }
    }
}

/// The block's operands at one `kk` (`a_i`, `b_j`, converted to f32 from the staged operand
/// type) and `acc_i_j += a_i * b_j`, in the order of the loops it replaces.
fn multiply_accumulate(text: &mut String, indent: &str, block: u32, layout: BlockLayout) {
    const LANES: [&str; 4] = ["x", "y", "z", "w"];
    for (side, thread) in [("a", "ty"), ("b", "tx")] {
        match layout {
            BlockLayout::Strided => {
                let _ = writeln!(text, "{indent}let {side}i = kk * TILE_STRIDE + {thread};");
                for i in 0..block {
                    let _ = writeln!(
                        text,
                        "{indent}let {side}_{i} = f32({side}_tile[{side}i + {}u]);",
                        i * MATMUL_THREADS
                    );
                }
            }
            BlockLayout::Contiguous => {
                let _ = writeln!(
                    text,
                    "{indent}let {side}i = (kk * TILE_STRIDE + {thread} * BLOCK) / 4u;"
                );
                for v in 0..block / 4 {
                    let _ = writeln!(
                        text,
                        "{indent}let {side}_v{v} = {side}_tile[{side}i + {v}u];"
                    );
                }
                for i in 0..block {
                    let _ = writeln!(
                        text,
                        "{indent}let {side}_{i} = f32({side}_v{}.{});",
                        i / 4,
                        LANES[i as usize % 4]
                    );
                }
            }
        }
    }
    for i in 0..block {
        for j in 0..block {
            let _ = writeln!(text, "{indent}acc_{i}_{j} += a_{i} * b_{j};");
        }
    }
}

/// `store_tile_output(bases.c, row, column, acc_i_j)` for every output, at its place in C's
/// tile under `layout`.
fn store(text: &mut String, indent: &str, block: u32, layout: BlockLayout) {
    let (row, col) = match layout {
        BlockLayout::Strided => ("row0 + ty", "col0 + tx"),
        BlockLayout::Contiguous => ("row0 + ty * BLOCK", "col0 + tx * BLOCK"),
    };
    let _ = writeln!(text, "{indent}let row = {row};\n{indent}let col = {col};");
    let step = match layout {
        BlockLayout::Strided => MATMUL_THREADS,
        BlockLayout::Contiguous => 1,
    };
    for i in 0..block {
        for j in 0..block {
            let _ = writeln!(
                text,
                "{indent}store_tile_output(bases.c, row + {}u, col + {}u, acc_{i}_{j});",
                i * step,
                j * step
            );
        }
    }
}

/// The cooperative-matrix kernel (`matmul_cooperative.wgsl` after the f16 operand header,
/// `rounded` or not as in [`Operands::F16`], and before `matmul_common.wgsl`) for `shape` with
/// `split` × `split` subgroups per workgroup (1 or 2) of `block` × `block` accumulators each (4
/// or 2; [`CooperativeShape::groups`]): its `// @shape` line becomes the side, subgroup width,
/// split, block and matrix types, its `// @groups` line the thread's share of a step's operands
/// (`shape.groups(split, block)` groups of four of A and of B, in named registers, read by
/// `load_groups_a`/`load_groups_b` and staged by `stage_groups`), and its `// @accumulators`,
/// `// @multiply` and `// @store` lines the subgroup's accumulators, their step and their
/// stores.
pub(crate) fn cooperative_source(
    shape: CooperativeShape,
    rounded: bool,
    split: u32,
    block: u32,
) -> String {
    let CooperativeShape { side, threads } = shape;
    let groups = shape
        .groups(split, block)
        .expect("a blocking whose workgroup shares a step's operands evenly");
    let header = Operands::F16 { rounded }.header();
    let f16_header = header
        .strip_prefix("enable f16;\n")
        .expect("the f16 operand header enables f16 first");
    let mut text = format!("enable f16;\nenable wgpu_cooperative_matrix;\n{f16_header}");
    for line in include_str!("shaders/matmul_cooperative.wgsl").lines() {
        match line.trim() {
            "// @shape" => {
                let _ = writeln!(
                    text,
                    "const COOP_SIDE: u32 = {side}u;\n\
                     const COOP_THREADS: u32 = {threads}u;\n\
                     const COOP_SPLIT: u32 = {split}u;\n\
                     const COOP_BLOCK: u32 = {block}u;\n\
                     const COOP_GROUPS: u32 = {groups}u;\n\
                     alias CoopA = coop_mat{side}x{side}<f16, A>;\n\
                     alias CoopB = coop_mat{side}x{side}<f16, B>;\n\
                     alias CoopC = coop_mat{side}x{side}<f32, C>;"
                );
            }
            "// @groups" => cooperative_groups(&mut text, groups),
            "// @accumulators" => cooperative_accumulators(&mut text, block),
            "// @multiply" => cooperative_multiply(&mut text, block),
            "// @store" => cooperative_store(&mut text, block),
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text.push_str(include_str!("shaders/matmul_common.wgsl"));
    text
}

/// Writes `line(i, j)` for each of a subgroup's `block` × `block` accumulators `c_i_j`, in
/// row order.
fn per_accumulator(text: &mut String, block: u32, line: impl Fn(u32, u32) -> String) {
    for i in 0..block {
        for j in 0..block {
            text.push_str(&line(i, j));
            text.push('\n');
        }
    }
}

/// The subgroup's `block` × `block` accumulators `c_i_j`, zero.
fn cooperative_accumulators(text: &mut String, block: u32) {
    per_accumulator(text, block, |i, j| format!("    var c_{i}_{j} = CoopC();"));
}

/// One step of the subgroup's part: `block` matrices of A (`a_i`, rows part_row + side·i ..)
/// and of B (`b_j`) loaded from the staged operands, then every accumulator's multiply-add.
fn cooperative_multiply(text: &mut String, block: u32) {
    for i in 0..block {
        let _ = writeln!(
            text,
            "        let a_{i} = coopLoadT<CoopA>(&staged_a[(part_row + {i}u * COOP_SIDE) * COOP_K], COOP_K);"
        );
    }
    for j in 0..block {
        let _ = writeln!(
            text,
            "        let b_{j} = coopLoadT<CoopB>(&staged_b[part_col + {j}u * COOP_SIDE], COOP_TILE);"
        );
    }
    per_accumulator(text, block, |i, j| {
        format!("        c_{i}_{j} = coopMultiplyAdd(a_{i}, b_{j}, c_{i}_{j});")
    });
}

/// The accumulators' stores: straight from the matrices where the workgroup's tile allows it
/// (`stores_directly`; the stride and each offset bound to a `let` first, which naga's SPIR-V
/// writer needs of a matrix store's operands), else each through workgroup memory.
fn cooperative_store(text: &mut String, block: u32) {
    text.push_str(
        "    let first_row = row0 + part_row;\n    let first_col = col0 + part_col;\n    \
         if (stores_directly(bases.c, row0, col0)) {\n        let stride = params.c_row_stride;\n",
    );
    per_accumulator(text, block, |i, j| {
        format!(
            "        let at_{i}_{j} = bases.c + (first_row + {i}u * COOP_SIDE) * stride + first_col + {j}u * COOP_SIDE;\n        \
             coopStoreT(c_{i}_{j}, &c[at_{i}_{j}], stride);"
        )
    });
    text.push_str("        return;\n    }\n");
    per_accumulator(text, block, |i, j| {
        format!(
            "    store_block(c_{i}_{j}, bases.c, first_row + {i}u * COOP_SIDE, first_col + {j}u * COOP_SIDE, subgroup, lane);"
        )
    });
}

/// `Groups` (a thread's `groups` groups of four operands of one step of A or B: groups
/// lid + COOP_INVOCATIONS·q of the staged tile, named members rather than an array, so registers),
/// their loads at a step (`matmul_common.wgsl`'s, zeros beyond k_end and the matrix) and their
/// staging.
fn cooperative_groups(text: &mut String, groups: u32) {
    text.push_str("struct Groups {\n");
    for q in 0..groups {
        let _ = writeln!(text, "    q{q}: vec4<f16>,");
    }
    text.push_str("}\n");
    for (side, origin) in [("a", "row0"), ("b", "col0")] {
        let _ = write!(
            text,
            "fn load_groups_{side}(base: u32, {origin}: u32, k0: u32, k_end: u32, lid: u32) -> Groups {{\n    return Groups("
        );
        for q in 0..groups {
            let separator = if q == 0 { "" } else { ", " };
            let _ = write!(
                text,
                "{separator}load_{side}4(base, {origin}, k0, k_end, lid + {q}u * COOP_INVOCATIONS)"
            );
        }
        text.push_str(");\n}\n");
    }
    text.push_str("fn stage_groups(a: Groups, b: Groups, lid: u32) {\n");
    for q in 0..groups {
        let _ = writeln!(
            text,
            "    stage_group(lid + {q}u * COOP_INVOCATIONS, a.q{q}, b.q{q});"
        );
    }
    text.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_is_filled_in_and_nothing_else_changes() {
        let template = include_str!("shaders/matmul.wgsl");
        for marker in [
            TILES,
            ACCUMULATORS,
            MULTIPLY_ACCUMULATE,
            STORE,
            PREFETCH_FIRST,
            STAGE,
            PREFETCH_NEXT,
        ] {
            assert_eq!(
                template.lines().filter(|l| l.trim() == marker).count(),
                1,
                "{marker}"
            );
        }
        let rounded = Operands::F16 { rounded: true };
        let converted = Operands::F16 { rounded: false };
        for (block, layout, operands, prefetched) in [
            (2, BlockLayout::Strided, Operands::F32, true),
            (4, BlockLayout::Strided, rounded, false),
            (8, BlockLayout::Strided, Operands::F32, true),
            (4, BlockLayout::Contiguous, converted, false),
            (8, BlockLayout::Contiguous, rounded, true),
        ] {
            let text = matmul_source(block, layout, operands, prefetched);
            let f16 = operands != Operands::F32;
            // The kernel's own rounding before the conversion where the driver's is not trusted.
            assert_eq!(text.contains("fn f16_round("), operands == rounded);
            assert_eq!(
                text.contains("return f16(f16_round(x));"),
                operands == rounded
            );
            assert_eq!(text.contains("return f16(x);"), operands == converted);
            let case = format!("block {block}, {layout:?}, prefetched {prefetched}");
            assert!(!text.lines().any(|l| l.trim().starts_with("// @")));
            let lines = |prefix: &str| {
                text.lines()
                    .filter(|l| l.trim().starts_with(prefix))
                    .count()
            };
            let outputs = (block * block) as usize;
            assert_eq!(lines("var acc_"), outputs, "{case}");
            assert_eq!(lines("acc_"), outputs, "{case}");
            assert_eq!(lines("store_tile_output(bases.c"), outputs, "{case}");
            // Workgroup-memory loads: a scalar per operand, or a vec4 per four.
            let vec4_loads = match layout {
                BlockLayout::Strided => 0,
                BlockLayout::Contiguous => block as usize / 2,
            };
            assert_eq!(lines("let a_v") + lines("let b_v"), vec4_loads, "{case}");
            let operands = lines("let a_") + lines("let b_") - vec4_loads;
            assert_eq!(operands, 2 * block as usize, "{case}");
            assert!(text.contains(&format!("const BLOCK: u32 = {block}u;")));
            assert_eq!(text.starts_with("enable f16;"), f16);
            let last = block - 1;
            let expected = match layout {
                BlockLayout::Strided => format!(
                    "let b_{last} = f32(b_tile[bi + {}u]);",
                    last * MATMUL_THREADS
                ),
                BlockLayout::Contiguous => format!("let b_{last} = f32(b_v{}.w);", last / 4),
            };
            assert!(text.contains(&expected), "{case}: no `{expected}`");
            // BLOCK elements of each operand staged per thread and step, loaded in groups of
            // four where BLOCK allows; prefetched: declared and loaded before the loop, staged,
            // and loaded again for the next step; else loaded at the step.
            assert_eq!(lines("stage_a_element("), block as usize, "{case}");
            assert_eq!(lines("stage_b_element("), block as usize, "{case}");
            let (loads, grouped) = match block {
                2 => (2, false),
                _ => (block as usize / 4, true),
            };
            let group_loads = |side: &str| text.matches(&format!("load_{side}4(bases")).count();
            let (declared, reloaded) = match prefetched {
                true => ("var next_a_", loads),
                false => ("let next_a_", 0),
            };
            assert_eq!(lines(declared), loads, "{case}");
            assert_eq!(lines("next_a_"), reloaded, "{case}");
            for side in ["a", "b"] {
                let uses = text.matches(&format!("next_{side}_")).count();
                assert_eq!(uses, loads + reloaded + block as usize, "{case}");
                let expected = if grouped { loads + reloaded } else { 0 };
                assert_eq!(group_loads(side), expected, "{case}");
            }
        }
    }

    #[test]
    fn the_cooperative_kernel_is_written_for_its_shape() {
        let template = include_str!("shaders/matmul_cooperative.wgsl");
        for marker in ["// @shape", "// @groups"] {
            assert_eq!(template.lines().filter(|l| l.trim() == marker).count(), 1);
        }
        for ((side, threads), (split, block)) in [(16, 32), (8, 8), (16, 64), (8, 32)]
            .into_iter()
            .flat_map(|shape| [(shape, (1, 4)), (shape, (2, 4)), (shape, (1, 2))])
        {
            let shape = CooperativeShape { side, threads };
            let rounded = side == 16;
            let text = cooperative_source(shape, rounded, split, block);
            assert_eq!(text.contains("return f16(f16_round(x));"), rounded);
            assert_eq!(text.contains("return f16(x);"), !rounded);
            let case =
                format!("{side}×{side} on {threads}, {split}×{split} subgroups of {block}×{block}");
            assert!(text.starts_with("enable f16;"), "{case}");
            assert!(
                !text.lines().any(|l| l.trim().starts_with("// @")),
                "{case}"
            );
            for line in [
                format!("const COOP_SIDE: u32 = {side}u;"),
                format!("const COOP_THREADS: u32 = {threads}u;"),
                format!("const COOP_SPLIT: u32 = {split}u;"),
                format!("const COOP_BLOCK: u32 = {block}u;"),
                format!("alias CoopA = coop_mat{side}x{side}<f16, A>;"),
                format!("alias CoopC = coop_mat{side}x{side}<f32, C>;"),
            ] {
                assert!(text.contains(&line), "{case}: no `{line}`");
            }
            // A step's block·split·side × side operands of each matrix, four to a group, spread
            // over the workgroup's split²·threads invocations: every group staged once, from a
            // load at its own index.
            let groups = block * split * side * side / 4 / (split * split * threads);
            assert_eq!(shape.groups(split, block), Some(groups), "{case}");
            // Every accumulator: declared, multiplied once per step, stored either way.
            for i in 0..block {
                for j in 0..block {
                    let c = format!("c_{i}_{j}");
                    assert!(text.contains(&format!("var {c} = CoopC();")), "{case}");
                    assert_eq!(
                        text.matches(&format!("{c} = coopMultiplyAdd(a_{i}, b_{j}, {c});"))
                            .count(),
                        1,
                        "{case}"
                    );
                    assert!(
                        text.contains(&format!("coopStoreT({c}, &c[at_{i}_{j}]")),
                        "{case}"
                    );
                    assert!(text.contains(&format!("store_block({c}, ")), "{case}");
                }
            }
            assert!(!text.contains(&format!("c_{block}_0")), "{case}");
            for q in 0..groups {
                for side in ["a", "b"] {
                    let load = format!("lid + {q}u * COOP_INVOCATIONS)");
                    assert!(text.contains(&format!("load_{side}4(base, ")), "{case}");
                    assert_eq!(text.matches(&load).count(), 2, "{case}: {load}");
                }
                let stage = format!("stage_group(lid + {q}u * COOP_INVOCATIONS, a.q{q}, b.q{q});");
                assert_eq!(text.matches(&stage).count(), 1, "{case}: {stage}");
            }
            assert!(!text.contains(&format!("q{groups}")), "{case}");
        }
    }
}
