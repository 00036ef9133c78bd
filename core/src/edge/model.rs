//! Parsing and validating an edge model file in place.

use core::ops::Range;

use super::EdgeError;
use super::cast::view;
use super::crc32::crc32;
use super::format::{
    ALIGN, DType, ENTRY_LEN, HEADER_CRC_START, HEADER_LEN, RawHeader, TensorEntry,
};
use super::layout::{Geometry, Shape, TensorKind};
use crate::ModelConfig;

/// A validated edge model borrowing the file's bytes (which may live in flash).
#[derive(Debug, Clone)]
pub struct EdgeModel<'a> {
    bytes: &'a [u8],
    header: RawHeader,
    geometry: Geometry,
    dtype: DType,
}

/// One tensor of a model, borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// What it holds.
    pub kind: TensorKind,
    /// Its storage type (f32 for every vector).
    pub dtype: DType,
    /// Its `[rows, cols]`.
    pub shape: Shape,
    /// The elements, little-endian, `rows · cols · dtype.size()` bytes.
    pub data: &'a [u8],
    /// The per-row f32 scales of an int8 matrix (`4 · rows` bytes), empty otherwise.
    pub scales: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The elements of an f32 tensor, in place.
    pub fn f32s(&self) -> Result<&'a [f32], EdgeError> {
        self.expect(DType::F32)?;
        view::<f32>(self.data).ok_or(EdgeError::Misaligned { align: 4 })
    }

    /// The elements of an int8 matrix and its per-row scales, in place.
    pub fn int8(&self) -> Result<(&'a [i8], &'a [f32]), EdgeError> {
        self.expect(DType::I8)?;
        Ok((
            view::<i8>(self.data).ok_or(EdgeError::Misaligned { align: 1 })?,
            view::<f32>(self.scales).ok_or(EdgeError::Misaligned { align: 4 })?,
        ))
    }

    fn expect(&self, dtype: DType) -> Result<(), EdgeError> {
        if self.dtype != dtype {
            return Err(EdgeError::TensorType {
                kind: self.kind,
                expected: dtype,
                found: self.dtype,
            });
        }
        Ok(())
    }
}

/// `offset .. offset + len` as a range of the file, or an error naming `field`.
fn section(offset: u32, len: u32, field: &'static str) -> Result<Range<usize>, EdgeError> {
    let start = offset as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(EdgeError::InvalidField {
            field,
            value: u64::from(offset),
            reason: "section end overflows",
        })?;
    Ok(start..end)
}

fn check_crc(section: &'static str, stored: u32, bytes: &[u8]) -> Result<(), EdgeError> {
    let computed = crc32(bytes);
    if computed != stored {
        return Err(EdgeError::Checksum {
            section,
            stored,
            computed,
        });
    }
    Ok(())
}

/// Whether `range` is a 16-aligned sub-range of `payload`.
fn inside(range: &Range<usize>, payload: &Range<usize>) -> bool {
    range.start.is_multiple_of(ALIGN) && range.start >= payload.start && range.end <= payload.end
}

impl<'a> EdgeModel<'a> {
    /// Parses and validates a model file: header fields and configuration, section bounds, both
    /// CRCs, and every table entry (canonical kind and layer, dtype, shape, byte length,
    /// 16-byte-aligned offsets inside the payload, int8 scales). Any byte string gives a model
    /// or an error; nothing is copied. `bytes` must start at a 4-byte boundary.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EdgeError> {
        let header = RawHeader::decode(bytes)?;
        if cfg!(target_endian = "big") {
            return Err(EdgeError::UnsupportedTarget);
        }
        if !bytes.as_ptr().addr().is_multiple_of(4) {
            return Err(EdgeError::Misaligned { align: 4 });
        }
        let len = bytes.len();
        let table_end = (header.tensor_count as usize)
            .checked_mul(ENTRY_LEN)
            .and_then(|t| t.checked_add(HEADER_LEN))
            .ok_or(EdgeError::Truncated {
                needed: usize::MAX,
                len,
            })?;
        let payload = section(header.payload_offset, header.payload_len, "payload_offset")?;
        if payload.start < table_end || payload.start % ALIGN != 0 {
            return Err(EdgeError::InvalidField {
                field: "payload_offset",
                value: u64::from(header.payload_offset),
                reason: "must be a multiple of 16 after the tensor table",
            });
        }
        let covered = bytes
            .get(HEADER_CRC_START..payload.start)
            .ok_or(EdgeError::Truncated {
                needed: payload.start,
                len,
            })?;
        check_crc("header", header.header_crc, covered)?;
        let dtype = header.dtype()?;
        let geometry = header.geometry()?;

        let end = if header.tokenizer_len > 0 {
            let tokenizer = section(
                header.tokenizer_offset,
                header.tokenizer_len,
                "tokenizer_offset",
            )?;
            if tokenizer.start != payload.end {
                return Err(EdgeError::InvalidField {
                    field: "tokenizer_offset",
                    value: u64::from(header.tokenizer_offset),
                    reason: "the tokenizer section must start where the payload ends",
                });
            }
            tokenizer.end
        } else {
            if header.tokenizer_offset != 0 || header.tokenizer_crc != 0 {
                return Err(EdgeError::InvalidField {
                    field: "tokenizer_offset",
                    value: u64::from(header.tokenizer_offset),
                    reason: "must be 0 without a tokenizer section",
                });
            }
            payload.end
        };
        if end > len {
            return Err(EdgeError::Truncated { needed: end, len });
        }
        if end < len {
            return Err(EdgeError::InvalidField {
                field: "file length",
                value: len as u64,
                reason: "bytes follow the last section",
            });
        }
        let payload_bytes = bytes.get(payload.clone()).ok_or(EdgeError::Truncated {
            needed: payload.end,
            len,
        })?;
        check_crc("payload", header.payload_crc, payload_bytes)?;

        let model = EdgeModel {
            bytes,
            header,
            geometry,
            dtype,
        };
        for index in 0..header.tensor_count as usize {
            model.check_entry(index, &payload)?;
        }
        Ok(model)
    }

    fn entry(&self, index: usize) -> Result<TensorEntry, EdgeError> {
        let bad = |reason| EdgeError::BadTensor { index, reason };
        let start = index
            .checked_mul(ENTRY_LEN)
            .and_then(|o| o.checked_add(HEADER_LEN))
            .ok_or(bad("entry offset overflows"))?;
        let raw = self
            .bytes
            .get(start..)
            .and_then(|b| b.first_chunk::<ENTRY_LEN>())
            .ok_or(bad("entry lies outside the table"))?;
        TensorEntry::decode(raw).ok_or(bad("reserved entry bytes must be zero"))
    }

    fn check_entry(&self, index: usize, payload: &Range<usize>) -> Result<(), EdgeError> {
        let bad = |reason| EdgeError::BadTensor { index, reason };
        let entry = self.entry(index)?;
        let (kind, layer) = self
            .geometry
            .slot(index)
            .ok_or(bad("more entries than the configuration implies"))?;
        if entry.kind != kind.code() || usize::from(entry.layer) != layer {
            return Err(bad("kind or layer out of the canonical order"));
        }
        let (dtype, rank) = if kind.is_matrix() {
            (self.dtype, 2)
        } else {
            (DType::F32, 1)
        };
        if u32::from(entry.dtype) != dtype.code() {
            return Err(bad(
                "dtype differs from the header's (matrices) or f32 (vectors)",
            ));
        }
        if entry.rank != rank {
            return Err(bad("rank must be 2 for a matrix and 1 for a vector"));
        }
        let shape = self.geometry.shape(kind);
        if (entry.rows as usize, entry.cols as usize) != (shape.rows, shape.cols) {
            return Err(bad("shape differs from the one the configuration implies"));
        }
        let bytes = shape
            .rows
            .checked_mul(shape.cols)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or(bad("shape product overflows"))?;
        if entry.byte_len as usize != bytes {
            return Err(bad("byte length differs from the shape's"));
        }
        if !inside(
            &section(entry.offset, entry.byte_len, "tensor offset")?,
            payload,
        ) {
            return Err(bad("data is not a 16-aligned range inside the payload"));
        }
        if dtype == DType::I8 {
            let scale_bytes = shape
                .rows
                .checked_mul(4)
                .ok_or(bad("scale length overflows"))?;
            let scales = section(entry.scale_offset, entry.scale_len, "scale offset")?;
            if entry.scale_len as usize != scale_bytes || !inside(&scales, payload) {
                return Err(bad(
                    "int8 scales are not one f32 per row inside the payload",
                ));
            }
        } else if entry.scale_offset != 0 || entry.scale_len != 0 {
            return Err(bad("only int8 matrices have scales"));
        }
        Ok(())
    }

    /// A tensor of the model.
    pub fn tensor(&self, kind: TensorKind, layer: usize) -> Result<TensorView<'a>, EdgeError> {
        let index = self
            .geometry
            .index(kind, layer)
            .ok_or(EdgeError::MissingTensor { kind, layer })?;
        let entry = self.entry(index)?;
        let bad = |reason| EdgeError::BadTensor { index, reason };
        let bytes = self.bytes;
        let data = bytes
            .get(section(entry.offset, entry.byte_len, "tensor offset")?)
            .ok_or(bad("data outside the file"))?;
        let scales = bytes
            .get(section(
                entry.scale_offset,
                entry.scale_len,
                "scale offset",
            )?)
            .ok_or(bad("scales outside the file"))?;
        let dtype = DType::from_code(u32::from(entry.dtype)).ok_or(bad("unknown dtype"))?;
        Ok(TensorView {
            kind,
            dtype,
            shape: Shape {
                rows: entry.rows as usize,
                cols: entry.cols as usize,
            },
            data,
            scales,
        })
    }

    /// The model configuration (dropout 0; only what the discriminator uses is meaningful).
    pub fn config(&self) -> &ModelConfig {
        &self.geometry.config
    }

    /// The configuration, the sequence limit and the stored relative window.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The storage type of the matrices.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The longest sequence the file was exported for.
    pub fn max_seq_len(&self) -> usize {
        self.geometry.max_seq_len
    }

    /// The header fields as stored.
    pub fn header(&self) -> &RawHeader {
        &self.header
    }

    /// The tokenizer section (checked against its CRC), or `None` when the file has none.
    pub fn tokenizer(&self) -> Option<Result<&'a [u8], EdgeError>> {
        if self.header.tokenizer_len == 0 {
            return None;
        }
        let range = match section(
            self.header.tokenizer_offset,
            self.header.tokenizer_len,
            "tokenizer_offset",
        ) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let len = self.bytes.len();
        Some(
            self.bytes
                .get(range.clone())
                .ok_or(EdgeError::Truncated {
                    needed: range.end,
                    len,
                })
                .and_then(|t| check_crc("tokenizer", self.header.tokenizer_crc, t).map(|()| t)),
        )
    }
}
