//! Reading byte buffers as slices of plain numbers without copying: the model file's f32 and
//! int8 tensors in place, and the typed regions of the caller's byte arena. This is the only
//! `unsafe` of the edge runtime; every view checks alignment and length first and returns
//! `None` instead.

use core::mem::{align_of, size_of};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for i8 {}
}

/// Types without padding for which every bit pattern is a valid value (so any aligned bytes
/// of the right length are a valid slice of them).
pub(crate) trait Plain: Copy + sealed::Sealed {}

impl Plain for f32 {}
impl Plain for u32 {}
impl Plain for i8 {}

fn fits<T: Plain>(bytes: &[u8]) -> bool {
    bytes.as_ptr().addr().is_multiple_of(align_of::<T>())
        && bytes.len().is_multiple_of(size_of::<T>())
}

/// `bytes` as a `&[T]`, or `None` when they are misaligned for `T` or not a whole number of
/// elements. Values are in the target's byte order.
pub(crate) fn view<T: Plain>(bytes: &[u8]) -> Option<&[T]> {
    if !fits::<T>(bytes) {
        return None;
    }
    // SAFETY: the pointer is non-null, aligned for `T` (checked above) and valid for reads of
    // `bytes.len()` bytes = `len / size_of::<T>()` elements (the length is a multiple of the
    // element size, checked above) for the lifetime of `bytes`, which the result borrows.
    // `T: Plain` has no padding and no invalid bit patterns, so every element is initialised
    // and valid; the memory is not mutated while the shared borrow lives.
    Some(unsafe {
        core::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size_of::<T>())
    })
}

/// `bytes` as a `&mut [T]`, under the same conditions as [`view`].
pub(crate) fn view_mut<T: Plain>(bytes: &mut [u8]) -> Option<&mut [T]> {
    if !fits::<T>(bytes) {
        return None;
    }
    // SAFETY: as in `view`; additionally the result takes over the unique borrow of `bytes`,
    // so nothing else can read or write the memory while it lives, and any value written
    // through it is a valid byte pattern for `u8` when the borrow ends.
    Some(unsafe {
        core::slice::from_raw_parts_mut(
            bytes.as_mut_ptr().cast::<T>(),
            bytes.len() / size_of::<T>(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_alignment_and_length() {
        let words = [1.5f32, -2.0, 0.25];
        let mut buf = [0u8; 20];
        let base = (4 - buf.as_ptr().addr() % 4) % 4;
        for (chunk, w) in buf[base..base + 12].chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(view::<f32>(&buf[base..base + 12]), Some(&words[..]));
        assert_eq!(view::<f32>(&buf[base..base + 11]), None);
        assert_eq!(view::<f32>(&buf[base + 1..base + 13]), None);
        assert_eq!(
            view::<i8>(&buf[base + 1..base + 4]).map(<[i8]>::len),
            Some(3)
        );
        let out = view_mut::<u32>(&mut buf[base..base + 8]).unwrap();
        out[1] = 7;
        assert_eq!(
            u32::from_ne_bytes(buf[base + 4..base + 8].try_into().unwrap()),
            7
        );
    }
}
