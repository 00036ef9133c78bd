//! Batches: the training stream (a fresh keyed permutation of the training sequences every
//! epoch, position saved in a [`DataCursor`]) and the held-out sequences in order.
//!
//! A batch is a pure function of the dataset, its seed and the cursor, so saving the cursor
//! with a checkpoint and passing it back after a restart replays exactly the same sequences.

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::permutation::Permutation;
use crate::error::{Error, Result};

/// Where the training stream stands: the next batch starts at training position `position`
/// of epoch `epoch` (the position-th element of that epoch's permutation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataCursor {
    /// Completed passes over the training sequences.
    pub epoch: u32,
    /// Sequences already served in this epoch.
    pub position: u64,
}

/// A batch of sequences, row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids (`[CLS] … [SEP] [PAD]…`).
    pub input_ids: Vec<i64>,
    /// 1 on tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns (`max_seq_len`).
    pub len: usize,
    /// The dataset index of each row's sequence.
    pub sequences: Vec<u64>,
    /// The cursor after this batch (for training batches; the input cursor for evaluation).
    pub cursor: DataCursor,
}

impl Dataset {
    /// The `batch_size` training sequences from `cursor` on (crossing into the next epoch when
    /// this one ends), and the cursor after them.
    pub fn next_batch(&self, cursor: DataCursor, batch_size: usize) -> Result<Batch> {
        self.next_batch_rows(cursor, batch_size, 0..batch_size)
    }

    /// Rows `rows` of the batch of `batch_size` training sequences from `cursor` on (one
    /// process's share of a data-parallel step: only those sequences are read), and the
    /// cursor after the whole batch.
    pub fn next_batch_rows(
        &self,
        cursor: DataCursor,
        batch_size: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<Batch> {
        if rows.start > rows.end || rows.end > batch_size {
            return Err(Error::Usage(format!(
                "rows {}..{} of a batch of {batch_size}",
                rows.start, rows.end
            )));
        }
        let n = self.train_len();
        if cursor.position > n {
            return Err(Error::Usage(format!(
                "data cursor at position {} of an epoch of {n} training sequences: it belongs \
                 to another corpus, tokenizer or max_seq_len",
                cursor.position
            )));
        }
        let mut cursor = cursor;
        let mut perm = Permutation::new(n, self.seed(), cursor.epoch);
        let mut indices = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            if cursor.position == n {
                cursor = next_epoch(cursor)?;
                perm = Permutation::new(n, self.seed(), cursor.epoch);
            }
            indices.push(self.train_index(perm.apply(cursor.position)));
            cursor.position += 1;
        }
        if cursor.position == n {
            cursor = next_epoch(cursor)?;
        }
        self.batch_of(indices[rows].to_vec(), cursor)
    }

    /// Held-out sequences `first..first + batch_size` (fewer at the end of the split).
    pub fn eval_batch(&self, first: u64, batch_size: usize) -> Result<Batch> {
        let end = (first + batch_size as u64).min(self.eval_len());
        let indices = (first..end).map(|r| self.eval_index(r)).collect();
        self.batch_of(indices, DataCursor::default())
    }

    fn batch_of(&self, sequences: Vec<u64>, cursor: DataCursor) -> Result<Batch> {
        let len = self.max_seq_len();
        let batch = sequences.len();
        let mut input_ids = vec![0; batch * len];
        let mut attention_mask = vec![0; batch * len];
        for ((&k, ids), mask) in sequences
            .iter()
            .zip(input_ids.chunks_exact_mut(len))
            .zip(attention_mask.chunks_exact_mut(len))
        {
            self.read_sequence(k, ids, mask)?;
        }
        Ok(Batch {
            input_ids,
            attention_mask,
            batch,
            len,
            sequences,
            cursor,
        })
    }
}

fn next_epoch(cursor: DataCursor) -> Result<DataCursor> {
    let epoch = cursor
        .epoch
        .checked_add(1)
        .ok_or_else(|| Error::Usage("data cursor: epoch counter overflow".into()))?;
    Ok(DataCursor { epoch, position: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::dataset;

    #[test]
    fn epochs_cover_training_sequences_once_and_cursors_replay() {
        let (_dir, d) = dataset("loader", 20_000, 64).unwrap();
        let n = d.train_len() as usize;
        let mut cursor = DataCursor::default();
        let mut served = Vec::new();
        let mut saved = Vec::new();
        while served.len() < 2 * n + 5 {
            let b = d.next_batch(cursor, 7).unwrap();
            assert_eq!((b.batch, b.len), (7, 64));
            assert_eq!(b.input_ids.len(), 7 * 64);
            saved.push((cursor, b.clone()));
            served.extend(b.sequences.iter().copied());
            cursor = b.cursor;
        }
        for epoch in 0..2 {
            let mut seq: Vec<u64> = served[epoch * n..(epoch + 1) * n].to_vec();
            seq.sort_unstable();
            let expected: Vec<u64> = (0..n as u64).map(|r| d.train_index(r)).collect();
            assert_eq!(seq, expected, "epoch {epoch}");
        }
        assert_ne!(served[..n], served[n..2 * n], "epochs share an order");
        // Round-trip a cursor through JSON and replay.
        for (c, b) in saved.iter().step_by(3) {
            let json = serde_json::to_string(c).unwrap();
            let restored: DataCursor = serde_json::from_str(&json).unwrap();
            assert_eq!(&d.next_batch(restored, 7).unwrap(), b);
        }
        let bad = DataCursor {
            epoch: 0,
            position: n as u64 + 1,
        };
        assert!(d.next_batch(bad, 1).is_err());
    }

    #[test]
    fn a_share_of_a_batch_is_those_rows_of_the_whole_batch() {
        let (_dir, d) = dataset("share", 20_000, 64).unwrap();
        let cursor = DataCursor::default();
        let whole = d.next_batch(cursor, 8).unwrap();
        for rows in [0..4, 4..8, 2..3, 8..8] {
            let part = d.next_batch_rows(cursor, 8, rows.clone()).unwrap();
            assert_eq!(part.sequences, whole.sequences[rows.clone()]);
            assert_eq!(
                part.input_ids,
                whole.input_ids[rows.start * 64..rows.end * 64]
            );
            assert_eq!(part.cursor, whole.cursor);
        }
        assert!(d.next_batch_rows(cursor, 8, 4..9).is_err());
    }

    #[test]
    fn eval_batches_walk_the_held_out_sequences() {
        let (_dir, d) = dataset("eval", 20_000, 64).unwrap();
        let mut rows = Vec::new();
        let mut first = 0;
        while first < d.eval_len() {
            let b = d.eval_batch(first, 2).unwrap();
            first += b.batch as u64;
            rows.extend(b.sequences);
        }
        let expected: Vec<u64> = (0..d.eval_len()).map(|r| d.eval_index(r)).collect();
        assert_eq!(rows, expected);
        assert_eq!(d.eval_batch(d.eval_len(), 4).unwrap().batch, 0);
    }
}
