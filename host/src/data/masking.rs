//! Masking for the generator's MLM objective (SPEC §6.1, the official `NGramMaskGenerator`
//! with `max_gram = 1`).
//!
//! Per sequence of non-pad length `len` (`[CLS]` and `[SEP]` included):
//! - candidates: positions whose token is not `[MASK]`, `[CLS]`, `[SEP]`, `[PAD]` or `[UNK]`,
//!   grouped into units — one token each, or for [`MaskingStrategy::WholeWord`] a word: a token
//!   that starts a word (see [`Tokenizer::word_starts`]) with the continuation tokens after it;
//! - `num_to_predict = min(max_preds, max(1, round_half_even(len · 0.15)))` with
//!   `max_preds = ceil(max_seq_len · 0.15 / 10) · 10`;
//! - stratified selection: units in windows of `int(1 / 0.15) = 6` (the last one shorter), one
//!   uniformly random unit per window; the picked units are taken in order until
//!   `num_to_predict` tokens are selected (a whole word may overshoot by its last tokens);
//! - replacement: every selected token becomes `[MASK]` ([`MaskingStrategy::Official`],
//!   [`MaskingStrategy::WholeWord`]), or ([`MaskingStrategy::Bert801010`]) `[MASK]` with
//!   probability 0.8, unchanged with 0.1, a uniformly random non-special token with 0.1 (the
//!   official `_mask_token` order of draws).
//!
//! Labels are the original ids at selected positions and −100 elsewhere
//! (`MlmTargets::from_labels`).
//!
//! Randomness: `RandomStream { seed, step, stream: MASKING_STREAM }` with draw index
//! `4 · (row · max_seq_len + slot) + purpose`, where `row` is the sequence's row in the batch;
//! purpose 0 (`slot` = window index) picks the unit of a window, purpose 1 (`slot` = position)
//! chooses among 80/10/10, purpose 2 (`slot` = position) draws the random token. A resumed run
//! that replays the same batches at the same steps therefore masks them identically.
//!
//! [`Tokenizer::word_starts`]: super::tokenizer::Tokenizer::word_starts

use deberta_core::random::RandomStream;
use serde::{Deserialize, Serialize};

use super::tokenizer::{SpecialTokens, Tokenizer};
use crate::error::{Error, Result};

/// The [`RandomStream::stream`] of masking (ASCII `MASK`).
pub const MASKING_STREAM: u32 = 0x4D41_534B;

/// The label of an unselected position.
pub const IGNORE_LABEL: i64 = -100;

/// The fraction of tokens to predict (`mask_lm_prob`).
const MASK_LM_PROB: f64 = 0.15;

/// How tokens are selected and replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MaskingStrategy {
    /// The official DeBERTa-v3 RTD recipe: single tokens, every selected one → `[MASK]`.
    #[default]
    Official,
    /// Single tokens, 80 % `[MASK]` / 10 % unchanged / 10 % random token.
    #[value(name = "bert-80-10-10")]
    #[serde(rename = "bert-80-10-10")]
    Bert801010,
    /// Whole words, every selected token → `[MASK]`.
    WholeWord,
}

/// A masked batch, row-major `[batch, max_seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedBatch {
    /// The ids with the selected positions replaced.
    pub input_ids: Vec<i64>,
    /// The original id at selected positions, −100 elsewhere.
    pub labels: Vec<i64>,
}

/// Masks batches of one tokenizer and sequence length.
#[derive(Debug, Clone)]
pub struct Masker {
    strategy: MaskingStrategy,
    special: SpecialTokens,
    max_seq_len: usize,
    max_preds: usize,
    window: usize,
    /// The special ids below `vocab_size`, ascending (skipped by random replacements).
    specials_sorted: Vec<u32>,
    vocab_size: u32,
    /// Per id: whether it starts a unit (whole-word masking only).
    word_starts: Vec<bool>,
}

impl Masker {
    /// A masker for `tokenizer`'s vocabulary and sequences of `max_seq_len`.
    pub fn from_tokenizer(
        strategy: MaskingStrategy,
        tokenizer: &Tokenizer,
        max_seq_len: usize,
    ) -> Result<Masker> {
        let starts = match strategy {
            MaskingStrategy::WholeWord => tokenizer.word_starts(),
            _ => Vec::new(),
        };
        Masker::new(
            strategy,
            tokenizer.special(),
            tokenizer.vocab_size(),
            starts,
            max_seq_len,
        )
    }

    /// A masker from its parts: `word_starts[id]` tells whether token `id` starts a word
    /// (needed for [`MaskingStrategy::WholeWord`] only; ids beyond it start words).
    pub fn new(
        strategy: MaskingStrategy,
        special: SpecialTokens,
        vocab_size: usize,
        word_starts: Vec<bool>,
        max_seq_len: usize,
    ) -> Result<Masker> {
        let mut specials_sorted: Vec<u32> = special
            .ids()
            .into_iter()
            .filter(|&id| (id as usize) < vocab_size)
            .collect();
        specials_sorted.sort_unstable();
        specials_sorted.dedup();
        if vocab_size <= specials_sorted.len() || vocab_size > u32::MAX as usize {
            return Err(Error::Usage(format!(
                "masking: vocabulary of {vocab_size} tokens has no ordinary token"
            )));
        }
        Ok(Masker {
            strategy,
            special,
            max_seq_len,
            max_preds: ((max_seq_len as f64 * MASK_LM_PROB / 10.0).ceil() * 10.0) as usize,
            window: (1.0 / MASK_LM_PROB) as usize,
            specials_sorted,
            vocab_size: vocab_size as u32,
            word_starts,
        })
    }

    /// The most tokens predicted in one sequence (80 for 512).
    pub fn max_preds(&self) -> usize {
        self.max_preds
    }

    /// Tokens to predict in a sequence of non-pad length `len`.
    pub fn num_to_predict(&self, len: usize) -> usize {
        let n = (len as f64 * MASK_LM_PROB).round_ties_even() as usize;
        n.max(1).min(self.max_preds)
    }

    /// Masks a batch (`ids`, `attention_mask`: `[batch, max_seq_len]`, padding after the
    /// tokens) with the draws of `rng` (see the module documentation).
    pub fn mask_batch(
        &self,
        ids: &[i64],
        attention_mask: &[i64],
        rng: RandomStream,
    ) -> Result<MaskedBatch> {
        self.mask_rows(ids, attention_mask, rng, 0)
    }

    /// Masks rows `first_row…` of a batch (one process's share of a data-parallel step) with
    /// the draws those rows get in [`Masker::mask_batch`] of the whole batch.
    pub fn mask_rows(
        &self,
        ids: &[i64],
        attention_mask: &[i64],
        rng: RandomStream,
        first_row: usize,
    ) -> Result<MaskedBatch> {
        let s = self.max_seq_len;
        if !ids.len().is_multiple_of(s) || attention_mask.len() != ids.len() {
            return Err(Error::Usage(format!(
                "masking: {} ids and {} mask values for rows of {s}",
                ids.len(),
                attention_mask.len()
            )));
        }
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_LABEL; ids.len()];
        for (row, ((out, lab), mask)) in input_ids
            .chunks_exact_mut(s)
            .zip(labels.chunks_exact_mut(s))
            .zip(attention_mask.chunks_exact(s))
            .enumerate()
        {
            let len = mask.iter().filter(|&&m| m != 0).count();
            self.mask_sequence(out, lab, len, (first_row + row) as u64, rng);
        }
        Ok(MaskedBatch { input_ids, labels })
    }

    /// Masks the first `len` tokens of one row in place, writing its labels.
    fn mask_sequence(
        &self,
        ids: &mut [i64],
        labels: &mut [i64],
        len: usize,
        row: u64,
        rng: RandomStream,
    ) {
        let base = row * self.max_seq_len as u64;
        let draw = |slot: usize, purpose: u64| rng.bits(4 * (base + slot as u64) + purpose);
        let units = self.units(&ids[..len]);
        let target = self.num_to_predict(len);
        let mut picked = Vec::with_capacity(units.len().div_ceil(self.window));
        for (w, window) in units.chunks(self.window).enumerate() {
            picked.push(&window[below(draw(w, 0), window.len() as u32) as usize]);
        }
        let mut selected = 0;
        for unit in picked {
            if selected >= target {
                break;
            }
            for &p in unit {
                labels[p] = ids[p];
                ids[p] = self.replacement(ids[p], draw(p, 1), draw(p, 2));
                selected += 1;
            }
        }
    }

    /// The candidate units of a sequence, as lists of positions.
    fn units(&self, ids: &[i64]) -> Vec<Vec<usize>> {
        let mut units: Vec<Vec<usize>> = Vec::new();
        for (p, &id) in ids.iter().enumerate() {
            if u32::try_from(id).is_ok_and(|id| self.special.contains(id)) {
                continue;
            }
            let starts = self.strategy != MaskingStrategy::WholeWord
                || usize::try_from(id)
                    .ok()
                    .and_then(|i| self.word_starts.get(i).copied())
                    .unwrap_or(true);
            match units.last_mut() {
                Some(unit) if !starts => unit.push(p),
                _ => units.push(vec![p]),
            }
        }
        units
    }

    /// The id a selected token becomes, from its two draws.
    fn replacement(&self, id: i64, choice: u32, random: u32) -> i64 {
        let mask = i64::from(self.special.mask);
        if self.strategy != MaskingStrategy::Bert801010 {
            return mask;
        }
        // The official order: [MASK] below 0.8, unchanged below 0.9, else a random token.
        let u = f64::from(choice) / 4_294_967_296.0;
        if u < 0.8 {
            mask
        } else if u < 0.9 {
            id
        } else {
            let ordinary = self.vocab_size - self.specials_sorted.len() as u32;
            let mut token = below(random, ordinary);
            for &s in &self.specials_sorted {
                if token >= s {
                    token += 1;
                }
            }
            i64::from(token)
        }
    }
}

/// A uniform integer in `0..n` from 32 random bits (multiply-shift).
fn below(bits: u32, n: u32) -> u32 {
    ((u64::from(bits) * u64::from(n)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialTokens = SpecialTokens {
        pad: 0,
        cls: 1,
        sep: 2,
        unk: 3,
        mask: 4,
    };
    const VOCAB: usize = 1000;
    const S: usize = 512;

    fn rng(step: u32) -> RandomStream {
        RandomStream {
            seed: 11,
            step,
            stream: MASKING_STREAM,
        }
    }

    /// A batch of rows with `lens[i]` non-pad tokens, some `[UNK]` sprinkled in.
    fn batch(lens: &[usize]) -> (Vec<i64>, Vec<i64>) {
        let mut ids = vec![0i64; lens.len() * S];
        let mut mask = vec![0i64; lens.len() * S];
        for (r, &len) in lens.iter().enumerate() {
            let row = &mut ids[r * S..(r + 1) * S];
            row[0] = 1;
            for (p, t) in row.iter_mut().enumerate().take(len - 1).skip(1) {
                *t = if p % 37 == 0 {
                    3
                } else {
                    5 + ((p * 7919 + r * 13) % 995) as i64
                };
            }
            row[len - 1] = 2;
            mask[r * S..r * S + len].fill(1);
        }
        (ids, mask)
    }

    fn masker(strategy: MaskingStrategy, starts: Vec<bool>) -> Masker {
        Masker::new(strategy, SPECIAL, VOCAB, starts, S).unwrap()
    }

    #[test]
    fn official_counts_windows_and_labels() {
        let m = masker(MaskingStrategy::Official, Vec::new());
        assert_eq!(m.max_preds(), 80);
        assert_eq!(m.num_to_predict(10), 2); // round(1.5) = 2
        assert_eq!(m.num_to_predict(30), 4); // round(4.5) = 4 (half to even)
        assert_eq!(m.num_to_predict(3), 1);
        assert_eq!(m.num_to_predict(512), 77);
        let lens = [512, 512, 300, 40, 3];
        let (ids, mask) = batch(&lens);
        for step in 0..20 {
            let out = m.mask_batch(&ids, &mask, rng(step)).unwrap();
            for (r, &len) in lens.iter().enumerate() {
                let row = r * S..(r + 1) * S;
                let (orig, got, lab) = (
                    &ids[row.clone()],
                    &out.input_ids[row.clone()],
                    &out.labels[row],
                );
                let selected: Vec<usize> = (0..S).filter(|&p| lab[p] != IGNORE_LABEL).collect();
                let candidates: Vec<usize> = (0..len)
                    .filter(|&p| !SPECIAL.contains(orig[p] as u32))
                    .collect();
                // Long sequences reach num_to_predict (the windows give ~len/6 picks).
                let expected = m.num_to_predict(len).min(candidates.len().div_ceil(6));
                assert_eq!(selected.len(), expected, "row {r} step {step}");
                for p in 0..S {
                    if lab[p] == IGNORE_LABEL {
                        assert_eq!(got[p], orig[p]);
                    } else {
                        assert_eq!(lab[p], orig[p]);
                        assert_eq!(got[p], 4);
                        assert!(!SPECIAL.contains(orig[p] as u32), "special masked");
                    }
                }
                // At most one pick per window of 6 candidates.
                for w in candidates.chunks(6) {
                    assert!(w.iter().filter(|&&p| lab[p] != IGNORE_LABEL).count() <= 1);
                }
            }
        }
    }

    #[test]
    fn deterministic_per_step_and_row() {
        let m = masker(MaskingStrategy::Bert801010, Vec::new());
        let (ids, mask) = batch(&[512, 200]);
        let a = m.mask_batch(&ids, &mask, rng(3)).unwrap();
        assert_eq!(a, m.mask_batch(&ids, &mask, rng(3)).unwrap());
        assert_ne!(a, m.mask_batch(&ids, &mask, rng(4)).unwrap());
        // A row's masking depends on its row index, not on the other rows.
        let (one, one_mask) = batch(&[512]);
        let b = m.mask_batch(&one, &one_mask, rng(3)).unwrap();
        assert_eq!(b.labels, a.labels[..S]);
        // A share of the batch from row 1 on is masked as those rows of the whole batch.
        let share = m.mask_rows(&ids[S..], &mask[S..], rng(3), 1).unwrap();
        assert_eq!(share.labels, a.labels[S..]);
        assert_eq!(share.input_ids, a.input_ids[S..]);
    }

    #[test]
    fn bert_proportions() {
        let m = masker(MaskingStrategy::Bert801010, Vec::new());
        let (ids, mask) = batch(&[512; 8]);
        let (mut masked, mut kept, mut random, mut total) = (0, 0, 0, 0);
        for step in 0..40 {
            let out = m.mask_batch(&ids, &mask, rng(step)).unwrap();
            for ((&orig, &got), &label) in ids.iter().zip(&out.input_ids).zip(&out.labels) {
                if label == IGNORE_LABEL {
                    continue;
                }
                total += 1;
                match got {
                    4 => masked += 1,
                    t if t == orig => kept += 1,
                    t => {
                        assert!(!SPECIAL.contains(t as u32) && (t as usize) < VOCAB);
                        random += 1;
                    }
                }
            }
        }
        let frac = |c: i32| c as f64 / total as f64;
        assert!((frac(masked) - 0.8).abs() < 0.03, "{}", frac(masked));
        assert!((frac(kept) - 0.1).abs() < 0.03, "{}", frac(kept));
        assert!((frac(random) - 0.1).abs() < 0.03, "{}", frac(random));
    }

    #[test]
    fn whole_words_are_masked_completely() {
        // Ids divisible by 3 continue a word.
        let starts: Vec<bool> = (0..VOCAB).map(|i| i % 3 != 0 || i < 5).collect();
        let m = masker(MaskingStrategy::WholeWord, starts.clone());
        let (ids, mask) = batch(&[512, 257]);
        for step in 0..10 {
            let out = m.mask_batch(&ids, &mask, rng(step)).unwrap();
            for r in 0..2 {
                let row = r * S..(r + 1) * S;
                let units =
                    m.units(&ids[row.clone()][..mask[row.clone()].iter().sum::<i64>() as usize]);
                let lab = &out.labels[row];
                let mut picked = 0;
                for unit in &units {
                    let hits = unit.iter().filter(|&&p| lab[p] != IGNORE_LABEL).count();
                    assert!(hits == 0 || hits == unit.len(), "partial word");
                    picked += usize::from(hits > 0);
                    assert!(unit[1..].iter().all(|&p| !starts[ids[r * S + p] as usize]));
                }
                assert!(picked > 0);
                assert!(units.iter().any(|u| u.len() > 1));
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let m = masker(MaskingStrategy::Official, Vec::new());
        assert!(m.mask_batch(&[1; 10], &[1; 10], rng(0)).is_err());
        assert!(Masker::new(MaskingStrategy::Official, SPECIAL, 5, Vec::new(), S).is_err());
    }
}
