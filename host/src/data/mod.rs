//! The data side of pretraining: corpus → tokenizer → token cache → sequences → masked batches.
//!
//! The pretraining loop uses it as follows (all randomness is counter-based, keyed by the
//! run's seed, so a resumed run reproduces the same batches and masks):
//! 1. [`Corpus::open`] the text files;
//! 2. [`Tokenizer::load`] a `tokenizer.json` or an `spm.model`, or [`Tokenizer::train`] one
//!    (deterministic);
//! 3. [`TokenCache::open_or_build`] the corpus into `RUN_DIR/data/`;
//! 4. [`Dataset::new`] for `max_seq_len` and the seed: training/held-out split;
//! 5. [`Dataset::next_batch`] from a [`DataCursor`] saved with each checkpoint
//!    ([`Dataset::eval_batch`] for evaluation);
//! 6. [`Masker::mask_batch`] with `RandomStream { seed, step, stream: MASKING_STREAM }`.

pub mod corpus;
pub mod dataset;
pub mod loader;
pub mod masking;
pub mod packer;
pub mod permutation;
pub mod sentencepiece;
pub mod spm_charsmap;
pub mod spm_model;
pub mod spm_tokenizer;
pub mod tokenizer;
mod unigram;

#[cfg(test)]
pub(crate) mod test_util;

pub use corpus::{Corpus, CorpusStats};
pub use dataset::Dataset;
pub use loader::{Batch, DataCursor};
pub use masking::{IGNORE_LABEL, MASKING_STREAM, MaskedBatch, Masker, MaskingStrategy};
pub use packer::{CacheIndex, TokenCache};
pub use permutation::{PERMUTATION_STREAM, Permutation};
pub use spm_tokenizer::SpmTokenizer;
pub use tokenizer::{SpecialTokens, Tokenizer, TrainOptions, TrainReport};
