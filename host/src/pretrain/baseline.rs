//! The unigram reference of a run: how well the held-out masked tokens are predicted from the
//! training split's token frequencies alone, with no context. A generator whose eval MLM loss
//! and accuracy sit at these figures has learned nothing but the unigram distribution (the
//! plateau every MLM run passes through); learning the language shows as a loss below it.

use crate::data::Dataset;
use crate::error::Result;

/// Context-free prediction of the held-out split's maskable tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnigramReference {
    /// Mean cross-entropy (nats) of the held-out tokens under the training split's unigram
    /// distribution (add-½ smoothing, so unseen tokens have a finite cost).
    pub loss: f64,
    /// Share of held-out tokens equal to the training split's most frequent token.
    pub accuracy: f64,
}

/// Counts the non-special tokens of the training split and scores the held-out split with
/// them. Masking picks its positions uniformly among exactly these tokens, so the figures are
/// the expected eval MLM loss and accuracy of a generator that ignores its context.
pub fn unigram_reference(dataset: &Dataset, vocab: usize) -> Result<UnigramReference> {
    let special = dataset.special();
    let s = dataset.max_seq_len();
    let (mut ids, mut mask) = (vec![0i64; s], vec![0i64; s]);
    let mut visit = |index: u64, each: &mut dyn FnMut(usize)| -> Result<()> {
        let len = dataset.read_sequence(index, &mut ids, &mut mask)?;
        for &id in &ids[..len] {
            let id = id as usize;
            if id < vocab && !special.contains(id as u32) {
                each(id);
            }
        }
        Ok(())
    };
    let mut counts = vec![0u64; vocab];
    for rank in 0..dataset.train_len() {
        visit(dataset.train_index(rank), &mut |id| counts[id] += 1)?;
    }
    let total: u64 = counts.iter().sum();
    let smoothed = total as f64 + 0.5 * (vocab - special.ids().len()) as f64;
    let cost = |count: u64| -((count as f64 + 0.5) / smoothed).ln();
    let most_frequent = (0..vocab).max_by_key(|&id| counts[id]).unwrap_or(0);
    let (mut loss, mut correct, mut n) = (0.0f64, 0u64, 0u64);
    for rank in 0..dataset.eval_len() {
        visit(dataset.eval_index(rank), &mut |id| {
            loss += cost(counts[id]);
            correct += u64::from(id == most_frequent);
            n += 1;
        })?;
    }
    let n = n.max(1) as f64;
    Ok(UnigramReference {
        loss: loss / n,
        accuracy: correct as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::dataset;

    #[test]
    fn the_reference_is_the_cross_entropy_of_the_training_frequencies() {
        let (_dir, d) = dataset("unigram", 20_000, 64).unwrap();
        let vocab = 300;
        let reference = unigram_reference(&d, vocab).unwrap();
        // Recompute directly from the sequences.
        let s = d.max_seq_len();
        let (mut ids, mut mask) = (vec![0; s], vec![0; s]);
        let special = d.special();
        let tokens = |index: u64, ids: &mut Vec<i64>, mask: &mut Vec<i64>| {
            let len = d.read_sequence(index, ids, mask).unwrap();
            ids[..len]
                .iter()
                .map(|&t| t as u32)
                .filter(|&t| !special.contains(t))
                .collect::<Vec<u32>>()
        };
        let mut counts = std::collections::HashMap::<u32, f64>::new();
        for r in 0..d.train_len() {
            for t in tokens(d.train_index(r), &mut ids, &mut mask) {
                *counts.entry(t).or_default() += 1.0;
            }
        }
        let total: f64 = counts.values().sum::<f64>() + 0.5 * (vocab - 5) as f64;
        let held: Vec<u32> = (0..d.eval_len())
            .flat_map(|r| tokens(d.eval_index(r), &mut ids, &mut mask))
            .collect();
        let expected = held
            .iter()
            .map(|t| -((counts.get(t).copied().unwrap_or(0.0) + 0.5) / total).ln())
            .sum::<f64>()
            / held.len() as f64;
        assert!(
            (reference.loss - expected).abs() < 1e-9,
            "{reference:?} vs {expected}"
        );
        assert!(reference.loss > 1.0 && reference.accuracy > 0.0 && reference.accuracy < 1.0);
    }
}
