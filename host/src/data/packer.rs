//! The token cache: a corpus tokenized once, streaming, into one flat file of token ids.
//!
//! As the official `prepare_data.py` does, every line is tokenized on its own (without special
//! tokens) and all lines of all files are concatenated into one token stream, documents and
//! lines with nothing in between; sequences are cut from that stream later
//! ([`super::dataset`]). Files in the cache directory:
//! - `tokens.u16` (vocabulary ≤ 65 536) or `tokens.u32`: the ids, little-endian;
//! - `index.json` ([`CacheIndex`]): token count, width, and what the cache was built from.
//!
//! The token file is written to a temporary name, fsynced and renamed, and the index is written
//! last (atomically), so an interrupted build leaves no index and is simply rebuilt.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::corpus::Corpus;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::fs_util::write_atomic;

/// The index file's name.
pub const INDEX_FILE: &str = "index.json";
/// The index's `format` value.
const FORMAT: &str = "deberta-token-cache";
/// The index's `version` value.
const VERSION: u32 = 1;
/// Lines encoded per batch while packing.
const LINES_PER_BATCH: usize = 4096;

/// Width of the stored ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    /// 2 bytes per id.
    U16,
    /// 4 bytes per id.
    U32,
}

impl TokenWidth {
    /// Bytes per id.
    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            TokenWidth::U16 => "tokens.u16",
            TokenWidth::U32 => "tokens.u32",
        }
    }
}

/// One corpus file as recorded in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its path as given.
    pub path: String,
    /// Its size in bytes when packed.
    pub bytes: u64,
}

/// `index.json` of a token cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheIndex {
    /// Always `deberta-token-cache`.
    pub format: String,
    /// Layout version (1).
    pub version: u32,
    /// Width of the ids in the token file.
    pub width: TokenWidth,
    /// Number of tokens.
    pub tokens: u64,
    /// The tokenizer's vocabulary size.
    pub vocab_size: u64,
    /// [`Tokenizer::fingerprint`] of the tokenizer used, in hex.
    pub tokenizer: String,
    /// Whether invalid UTF-8 was replaced.
    pub lossy: bool,
    /// The corpus files, in order.
    pub files: Vec<SourceFile>,
    /// Lines read.
    pub lines: u64,
}

/// An opened token cache.
#[derive(Debug)]
pub struct TokenCache {
    index: CacheIndex,
    path: PathBuf,
    file: File,
}

/// The index a cache of `corpus` by `tokenizer` must have, token count aside.
fn expected_index(corpus: &Corpus, tokenizer: &Tokenizer) -> Result<CacheIndex> {
    let files = corpus
        .files()
        .iter()
        .map(|p| {
            let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
            Ok(SourceFile {
                path: p.display().to_string(),
                bytes: meta.len(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CacheIndex {
        format: FORMAT.into(),
        version: VERSION,
        width: TokenWidth::for_vocab(tokenizer.vocab_size()),
        tokens: 0,
        vocab_size: tokenizer.vocab_size() as u64,
        tokenizer: format!("{:016x}", tokenizer.fingerprint()?),
        lossy: corpus.lossy(),
        files,
        lines: 0,
    })
}

impl TokenCache {
    /// Tokenizes `corpus` into the cache directory `dir` (created if needed), replacing any
    /// cache there.
    pub fn build(dir: &Path, corpus: &Corpus, tokenizer: &Tokenizer) -> Result<TokenCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut index = expected_index(corpus, tokenizer)?;
        let index_path = dir.join(INDEX_FILE);
        match std::fs::remove_file(&index_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&index_path, e));
            }
            _ => {}
        }
        let path = dir.join(index.width.file_name());
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            index.width.file_name(),
            std::process::id()
        ));
        let result = write_tokens(&tmp, corpus, tokenizer, index.width);
        let (tokens, lines) = match result {
            Ok(counts) => counts,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        index.tokens = tokens;
        index.lines = lines;
        let json = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::format(&index_path, e.to_string()))?;
        write_atomic(&index_path, json.as_bytes())?;
        Self::open(dir)
    }

    /// Opens the cache in `dir`, checking its index against the token file.
    pub fn open(dir: &Path) -> Result<TokenCache> {
        let index_path = dir.join(INDEX_FILE);
        let bytes = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: CacheIndex = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(&index_path, e.to_string()))?;
        if index.format != FORMAT || index.version != VERSION {
            return Err(Error::format(
                &index_path,
                format!(
                    "format `{}` version {}, expected `{FORMAT}` version {VERSION}",
                    index.format, index.version
                ),
            ));
        }
        let path = dir.join(index.width.file_name());
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let expected = index.tokens * index.width.bytes() as u64;
        if len != expected {
            return Err(Error::format(
                &path,
                format!(
                    "{len} bytes, but the index says {} tokens ({expected} bytes)",
                    index.tokens
                ),
            ));
        }
        Ok(TokenCache { index, path, file })
    }

    /// Opens the cache in `dir` if it was built from the same corpus files (paths and sizes),
    /// tokenizer and lossy setting, else rebuilds it; `true` when it was (re)built.
    pub fn open_or_build(
        dir: &Path,
        corpus: &Corpus,
        tokenizer: &Tokenizer,
    ) -> Result<(TokenCache, bool)> {
        if let Ok(cache) = Self::open(dir) {
            let expected = expected_index(corpus, tokenizer)?;
            let found = CacheIndex {
                tokens: 0,
                lines: 0,
                ..cache.index.clone()
            };
            if found == expected {
                return Ok((cache, false));
            }
        }
        Ok((Self::build(dir, corpus, tokenizer)?, true))
    }

    /// The index.
    pub fn index(&self) -> &CacheIndex {
        &self.index
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.index.tokens
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.index.tokens == 0
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads tokens `start..start + out.len()` into `out`.
    pub fn read(&self, start: u64, out: &mut [u32]) -> Result<()> {
        let end = start + out.len() as u64;
        if end > self.index.tokens {
            return Err(Error::format(
                &self.path,
                format!(
                    "tokens {start}..{end} requested, the cache has {}",
                    self.index.tokens
                ),
            ));
        }
        let width = self.index.width.bytes();
        let mut bytes = vec![0u8; out.len() * width];
        read_exact_at(&self.file, &mut bytes, start * width as u64)
            .map_err(|e| Error::io(&self.path, e))?;
        match self.index.width {
            TokenWidth::U16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            TokenWidth::U32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
        Ok(())
    }
}

/// Tokenizes `corpus` into `path` (fsynced); returns (tokens, lines).
fn write_tokens(
    path: &Path,
    corpus: &Corpus,
    tokenizer: &Tokenizer,
    width: TokenWidth,
) -> Result<(u64, u64)> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut tokens = 0u64;
    let mut pending: Vec<String> = Vec::with_capacity(LINES_PER_BATCH);
    let mut flush = |pending: &mut Vec<String>, out: &mut BufWriter<File>| -> Result<()> {
        for ids in tokenizer.encode_corpus_lines(pending)? {
            for id in ids {
                let written = match width {
                    TokenWidth::U16 => out.write_all(&(id as u16).to_le_bytes()),
                    TokenWidth::U32 => out.write_all(&id.to_le_bytes()),
                };
                written.map_err(|e| Error::io(path, e))?;
                tokens += 1;
            }
        }
        pending.clear();
        Ok(())
    };
    let stats = corpus.for_each_line(|line| {
        if !line.trim().is_empty() {
            pending.push(line.to_string());
            if pending.len() == LINES_PER_BATCH {
                flush(&mut pending, &mut out)?;
            }
        }
        Ok(())
    })?;
    flush(&mut pending, &mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    Ok((tokens, stats.lines))
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::small_corpus;
    use crate::data::tokenizer::TrainOptions;

    #[test]
    fn packs_reopens_and_rebuilds_when_stale() {
        let (dir, corpus) = small_corpus("pack", 20_000);
        let (tokenizer, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 300 }).unwrap();
        let cache_dir = dir.join("cache");
        let (cache, built) = TokenCache::open_or_build(&cache_dir, &corpus, &tokenizer).unwrap();
        assert!(built);
        assert_eq!(cache.index().width, TokenWidth::U16);
        // The stream equals the concatenated encodings of the non-blank lines.
        let mut expected = Vec::new();
        corpus
            .for_each_line(|l| {
                if !l.trim().is_empty() {
                    expected.extend(tokenizer.encode(l, false)?.ids);
                }
                Ok(())
            })
            .unwrap();
        let mut all = vec![0; cache.len() as usize];
        cache.read(0, &mut all).unwrap();
        assert_eq!(all, expected);
        let mut tail = [0; 3];
        cache.read(cache.len() - 3, &mut tail).unwrap();
        assert_eq!(tail, all[all.len() - 3..]);
        assert!(cache.read(cache.len() - 2, &mut tail).is_err());
        let first = std::fs::read(cache.path()).unwrap();
        let (_, built) = TokenCache::open_or_build(&cache_dir, &corpus, &tokenizer).unwrap();
        assert!(!built);
        // Another tokenizer invalidates the cache; the rebuild is identical for the original.
        let (other, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 280 }).unwrap();
        let (_, built) = TokenCache::open_or_build(&cache_dir, &corpus, &other).unwrap();
        assert!(built);
        let again = TokenCache::build(&cache_dir, &corpus, &tokenizer).unwrap();
        assert_eq!(std::fs::read(again.path()).unwrap(), first);
    }

    #[test]
    fn truncated_token_file_is_an_error() {
        let (dir, corpus) = small_corpus("truncated", 5_000);
        let (tokenizer, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 200 }).unwrap();
        let cache = TokenCache::build(&dir.join("c"), &corpus, &tokenizer).unwrap();
        let bytes = std::fs::read(cache.path()).unwrap();
        std::fs::write(cache.path(), &bytes[..bytes.len() - 2]).unwrap();
        let msg = TokenCache::open(&dir.join("c")).unwrap_err().to_string();
        assert!(msg.contains("tokens.u16"), "{msg}");
    }
}
