//! SentencePiece's unigram encoder, reimplemented to give the ids of the `sentencepiece`
//! library (`SentencePieceProcessor::Encode`, encoder version "optimized") id for id:
//!
//! 1. normalise (`Normalizer::Normalize`): user-defined symbols pass unchanged, everything
//!    else goes through the precompiled character map (longest match); with
//!    `remove_extra_whitespaces`, leading and trailing spaces are dropped and runs collapse
//!    to one; `▁` is prepended (`add_dummy_prefix`) and spaces become `▁`
//!    (`escape_whitespaces`);
//! 2. Viterbi over the pieces (normal and user-defined; a user-defined symbol scores
//!    `bytes · max_score − 0.1`, so it always wins), with an unknown piece of score
//!    `min_score − 10` for every character no one-character piece covers; candidates are
//!    compared in `f64` and kept in `f32`, and ties keep the first path found, as in the C++
//!    code;
//! 3. runs of unknown pieces merge into one, or, with byte fallback, unknown text becomes its
//!    UTF-8 byte pieces `<0xNN>`.

use std::collections::HashMap;
use std::path::Path;

use super::spm_charsmap::Charsmap;
use super::spm_model::{NormalizerSpec, PieceType, SpmModel, UNIGRAM};
use crate::error::{Error, Result};

/// The word-boundary symbol that replaces spaces.
const SPACE_SYMBOL: &str = "\u{2581}";

/// How far below the lowest piece score the unknown piece scores.
const UNK_PENALTY: f32 = 10.0;

/// A loaded SentencePiece unigram model, ready to encode.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    model: SpmModel,
    charsmap: Charsmap,
    /// Normal and user-defined pieces (what the C++ trie holds, less unused pieces).
    matchable: HashMap<String, u32>,
    /// User-defined symbols, matched before normalisation.
    user_defined: Vec<String>,
    /// Length in bytes of the longest matchable piece.
    longest_piece: usize,
    unk: u32,
    min_score: f32,
    max_score: f32,
    /// The ids of `<0x00>`…`<0xFF>` with byte fallback.
    bytes: Vec<u32>,
}

impl SentencePiece {
    /// Builds the encoder of a parsed model; `path` labels errors.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] for a model that is not unigram, treats whitespace as a suffix, has
    /// no or several unknown pieces, repeats or has an empty piece, has a corrupt character
    /// map, or sets byte fallback without all 256 byte pieces.
    pub fn new(path: &Path, model: SpmModel) -> Result<Self> {
        let fail = |reason: String| Error::format(path, reason);
        if model.model_type != UNIGRAM {
            return Err(fail(format!(
                "SentencePiece model type {} is not supported (only unigram, type 1)",
                model.model_type
            )));
        }
        if model.treat_whitespace_as_suffix {
            return Err(fail(
                "SentencePiece models with treat_whitespace_as_suffix are not supported".into(),
            ));
        }
        let charsmap = Charsmap::parse(&model.normalizer.precompiled_charsmap).map_err(fail)?;
        let mut matchable = HashMap::new();
        let mut seen = HashMap::new();
        let mut user_defined = Vec::new();
        let mut unk = None;
        let mut min_score = f32::MAX;
        let mut max_score = f32::MIN_POSITIVE;
        let mut byte_ids = HashMap::new();
        for (id, piece) in model.pieces.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| fail("too many pieces".into()))?;
            if piece.text.is_empty() {
                return Err(fail(format!("piece {id} is empty")));
            }
            if seen.insert(piece.text.clone(), id).is_some() {
                return Err(fail(format!("piece `{}` appears twice", piece.text)));
            }
            match piece.kind {
                PieceType::Normal => {
                    min_score = min_score.min(piece.score);
                    max_score = max_score.max(piece.score);
                    matchable.insert(piece.text.clone(), id);
                }
                PieceType::UserDefined => {
                    matchable.insert(piece.text.clone(), id);
                    user_defined.push(piece.text.clone());
                }
                PieceType::Unknown if unk.is_some() => {
                    return Err(fail("more than one unknown piece".into()));
                }
                PieceType::Unknown => unk = Some(id),
                PieceType::Byte => {
                    byte_ids.insert(piece.text.clone(), id);
                }
                PieceType::Control | PieceType::Unused => {}
            }
        }
        let unk = unk.ok_or_else(|| fail("the SentencePiece model has no unknown piece".into()))?;
        let bytes = match model.byte_fallback {
            false => Vec::new(),
            true => (0..=255u8)
                .map(|b| {
                    let name = format!("<0x{b:02X}>");
                    byte_ids.get(&name).copied().ok_or_else(|| {
                        fail(format!(
                            "byte fallback is set but piece `{name}` is missing"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        let longest_piece = matchable.keys().map(String::len).max().unwrap_or(0);
        Ok(SentencePiece {
            model,
            charsmap,
            matchable,
            user_defined,
            longest_piece,
            unk,
            min_score,
            max_score,
            bytes,
        })
    }

    /// Reads and builds the encoder of an `spm.model` file's bytes; `path` labels errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        Self::new(path, SpmModel::parse(path, bytes)?)
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.model.pieces.len()
    }

    /// Whether the model has no pieces (never: parsing requires one).
    pub fn is_empty(&self) -> bool {
        self.model.pieces.is_empty()
    }

    /// The id of a piece.
    pub fn piece_id(&self, text: &str) -> Option<u32> {
        self.model
            .pieces
            .iter()
            .position(|p| p.text == text)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The text of a piece.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.model.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// The id of the unknown piece.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// The normalised text the Viterbi search runs on.
    pub fn normalize(&self, text: &str) -> String {
        let spec: &NormalizerSpec = &self.model.normalizer;
        let space = match spec.escape_whitespaces {
            true => SPACE_SYMBOL,
            false => " ",
        };
        let mut input = text;
        let mut out = String::with_capacity(text.len() * 3 / 2);
        if spec.remove_extra_whitespaces {
            while let Some((consumed, chunk)) = self.normalize_prefix(input) {
                if chunk != " " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return out;
        }
        if spec.add_dummy_prefix {
            out.push_str(space);
        }
        let mut previous_space = spec.remove_extra_whitespaces;
        while let Some((consumed, chunk)) = self.normalize_prefix(input) {
            let mut chunk = chunk;
            if previous_space {
                chunk = chunk.trim_start_matches(' ');
            }
            if !chunk.is_empty() {
                for c in chunk.chars() {
                    match c {
                        ' ' => out.push_str(space),
                        c => out.push(c),
                    }
                }
                previous_space = chunk.ends_with(' ');
            }
            input = &input[consumed..];
            if !spec.remove_extra_whitespaces {
                previous_space = false;
            }
        }
        if spec.remove_extra_whitespaces {
            while let Some(rest) = out.strip_suffix(space) {
                out.truncate(rest.len());
            }
        }
        out
    }

    /// The next normalised chunk of `input` and the bytes it consumes: a user-defined symbol
    /// (longest), else the longest character-map rule, else one character.
    fn normalize_prefix<'a>(&'a self, input: &'a str) -> Option<(usize, &'a str)> {
        let first = input.chars().next()?;
        let symbol = self
            .user_defined
            .iter()
            .filter(|s| input.starts_with(s.as_str()))
            .map(String::len)
            .max();
        if let Some(len) = symbol {
            return Some((len, &input[..len]));
        }
        match self.charsmap.longest_match(input.as_bytes()) {
            Some((len, replacement)) if input.is_char_boundary(len) => Some((len, replacement)),
            _ => Some((first.len_utf8(), &input[..first.len_utf8()])),
        }
    }

    /// The piece ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let normalized = self.normalize(text);
        let mut ids = Vec::new();
        let mut previous_unk = false;
        for (surface, id) in self.viterbi(&normalized) {
            let unk = id == self.unk;
            if unk && !self.bytes.is_empty() {
                ids.extend(surface.bytes().map(|b| self.bytes[usize::from(b)]));
            } else if !(unk && previous_unk) {
                ids.push(id);
            }
            previous_unk = unk;
        }
        ids
    }

    /// The best segmentation of normalised text: `(surface, id)` pairs in order.
    fn viterbi<'a>(&self, text: &'a str) -> Vec<(&'a str, u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f32,
            start: Option<usize>,
        }
        let size = text.len();
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![
            Best {
                id: 0,
                score: 0.0,
                start: None,
            };
            size + 1
        ];
        // The C++ code compares a candidate in double precision and stores it as float.
        let offer = |best: &mut Vec<Best>, end: usize, start: usize, id: u32, score: f64| {
            let target = &mut best[end];
            if target.start.is_none() || score > f64::from(target.score) {
                *target = Best {
                    id,
                    score: score as f32,
                    start: Some(start),
                };
            }
        };
        for (start, c) in text.char_indices() {
            let here = best[start].score;
            let char_len = c.len_utf8();
            let mut has_single = false;
            let longest = self.longest_piece.min(size - start);
            for len in 1..=longest {
                let end = start + len;
                if !text.is_char_boundary(end) {
                    continue;
                }
                let Some(&id) = self.matchable.get(&text[start..end]) else {
                    continue;
                };
                let piece = &self.model.pieces[id as usize];
                let score = match piece.kind {
                    PieceType::UserDefined => f64::from(len as f32 * self.max_score) - 0.1,
                    _ => f64::from(piece.score),
                };
                offer(&mut best, end, start, id, score + f64::from(here));
                has_single |= len == char_len;
            }
            if !has_single {
                let score = unk_score + here;
                offer(
                    &mut best,
                    start + char_len,
                    start,
                    self.unk,
                    f64::from(score),
                );
            }
        }
        let mut pieces = Vec::new();
        let mut end = size;
        while end > 0 {
            let node = best[end];
            let start = node.start.unwrap_or(0);
            pieces.push((&text[start..end], node.id));
            end = start;
        }
        pieces.reverse();
        pieces
    }
}
