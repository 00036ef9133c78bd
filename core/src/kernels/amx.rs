//! Intel AMX (Advanced Matrix Extensions) for the packed products: blocks of 32 rows × 32
//! columns computed with tile registers, `tdpbf16ps` (bf16 pairs, f32 sums) or `tdpbusd`
//! (unsigned × signed bytes, exact i32 sums).
//!
//! The operands are the packed products' own layouts: a B tile is 16 consecutive groups
//! (pairs or quads) of one 16-column panel, i.e. 16 rows of 64 bytes at a 64-byte stride; an
//! A tile is 16 rows of an activation block, 16 groups each, at the block's row stride. So no
//! operand is copied for the tiles: each block is 2 × 2 tiles of 16 × 16 outputs, with the
//! inner dimension in steps of 16 groups (32 bf16 or 64 int8 values).
//!
//! Sums: `tdpbusd`'s are exact, so the int8 products give the same bits as every other int8
//! path. `tdpbf16ps` adds in an order Intel does not specify (measured on a Sapphire
//! Rapids-class Xeon: about a third of the elements of a 128 × 384 × 384 product match a
//! sequential f32 sum in either pair order, the rest differ in the last bits), so the bf16
//! products on AMX are their own kernel: deterministic, independent of how rows are split
//! between threads, within the same rounding bound as the others, but not their bits.
//!
//! Linux grants a process the tile registers' state only on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`available`] asks once.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Rows (and columns) of a block: 2 × 2 tiles of 16.
pub(crate) const BLOCK: usize = 32;
/// Groups (32-bit words of pairs or quads) per row of an A tile, rows of a B tile.
pub(crate) const GROUPS_PER_STEP: usize = 16;

/// Whether [`set_amx`] allows AMX (the default).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Allows or forbids AMX for the packed products from now on (`DEBERTA_CPU_AMX`); without
/// it they run on AVX-512 (a tuning and comparison knob).
pub fn set_amx(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the packed products run on AMX: allowed ([`set_amx`]), the SIMD level is AVX-512
/// (`DEBERTA_CPU_SIMD` caps it), the CPU has AMX-TILE, AMX-BF16 and AMX-INT8, and the
/// operating system granted this process the tile state.
pub fn available() -> bool {
    ENABLED.load(Ordering::Relaxed)
        && crate::simd::simd_level() == crate::simd::SimdLevel::Avx512
        && granted()
}

/// The CPU's AMX support and the operating system's permission, checked once.
fn granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx() && request_tile_state())
}

/// CPUID leaf 7: EDX bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8.
fn cpu_has_amx() -> bool {
    let max_leaf = core::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = core::arch::x86_64::__cpuid_count(7, 0).edx;
    let bits = (1 << 22) | (1 << 24) | (1 << 25);
    edx & bits == bits
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, 18)`); elsewhere AMX
/// is not used.
fn request_tile_state() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: the arch_prctl system call with ARCH_REQ_XCOMP_PERM only extends the set
        // of extended states this process may use (it reads and writes no memory of ours);
        // the kernel clobbers rcx and r11 on `syscall`, declared here.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The dot product a block is computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dot {
    /// `tdpbf16ps`: bf16 pairs, f32 sums.
    Bf16,
    /// `tdpbusd`: unsigned activation bytes × signed weight bytes, i32 sums.
    Int8,
}

/// A 32-bit word a block's sums are stored as: `u32` (the f32 bits of `Dot::Bf16`, or any
/// bits) or `i32` (the sums of `Dot::Int8`, read as they are).
pub(crate) trait BlockWord: Copy + private::Sealed {}

impl BlockWord for u32 {}
impl BlockWord for i32 {}

mod private {
    /// Restricts [`super::BlockWord`] to plain 32-bit integers (every bit pattern valid).
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for i32 {}
}

/// Tile registers configured for blocks (palette 1, eight tiles of 16 rows × 64 bytes) on
/// this thread for as long as the value lives; released on drop.
pub(crate) struct Tiles(());

impl Tiles {
    /// Configures the tiles of the calling thread. Only when [`available`].
    pub(crate) fn configure() -> Tiles {
        assert!(granted(), "AMX tiles configured without permission");
        let mut config = [0u8; 64];
        config[0] = 1;
        for tile in 0..8 {
            config[16 + 2 * tile] = 64;
            config[48 + tile] = 16;
        }
        // SAFETY: the CPU has AMX and the process holds the tile state (asserted above);
        // `config` is a valid 64-byte palette-1 configuration that `ldtilecfg` only reads.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) config.as_ptr(), options(nostack, readonly));
        }
        Tiles(())
    }

    /// One block: `c[r][col] = Σ_g a[r, g] · b[panel(col), g, lane(col)]` over `steps × 16`
    /// groups, for the 32 rows at `a` (row stride `a_stride` words, 16 groups per step) and
    /// the two panels at `b0` and `b1` (each `steps × 16` groups of 16 words). `c` is
    /// overwritten with f32 (`Dot::Bf16`) or i32 (`Dot::Int8`) bits.
    pub(crate) fn block<W: BlockWord>(
        &mut self,
        dot: Dot,
        a: (&[u32], usize),
        b: [&[u32]; 2],
        steps: usize,
        c: &mut [[W; BLOCK]; BLOCK],
    ) {
        check_operands(a, b, steps);
        // SAFETY: the operands were checked above; `c` holds 32 rows of 32 words at a
        // stride of 32 words.
        unsafe { self.run(dot, a, b, steps, (c.as_mut_ptr().cast(), BLOCK, false)) }
    }

    /// One bf16 block computed straight into `out`: `out[r·stride + col] (+)= Σ_g a[r, g] ·
    /// b[panel(col), g, lane(col)]` for the 32 rows and 32 columns of the block (the sums
    /// start from the existing values when `accumulate`, else from zero); operands as in
    /// [`Tiles::block`].
    pub(crate) fn bf16_block_into(
        &mut self,
        a: (&[u32], usize),
        b: [&[u32]; 2],
        steps: usize,
        (out, stride, accumulate): (&mut [f32], usize, bool),
    ) {
        check_operands(a, b, steps);
        assert!(stride >= BLOCK && out.len() >= (BLOCK - 1) * stride + BLOCK);
        // SAFETY: the operands were checked above, and `out` holds 32 rows of 32 values at
        // `stride` (asserted).
        unsafe {
            self.run(
                Dot::Bf16,
                a,
                b,
                steps,
                (out.as_mut_ptr().cast(), stride, accumulate),
            )
        }
    }

    /// The block of [`Tiles::block`] into the 32 × 32 words at `c` (row stride `c_stride`
    /// words), starting from the words there when `load`, else from zero.
    ///
    /// # Safety
    ///
    /// The operands must pass [`check_operands`], and `c` must be valid for reads and writes
    /// of rows `0..32`, columns `0..32` at `c_stride`.
    unsafe fn run(
        &mut self,
        dot: Dot,
        (a, a_stride): (&[u32], usize),
        [b0, b1]: [&[u32]; 2],
        steps: usize,
        (c, c_stride, load): (*mut u32, usize, bool),
    ) {
        let step_words = GROUPS_PER_STEP * crate::kernels::PANEL;
        let (a, b0, b1) = (a.as_ptr(), b0.as_ptr(), b1.as_ptr());
        let (a_bytes, c_bytes) = (a_stride * 4, c_stride * 4);
        /// One step of 16 groups: load the A and B tiles, four dot products with `$dot`.
        macro_rules! step {
            ($dot:literal, $a0:expr, $a1:expr, $b0:expr, $b1:expr) => {
                asm!(
                    "tileloadd tmm4, [{a0} + {stride}*1]",
                    "tileloadd tmm5, [{a1} + {stride}*1]",
                    "tileloadd tmm6, [{b0} + {row}*1]",
                    "tileloadd tmm7, [{b1} + {row}*1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    concat!($dot, " tmm2, tmm5, tmm6"),
                    concat!($dot, " tmm3, tmm5, tmm7"),
                    a0 = in(reg) $a0,
                    a1 = in(reg) $a1,
                    b0 = in(reg) $b0,
                    b1 = in(reg) $b1,
                    stride = in(reg) a_bytes,
                    row = in(reg) 64usize,
                    options(nostack, readonly),
                )
            };
        }
        // SAFETY: the tiles are configured (this value exists); every load reads 16 rows of
        // 64 bytes inside the operands (the caller's contract: A's rows `0..32` at
        // `a_stride` words, groups `16·s..16·s + 16`; B's words `s·256..s·256 + 256`; C's
        // rows `0..32`, columns `0..32` at `c_stride`).
        unsafe {
            let (c0, c1) = (c, c.add(16));
            let (c2, c3) = (c.add(16 * c_stride), c.add(16 * c_stride + 16));
            if load {
                asm!(
                    "tileloadd tmm0, [{c0} + {stride}*1]",
                    "tileloadd tmm1, [{c1} + {stride}*1]",
                    "tileloadd tmm2, [{c2} + {stride}*1]",
                    "tileloadd tmm3, [{c3} + {stride}*1]",
                    c0 = in(reg) c0,
                    c1 = in(reg) c1,
                    c2 = in(reg) c2,
                    c3 = in(reg) c3,
                    stride = in(reg) c_bytes,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for s in 0..steps {
                let a0 = a.add(s * GROUPS_PER_STEP);
                let a1 = a0.add(16 * a_stride);
                let (b0, b1) = (b0.add(s * step_words), b1.add(s * step_words));
                match dot {
                    Dot::Bf16 => step!("tdpbf16ps", a0, a1, b0, b1),
                    Dot::Int8 => step!("tdpbusd", a0, a1, b0, b1),
                }
            }
            asm!(
                "tilestored [{c0} + {stride}*1], tmm0",
                "tilestored [{c1} + {stride}*1], tmm1",
                "tilestored [{c2} + {stride}*1], tmm2",
                "tilestored [{c3} + {stride}*1], tmm3",
                c0 = in(reg) c0,
                c1 = in(reg) c1,
                c2 = in(reg) c2,
                c3 = in(reg) c3,
                stride = in(reg) c_bytes,
                options(nostack),
            );
        }
    }
}

/// Asserts that the operands of a block cover what it reads: 32 rows of `a` at `a_stride`
/// words with `steps × 16` groups each, and `steps × 256` words of each panel.
fn check_operands((a, a_stride): (&[u32], usize), [b0, b1]: [&[u32]; 2], steps: usize) {
    let step_words = GROUPS_PER_STEP * crate::kernels::PANEL;
    assert!(a_stride >= steps * GROUPS_PER_STEP);
    assert!(steps == 0 || a.len() >= (BLOCK - 1) * a_stride + steps * GROUPS_PER_STEP);
    assert!(b0.len() >= steps * step_words && b1.len() >= steps * step_words);
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; `tilerelease` returns them to
        // the initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
