//! A DeBERTa-v3 tokenizer from SentencePiece files: `spm.model` and, when present beside it,
//! `tokenizer_config.json` (the layout of the official `microsoft/deberta-v3-*` repositories).
//!
//! Text is encoded by [`SentencePiece`] exactly as the `sentencepiece` library does. Special
//! tokens follow transformers' `DebertaV2Tokenizer`: `[CLS] text [SEP]`; the five special
//! token strings (`pad_token`, `cls_token`, `sep_token`, `unk_token`, `mask_token` of
//! `tokenizer_config.json`, default `[PAD]` `[CLS]` `[SEP]` `[UNK]` `[MASK]`) written inside
//! the text are split out first and become their ids, the text between them is encoded on its
//! own. Their ids are the model's pieces of those names; a `[MASK]` the model lacks (as in the
//! official files, whose `spm.model` has no `[MASK]`) is added after the last piece, as
//! transformers does.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::sentencepiece::SentencePiece;
use super::tokenizer::{Encoded, SPECIAL_TOKENS, SpecialTokens};
use crate::error::{Error, Result};

/// The file name of a SentencePiece model in a model directory.
pub const SPM_MODEL_FILE: &str = "spm.model";

/// The file name of transformers' tokenizer settings.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// An `spm.model` tokenizer with DeBERTa-v3 special tokens.
#[derive(Debug, Clone)]
pub struct SpmTokenizer {
    model: SentencePiece,
    /// The bytes of `spm.model`, as read.
    model_bytes: Vec<u8>,
    /// The bytes of `tokenizer_config.json`, when there was one.
    config_bytes: Option<Vec<u8>>,
    special: SpecialTokens,
    /// The special-token strings, in the order pad, cls, sep, unk, mask.
    names: [String; 5],
}

/// The special-token strings of a `tokenizer_config.json` (a string or an `AddedToken` object
/// with `content`), defaulting to DeBERTa-v3's.
fn special_names(config: Option<&Value>, path: &Path) -> Result<[String; 5]> {
    let keys = [
        "pad_token",
        "cls_token",
        "sep_token",
        "unk_token",
        "mask_token",
    ];
    let mut names = SPECIAL_TOKENS.map(str::to_string);
    let Some(config) = config else {
        return Ok(names);
    };
    for (name, key) in names.iter_mut().zip(keys) {
        let value = match config.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(token)) => token.get("content"),
            Some(value) => Some(value),
        };
        *name = value
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::format(path, format!("`{key}` is not a token string")))?
            .to_string();
    }
    for key in ["do_lower_case", "split_by_punct"] {
        if config.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(Error::format(
                path,
                format!("`{key}: true` is not supported (DeBERTa-v3 sets it false)"),
            ));
        }
    }
    Ok(names)
}

impl SpmTokenizer {
    /// Loads `spm.model` (any file name) and the `tokenizer_config.json` beside it, if any.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let config_path = path.parent().map_or_else(
            || PathBuf::from(TOKENIZER_CONFIG_FILE),
            |dir| dir.join(TOKENIZER_CONFIG_FILE),
        );
        let config = match config_path.is_file() {
            true => Some((
                std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?,
                config_path,
            )),
            false => None,
        };
        Self::from_bytes(path, bytes, config)
    }

    /// Builds the tokenizer from the bytes of `spm.model` (`path` labels errors) and of an
    /// optional `tokenizer_config.json` with its path.
    pub fn from_bytes(
        path: &Path,
        model_bytes: Vec<u8>,
        config: Option<(Vec<u8>, PathBuf)>,
    ) -> Result<Self> {
        let model = SentencePiece::from_bytes(path, &model_bytes)?;
        let (names, config_bytes) = match config {
            None => (special_names(None, path)?, None),
            Some((bytes, config_path)) => {
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::format(&config_path, format!("invalid JSON: {e}")))?;
                (special_names(Some(&value), &config_path)?, Some(bytes))
            }
        };
        let appended =
            u32::try_from(model.len()).map_err(|_| Error::format(path, "too many pieces"))?;
        let id = |i: usize| match model.piece_id(&names[i]) {
            Some(id) => Ok(id),
            None if i == 4 => Ok(appended),
            None => Err(Error::format(
                path,
                format!("the SentencePiece model has no `{}` piece", names[i]),
            )),
        };
        let special = SpecialTokens {
            pad: id(0)?,
            cls: id(1)?,
            sep: id(2)?,
            unk: id(3)?,
            mask: id(4)?,
        };
        Ok(SpmTokenizer {
            model,
            model_bytes,
            config_bytes,
            special,
            names,
        })
    }

    /// The special-token ids.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Number of ids: the pieces, plus `[MASK]` when the model lacks it.
    pub fn vocab_size(&self) -> usize {
        self.model.len().max(self.special.mask as usize + 1)
    }

    /// The token of an id: its piece, or the appended `[MASK]`.
    pub fn token(&self, id: u32) -> Option<String> {
        match self.model.piece(id) {
            Some(piece) => Some(piece.to_string()),
            None if id == self.special.mask => Some(self.names[4].clone()),
            None => None,
        }
    }

    /// The files this tokenizer was read from: `spm.model` and, when there was one,
    /// `tokenizer_config.json`, with their bytes.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![(SPM_MODEL_FILE, self.model_bytes.as_slice())];
        if let Some(config) = &self.config_bytes {
            files.push((TOKENIZER_CONFIG_FILE, config.as_slice()));
        }
        files
    }

    /// The ids of `text` as transformers' `DebertaV2Tokenizer` splits it: special-token
    /// strings become their ids, the text between them is encoded by SentencePiece.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Encoded {
        let mut ids = Vec::new();
        if add_special_tokens {
            ids.push(self.special.cls);
        }
        let specials = self.special.ids();
        let mut rest = text;
        while !rest.is_empty() {
            // The leftmost special-token string, the longest at that position.
            let found = (0..rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .find_map(|i| {
                    let matched = self
                        .names
                        .iter()
                        .enumerate()
                        .filter(|(_, name)| rest[i..].starts_with(name.as_str()))
                        .max_by_key(|(_, name)| name.len());
                    matched.map(|(k, name)| (i, k, name.len()))
                });
            match found {
                Some((at, k, len)) => {
                    ids.extend(self.model.encode(&rest[..at]));
                    ids.push(specials[k]);
                    rest = &rest[at + len..];
                }
                None => {
                    ids.extend(self.model.encode(rest));
                    rest = "";
                }
            }
        }
        if add_special_tokens {
            ids.push(self.special.sep);
        }
        let tokens = ids
            .iter()
            .map(|&id| self.token(id).unwrap_or_default())
            .collect();
        Encoded { tokens, ids }
    }

    /// The SentencePiece ids of corpus lines (special-token text is plain text), less the ids
    /// of `[PAD]`, `[CLS]`, `[SEP]` and `[MASK]` (a user-defined `[MASK]` piece is matched in
    /// text); in parallel, independent of the thread count.
    pub fn encode_corpus_lines(&self, lines: &[String]) -> Vec<Vec<u32>> {
        let s = self.special;
        let structural = [s.pad, s.cls, s.sep, s.mask];
        lines
            .par_iter()
            .map(|line| {
                let ids = self.model.encode(line);
                ids.into_iter()
                    .filter(|id| !structural.contains(id))
                    .collect()
            })
            .collect()
    }

    /// A 64-bit FNV-1a hash of the model and configuration bytes.
    pub fn fingerprint(&self) -> u64 {
        let config = self.config_bytes.as_deref().unwrap_or_default();
        self.model_bytes
            .iter()
            .chain(b"\0")
            .chain(config)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    }
}
