//! The tokenizer: a Hugging Face `tokenizer.json`, loaded or trained here, or a SentencePiece
//! `spm.model` (with `tokenizer_config.json`), the form of the official DeBERTa-v3 files (see
//! `spm_tokenizer.rs`).
//!
//! A trained tokenizer is SentencePiece-style, like DeBERTa-v3's: a Unigram model over pieces
//! that carry the word-start marker `▁`, with
//! - normaliser: NMT clean-up (control characters removed, odd spaces made plain), NFKC, runs
//!   of whitespace collapsed to one space, ends stripped — close to SentencePiece's default
//!   `nmt_nfkc` with `remove_extra_whitespaces`;
//! - pre-tokenizer and decoder: `Metaspace` (`▁`, prepended to every line, split at spaces);
//! - post-processor: `[CLS] $A [SEP]` (pairs `[CLS] $A [SEP] $B [SEP]`);
//! - special tokens `[PAD]`=0, `[CLS]`=1, `[SEP]`=2, `[UNK]`=3, `[MASK]`=4.
//!
//! Training is deterministic (see `data/unigram.rs`): the same corpus and options give a
//! byte-identical `tokenizer.json` whatever the thread count (the training math is
//! sequential; across operating systems it also relies on the C library's `exp`/`log`
//! agreeing). Scores are rounded to 9 decimals so that they survive a JSON round trip exactly
//! (serde_json's default float parser is not correctly rounded for 17-digit numbers): a saved
//! and reloaded tokenizer is identical to the trained one. In the model, the special tokens
//! score 100 below the lowest piece, so that corpus text spelling one is tokenized as ordinary
//! text (they are matched as added tokens before the model otherwise).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::ModelWrapper;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{NFKC, Nmt, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, NormalizerWrapper, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
};

use super::corpus::{Corpus, CorpusStats};
use super::spm_tokenizer::{SPM_MODEL_FILE, SpmTokenizer};
use super::unigram::{UnigramOptions, train};
use crate::error::{Error, Result};
use crate::fs_util::write_atomic;

/// The word-start marker of SentencePiece pieces.
pub const WORD_MARKER: char = '▁';

/// The special tokens, in the id order of a trained tokenizer (`[PAD]`=0 … `[MASK]`=4).
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"];

/// How far below the lowest piece the special tokens score in a trained model, so that text
/// spelling one (`[MASK]`) is segmented into ordinary pieces when encoded literally.
const SPECIAL_SCORE_GAP: f64 = 100.0;

/// The ids of the special tokens of a tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// `[PAD]`.
    pub pad: u32,
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[UNK]`.
    pub unk: u32,
    /// `[MASK]`.
    pub mask: u32,
}

impl SpecialTokens {
    /// All five ids, in the order pad, cls, sep, unk, mask.
    pub fn ids(&self) -> [u32; 5] {
        [self.pad, self.cls, self.sep, self.unk, self.mask]
    }

    /// Whether `id` is one of them.
    pub fn contains(&self, id: u32) -> bool {
        self.ids().contains(&id)
    }
}

/// Options of [`Tokenizer::train`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainOptions {
    /// Vocabulary size, the five special tokens included.
    pub vocab_size: usize,
}

/// What [`Tokenizer::train`] saw and produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainReport {
    /// The pass over the corpus.
    pub corpus: CorpusStats,
    /// Distinct pre-tokenized words.
    pub distinct_words: usize,
    /// Final vocabulary size (less than asked when the corpus is too small for more).
    pub vocab_size: usize,
}

/// Token ids with their surface forms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoded {
    /// The tokens.
    pub tokens: Vec<String>,
    /// Their ids.
    pub ids: Vec<u32>,
}

/// The file name of a Hugging Face tokenizer in a model directory.
pub const TOKENIZER_JSON_FILE: &str = "tokenizer.json";

/// What a tokenizer is made of.
#[derive(Clone)]
enum Kind {
    /// A Hugging Face `tokenizer.json`.
    Json {
        inner: Box<tokenizers::Tokenizer>,
        /// The same, with special-token text in the input treated as plain text (corpora).
        literal: Box<tokenizers::Tokenizer>,
        /// The file's bytes as read (`None` for a trained tokenizer).
        source: Option<Vec<u8>>,
    },
    /// A SentencePiece `spm.model`.
    Spm(Box<SpmTokenizer>),
}

/// A loaded or trained tokenizer with its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
    special: SpecialTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("special", &self.special)
            .finish()
    }
}

fn normalizer() -> Result<NormalizerWrapper> {
    let collapse = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| Error::Usage(format!("building the normaliser: {e}")))?;
    Ok(Sequence::new(vec![
        Nmt.into(),
        NFKC.into(),
        collapse.into(),
        Strip::new(true, true).into(),
    ])
    .into())
}

fn metaspace() -> Metaspace {
    Metaspace::new(WORD_MARKER, PrependScheme::Always, true)
}

impl Tokenizer {
    /// Loads a tokenizer: a model directory's (see [`Tokenizer::from_dir`]), a Hugging Face
    /// `tokenizer.json` (a `.json` file, or one starting with `{`), or else a SentencePiece
    /// model file with the `tokenizer_config.json` beside it, if any. It must have all five
    /// special tokens (`[MASK]` may be missing from an `spm.model`: it is then added).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let json = path.extension().is_some_and(|e| e == "json")
            || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        match json {
            true => Self::from_bytes(path, &bytes),
            false => Self::from_spm(SpmTokenizer::load(path)?),
        }
    }

    /// The tokenizer of a model directory: its `tokenizer.json`, else its `spm.model` (with
    /// `tokenizer_config.json`, if any).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        match Self::find_in_dir(dir)? {
            Some(path) => Self::load(&path),
            None => Err(Error::format(
                dir,
                format!(
                    "no tokenizer in the directory ({TOKENIZER_JSON_FILE} or {SPM_MODEL_FILE})"
                ),
            )),
        }
    }

    /// The tokenizer file of a model directory, if any: `tokenizer.json`, else `spm.model`.
    pub fn find_in_dir(dir: &Path) -> Result<Option<PathBuf>> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            ));
        }
        Ok([TOKENIZER_JSON_FILE, SPM_MODEL_FILE]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file()))
    }

    /// Wraps an `spm.model` tokenizer.
    pub fn from_spm(spm: SpmTokenizer) -> Result<Self> {
        Ok(Tokenizer {
            special: spm.special(),
            kind: Kind::Spm(Box::new(spm)),
        })
    }

    /// Parses the bytes of a Hugging Face `tokenizer.json` (what [`Tokenizer::load`] reads);
    /// `path` only labels errors. It must have all five special tokens.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::format(path, format!("not a tokenizer.json: {e}")))?;
        Self::wrap(inner, path, Some(bytes.to_vec()))
    }

    fn wrap(inner: tokenizers::Tokenizer, path: &Path, source: Option<Vec<u8>>) -> Result<Self> {
        let id = |name: &str| {
            inner
                .token_to_id(name)
                .ok_or_else(|| Error::format(path, format!("the tokenizer has no `{name}` token")))
        };
        let special = SpecialTokens {
            pad: id(SPECIAL_TOKENS[0])?,
            cls: id(SPECIAL_TOKENS[1])?,
            sep: id(SPECIAL_TOKENS[2])?,
            unk: id(SPECIAL_TOKENS[3])?,
            mask: id(SPECIAL_TOKENS[4])?,
        };
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        Ok(Tokenizer {
            kind: Kind::Json {
                inner: Box::new(inner),
                literal: Box::new(literal),
                source,
            },
            special,
        })
    }

    /// Trains a Unigram tokenizer of `options.vocab_size` tokens on `corpus`.
    pub fn train(corpus: &Corpus, options: &TrainOptions) -> Result<(Self, TrainReport)> {
        let reserved = SPECIAL_TOKENS.len();
        if options.vocab_size <= reserved {
            return Err(Error::Usage(format!(
                "vocabulary size {} leaves no room beside the {reserved} special tokens",
                options.vocab_size
            )));
        }
        let normalizer = normalizer()?;
        let pre_tokenizer: PreTokenizerWrapper = metaspace().into();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let stats = corpus.for_each_line(|line| {
            for word in pre_tokenize(&normalizer, &pre_tokenizer, line)? {
                match counts.get_mut(word.as_str()) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(word, 1);
                    }
                }
            }
            Ok(())
        })?;
        let words: Vec<(String, u64)> = counts.into_iter().collect();
        let pieces = train(
            &words,
            &UnigramOptions::new(options.vocab_size - reserved),
            &SPECIAL_TOKENS,
        )?;
        let lowest = pieces.last().map_or(0.0, |p| p.1);
        let vocab: Vec<(String, f64)> = SPECIAL_TOKENS
            .iter()
            .map(|s| (s.to_string(), lowest - SPECIAL_SCORE_GAP))
            .chain(pieces)
            .map(|(s, score)| (s, (score * 1e9).round() / 1e9))
            .collect();
        let vocab_size = vocab.len();
        let unk = SPECIAL_TOKENS.iter().position(|s| *s == "[UNK]");
        let model = Unigram::from(vocab, unk, false)
            .map_err(|e| Error::Usage(format!("building the Unigram model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(ModelWrapper::from(model));
        inner
            .with_normalizer(Some(normalizer))
            .map_err(|e| Error::Usage(format!("setting the normaliser: {e}")))?;
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(DecoderWrapper::from(metaspace())))
            .with_post_processor(Some(post_processor()?));
        let tokens: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        inner
            .add_special_tokens(tokens)
            .map_err(|e| Error::Usage(format!("adding the special tokens: {e}")))?;
        let report = TrainReport {
            corpus: stats,
            distinct_words: words.len(),
            vocab_size,
        };
        Ok((Self::wrap(inner, Path::new("<trained>"), None)?, report))
    }

    /// The `tokenizer.json` text (pretty-printed; deterministic); an error for an `spm.model`
    /// tokenizer, which has no such form.
    pub fn to_json(&self) -> Result<String> {
        match &self.kind {
            Kind::Json { inner, .. } => inner
                .to_string(true)
                .map_err(|e| Error::Usage(format!("serialising the tokenizer: {e}"))),
            Kind::Spm(_) => Err(Error::Usage(
                "an spm.model tokenizer has no tokenizer.json form".into(),
            )),
        }
    }

    /// The tokenizer's files in the form it came in, with their bytes: `tokenizer.json` (as
    /// read, or serialised when trained), or `spm.model` and, when it had one,
    /// `tokenizer_config.json`. The first is the file [`Tokenizer::load`] reads.
    pub fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        match &self.kind {
            Kind::Json {
                source: Some(bytes),
                ..
            } => Ok(vec![(TOKENIZER_JSON_FILE, bytes.clone())]),
            Kind::Json { source: None, .. } => {
                Ok(vec![(TOKENIZER_JSON_FILE, self.to_json()?.into_bytes())])
            }
            Kind::Spm(spm) => Ok(spm
                .files()
                .into_iter()
                .map(|(name, bytes)| (name, bytes.to_vec()))
                .collect()),
        }
    }

    /// Writes [`Tokenizer::files`] into `dir` atomically; returns the path of the first.
    pub fn save_to_dir(&self, dir: &Path) -> Result<PathBuf> {
        let files = self.files()?;
        for (name, bytes) in &files {
            write_atomic(&dir.join(name), bytes)?;
        }
        Ok(dir.join(files.first().map_or(TOKENIZER_JSON_FILE, |f| f.0)))
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json()?.as_bytes())
    }

    /// The special-token ids.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Number of ids (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Json { inner, .. } => inner.get_vocab_size(true),
            Kind::Spm(spm) => spm.vocab_size(),
        }
    }

    /// The token of an id.
    pub fn token(&self, id: u32) -> Option<String> {
        match &self.kind {
            Kind::Json { inner, .. } => inner.id_to_token(id),
            Kind::Spm(spm) => spm.token(id),
        }
    }

    /// Encodes `text` (special-token text such as `[MASK]` becomes that token), with
    /// `[CLS]`/`[SEP]` around it when `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let inner = match &self.kind {
            Kind::Json { inner, .. } => inner,
            Kind::Spm(spm) => return Ok(spm.encode(text, add_special_tokens)),
        };
        let encoding = inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Usage(format!("encoding: {e}")))?;
        Ok(Encoded {
            tokens: encoding.get_tokens().to_vec(),
            ids: encoding.get_ids().to_vec(),
        })
    }

    /// The ids of corpus lines, without special tokens: text that spells one (`[MASK]`) is
    /// tokenized as plain text, and should a tokenizer's model still produce `[PAD]`, `[CLS]`,
    /// `[SEP]` or `[MASK]` that id is dropped (`[UNK]` stays). Lines are encoded in parallel;
    /// the result does not depend on the thread count.
    pub fn encode_corpus_lines(&self, lines: &[String]) -> Result<Vec<Vec<u32>>> {
        let literal = match &self.kind {
            Kind::Json { literal, .. } => literal,
            Kind::Spm(spm) => return Ok(spm.encode_corpus_lines(lines)),
        };
        let encodings = literal
            .encode_batch(lines.iter().map(String::as_str).collect::<Vec<_>>(), false)
            .map_err(|e| Error::Usage(format!("encoding corpus text: {e}")))?;
        let s = self.special;
        let structural = [s.pad, s.cls, s.sep, s.mask];
        Ok(encodings
            .iter()
            .map(|e| {
                let ids = e.get_ids().iter().copied();
                ids.filter(|id| !structural.contains(id)).collect()
            })
            .collect())
    }

    /// For every id, whether its token starts a word for whole-word masking: it carries the
    /// `▁` marker, is a special token, is a single whitespace, control or punctuation
    /// character (as in the official `part_of_whole_word`), or is unknown.
    pub fn word_starts(&self) -> Vec<bool> {
        (0..self.vocab_size() as u32)
            .map(|id| match self.token(id) {
                Some(t) => {
                    let mut chars = t.chars();
                    let single = match (chars.next(), chars.next()) {
                        (Some(c), None) => {
                            c.is_whitespace()
                                || c.is_control()
                                || c.is_ascii_punctuation()
                                || (!c.is_ascii() && !c.is_alphanumeric())
                        }
                        _ => false,
                    };
                    t.starts_with(WORD_MARKER) || single || self.special.contains(id)
                }
                None => true,
            })
            .collect()
    }

    /// A 64-bit FNV-1a hash identifying the tokenizer: of the compact `tokenizer.json`, or of
    /// the `spm.model` and `tokenizer_config.json` bytes.
    pub fn fingerprint(&self) -> Result<u64> {
        let inner = match &self.kind {
            Kind::Json { inner, .. } => inner,
            Kind::Spm(spm) => return Ok(spm.fingerprint()),
        };
        let json = inner
            .to_string(false)
            .map_err(|e| Error::Usage(format!("serialising the tokenizer: {e}")))?;
        Ok(json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        }))
    }
}

fn post_processor() -> Result<TemplateProcessing> {
    TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
        .map_err(|e| Error::Usage(format!("building the post-processor: {e}")))?
        .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
        .build()
        .map_err(|e| Error::Usage(format!("building the post-processor: {e}")))
}

/// The pre-tokenized words of one line (normalised, `▁`-prefixed).
fn pre_tokenize(
    normalizer: &NormalizerWrapper,
    pre_tokenizer: &PreTokenizerWrapper,
    line: &str,
) -> Result<Vec<String>> {
    let fail = |e: tokenizers::Error| Error::Usage(format!("pre-tokenizing `{line}`: {e}"));
    let mut normalized = NormalizedString::from(line);
    normalizer.normalize(&mut normalized).map_err(fail)?;
    let mut split = PreTokenizedString::from(normalized);
    pre_tokenizer.pre_tokenize(&mut split).map_err(fail)?;
    Ok(split
        .get_splits(OffsetReferential::Normalized, OffsetType::None)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::small_corpus;

    #[test]
    fn training_is_deterministic_and_ids_are_fixed() {
        let (dir, corpus) = small_corpus("train", 40_000);
        let options = TrainOptions { vocab_size: 600 };
        let (a, report) = Tokenizer::train(&corpus, &options).unwrap();
        let (b, _) = Tokenizer::train(&corpus, &options).unwrap();
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        assert_eq!(report.vocab_size, 600);
        assert_eq!(a.vocab_size(), 600);
        assert_eq!(
            a.special(),
            SpecialTokens {
                pad: 0,
                cls: 1,
                sep: 2,
                unk: 3,
                mask: 4
            }
        );
        let path = dir.join("tokenizer.json");
        a.save(&path).unwrap();
        let loaded = Tokenizer::load(&path).unwrap();
        assert_eq!(loaded.to_json().unwrap(), a.to_json().unwrap());
        assert_eq!(loaded.fingerprint().unwrap(), a.fingerprint().unwrap());
    }

    #[test]
    fn encodes_with_specials_and_literal_corpus_text() {
        let (dir, _) = small_corpus("encode", 40_000);
        std::fs::write(dir.join("stage.txt"), "[Exit.]\n[Enter MASKERS.]\n").unwrap();
        let corpus = Corpus::open(std::slice::from_ref(&*dir), false).unwrap();
        let (t, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 400 }).unwrap();
        let e = t
            .encode("Shall I compare thee  to a [MASK]?", true)
            .unwrap();
        assert_eq!(e.ids.first(), Some(&1));
        assert_eq!(e.ids.last(), Some(&2));
        assert!(e.ids.contains(&4));
        assert_eq!(e.tokens.len(), e.ids.len());
        assert!(e.tokens[1].starts_with(WORD_MARKER));
        let lines = t
            .encode_corpus_lines(&["a [MASK] b".to_string(), String::new()])
            .unwrap();
        assert!(!lines[0].iter().any(|&id| t.special().contains(id)));
        // Spelled with ordinary pieces when its characters are known; dropped otherwise.
        assert!(lines[0].len() >= 5, "{:?}", lines[0]);
        let other = t.encode_corpus_lines(&["a [CLS] b".to_string()]).unwrap();
        assert!(
            !other[0]
                .iter()
                .any(|&id| t.special().contains(id) && id != 3)
        );
        assert!(lines[1].is_empty());
        let starts = t.word_starts();
        assert_eq!(starts.len(), t.vocab_size());
        assert!(starts[..5].iter().all(|&s| s));
    }

    #[test]
    fn missing_special_token_is_an_error() {
        let (dir, corpus) = small_corpus("missing", 40_000);
        let (t, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 300 }).unwrap();
        let json = t.to_json().unwrap().replace("[MASK]", "[MSK]");
        let path = dir.join("bad.json");
        std::fs::write(&path, json).unwrap();
        let msg = Tokenizer::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("bad.json") && msg.contains("`[MASK]`"),
            "{msg}"
        );
        assert!(Tokenizer::train(&corpus, &TrainOptions { vocab_size: 5 }).is_err());
    }
}
