//! Exporting a Hugging Face discriminator directory (with the RTD head `mask_predictions.*`)
//! to the edge model format of [`deberta_core::edge`].
//!
//! The position projections `Kr`/`Qr` of every layer are computed here, in f32 by the same
//! core code the host forward pass uses, for the relative rows a sequence of `max_seq_len`
//! tokens reads; the file then stores them like any other matrix. The word embeddings are
//! whatever the directory holds (for a GDES discriminator that is `E_G + E_Δ`, as exported by
//! pretraining).

use std::path::Path;

use deberta_core::CpuBackend;
use deberta_core::edge::format::{
    ALIGN, DType, ENTRY_LEN, HEADER_CRC_START, HEADER_LEN, RawHeader, TensorEntry,
};
use deberta_core::edge::layout::{Geometry, TensorKind};
use deberta_core::edge::quant::{f16_bytes, quantize_row};
use deberta_core::edge::{EdgeModel, arena_bytes, crc32};
use deberta_core::model::encoder::RelativeEmbeddings;
use deberta_core::model::modules::{LayerNorm, Linear};
use deberta_core::model::{ParamId, TableSource};

use crate::error::{Error, Result};
use crate::fs_util::write_atomic;
use crate::model_dir::{LoadedModel, load_model_dir};

/// What `deberta export --format edge` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Bytes of the file.
    pub bytes: usize,
    /// Tensors in the file.
    pub tensors: usize,
    /// Bytes of the embedded tokenizer (0 without one).
    pub tokenizer_bytes: usize,
    /// The file's `max_seq_len`: the longest sequence `detect` accepts.
    pub max_seq_len: usize,
    /// Bytes of arena `detect` needs at `max_seq_len` tokens ([`arena_bytes`]).
    pub arena_bytes: usize,
    /// One-line warnings from loading the model directory.
    pub warnings: Vec<String>,
}

/// Parses a `--dtype` value: `f32`, `f16` or `int8` (also `i8`).
pub fn parse_dtype(text: &str) -> Result<DType> {
    match text {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "int8" | "i8" => Ok(DType::I8),
        other => Err(Error::Usage(format!(
            "--dtype: \"{other}\" is not one of f32, f16, int8"
        ))),
    }
}

/// Reads `dir`, converts it and writes `out` atomically. `tokenizer.json` from `dir` is
/// embedded when present and `with_tokenizer` is set.
pub fn export_dir(
    dir: &Path,
    out: &Path,
    dtype: DType,
    max_seq_len: usize,
    with_tokenizer: bool,
) -> Result<ExportSummary> {
    let loaded = load_model_dir(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = match with_tokenizer && tokenizer_path.is_file() {
        true => Some(std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?),
        false => None,
    };
    let bytes = edge_bytes(&loaded, dir, dtype, max_seq_len, tokenizer.as_deref())?;
    // Self-check: the runtime must accept what was written.
    let aligned = AlignedBytes::new(&bytes);
    let model = EdgeModel::parse(aligned.bytes())
        .map_err(|e| Error::format(out, format!("exported file does not parse: {e}")))?;
    let tensors = model.header().tensor_count as usize;
    let max_seq_len = model.max_seq_len();
    let arena = arena_bytes(&model, max_seq_len)
        .map_err(|e| Error::format(out, format!("arena size at {max_seq_len} tokens: {e}")))?;
    write_atomic(out, &bytes)?;
    Ok(ExportSummary {
        bytes: bytes.len(),
        tensors,
        tokenizer_bytes: tokenizer.map_or(0, |t| t.len()),
        max_seq_len,
        arena_bytes: arena,
        warnings: loaded.warnings,
    })
}

/// A copy of bytes that starts at a 16-byte boundary: the edge parser reads f32 weights in
/// place and refuses a misaligned buffer.
pub struct AlignedBytes {
    buffer: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBytes {
    /// Copies `bytes` to an aligned position.
    pub fn new(bytes: &[u8]) -> Self {
        let mut buffer = vec![0u8; bytes.len() + ALIGN];
        let offset = (ALIGN - buffer.as_ptr().addr() % ALIGN) % ALIGN;
        buffer[offset..offset + bytes.len()].copy_from_slice(bytes);
        AlignedBytes {
            buffer,
            offset,
            len: bytes.len(),
        }
    }

    /// The copied bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.offset..self.offset + self.len]
    }
}

/// The tensor values of one slot, before encoding.
struct Values<'v> {
    data: std::borrow::Cow<'v, [f32]>,
    rows: usize,
    cols: usize,
}

/// Collects the f32 values of every tensor the edge file holds.
struct Source<'m> {
    loaded: &'m LoadedModel,
    geometry: Geometry,
    relative: Option<RelativeEmbeddings<Vec<f32>>>,
}

impl<'m> Source<'m> {
    fn param(&self, id: ParamId) -> &'m [f32] {
        &self.loaded.weights[id.index()]
    }

    fn linear(&self, linear: &Linear, bias: bool) -> Values<'m> {
        let data = match (bias, linear.bias) {
            (false, _) => self.param(linear.weight).into(),
            (true, Some(b)) => self.param(b).into(),
            (true, None) => vec![0.0; linear.output].into(),
        };
        let (rows, cols) = if bias {
            (linear.output, 1)
        } else {
            (linear.output, linear.input)
        };
        Values { data, rows, cols }
    }

    fn norm(&self, norm: &LayerNorm, bias: bool) -> Values<'m> {
        let id = if bias { norm.bias } else { norm.weight };
        Values {
            data: self.param(id).into(),
            rows: norm.width,
            cols: 1,
        }
    }

    fn table(&self, source: Option<TableSource>, rows: usize) -> Result<Values<'m>> {
        let h = self.geometry.config.hidden_size;
        match source {
            Some(TableSource::Param(id)) => Ok(Values {
                data: self.param(id)[..rows * h].into(),
                rows,
                cols: h,
            }),
            _ => Err(Error::Usage(
                "the model's embedding table is not a plain parameter".into(),
            )),
        }
    }

    fn projection(&self, layer: usize, keys: bool) -> Result<Values<'m>> {
        let window = self.geometry.window;
        let width = self.geometry.config.all_head_size();
        let projection = self
            .relative
            .as_ref()
            .and_then(|r| r.projections.get(layer))
            .ok_or_else(|| Error::Usage("missing relative projections".into()))?;
        let table = match keys {
            true => projection.keys.as_ref(),
            false => projection.queries.as_ref(),
        }
        .ok_or_else(|| Error::Usage("missing relative projections".into()))?;
        let start = (window.first - projection.first_row) * width;
        Ok(Values {
            data: table[start..start + window.rows * width].to_vec().into(),
            rows: window.rows,
            cols: width,
        })
    }

    fn values(&self, kind: TensorKind, layer: usize) -> Result<Values<'m>> {
        let model = &self.loaded.model;
        let emb = &model.embeddings;
        let rtd = model
            .rtd_head
            .as_ref()
            .ok_or_else(|| Error::Usage("no RTD head".into()))?;
        // `layer` is 0 outside the encoder, and every model has a layer 0.
        let l = &model.encoder.layers[layer];
        let a = &l.attention;
        Ok(match kind {
            TensorKind::WordEmbeddings => {
                self.table(Some(emb.word), self.geometry.config.vocab_size)?
            }
            TensorKind::PositionEmbeddings => {
                self.table(emb.position, self.geometry.max_seq_len)?
            }
            TensorKind::EmbeddingNormWeight => self.norm(&emb.norm, false),
            TensorKind::EmbeddingNormBias => self.norm(&emb.norm, true),
            TensorKind::QueryWeight => self.linear(&a.query, false),
            TensorKind::QueryBias => self.linear(&a.query, true),
            TensorKind::KeyWeight => self.linear(&a.key, false),
            TensorKind::KeyBias => self.linear(&a.key, true),
            TensorKind::ValueWeight => self.linear(&a.value, false),
            TensorKind::ValueBias => self.linear(&a.value, true),
            TensorKind::AttentionOutputWeight => self.linear(&l.attention_dense, false),
            TensorKind::AttentionOutputBias => self.linear(&l.attention_dense, true),
            TensorKind::AttentionNormWeight => self.norm(&l.attention_norm, false),
            TensorKind::AttentionNormBias => self.norm(&l.attention_norm, true),
            TensorKind::IntermediateWeight => self.linear(&l.intermediate, false),
            TensorKind::IntermediateBias => self.linear(&l.intermediate, true),
            TensorKind::OutputWeight => self.linear(&l.output_dense, false),
            TensorKind::OutputBias => self.linear(&l.output_dense, true),
            TensorKind::OutputNormWeight => self.norm(&l.output_norm, false),
            TensorKind::OutputNormBias => self.norm(&l.output_norm, true),
            TensorKind::PositionKeys => self.projection(layer, true)?,
            TensorKind::PositionQueries => self.projection(layer, false)?,
            TensorKind::RtdNormWeight => self.norm(&rtd.norm, false),
            TensorKind::RtdNormBias => self.norm(&rtd.norm, true),
            TensorKind::RtdDenseWeight => self.linear(&rtd.dense, false),
            TensorKind::RtdDenseBias => self.linear(&rtd.dense, true),
            TensorKind::ClassifierWeight => self.linear(&rtd.classifier, false),
            TensorKind::ClassifierBias => self.linear(&rtd.classifier, true),
        })
    }
}

fn pad_to(buffer: &mut Vec<u8>, align: usize) {
    buffer.resize(buffer.len().next_multiple_of(align), 0);
}

fn word(value: usize, what: &str, dir: &Path) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| Error::format(dir, format!("{what} exceeds the edge format's 4 GiB limit")))
}

/// Appends one tensor to `payload` (whose first byte will sit at file offset `base`) and
/// returns its table entry.
fn encode(
    payload: &mut Vec<u8>,
    base: usize,
    kind: TensorKind,
    layer: usize,
    dtype: DType,
    values: &Values<'_>,
    dir: &Path,
) -> Result<TensorEntry> {
    let dtype = if kind.is_matrix() { dtype } else { DType::F32 };
    pad_to(payload, ALIGN);
    let offset = base + payload.len();
    let mut scales = Vec::new();
    match dtype {
        DType::F32 => payload.extend(values.data.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => payload.extend(values.data.iter().flat_map(|&v| f16_bytes(v))),
        DType::I8 => {
            let mut q = vec![0i8; values.cols];
            for row in values.data.chunks_exact(values.cols) {
                scales.push(quantize_row(row, &mut q));
                payload.extend(q.iter().map(|&v| v as u8));
            }
        }
    }
    let byte_len = base + payload.len() - offset;
    let (scale_offset, scale_len) = if dtype == DType::I8 {
        pad_to(payload, ALIGN);
        let start = base + payload.len();
        payload.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
        (start, scales.len() * 4)
    } else {
        (0, 0)
    };
    Ok(TensorEntry {
        kind: kind.code(),
        layer: layer as u16,
        dtype: dtype.code() as u8,
        rank: if kind.is_matrix() { 2 } else { 1 },
        rows: word(values.rows, "a tensor", dir)?,
        cols: word(values.cols, "a tensor", dir)?,
        offset: word(offset, "the payload", dir)?,
        byte_len: word(byte_len, "a tensor", dir)?,
        scale_offset: word(scale_offset, "the payload", dir)?,
        scale_len: word(scale_len, "a tensor", dir)?,
    })
}

/// The edge file for a loaded discriminator (`dir` names it in errors).
pub fn edge_bytes(
    loaded: &LoadedModel,
    dir: &Path,
    dtype: DType,
    max_seq_len: usize,
    tokenizer: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let unsupported = |e: deberta_core::edge::EdgeError| {
        Error::format(dir, format!("cannot export to the edge format: {e}"))
    };
    if loaded.model.rtd_head.is_none() {
        return Err(Error::format(
            dir,
            "no RTD head (mask_predictions.*): the edge format needs a discriminator",
        ));
    }
    let geometry = Geometry::new(*loaded.config(), max_seq_len).map_err(unsupported)?;
    let relative = if geometry.window.rows > 0 {
        let backend = CpuBackend::new();
        let params = loaded.upload(&backend)?;
        loaded
            .model
            .relative_embeddings(&backend, &params, None, None)
            .map_err(|e| Error::model("projecting the relative embeddings", e))?
    } else {
        None
    };
    let source = Source {
        loaded,
        geometry,
        relative,
    };
    let count = geometry
        .tensor_count()
        .ok_or_else(|| Error::format(dir, "too many tensors for the edge format"))?;
    let payload_offset = (HEADER_LEN + count * ENTRY_LEN).next_multiple_of(ALIGN);
    let mut payload = Vec::new();
    let mut entries = Vec::with_capacity(count);
    for index in 0..count {
        let (kind, layer) = geometry
            .slot(index)
            .ok_or_else(|| Error::format(dir, "inconsistent tensor count"))?;
        let values = source.values(kind, layer)?;
        let shape = geometry.shape(kind);
        if (values.rows, values.cols) != (shape.rows, shape.cols)
            || values.data.len() != shape.rows * shape.cols
        {
            return Err(Error::format(
                dir,
                format!(
                    "{kind:?} of layer {layer} is [{}, {}], the edge format expects [{}, {}]",
                    values.rows, values.cols, shape.rows, shape.cols
                ),
            ));
        }
        entries.push(encode(
            &mut payload,
            payload_offset,
            kind,
            layer,
            dtype,
            &values,
            dir,
        )?);
    }
    pad_to(&mut payload, ALIGN);
    let mut header = RawHeader::describe(&geometry, dtype).map_err(unsupported)?;
    header.payload_offset = word(payload_offset, "the payload", dir)?;
    header.payload_len = word(payload.len(), "the payload", dir)?;
    header.payload_crc = crc32(&payload);
    if let Some(t) = tokenizer.filter(|t| !t.is_empty()) {
        header.tokenizer_offset = word(payload_offset + payload.len(), "the file", dir)?;
        header.tokenizer_len = word(t.len(), "the tokenizer", dir)?;
        header.tokenizer_crc = crc32(t);
    }
    let mut file = Vec::with_capacity(payload_offset + payload.len());
    file.extend_from_slice(&header.encode());
    for entry in &entries {
        file.extend_from_slice(&entry.encode());
    }
    file.resize(payload_offset, 0);
    file.extend_from_slice(&payload);
    if let Some(t) = tokenizer.filter(|t| !t.is_empty()) {
        file.extend_from_slice(t);
    }
    let header_crc = crc32(&file[HEADER_CRC_START..payload_offset]);
    file[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(file)
}
