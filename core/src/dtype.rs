//! Element types of stored tensors and their conversion to `f32`, shared by the checkpoint
//! loader on the host and the f16 weights of the edge format.

use crate::Error;

/// A floating-point storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    Bf16,
    /// IEEE binary64.
    F64,
}

impl FloatType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
            FloatType::F64 => 8,
        }
    }
}

/// Decodes little-endian elements of `dtype` from `bytes` into `out` (one `f32` per element).
/// `bytes` must hold exactly `out.len()` elements.
pub fn decode_le(dtype: FloatType, bytes: &[u8], out: &mut [f32]) -> Result<(), Error> {
    let size = dtype.size();
    if bytes.len() != out.len() * size {
        return Err(Error::ShapeMismatch {
            what: "tensor byte length",
            expected: out.len() * size,
            found: bytes.len(),
        });
    }
    let chunks = bytes.chunks_exact(size);
    match dtype {
        FloatType::F32 => {
            for (o, c) in out.iter_mut().zip(chunks) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        FloatType::F16 => {
            for (o, c) in out.iter_mut().zip(chunks) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FloatType::Bf16 => {
            for (o, c) in out.iter_mut().zip(chunks) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        FloatType::F64 => {
            for (o, c) in out.iter_mut().zip(chunks) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *o = f64::from_le_bytes(b) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_type() {
        let mut out = [0.0f32; 2];
        decode_le(FloatType::F16, &[0x00, 0x3c, 0x00, 0xc0], &mut out).unwrap();
        assert_eq!(out, [1.0, -2.0]);
        decode_le(FloatType::Bf16, &[0x80, 0x3f, 0x40, 0x40], &mut out).unwrap();
        assert_eq!(out, [1.0, 3.0]);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&1.5f32.to_le_bytes());
        bytes[4..].copy_from_slice(&(-0.25f32).to_le_bytes());
        decode_le(FloatType::F32, &bytes, &mut out).unwrap();
        assert_eq!(out, [1.5, -0.25]);
        assert!(decode_le(FloatType::F32, &bytes[..7], &mut out).is_err());
    }
}
