//! safetensors files: read (any float or integer dtype, widened) and write (F32 / I64).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use deberta_core::dtype::{FloatType, decode_le};
use safetensors::tensor::{Dtype, SafeTensors, View};

use super::TensorMap;
use crate::error::{Error, Result};
use crate::fs_util::write_atomic;
use crate::tensor::{HostTensor, TensorData};

/// Reads every tensor of a safetensors file. Float dtypes become `f32`, integer and bool
/// dtypes `i64`; other dtypes (fp8, complex) are an error naming the tensor.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_safetensors(path, &bytes)
}

/// Parses safetensors bytes; `path` only labels errors.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut map = TensorMap::new();
    for (name, view) in file.tensors() {
        let bad = |reason: String| Error::BadTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        let bytes = view.data();
        let float = match view.dtype() {
            Dtype::F32 => Some(FloatType::F32),
            Dtype::F16 => Some(FloatType::F16),
            Dtype::BF16 => Some(FloatType::Bf16),
            Dtype::F64 => Some(FloatType::F64),
            _ => None,
        };
        let data = if let Some(float) = float {
            let mut out = vec![0.0f32; bytes.len() / float.size()];
            decode_le(float, bytes, &mut out).map_err(|e| bad(e.to_string()))?;
            TensorData::Float(out)
        } else {
            let ints: Vec<i64> = match view.dtype() {
                Dtype::I64 => bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                Dtype::U64 => bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .map(|v| {
                        i64::try_from(v)
                            .map_err(|_| bad(format!("U64 value {v} does not fit in i64")))
                    })
                    .collect::<Result<_>>()?,
                Dtype::I32 => bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                    .collect(),
                Dtype::U32 => bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                    .collect(),
                Dtype::I16 => bytes
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
                Dtype::U16 => bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
                Dtype::I8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
                Dtype::U8 | Dtype::BOOL => bytes.iter().map(|&b| b as i64).collect(),
                other => return Err(bad(format!("unsupported dtype {other:?}"))),
            };
            TensorData::Int(ints)
        };
        map.insert(
            name.clone(),
            HostTensor {
                shape: view.shape().to_vec(),
                data,
                stored_as: format!("{:?}", view.dtype()),
            },
        );
    }
    Ok(map)
}

struct Encoded<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for &Encoded<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes tensors (float as F32, integer as I64) atomically: a temporary file in the same
/// directory, fsync, rename. The element count must match each shape.
pub fn write_safetensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    write_safetensors_with_metadata(path, tensors, None)
}

/// [`write_safetensors`] with a `__metadata__` header entry, e.g. `{"format": "pt"}`, which is
/// what transformers' `save_pretrained` writes and what its loader checks.
pub fn write_safetensors_with_metadata(
    path: &Path,
    tensors: &TensorMap,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    let mut encoded = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let (dtype, bytes, count) = match &tensor.data {
            TensorData::Float(v) => (
                Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                v.len(),
            ),
            TensorData::Int(v) => (
                Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                v.len(),
            ),
        };
        if count != tensor.numel() {
            return Err(Error::BadTensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: format!("{count} elements do not fill shape {:?}", tensor.shape),
            });
        }
        encoded.push((
            name.as_str(),
            Encoded {
                dtype,
                shape: &tensor.shape,
                bytes,
            },
        ));
    }
    let metadata = metadata.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let bytes = safetensors::tensor::serialize(encoded.iter().map(|(n, e)| (*n, e)), metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let dir = std::env::temp_dir().join(format!("deberta-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let mut map = TensorMap::new();
        map.insert(
            "a".into(),
            HostTensor::float(vec![2, 2], vec![1.0, -2.0, 3.5, 0.25]),
        );
        map.insert(
            "ids".into(),
            HostTensor {
                shape: vec![3],
                data: TensorData::Int(vec![1, -5, 7]),
                stored_as: "I64".into(),
            },
        );
        write_safetensors(&path, &map).unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back["a"].data, map["a"].data);
        assert_eq!(back["ids"].data, map["ids"].data);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            assert!(
                parse_safetensors(&path, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
