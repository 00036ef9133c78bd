//! The gradient sum of a data-parallel run, in buckets overlapped with the backward pass.
//!
//! As the backward pass finishes an encoder layer (the top one first), the trainer hands its
//! gradients to [`AllReduce::ready`], which encodes them into the open bucket's block-sparse
//! message (straight from the tensors where the backend's are host memory, else through a
//! download); once the bucket holds `--bucket-mb` MiB of values its exchange with every
//! process starts (an immediate all-gather under MPI), while the backward pass goes on.
//! [`AllReduce::finish`] encodes what is left (the embeddings, heads and relative table),
//! waits for every bucket in order and adds every process's gradients in rank order onto
//! zeros, with the backend's own addition — the same additions, in the same order, whatever
//! the buckets, so the sums never depend on where buckets end.
//!
//! On a backend whose tensors are host memory and whose addition is the host's
//! ([`Backend::host_values`]: the CPU), the sum is one pass per parameter: each block of 64
//! values is summed in registers from every process's message, in rank order, and written
//! once into the gradient. A block that a process sent as all `+0.0` is not added: adding
//! `+0.0` to a sum changes nothing but a `-0.0`, and a sum started from `+0.0` is never
//! `-0.0` (round to nearest gives `-0.0` only for two `-0.0`s), so the bits are those of
//! adding every block (a NaN up to which NaN, which no addition specifies). Other backends (wgpu) decode each process's values on the host,
//! upload them and add them on the device, rank by rank.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use deberta_core::Backend;
use deberta_core::model::{GradientsReady, ParamId, ParamStore};
use deberta_core::train::GradientReducer;

use super::blocks::{self, BLOCK, Encoder, Reader};

/// Exchanges one message per bucket with every process. Every process starts the same
/// exchanges in the same order.
pub trait Exchange {
    /// Starts exchanging this process's message of the next bucket, whose messages are at
    /// most `bound` words long.
    fn start(&mut self, message: Vec<u32>, bound: usize);
    /// Lets the started exchanges progress, without blocking.
    fn progress(&mut self);
    /// Waits for the oldest exchange not yet returned: every process's message, in rank
    /// order (`None` when none was started).
    fn next(&mut self) -> Option<Vec<Vec<u32>>>;
    /// Takes back buffers of messages that [`Exchange::next`] returned, to receive into.
    fn recycle(&mut self, buffers: Vec<Vec<u32>>);
}

/// An [`Exchange`] that runs each exchange to the end when it starts, through a blocking
/// gather (one process: the identity; tests: threads).
struct Blocking<G> {
    gather: G,
    done: VecDeque<Vec<Vec<u32>>>,
}

impl<G: FnMut(&[u32]) -> Vec<Vec<u32>>> Exchange for Blocking<G> {
    fn start(&mut self, message: Vec<u32>, _bound: usize) {
        let messages = (self.gather)(&message);
        self.done.push_back(messages);
    }

    fn progress(&mut self) {}

    fn next(&mut self) -> Option<Vec<Vec<u32>>> {
        self.done.pop_front()
    }

    /// The gather allocates its own messages.
    fn recycle(&mut self, _buffers: Vec<Vec<u32>>) {}
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
    /// Wall time of the sums: encoding, waiting, decoding, addition.
    pub seconds: f64,
    /// The part of `seconds` spent waiting for exchanges to complete (the communication the
    /// backward pass did not hide, and waiting for slower processes).
    pub waiting: f64,
    /// 32-bit words this process sent.
    pub sent_words: u64,
    /// 32-bit words a dense exchange of the same gradients would have sent.
    pub dense_words: u64,
}

/// A bucket sent and not yet summed.
struct Bucket {
    /// Its parameters and their lengths.
    params: Vec<(ParamId, usize)>,
    /// Its blocks.
    blocks: usize,
}

/// The bucketed gradient sum over the processes of a data-parallel run: see the module
/// documentation. Blocks of 64 values that are exactly `+0.0` (embedding rows no token of
/// this process touched) are not sent.
pub struct AllReduce<T> {
    exchange: Box<dyn Exchange>,
    /// Values after which a bucket is sealed and sent (0: one bucket, at the end).
    bucket_values: usize,
    /// The open bucket, its values and its message so far.
    open: Bucket,
    filled: usize,
    message: Vec<u32>,
    encoder: Encoder,
    /// Message buffers to write the next buckets' messages into.
    spare: Vec<Vec<u32>>,
    /// The buckets sent and not yet summed, oldest first.
    sent: VecDeque<Bucket>,
    /// The parameters staged this phase.
    staged: Vec<ParamId>,
    /// Host values of one parameter (backends whose tensors are not host memory).
    scratch: Vec<f32>,
    /// One host-to-backend staging tensor per parameter, by id (allocated on first use;
    /// backends whose tensors are not host memory).
    staging: Vec<Option<T>>,
    stats: Rc<Cell<ExchangeStats>>,
}

/// The error for a message that does not hold the values of its bucket.
fn malformed(bound: usize, message: &[u32]) -> deberta_core::Error {
    deberta_core::Error::ShapeMismatch {
        what: "a process's gradient message (at most this many words for these parameters)",
        expected: bound,
        found: message.len(),
    }
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
            open: Bucket {
                params: Vec::new(),
                blocks: 0,
            },
            filled: 0,
            message: Vec::new(),
            encoder: Encoder::default(),
            spare: Vec::new(),
            sent: VecDeque::new(),
            staged: Vec::new(),
            scratch: Vec::new(),
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

    /// Ends the open bucket's message and starts its exchange.
    fn send(&mut self) {
        if self.open.params.is_empty() {
            return;
        }
        self.encoder.finish(&mut self.message);
        let mut next = self.spare.pop().unwrap_or_default();
        next.clear();
        let message = std::mem::replace(&mut self.message, next);
        let mut stats = self.stats.get();
        stats.sent_words += message.len() as u64;
        stats.dense_words += self.filled as u64;
        self.stats.set(stats);
        let bound = blocks::message_bound(self.filled, self.open.blocks);
        self.exchange.start(message, bound);
        let bucket = Bucket {
            params: std::mem::take(&mut self.open.params),
            blocks: std::mem::take(&mut self.open.blocks),
        };
        self.sent.push_back(bucket);
        self.filled = 0;
    }

    /// Encodes the gradients of `ids` into the open bucket's message, sending it whenever it
    /// is full.
    fn stage<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        grads: &ParamStore<T>,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        for &id in ids {
            let tensor = grads.get(id);
            let len = backend.len(tensor);
            match backend.host_values(tensor) {
                Some(values) => self.encoder.push(&values[..len], &mut self.message),
                None => {
                    self.scratch.resize(len, 0.0);
                    backend.download(tensor, &mut self.scratch)?;
                    self.encoder.push(&self.scratch, &mut self.message);
                }
            }
            self.filled += len;
            self.open.blocks += blocks::blocks(len);
            self.open.params.push((id, len));
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

/// `out` = the sum of every process's values of it, from `+0.0` in rank order, reading one
/// block of each message at a time (see the module documentation for why the blocks that a
/// process sent as `+0.0` are skipped).
fn sum_into(out: &mut [f32], readers: &mut [Reader<'_>]) -> Option<()> {
    let mut blocks = out.chunks_exact_mut(BLOCK);
    // Whole blocks as arrays, so that the additions and the store are a few vector
    // instructions each.
    for block in &mut blocks {
        let mut sum = [0.0f32; BLOCK];
        for reader in readers.iter_mut() {
            if let Some(bits) = reader.next(BLOCK)? {
                let bits: &[u32; BLOCK] = bits.try_into().ok()?;
                for (s, &b) in sum.iter_mut().zip(bits) {
                    *s += f32::from_bits(b);
                }
            }
        }
        let block: &mut [f32; BLOCK] = block.try_into().ok()?;
        *block = sum;
    }
    let rest = blocks.into_remainder();
    if !rest.is_empty() {
        let mut sum = [0.0f32; BLOCK];
        let sum = &mut sum[..rest.len()];
        for reader in readers.iter_mut() {
            if let Some(bits) = reader.next(rest.len())? {
                for (s, &b) in sum.iter_mut().zip(bits) {
                    *s += f32::from_bits(b);
                }
            }
        }
        rest.copy_from_slice(sum);
    }
    Some(())
}

impl<T> AllReduce<T> {
    /// Replaces the gradients of `bucket` with the sum of every process's `messages` of it.
    fn sum<B: Backend<Tensor = T>>(
        &mut self,
        backend: &B,
        grads: &mut ParamStore<T>,
        bucket: &Bucket,
        messages: &[Vec<u32>],
    ) -> Result<(), deberta_core::Error> {
        let values: usize = bucket.params.iter().map(|&(_, len)| len).sum();
        let bound = blocks::message_bound(values, bucket.blocks);
        let mut readers = messages
            .iter()
            .map(|m| Reader::new(m, bucket.blocks).ok_or_else(|| malformed(bound, m)))
            .collect::<Result<Vec<_>, _>>()?;
        // Which message failed is not worth tracking: report the first.
        let failed = || malformed(bound, &messages[0]);
        for &(id, len) in &bucket.params {
            let sum = grads.get_mut(id);
            if let Some(out) = backend.host_values_mut(sum) {
                sum_into(&mut out[..len], &mut readers).ok_or_else(failed)?;
                continue;
            }
            if self.staging.len() <= id.index() {
                self.staging.resize_with(id.index() + 1, || None);
            }
            let staging = match self.staging[id.index()].take() {
                Some(t) if backend.len(&t) == len => t,
                _ => backend.zeros(len)?,
            };
            let staging = self.staging[id.index()].insert(staging);
            self.scratch.resize(len, 0.0);
            backend.fill(sum, 0.0)?;
            for reader in &mut readers {
                reader.read(&mut self.scratch).ok_or_else(failed)?;
                backend.write(staging, 0, &self.scratch)?;
                backend.add_assign(sum, staging)?;
            }
        }
        for reader in readers {
            reader.finish().ok_or_else(failed)?;
        }
        Ok(())
    }
}

impl<B: Backend> GradientsReady<B> for AllReduce<B::Tensor> {
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
}

impl<B: Backend> GradientReducer<B> for AllReduce<B::Tensor> {
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
            self.sum(backend, grads, &bucket, &gathered)?;
            // One buffer to write a message into, the others to receive into.
            let mut buffers = gathered;
            self.spare.extend(buffers.pop());
            self.exchange.recycle(buffers);
        }
        self.charge(started, waiting);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass sum, which skips the blocks a process sent as `+0.0`, has the bits of
    /// adding every process's values in rank order onto `+0.0`, signed zeros, subnormals,
    /// infinities and NaNs included (up to which NaN).
    #[test]
    fn the_one_pass_sum_equals_adding_every_block_in_rank_order() {
        let specials = [
            0.0,
            -0.0,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MIN_POSITIVE,
            1.0,
            -1.0,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        // Parameters of 3 × 64 + 5 and 64 values; each block of each process is all `+0.0`,
        // all `-0.0`, or values drawn from the specials (a simple deterministic mix).
        let lens = [3 * BLOCK + 5, BLOCK];
        let mut state = 0x9e37_79b9_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..50 {
            let processes = 1 + (next() % 4) as usize;
            let values: Vec<Vec<Vec<f32>>> = (0..processes)
                .map(|_| {
                    lens.iter()
                        .map(|&len| {
                            let mut v = vec![0.0f32; len];
                            for block in v.chunks_mut(BLOCK) {
                                match next() % 4 {
                                    0 => {}
                                    1 => block.fill(-0.0),
                                    _ => block.iter_mut().for_each(|x| {
                                        *x = specials[(next() as usize) % specials.len()]
                                    }),
                                }
                            }
                            v
                        })
                        .collect()
                })
                .collect();
            let messages: Vec<Vec<u32>> = values
                .iter()
                .map(|params| {
                    let (mut encoder, mut message) = (Encoder::default(), Vec::new());
                    for p in params {
                        encoder.push(p, &mut message);
                    }
                    encoder.finish(&mut message);
                    message
                })
                .collect();
            let blocks_total = lens.iter().map(|&l| blocks::blocks(l)).sum();
            let mut readers: Vec<Reader<'_>> = messages
                .iter()
                .map(|m| Reader::new(m, blocks_total).unwrap())
                .collect();
            for (p, &len) in lens.iter().enumerate() {
                let mut out = vec![7.0f32; len];
                sum_into(&mut out, &mut readers).unwrap();
                let mut expected = vec![0.0f32; len];
                for process in &values {
                    for (e, &v) in expected.iter_mut().zip(&process[p]) {
                        *e += v;
                    }
                }
                // Bit for bit, except that a NaN is any NaN: which one an addition gives is
                // not specified (Rust, LLVM and IEEE 754 leave it open), so it may differ
                // between two compilations of the same addition.
                assert!(
                    out.iter()
                        .zip(&expected)
                        .all(|(a, b)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()),
                    "parameter {p}: {out:?} != {expected:?}"
                );
            }
            for reader in readers {
                reader.finish().unwrap();
            }
        }
    }
}
