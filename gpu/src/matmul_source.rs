//! The WGSL text of the matmul kernels for one register block and operand type: the operand
//! header, `BLOCK`, and `matmul.wgsl` with the tiled kernel's register block written out as
//! straight-line code.
//!
//! Written out rather than looped over: accumulators in an array indexed inside loops stay in
//! registers only if the driver unrolls those loops, and naga's SPIR-V (whose loops carry an
//! extra iteration bound) left them in local memory on an NVIDIA H200 — the 128-wide kernel ran
//! at a third of the speed of the hand-unrolled 64-wide one it replaced. Scalars with constant
//! names have nowhere else to go.

use std::fmt::Write;

use crate::kernels::MATMUL_THREADS;

/// The marker lines of `matmul.wgsl` that this module fills in.
const ACCUMULATORS: &str = "// @accumulators";
const MULTIPLY_ACCUMULATE: &str = "// @multiply_accumulate";
const STORE: &str = "// @store";

/// The matmul shader (`matmul_tiled`, `matmul_small`, `matmul_sum_splits`) whose tiled kernel
/// holds a `block × block` register block of C per thread, with f16 operands (`enable f16;`)
/// or f32 ones.
pub(crate) fn matmul_source(block: u32, f16_operands: bool) -> String {
    let header = match f16_operands {
        true => include_str!("shaders/matmul_f16.wgsl"),
        false => include_str!("shaders/matmul_f32.wgsl"),
    };
    let mut text = format!(
        "{header}// Outputs per thread along each side of C's tile.\nconst BLOCK: u32 = {block}u;\n"
    );
    for line in include_str!("shaders/matmul.wgsl").lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        match line.trim() {
            ACCUMULATORS => accumulators(&mut text, indent, block),
            MULTIPLY_ACCUMULATE => multiply_accumulate(&mut text, indent, block),
            STORE => store(&mut text, indent, block),
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
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
fn multiply_accumulate(text: &mut String, indent: &str, block: u32) {
    for (side, tile, base) in [("a", "a_tile", "ai"), ("b", "b_tile", "bi")] {
        for i in 0..block {
            let _ = writeln!(
                text,
                "{indent}let {side}_{i} = f32({tile}[{base} + {}u]);",
                i * MATMUL_THREADS
            );
        }
    }
    for i in 0..block {
        for j in 0..block {
            let _ = writeln!(text, "{indent}acc_{i}_{j} += a_{i} * b_{j};");
        }
    }
}

/// `store_tile_output(bases.c, row + 16·i, col + 16·j, acc_i_j)` for every output.
fn store(text: &mut String, indent: &str, block: u32) {
    for i in 0..block {
        for j in 0..block {
            let _ = writeln!(
                text,
                "{indent}store_tile_output(bases.c, row + {}u, col + {}u, acc_{i}_{j});",
                i * MATMUL_THREADS,
                j * MATMUL_THREADS
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marker_is_filled_in_and_nothing_else_changes() {
        let template = include_str!("shaders/matmul.wgsl");
        for marker in [ACCUMULATORS, MULTIPLY_ACCUMULATE, STORE] {
            assert_eq!(
                template.lines().filter(|l| l.trim() == marker).count(),
                1,
                "{marker}"
            );
        }
        for (block, f16) in [(2, false), (4, true), (8, false)] {
            let text = matmul_source(block, f16);
            assert!(!text.lines().any(|l| l.trim().starts_with("// @")));
            let lines = |prefix: &str| {
                text.lines()
                    .filter(|l| l.trim().starts_with(prefix))
                    .count()
            };
            let outputs = (block * block) as usize;
            assert_eq!(lines("var acc_"), outputs, "block {block}");
            assert_eq!(lines("acc_"), outputs, "block {block}");
            assert_eq!(lines("store_tile_output(bases.c"), outputs);
            assert_eq!(lines("let a_") + lines("let b_"), 2 * block as usize);
            assert!(text.contains(&format!("const BLOCK: u32 = {block}u;")));
            assert_eq!(text.starts_with("enable f16;"), f16);
            let last = block - 1;
            assert!(text.contains(&format!(
                "let b_{last} = f32(b_tile[bi + {}u]);",
                last * MATMUL_THREADS
            )));
        }
    }
}
