//! The gradient sum of a data-parallel run, in buckets overlapped with the backward pass.
//!
//! As the backward pass finishes an encoder layer (the top one first), the trainer hands its
//! gradients to [`AllReduce::ready`], which stages them on the host into the open bucket;
//! once the bucket holds `--bucket-mb` MiB of values it is encoded as a block-sparse message
//! and its exchange with every process starts (an immediate all-gather under MPI), while the
//! backward pass goes on. [`AllReduce::finish`] stages what is left (the embeddings, heads and
//! relative table), waits for every bucket in order and adds every process's gradients in
//! rank order onto zeros with the backend's own `add_assign` — the same additions, in the same
//! order, whatever the buckets, so the sums never depend on where buckets end.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use deberta_core::Backend;
use deberta_core::model::{ParamId, ParamStore};
use deberta_core::train::GradientReducer;

use super::blocks;

/// Exchanges one message per bucket with every process. Every process starts the same
/// exchanges in the same order.
pub trait Exchange {
    /// Starts exchanging this process's message of the next bucket, whose messages are at
    /// most `bound` words long.
    fn start(&mut self, message: &[u32], bound: usize);
    /// Lets the started exchanges progress, without blocking.
    fn progress(&mut self);
    /// Waits for the oldest exchange not yet returned: every process's message, in rank
    /// order (`None` when none was started).
    fn next(&mut self) -> Option<Vec<Vec<u32>>>;
}

/// An [`Exchange`] that runs each exchange to the end when it starts, through a blocking
/// gather (one process: the identity; tests: threads).
struct Blocking<G> {
    gather: G,
    done: VecDeque<Vec<Vec<u32>>>,
}

impl<G: FnMut(&[u32]) -> Vec<Vec<u32>>> Exchange for Blocking<G> {
    fn start(&mut self, message: &[u32], _bound: usize) {
        let messages = (self.gather)(message);
        self.done.push_back(messages);
    }

    fn progress(&mut self) {}

    fn next(&mut self) -> Option<Vec<Vec<u32>>> {
        self.done.pop_front()
    }
}

/// The exchange that runs each bucket's `gather` when the bucket is sent.
pub(super) fn blocking(gather: impl FnMut(&[u32]) -> Vec<Vec<u32>> + 'static) -> Box<dyn Exchange> {
    Box::new(Blocking {
        gather,
        done: VecDeque::new(),
    })
}

/// How much a data-parallel run exchanged, and how long its gradient sums took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeStats {
    /// Wall time of the sums: staging, encoding, waiting, decoding, addition.
    pub seconds: f64,
    /// The part of `seconds` spent waiting for exchanges to complete (the communication the
    /// backward pass did not hide, and waiting for slower processes).
    pub waiting: f64,
    /// 32-bit words this process sent.
    pub sent_words: u64,
    /// 32-bit words a dense exchange of the same gradients would have sent.
    pub dense_words: u64,
}

/// The bucketed gradient sum over the processes of a data-parallel run (staged through the
/// host on every backend): see the module documentation. Blocks of 64 values that are
/// exactly `+0.0` (embedding rows no token of this process touched) are not sent.
pub struct AllReduce<T> {
    exchange: Box<dyn Exchange>,
    /// Values after which a bucket is sealed and sent (0: one bucket, at the end).
    bucket_values: usize,
    /// The open bucket's parameters and lengths, and its values (the first `filled` of
    /// `values`, which keeps its length so that staging never clears memory).
    open: Vec<(ParamId, usize)>,
    values: Vec<f32>,
    filled: usize,
    /// The parameters of the buckets sent and not yet summed, oldest first.
    sent: VecDeque<Vec<(ParamId, usize)>>,
    /// The parameters staged this phase.
    staged: Vec<ParamId>,
    message: Vec<u32>,
    part: Vec<f32>,
    /// One host-to-backend staging tensor per parameter, by id (allocated on first use).
    staging: Vec<Option<T>>,
    stats: Rc<Cell<ExchangeStats>>,
}

impl<T> AllReduce<T> {
    /// The sum over the processes that `exchange` reaches, in buckets of `bucket_mib` MiB of
    /// gradient values (`0.0`: one bucket after the backward pass); what it costs is added to
    /// `stats`.
    pub fn new(
        exchange: Box<dyn Exchange>,
        bucket_mib: f64,
        stats: Rc<Cell<ExchangeStats>>,
    ) -> AllReduce<T> {
        AllReduce {
            exchange,
            bucket_values: (bucket_mib * (1 << 20) as f64 / 4.0).ceil() as usize,
            open: Vec::new(),
            values: Vec::new(),
            filled: 0,
            sent: VecDeque::new(),
            staged: Vec::new(),
            message: Vec::new(),
            part: Vec::new(),
            staging: Vec::new(),
            stats,
        }
    }

    /// The sum over the processes that `gather` exchanges with (it must return every
    /// process's message, in rank order), in buckets of `bucket_mib` MiB.
    pub fn with_gather(
        gather: impl FnMut(&[u32]) -> Vec<Vec<u32>> + 'static,
        bucket_mib: f64,
        stats: Rc<Cell<ExchangeStats>>,
    ) -> AllReduce<T> {
        AllReduce::new(blocking(gather), bucket_mib, stats)
    }

    /// Encodes the open bucket and starts its exchange.
    fn send(&mut self) {
        if self.open.is_empty() {
            return;
        }
        blocks::encode(&self.values[..self.filled], &mut self.message);
        self.exchange
            .start(&self.message, blocks::message_bound(self.filled));
        let mut stats = self.stats.get();
        stats.sent_words += self.message.len() as u64;
        stats.dense_words += self.filled as u64;
        self.stats.set(stats);
        self.sent.push_back(std::mem::take(&mut self.open));
        self.filled = 0;
    }

    /// Copies the gradients of `ids` into the open bucket, sending it whenever it is full.
    fn stage<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        grads: &ParamStore<T>,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        for &id in ids {
            let tensor = grads.get(id);
            let len = backend.len(tensor);
            let at = self.filled;
            self.filled += len;
            if self.values.len() < self.filled {
                self.values.resize(self.filled, 0.0);
            }
            backend.download(tensor, &mut self.values[at..self.filled])?;
            self.open.push((id, len));
            self.staged.push(id);
            if self.bucket_values > 0 && self.filled >= self.bucket_values {
                self.send();
            }
        }
        Ok(())
    }

    /// Adds the time since `started` to the statistics.
    fn charge(&self, started: Instant, waiting: f64) {
        let mut stats = self.stats.get();
        stats.seconds += started.elapsed().as_secs_f64();
        stats.waiting += waiting;
        self.stats.set(stats);
    }
}

impl<B: Backend> GradientReducer<B> for AllReduce<B::Tensor> {
    fn ready(
        &mut self,
        backend: &B,
        grads: &ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        let started = Instant::now();
        self.stage(backend, grads, ids)?;
        self.exchange.progress();
        self.charge(started, 0.0);
        Ok(())
    }

    fn finish(
        &mut self,
        backend: &B,
        grads: &mut ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        let started = Instant::now();
        let rest: Vec<ParamId> = ids
            .iter()
            .copied()
            .filter(|id| !self.staged.contains(id))
            .collect();
        self.stage(backend, grads, &rest)?;
        self.send();
        self.staged.clear();
        let mut waiting = 0.0;
        while let Some(bucket) = self.sent.pop_front() {
            let waited = Instant::now();
            let gathered = self
                .exchange
                .next()
                .ok_or(deberta_core::Error::EmptyInput {
                    what: "the processes' gradient messages",
                })?;
            waiting += waited.elapsed().as_secs_f64();
            if gathered.is_empty() {
                return Err(deberta_core::Error::EmptyInput {
                    what: "the processes' gradient messages",
                });
            }
            let total: usize = bucket.iter().map(|&(_, len)| len).sum();
            for (rank, message) in gathered.iter().enumerate() {
                blocks::decode(message, total, &mut self.part).ok_or(
                    deberta_core::Error::ShapeMismatch {
                        what: "a process's gradient message (values for these parameters)",
                        expected: total,
                        found: message.len(),
                    },
                )?;
                let mut offset = 0;
                for &(id, len) in &bucket {
                    if self.staging.len() <= id.index() {
                        self.staging.resize_with(id.index() + 1, || None);
                    }
                    let staging = match self.staging[id.index()].take() {
                        Some(t) if backend.len(&t) == len => t,
                        _ => backend.zeros(len)?,
                    };
                    let staging = self.staging[id.index()].insert(staging);
                    backend.write(staging, 0, &self.part[offset..offset + len])?;
                    let sum = grads.get_mut(id);
                    if rank == 0 {
                        backend.fill(sum, 0.0)?;
                    }
                    backend.add_assign(sum, staging)?;
                    offset += len;
                }
            }
        }
        self.charge(started, waiting);
        Ok(())
    }
}
