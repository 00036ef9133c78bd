//! Heap-free matrix and dot products (f32 and int8) for the edge runtime.
//!
//! `kernels::matmul` goes through gemm or matrixmultiply, both of which
//! allocate their packing buffers on the heap (and link `alloc`), so the runtime uses these
//! instead: plain row-major loops, four partial sums per dot product (enough for the FPU
//! pipeline of a Cortex-M4 and for the host compiler to vectorise), in a fixed order. With
//! the `cortex-m-dsp` feature on Arm the inner loops are assembly (`LDRD`, `SXTB16`, `SMLAD`
//! for int8; on hard-float targets `VLDM` and `VMLA.F32` for f32) that computes the same
//! values in the same order with fewer instructions.

use super::EdgeError;

fn short(operand: &'static str, needed: usize, len: usize) -> EdgeError {
    EdgeError::Kernel(crate::Error::BufferTooSmall {
        kernel: "edge gemm",
        operand,
        needed,
        len,
    })
}

/// Checks that `len` holds `rows` rows of `cols` elements starting `stride` apart (plus an
/// `offset`); overflow counts as too short.
fn require(
    operand: &'static str,
    len: usize,
    (rows, cols, stride, offset): (usize, usize, usize, usize),
) -> Result<(), EdgeError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let needed = (rows - 1)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(offset))
        .and_then(|n| n.checked_add(cols))
        .ok_or(short(operand, usize::MAX, len))?;
    if len < needed {
        return Err(short(operand, needed, len));
    }
    Ok(())
}

/// `Σᵢ a[i]·b[i]` over the shorter slice, as four interleaved partial sums added at the end.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut lanes, done) = dot_lanes(a, b);
    let (a, b) = (&a[done..], &b[done..]);
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for lane in 0..4 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

/// The four partial sums of [`dot`] over the first `n − n mod 8` values of two slices of
/// length `n`, and that count. On hard-float Cortex-M (feature `cortex-m-dsp`) each
/// iteration loads eight values of each slice with one `VLDM` and adds the eight products to
/// the lanes with `VMLA.F32` (multiply, round, add, round: the same operations and order as
/// the portable loop).
#[cfg(all(target_arch = "arm", target_abi = "eabihf", feature = "cortex-m-dsp"))]
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> ([f32; 4], usize) {
    let blocks = a.len().min(b.len()) / 8;
    let mut lanes = [0.0f32; 4];
    if blocks == 0 {
        return (lanes, 0);
    }
    // SAFETY: the loop runs `blocks ≥ 1` times and reads 8 f32 (32 bytes) from each slice per
    // iteration, so it reads `8·blocks ≤ len` values of each; the lanes are read from and
    // written back to `lanes` (four f32). f32 data is word-aligned, as `VLDM` and `VSTM`
    // require. Only the named registers and `lanes` are written (s0–s19 are declared
    // clobbered, the pointers and the counter are discarded copies); no flags are read
    // afterwards.
    unsafe {
        core::arch::asm!(
            "vldmia {pl}, {{s16-s19}}",
            "2:",
            "vldmia {pa}!, {{s0-s7}}",
            "vldmia {pb}!, {{s8-s15}}",
            "vmla.f32 s16, s0, s8",
            "vmla.f32 s17, s1, s9",
            "vmla.f32 s18, s2, s10",
            "vmla.f32 s19, s3, s11",
            "vmla.f32 s16, s4, s12",
            "vmla.f32 s17, s5, s13",
            "vmla.f32 s18, s6, s14",
            "vmla.f32 s19, s7, s15",
            "subs {count}, {count}, #1",
            "bne 2b",
            "vstmia {pl}, {{s16-s19}}",
            pa = inout(reg) a.as_ptr() => _,
            pb = inout(reg) b.as_ptr() => _,
            pl = in(reg) lanes.as_mut_ptr(),
            count = inout(reg) blocks => _,
            out("s0") _, out("s1") _, out("s2") _, out("s3") _,
            out("s4") _, out("s5") _, out("s6") _, out("s7") _,
            out("s8") _, out("s9") _, out("s10") _, out("s11") _,
            out("s12") _, out("s13") _, out("s14") _, out("s15") _,
            out("s16") _, out("s17") _, out("s18") _, out("s19") _,
            options(nostack),
        );
    }
    (lanes, 8 * blocks)
}

/// The portable [`dot`] starts with empty lanes.
#[cfg(not(all(target_arch = "arm", target_abi = "eabihf", feature = "cortex-m-dsp")))]
#[inline(always)]
fn dot_lanes(_: &[f32], _: &[f32]) -> ([f32; 4], usize) {
    ([0.0; 4], 0)
}

/// `Σᵢ a[i]·b[i]` of int8 values over the shorter slice, accumulated in i32 (wrapping; with
/// at most 65,536 terms of at most 128² each, `|Σ| ≤ 2³⁰`, it cannot wrap). Integer addition is
/// associative, so the Armv7E-M DSP path (feature `cortex-m-dsp`) gives the same result as
/// the portable loop.
#[inline]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut acc, done) = mac1x8(a, b);
    let (a, b) = (&a[done..], &b[done..]);
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        acc = mac4(acc, x, y);
    }
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        acc = acc.wrapping_add(i32::from(x) * i32::from(y));
    }
    acc
}

/// [`dot_i8`] of two rows with the same weights, `(a0·w, a1·w)`: on Armv7E-M each word of
/// `w` is sign-extended once for both rows.
#[inline]
pub(crate) fn dot2_i8(a0: &[i8], a1: &[i8], w: &[i8]) -> (i32, i32) {
    #[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
    {
        let n = a0.len().min(a1.len()).min(w.len());
        let (a0, a1, w) = (&a0[..n], &a1[..n], &w[..n]);
        let tail = n - n % 8;
        let (acc0, acc1) = mac2x8(&a0[..tail], &a1[..tail], &w[..tail]);
        (
            acc0.wrapping_add(dot_i8(&a0[tail..], &w[tail..])),
            acc1.wrapping_add(dot_i8(&a1[tail..], &w[tail..])),
        )
    }
    #[cfg(not(all(target_arch = "arm", feature = "cortex-m-dsp")))]
    {
        (dot_i8(a0, w), dot_i8(a1, w))
    }
}

/// Four int8 values as one little-endian word.
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
#[inline(always)]
fn word(v: &[i8]) -> u32 {
    u32::from_le_bytes([v[0] as u8, v[1] as u8, v[2] as u8, v[3] as u8])
}

/// `(Σ x·w, Σ y·w)` over slices of one length that is a multiple of 8, eight values of each
/// per iteration: each pair of words of `x` and `w` comes in with one `LDRD`, each word of `w`
/// is sign-extended once (`SXTB16`, bytes 0 and 2, then 1 and 3) for both rows, and `SMLAD`
/// multiplies and adds the halfword pairs. `LDRD` needs word-aligned addresses, so `x` and `w`
/// that are not start with the portable loop (the same sums).
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
#[inline(always)]
fn mac2x8(x: &[i8], y: &[i8], w: &[i8]) -> (i32, i32) {
    let n = w.len();
    let (mut acc0, mut acc1) = (0i32, 0i32);
    if n < 8 || x.len() != n || y.len() != n || !n.is_multiple_of(8) {
        return (dot_i8(x, w), dot_i8(y, w));
    }
    if !(x.as_ptr().addr() | w.as_ptr().addr()).is_multiple_of(4) {
        return (dot_i8(x, w), dot_i8(y, w));
    }
    // SAFETY: the loop runs n / 8 ≥ 1 times and each iteration reads 8 bytes from each of
    // `x`, `y` and `w` (all of length n, checked above) at increasing addresses, so every load
    // stays inside the slices. `LDRD` is only used on `x` and `w`, whose addresses were checked
    // to be word-aligned (and stay so, advancing by 8); `y` is read with `LDR`, which accepts
    // any address on the Cortex-M4 (CCR.UNALIGN_TRP = 0 at reset), as the compiler's own word
    // loads assume. Only the named registers are written (the pointers and the counter are
    // discarded copies); SMLAD may set the sticky Q flag, which Rust code never reads.
    unsafe {
        core::arch::asm!(
            "2:",
            "ldrd {a}, {b}, [{pw}], #8",
            "sxtb16 {w0}, {a}",
            "sxtb16 {w1}, {a}, ror #8",
            "ldrd {c}, {d}, [{px}], #8",
            "sxtb16 {a}, {c}",
            "smlad {acc0}, {a}, {w0}, {acc0}",
            "sxtb16 {a}, {c}, ror #8",
            "smlad {acc0}, {a}, {w1}, {acc0}",
            "ldr {c}, [{py}], #4",
            "sxtb16 {a}, {c}",
            "smlad {acc1}, {a}, {w0}, {acc1}",
            "sxtb16 {a}, {c}, ror #8",
            "smlad {acc1}, {a}, {w1}, {acc1}",
            "sxtb16 {w0}, {b}",
            "sxtb16 {w1}, {b}, ror #8",
            "sxtb16 {a}, {d}",
            "smlad {acc0}, {a}, {w0}, {acc0}",
            "sxtb16 {a}, {d}, ror #8",
            "smlad {acc0}, {a}, {w1}, {acc0}",
            "ldr {c}, [{py}], #4",
            "sxtb16 {a}, {c}",
            "smlad {acc1}, {a}, {w0}, {acc1}",
            "sxtb16 {a}, {c}, ror #8",
            "smlad {acc1}, {a}, {w1}, {acc1}",
            "subs {count}, {count}, #1",
            "bne 2b",
            pw = inout(reg) w.as_ptr() => _,
            px = inout(reg) x.as_ptr() => _,
            py = inout(reg) y.as_ptr() => _,
            count = inout(reg) n / 8 => _,
            acc0 = inout(reg) acc0,
            acc1 = inout(reg) acc1,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            w0 = out(reg) _,
            w1 = out(reg) _,
            options(pure, readonly, nostack),
        );
    }
    (acc0, acc1)
}

/// `Σ x·y` over the first `n − n mod 8` values of two int8 slices of length `n` that start
/// at word-aligned addresses, and that count (0 otherwise: `LDRD` needs aligned addresses):
/// two words of each per iteration with one `LDRD` each, `SXTB16` and `SMLAD`.
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
#[inline(always)]
fn mac1x8(x: &[i8], y: &[i8]) -> (i32, usize) {
    let blocks = x.len().min(y.len()) / 8;
    let mut acc = 0i32;
    if blocks == 0 || !(x.as_ptr().addr() | y.as_ptr().addr()).is_multiple_of(4) {
        return (acc, 0);
    }
    // SAFETY: the loop runs `blocks ≥ 1` times and reads 8 bytes of each slice per iteration,
    // `8·blocks ≤ len` in all, from word-aligned addresses (checked above, advancing by 8), as
    // `LDRD` requires. Only the named registers are written (the pointers and the counter are
    // discarded copies); SMLAD may set the sticky Q flag, which Rust code never reads.
    unsafe {
        core::arch::asm!(
            "2:",
            "ldrd {a}, {b}, [{px}], #8",
            "ldrd {c}, {d}, [{py}], #8",
            "sxtb16 {t}, {a}",
            "sxtb16 {u}, {c}",
            "smlad {acc}, {t}, {u}, {acc}",
            "sxtb16 {t}, {a}, ror #8",
            "sxtb16 {u}, {c}, ror #8",
            "smlad {acc}, {t}, {u}, {acc}",
            "sxtb16 {t}, {b}",
            "sxtb16 {u}, {d}",
            "smlad {acc}, {t}, {u}, {acc}",
            "sxtb16 {t}, {b}, ror #8",
            "sxtb16 {u}, {d}, ror #8",
            "smlad {acc}, {t}, {u}, {acc}",
            "subs {count}, {count}, #1",
            "bne 2b",
            px = inout(reg) x.as_ptr() => _,
            py = inout(reg) y.as_ptr() => _,
            count = inout(reg) blocks => _,
            acc = inout(reg) acc,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            t = out(reg) _,
            u = out(reg) _,
            options(pure, readonly, nostack),
        );
    }
    (acc, 8 * blocks)
}

/// The portable [`dot_i8`] starts from nothing.
#[cfg(not(all(target_arch = "arm", feature = "cortex-m-dsp")))]
#[inline(always)]
fn mac1x8(_: &[i8], _: &[i8]) -> (i32, usize) {
    (0, 0)
}

/// `acc + Σ x[i]·y[i]` over four int8 values.
#[cfg(not(all(target_arch = "arm", feature = "cortex-m-dsp")))]
#[inline(always)]
fn mac4(acc: i32, x: &[i8], y: &[i8]) -> i32 {
    x.iter().zip(y).fold(acc, |acc, (&a, &b)| {
        acc.wrapping_add(i32::from(a) * i32::from(b))
    })
}

/// `acc + Σ x[i]·y[i]` over four int8 values: each word split into two pairs of sign-extended
/// halfwords (`SXTB16`, bytes 0 and 2, then 1 and 3), multiplied and added pairwise by `SMLAD`.
#[cfg(all(target_arch = "arm", feature = "cortex-m-dsp"))]
#[inline(always)]
fn mac4(acc: i32, x: &[i8], y: &[i8]) -> i32 {
    let (x, y) = (word(x), word(y));
    let mut acc = acc;
    // SAFETY: SXTB16 and SMLAD are register-only instructions of the DSP extension, which the
    // `cortex-m-dsp` feature promises the target has; the block reads and writes only the
    // named registers (no memory, no stack). SMLAD may set the sticky Q flag, which Rust code
    // never reads, so flags are not declared preserved.
    unsafe {
        core::arch::asm!(
            "sxtb16 {x0}, {x}",
            "sxtb16 {y0}, {y}",
            "smlad {acc}, {x0}, {y0}, {acc}",
            "sxtb16 {x0}, {x}, ror #8",
            "sxtb16 {y0}, {y}, ror #8",
            "smlad {acc}, {x0}, {y0}, {acc}",
            x = in(reg) x,
            y = in(reg) y,
            x0 = out(reg) _,
            y0 = out(reg) _,
            acc = inout(reg) acc,
            options(pure, nomem, nostack),
        );
    }
    acc
}

/// `C = α·A·Bᵀ` for row-major `A` `[m, k]` and `B` `[n, k]` into row-major `C` `[m, n]`: a
/// linear layer (`B` = weight rows) or a score matrix (`Q·Kᵀ`).
pub(crate) fn matmul_transposed(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, n, k): (usize, usize, usize),
    alpha: f32,
) -> Result<(), EdgeError> {
    require("a", a.len(), (m, k, k, 0))?;
    require("b", b.len(), (n, k, k, 0))?;
    require("c", c.len(), (m, n, n, 0))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    for (a_row, c_row) in a.chunks_exact(k.max(1)).zip(c.chunks_exact_mut(n)).take(m) {
        for (out, b_row) in c_row.iter_mut().zip(b.chunks_exact(k.max(1))) {
            *out = alpha * dot(&a_row[..k], &b_row[..k]);
        }
    }
    Ok(())
}

/// `C[:, offset .. offset + n] = A·B` for row-major `A` `[m, k]` and `B` `[k, n]`, into the
/// columns of a row-major `C` with `ldc` columns (one head's context inside `[L, h·d]`).
pub(crate) fn matmul_into_columns(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (ldc, offset): (usize, usize),
) -> Result<(), EdgeError> {
    require("a", a.len(), (m, k, k, 0))?;
    require("b", b.len(), (k, n, n, 0))?;
    require("c", c.len(), (m, n, ldc, offset))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    for i in 0..m {
        let a_row = &a[i * k..(i + 1) * k];
        let out = &mut c[i * ldc + offset..i * ldc + offset + n];
        // Eight columns at a time are summed in registers, each in the order of `t` (the same
        // sums as one column at a time).
        let mut blocks = out.chunks_exact_mut(COLUMNS);
        for (block, first) in blocks.by_ref().zip((0..).step_by(COLUMNS)) {
            let mut acc = [0.0f32; COLUMNS];
            for (&weight, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
                if let Some(v) = b_row[first..].first_chunk::<COLUMNS>() {
                    for (o, &v) in acc.iter_mut().zip(v) {
                        *o += weight * v;
                    }
                }
            }
            block.copy_from_slice(&acc);
        }
        let rest = blocks.into_remainder();
        let first = n - rest.len();
        rest.fill(0.0);
        for (&weight, b_row) in a_row.iter().zip(b.chunks_exact(n)) {
            for (o, &v) in rest.iter_mut().zip(&b_row[first..]) {
                *o += weight * v;
            }
        }
    }
    Ok(())
}

/// Columns of [`matmul_into_columns`] accumulated together.
const COLUMNS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> [f32; 64] {
        core::array::from_fn(|i| {
            if i < n {
                ((i * 7 + seed * 13) % 11) as f32 * 0.25 - 1.2
            } else {
                0.0
            }
        })
    }

    #[test]
    fn products_match_naive_sums() {
        let (m, n, k) = (3, 4, 5);
        let (a, b) = (values(m * k, 1), values(n * k, 2));
        let mut c = [0.0f32; 12];
        matmul_transposed(&a, &b, &mut c, (m, n, k), 0.5).unwrap();
        for i in 0..m {
            for j in 0..n {
                let naive: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((c[i * n + j] - 0.5 * naive).abs() < 1e-5);
            }
        }
        let b = values(k * n, 3);
        let mut wide = [9.0f32; 3 * 7];
        matmul_into_columns(&a, &b, &mut wide, (m, n, k), (7, 2)).unwrap();
        for i in 0..m {
            assert_eq!(wide[i * 7..i * 7 + 2], [9.0, 9.0]);
            assert_eq!(wide[i * 7 + 6], 9.0);
            for j in 0..n {
                let naive: f32 = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
                assert!((wide[i * 7 + 2 + j] - naive).abs() < 1e-5);
            }
        }
        assert!(matmul_into_columns(&a, &b, &mut wide[..20], (m, n, k), (7, 3)).is_err());
        assert!(matmul_transposed(&a[..14], &b, &mut c, (m, n, k), 1.0).is_err());
        assert_eq!(dot(&[1.0, 2.0, 3.0, 4.0, 5.0], &[1.0; 5]), 15.0);
        let a: [i8; 11] = [127, -128, 5, -7, 0, 1, -1, 100, -100, 33, -128];
        let b: [i8; 11] = [-128, -128, 127, 3, 9, -1, -1, 100, 100, -2, 127];
        for n in 0..=11 {
            let naive: i32 = (0..n).map(|i| i32::from(a[i]) * i32::from(b[i])).sum();
            assert_eq!(dot_i8(&a[..n], &b[..n]), naive);
            let other: i32 = (0..n).map(|i| i32::from(b[i]) * i32::from(b[i])).sum();
            assert_eq!(dot2_i8(&a[..n], &b[..n], &b[..n]), (naive, other));
        }
    }
}
