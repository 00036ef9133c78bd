//! Fixed-length sequences cut from a token cache, and the held-out split.
//!
//! With `S = max_seq_len` and the token stream `t` of the cache, sequence `k` is
//! `[CLS] t[k(S−2) .. (k+1)(S−2)] [SEP]` — the official `prepare_data.py` chunking. The last
//! sequence may be shorter: it is kept (as the official data keeps it) and padded with `[PAD]`,
//! its attention mask 0 there.
//!
//! Held out for evaluation: every sequence whose index is ≡ 19 (mod 20) — 5 %, spread evenly
//! over the corpus — or, with fewer than 20 sequences, the last one. The split depends on the
//! cache and `S` only (not on the seed). At least two sequences (one to train on, one to
//! evaluate) are required.

use super::packer::TokenCache;
use super::tokenizer::SpecialTokens;
use crate::error::{Error, Result};

/// One sequence in every `EVAL_STRIDE` is held out.
pub const EVAL_STRIDE: u64 = 20;

/// The sequences of a token cache for one `max_seq_len`.
#[derive(Debug)]
pub struct Dataset {
    cache: TokenCache,
    special: SpecialTokens,
    max_seq_len: usize,
    sequences: u64,
    seed: u64,
}

impl Dataset {
    /// Sequences of `max_seq_len` tokens (≥ 3) from `cache`, whose training order is keyed by
    /// `seed`. Fails when the cache makes fewer than two sequences.
    pub fn new(
        cache: TokenCache,
        special: SpecialTokens,
        max_seq_len: usize,
        seed: u64,
    ) -> Result<Dataset> {
        if max_seq_len < 3 {
            return Err(Error::Usage(format!(
                "max_seq_len {max_seq_len}: a sequence needs [CLS], [SEP] and at least one token"
            )));
        }
        let body = (max_seq_len - 2) as u64;
        let sequences = cache.len().div_ceil(body);
        if sequences < 2 {
            return Err(Error::format(
                cache.path(),
                format!(
                    "the corpus is too short: its {} tokens make {sequences} sequence(s) of \
                     max_seq_len {max_seq_len} ({body} text tokens each), and at least 2 are \
                     needed (one to train on, one held out); use more text or a smaller \
                     max_seq_len",
                    cache.len()
                ),
            ));
        }
        Ok(Dataset {
            cache,
            special,
            max_seq_len,
            sequences,
            seed,
        })
    }

    /// Tokens per sequence.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The seed of the training order.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The special tokens.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// All sequences.
    pub fn sequences(&self) -> u64 {
        self.sequences
    }

    /// Held-out sequences.
    pub fn eval_len(&self) -> u64 {
        (self.sequences / EVAL_STRIDE).max(1)
    }

    /// Training sequences.
    pub fn train_len(&self) -> u64 {
        self.sequences - self.eval_len()
    }

    /// The sequence index of training sequence `rank` (`< train_len`).
    pub fn train_index(&self, rank: u64) -> u64 {
        if self.sequences < EVAL_STRIDE {
            rank
        } else {
            rank + rank / (EVAL_STRIDE - 1)
        }
    }

    /// The sequence index of held-out sequence `rank` (`< eval_len`).
    pub fn eval_index(&self, rank: u64) -> u64 {
        if self.sequences < EVAL_STRIDE {
            self.sequences - 1
        } else {
            rank * EVAL_STRIDE + EVAL_STRIDE - 1
        }
    }

    /// Writes sequence `index` into `ids` and `mask` (each `max_seq_len` long); returns its
    /// length without padding.
    pub fn read_sequence(&self, index: u64, ids: &mut [i64], mask: &mut [i64]) -> Result<usize> {
        let s = self.max_seq_len;
        if index >= self.sequences || ids.len() != s || mask.len() != s {
            return Err(Error::Usage(format!(
                "sequence {index} of {} into buffers of {} and {} (max_seq_len {s})",
                self.sequences,
                ids.len(),
                mask.len()
            )));
        }
        let body = (s - 2) as u64;
        let start = index * body;
        let count = body.min(self.cache.len() - start) as usize;
        let mut tokens = vec![0u32; count];
        self.cache.read(start, &mut tokens)?;
        ids[0] = i64::from(self.special.cls);
        for (o, &t) in ids[1..=count].iter_mut().zip(&tokens) {
            *o = i64::from(t);
        }
        ids[count + 1] = i64::from(self.special.sep);
        ids[count + 2..].fill(i64::from(self.special.pad));
        mask[..count + 2].fill(1);
        mask[count + 2..].fill(0);
        Ok(count + 2)
    }
}

#[cfg(test)]
mod tests {
    use crate::data::test_util::dataset;

    #[test]
    fn sequences_cover_the_stream_and_the_split_partitions_them() {
        let (_dir, d) = dataset("sequences", 20_000, 64).unwrap();
        let s = d.max_seq_len();
        assert!(d.sequences() > 40);
        let mut stream = Vec::new();
        let (mut ids, mut mask) = (vec![0; s], vec![0; s]);
        for k in 0..d.sequences() {
            let len = d.read_sequence(k, &mut ids, &mut mask).unwrap();
            assert_eq!(ids[0], 1);
            assert_eq!(ids[len - 1], 2);
            assert!(mask[..len].iter().all(|&m| m == 1) && mask[len..].iter().all(|&m| m == 0));
            assert!(ids[len..].iter().all(|&t| t == 0));
            if k + 1 < d.sequences() {
                assert_eq!(len, s);
            }
            stream.extend_from_slice(&ids[1..len - 1]);
        }
        let mut all = vec![0u32; d.cache.len() as usize];
        d.cache.read(0, &mut all).unwrap();
        assert_eq!(
            stream,
            all.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()
        );
        let mut seen = vec![0u8; d.sequences() as usize];
        (0..d.train_len()).for_each(|r| seen[d.train_index(r) as usize] += 1);
        (0..d.eval_len()).for_each(|r| seen[d.eval_index(r) as usize] += 1);
        assert!(seen.iter().all(|&c| c == 1));
        assert_eq!(d.eval_len(), d.sequences() / 20);
    }

    #[test]
    fn small_and_too_short_corpora() {
        let (_dir, d) = dataset("few", 2_000, 256).unwrap();
        assert!(d.sequences() >= 2 && d.sequences() < 20);
        assert_eq!((d.eval_len(), d.eval_index(0)), (1, d.sequences() - 1));
        let msg = dataset("short", 300, 512).unwrap_err().to_string();
        assert!(msg.contains("too short"), "{msg}");
    }
}
