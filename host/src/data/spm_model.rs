//! Reading a SentencePiece `spm.model` file: the `ModelProto` protobuf message, of which only
//! the fields the encoder needs are kept (pieces with scores and types; the trainer's model
//! type and byte fallback; the normaliser spec).
//!
//! The protobuf is read by hand (a varint / length-delimited reader over the bytes): the file
//! uses a handful of fields of four messages, and a code-generated reader (prost and its build
//! step) would be more code than the reader itself. Unknown fields are skipped as protobuf
//! requires; a truncated or malformed message is an error naming the byte offset.

use std::path::Path;

use crate::error::{Error, Result};

/// What a piece is (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece, matched by the encoder.
    Normal,
    /// The unknown piece (exactly one per model).
    Unknown,
    /// A control symbol (`[CLS]`, `[SEP]`, `[PAD]`): never produced from text.
    Control,
    /// A user-defined symbol: matched in text before normalisation, always preferred.
    UserDefined,
    /// A byte piece `<0xNN>` of byte fallback.
    Byte,
    /// A piece the encoder must not produce.
    Unused,
}

impl PieceType {
    fn from_wire(value: u64) -> Option<Self> {
        Some(match value {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry; its id is its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (`▁` marks a word start).
    pub text: String,
    /// Its log-probability score.
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// `ModelProto.normalizer_spec`.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// The rule name (`nmt_nfkc`, `identity`, …), for messages only.
    pub name: String,
    /// The compiled normalisation rules (empty: no character mapping).
    pub precompiled_charsmap: Vec<u8>,
    /// Prepend `▁` to the text.
    pub add_dummy_prefix: bool,
    /// Strip leading and trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Write spaces as `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The protobuf defaults.
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The fields of an `spm.model` the encoder uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type` (1 = unigram, 2 = BPE, 3 = word, 4 = char).
    pub model_type: u64,
    /// `trainer_spec.byte_fallback`: unknown characters become their UTF-8 byte pieces.
    pub byte_fallback: bool,
    /// `trainer_spec.treat_whitespace_as_suffix`.
    pub treat_whitespace_as_suffix: bool,
    /// The normaliser.
    pub normalizer: NormalizerSpec,
}

/// The unigram model type of `trainer_spec.model_type`.
pub const UNIGRAM: u64 = 1;

/// A protobuf wire value.
enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

/// A reader over one protobuf message; errors carry the absolute byte offset.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes` in the file.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Reader {
            bytes,
            pos: 0,
            base,
        }
    }

    fn fail(&self, what: &str) -> String {
        format!(
            "not a SentencePiece model: {what} at byte {}",
            self.base + self.pos
        )
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.fail("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(self.fail("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.fail("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.fail("truncated field"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    /// The next field: its number, its value, and the file offset of a length-delimited value.
    fn field(&mut self) -> std::result::Result<Option<(u64, Value<'a>, usize)>, String> {
        if self.pos == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(self.fail("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| self.fail("huge length"))?;
                let offset = self.base + self.pos;
                return Ok(Some((number, Value::Bytes(self.take(len)?), offset)));
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            wire => return Err(self.fail(&format!("unsupported wire type {wire}"))),
        };
        Ok(Some((number, value, 0)))
    }
}

fn text(bytes: &[u8], offset: usize, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("not a SentencePiece model: {what} at byte {offset} is not UTF-8"))
}

fn wrong_type(field: &str, offset: usize) -> String {
    format!(
        "not a SentencePiece model: field `{field}` has the wrong wire type (message at byte {offset})"
    )
}

fn piece(bytes: &[u8], base: usize) -> std::result::Result<Piece, String> {
    let mut reader = Reader::new(bytes, base);
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((number, value, offset)) = reader.field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => piece.text = text(b, offset, "a piece")?,
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(v)) => {
                piece.kind = PieceType::from_wire(v).ok_or_else(|| {
                    format!("not a SentencePiece model: piece type {v} (piece at byte {base})")
                })?
            }
            (1..=3, _) => return Err(wrong_type("SentencePiece", base)),
            _ => {}
        }
    }
    Ok(piece)
}

fn trainer_spec(
    bytes: &[u8],
    base: usize,
    model: &mut SpmModel,
) -> std::result::Result<(), String> {
    let mut reader = Reader::new(bytes, base);
    while let Some((number, value, _)) = reader.field()? {
        match (number, value) {
            (3, Value::Varint(v)) => model.model_type = v,
            (24, Value::Varint(v)) => model.treat_whitespace_as_suffix = v != 0,
            (35, Value::Varint(v)) => model.byte_fallback = v != 0,
            (3 | 24 | 35, _) => return Err(wrong_type("TrainerSpec", base)),
            _ => {}
        }
    }
    Ok(())
}

fn normalizer_spec(bytes: &[u8], base: usize) -> std::result::Result<NormalizerSpec, String> {
    let mut reader = Reader::new(bytes, base);
    let mut spec = NormalizerSpec::default();
    while let Some((number, value, offset)) = reader.field()? {
        match (number, value) {
            (1, Value::Bytes(b)) => spec.name = text(b, offset, "the normaliser name")?,
            (2, Value::Bytes(b)) => spec.precompiled_charsmap = b.to_vec(),
            (3, Value::Varint(v)) => spec.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => spec.remove_extra_whitespaces = v != 0,
            (5, Value::Varint(v)) => spec.escape_whitespaces = v != 0,
            (1..=5, _) => return Err(wrong_type("NormalizerSpec", base)),
            _ => {}
        }
    }
    Ok(spec)
}

impl SpmModel {
    /// Parses the bytes of an `spm.model` file; `path` labels errors.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] for a truncated or malformed protobuf, a piece that is not UTF-8 or of
    /// an unknown type, or a model without pieces.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::parse_message(bytes).map_err(|reason| Error::format(path, reason))
    }

    fn parse_message(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut model = SpmModel {
            pieces: Vec::new(),
            model_type: UNIGRAM,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            normalizer: NormalizerSpec::default(),
        };
        let mut reader = Reader::new(bytes, 0);
        while let Some((number, value, offset)) = reader.field()? {
            match (number, value) {
                (1, Value::Bytes(b)) => model.pieces.push(piece(b, offset)?),
                (2, Value::Bytes(b)) => trainer_spec(b, offset, &mut model)?,
                (3, Value::Bytes(b)) => model.normalizer = normalizer_spec(b, offset)?,
                (1..=3, _) => return Err(wrong_type("ModelProto", 0)),
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("not a SentencePiece model: no pieces".into());
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> std::result::Result<SpmModel, String> {
        SpmModel::parse(Path::new("m"), bytes).map_err(|e| e.to_string())
    }

    /// `pieces { piece: "ab" score: -1.5 type: USER_DEFINED }`, hand-encoded.
    fn piece_message() -> Vec<u8> {
        let mut piece = vec![0x0a, 0x02, b'a', b'b', 0x15];
        piece.extend_from_slice(&(-1.5f32).to_le_bytes());
        piece.extend_from_slice(&[0x18, 0x04]);
        let mut message = vec![0x0a, piece.len() as u8];
        message.extend(piece);
        message
    }

    #[test]
    fn reads_pieces_and_skips_unknown_fields() {
        let mut bytes = piece_message();
        // An unknown varint field 9 and an unknown fixed64 field 10, then a normaliser spec
        // with add_dummy_prefix false.
        bytes.extend_from_slice(&[0x48, 0x96, 0x01, 0x51, 1, 2, 3, 4, 5, 6, 7, 8]);
        bytes.extend_from_slice(&[0x1a, 0x02, 0x18, 0x00]);
        let model = parse(&bytes).unwrap();
        assert_eq!(
            model.pieces,
            vec![Piece {
                text: "ab".into(),
                score: -1.5,
                kind: PieceType::UserDefined
            }]
        );
        assert!(!model.normalizer.add_dummy_prefix);
        assert!(model.normalizer.remove_extra_whitespaces);
        assert_eq!(model.model_type, UNIGRAM);
    }

    #[test]
    fn malformed_messages_are_errors_with_offsets() {
        let whole = piece_message();
        let truncated = parse(&whole[..whole.len() - 1]).unwrap_err();
        assert!(
            truncated.contains("truncated field at byte 2"),
            "{truncated}"
        );
        assert!(parse(&[0x08]).unwrap_err().contains("truncated varint"));
        assert!(parse(&[0x0b]).unwrap_err().contains("wire type 3"));
        assert!(
            parse(&[0x08, 0x01])
                .unwrap_err()
                .contains("wrong wire type")
        );
        assert!(parse(&[]).unwrap_err().contains("no pieces"));
        let bad_type = [0x0a, 0x02, 0x18, 0x09];
        assert!(parse(&bad_type).unwrap_err().contains("piece type 9"));
        let not_utf8 = [0x0a, 0x03, 0x0a, 0x01, 0xff];
        assert!(parse(&not_utf8).unwrap_err().contains("not UTF-8"));
    }
}
