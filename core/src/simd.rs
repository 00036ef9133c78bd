//! Runtime instruction-set dispatch for the slice kernels (sgemm dispatches inside gemm).
//!
//! A portable build targets its architecture's baseline (SSE2 on x86-64). With `std` on
//! x86-64, the kernels defined through `multiversion!` are compiled
//! three times — baseline, AVX2, AVX-512 — and each call runs the widest version the CPU
//! supports (at most [`set_max_simd_level`]'s cap). The versions evaluate the same IEEE
//! operations in the same order (reductions keep fixed lanes, and nothing is contracted into
//! FMAs), so the results are bit-identical whichever runs; only the speed differs.

use core::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// The compilation target's baseline (SSE2 on x86-64; everything without `std`).
    Baseline = 0,
    /// x86-64 AVX2 (256-bit vectors).
    Avx2 = 1,
    /// x86-64 AVX-512F (512-bit vectors).
    Avx512 = 2,
}

impl SimdLevel {
    /// The level's name, as `DEBERTA_CPU_SIMD` spells it: `baseline`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

/// The cap set by [`set_max_simd_level`] (`u8::MAX`: none).
static MAX_LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the level the kernels use from now on (`None` lifts the cap), e.g. to compare the
/// versions; it never raises the level above what the CPU supports.
pub fn set_max_simd_level(level: Option<SimdLevel>) {
    MAX_LEVEL.store(level.map_or(u8::MAX, |l| l as u8), Ordering::Relaxed);
}

/// The level the kernels run at: the widest the CPU supports, within the cap.
#[inline]
pub fn simd_level() -> SimdLevel {
    let cap = MAX_LEVEL.load(Ordering::Relaxed);
    let supported = supported_level();
    if (supported as u8) <= cap {
        supported
    } else if cap >= SimdLevel::Avx2 as u8 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Baseline
    }
}

/// The widest level this CPU supports (std caches the detection).
#[inline]
fn supported_level() -> SimdLevel {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// `√x`, correctly rounded as IEEE 754 requires, in a form the loop vectoriser widens: with
/// `std`, `f32::sqrt` (LLVM's `sqrt` intrinsic, `vsqrtps` in a vectorised loop); without it,
/// `libm::sqrtf`, whose scalar instruction LLVM cannot widen (a loop calling it runs one
/// element at a time). Both give the same bits.
#[inline(always)]
pub(crate) fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        x.sqrt()
    }
    #[cfg(not(feature = "std"))]
    {
        libm::sqrtf(x)
    }
}

/// Defines a function whose body is compiled once per [`SimdLevel`](crate::simd::SimdLevel)
/// (on x86-64 with `std`; once elsewhere) and dispatched at run time. Helpers the body calls
/// must be `#[inline(always)]` to be compiled at the body's level. Parameters must be plain
/// identifiers.
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            {
                /// The body compiled for AVX-512F.
                ///
                /// # Safety
                ///
                /// The CPU must support AVX-512F.
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                /// The body compiled for AVX2.
                ///
                /// # Safety
                ///
                /// The CPU must support AVX2.
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                match $crate::simd::simd_level() {
                    // SAFETY: `simd_level` never exceeds what the CPU supports (run-time check).
                    $crate::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::SimdLevel::Baseline => {}
                }
            }
            portable($($arg),*)
        }
    };
}

pub(crate) use multiversion;
