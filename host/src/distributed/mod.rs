//! Data-parallel runs over MPI (`mpirun -np N deberta pretrain …`, `srun`): the processes of
//! one job, their collectives, and the gradient sum that keeps every replica identical.
//!
//! Without the `mpi` feature, or when the binary was not started by an MPI launcher, the
//! world is this process alone and every collective is the identity: nothing here needs an MPI
//! library then. With the feature, MPI is initialised on first use when a launcher's
//! environment is present (Open MPI's `OMPI_COMM_WORLD_SIZE`, PMI's `PMI_SIZE` — MPICH's Hydra
//! and Slurm's `srun --mpi=pmi2` — or PMIx's `PMIX_RANK`), and finalised by [`finalize`].
//!
//! Every collective here is deterministic: gathers concatenate in rank order, and sums are
//! taken by the caller in that order, so every process computes the same bits.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use deberta_core::Backend;
use deberta_core::model::{ParamId, ParamStore};
use deberta_core::train::GradientReducer;

mod blocks;

/// The processes of this job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    rank: usize,
    size: usize,
}

impl World {
    /// This process alone.
    pub const SINGLE: World = World { rank: 0, size: 1 };

    /// The world this process was launched into: the MPI world under an MPI launcher (with
    /// the `mpi` feature), else [`World::SINGLE`].
    pub fn current() -> World {
        #[cfg(feature = "mpi")]
        if let Some(world) = mpi_backend::world() {
            return world;
        }
        World::SINGLE
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is rank 0, the process that writes the run's files and prints.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Waits until every process has called it.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            mpi_backend::barrier();
        }
    }

    /// Every process's `local` (all of the same length), concatenated in rank order.
    pub fn all_gather_f32(&self, local: &[f32]) -> Vec<f32> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            return mpi_backend::all_gather(local, self.size);
        }
        local.to_vec()
    }

    /// Every process's `local` (all of the same length), concatenated in rank order.
    pub fn all_gather_u64(&self, local: &[u64]) -> Vec<u64> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            return mpi_backend::all_gather(local, self.size);
        }
        local.to_vec()
    }

    /// Every process's `local` (lengths may differ), concatenated in rank order.
    pub fn all_gather_varcount_f32(&self, local: &[f32]) -> Vec<f32> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            return mpi_backend::all_gather_varcount(local, self.size).0;
        }
        local.to_vec()
    }

    /// Every process's `local` (lengths may differ), in rank order.
    pub fn all_gather_messages(&self, local: &[u32]) -> Vec<Vec<u32>> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            let (all, counts) = mpi_backend::all_gather_varcount(local, self.size);
            let mut rest = &all[..];
            return counts
                .iter()
                .map(|&c| {
                    let (message, tail) = rest.split_at(c as usize);
                    rest = tail;
                    message.to_vec()
                })
                .collect();
        }
        vec![local.to_vec()]
    }

    /// Element-wise sums of every process's `local` (all of the same length).
    pub fn sum_u64(&self, local: &[u64]) -> Vec<u64> {
        let all = self.all_gather_u64(local);
        let mut sum = vec![0u64; local.len()];
        for part in all.chunks_exact(local.len().max(1)) {
            for (s, &v) in sum.iter_mut().zip(part) {
                *s += v;
            }
        }
        sum
    }

    /// Ends the whole job after an error on this process (`MPI_Abort`), so that no other
    /// process waits forever on it; returns only in a one-process world.
    pub fn abort_if_parallel(&self) {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            mpi_backend::abort(1);
        }
    }
}

/// Finalises MPI if it was initialised (call once, at the end of `main`).
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_backend::finalize();
}

/// Exchanges one process's message for every process's, in rank order.
type Gather = Box<dyn FnMut(&[u32]) -> Vec<Vec<u32>>>;

/// How much a data-parallel run exchanged, and how long its gradient sums took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeStats {
    /// Wall time of the sums: staging, waiting for the other processes, exchange, addition.
    pub seconds: f64,
    /// 32-bit words this process sent.
    pub sent_words: u64,
    /// 32-bit words a dense exchange of the same gradients would have sent.
    pub dense_words: u64,
}

/// The gradient sum of a data-parallel run (staged through the host on every backend):
/// each process's gradients of the given parameters are gathered as a block-sparse message
/// (blocks that are exactly `+0.0`, such as the embedding rows no token of the process
/// touched, are not sent), and every process adds them in rank order onto zeros with its
/// backend's own `add_assign`, the addition a single process uses to accumulate micro-batches
/// — so `N` processes of one micro-batch each give the bits of one process with `N`
/// micro-batches.
pub struct AllReduce {
    gather: Gather,
    local: Vec<f32>,
    message: Vec<u32>,
    stats: Rc<Cell<ExchangeStats>>,
}

impl AllReduce {
    /// The sum over the processes of `world`; what it costs is added to `stats`.
    pub fn new(world: World, stats: Rc<Cell<ExchangeStats>>) -> AllReduce {
        AllReduce::with_gather(move |local| world.all_gather_messages(local), stats)
    }

    /// The sum over the processes that `gather` exchanges with: it must return every
    /// process's message, in rank order.
    pub fn with_gather(
        gather: impl FnMut(&[u32]) -> Vec<Vec<u32>> + 'static,
        stats: Rc<Cell<ExchangeStats>>,
    ) -> AllReduce {
        AllReduce {
            gather: Box::new(gather),
            local: Vec::new(),
            message: Vec::new(),
            stats,
        }
    }
}

impl<B: Backend> GradientReducer<B> for AllReduce {
    fn all_reduce(
        &mut self,
        backend: &B,
        grads: &mut ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        let started = Instant::now();
        let lens: Vec<usize> = ids.iter().map(|&id| backend.len(grads.get(id))).collect();
        let total: usize = lens.iter().sum();
        self.local.resize(total, 0.0);
        let mut offset = 0;
        for (&id, &len) in ids.iter().zip(&lens) {
            backend.download(grads.get(id), &mut self.local[offset..offset + len])?;
            offset += len;
        }
        if total == 0 {
            return Ok(());
        }
        blocks::encode(&self.local, &mut self.message);
        let messages = (self.gather)(&self.message);
        if messages.is_empty() {
            return Err(deberta_core::Error::EmptyInput {
                what: "the processes' gradient messages",
            });
        }
        let mut stats = self.stats.get();
        stats.sent_words += self.message.len() as u64;
        stats.dense_words += total as u64;
        let mut part = Vec::with_capacity(total);
        for (rank, message) in messages.iter().enumerate() {
            blocks::decode(message, total, &mut part).ok_or(
                deberta_core::Error::ShapeMismatch {
                    what: "a process's gradient message (values for these parameters)",
                    expected: total,
                    found: message.len(),
                },
            )?;
            let mut offset = 0;
            for (&id, &len) in ids.iter().zip(&lens) {
                let sum = grads.get_mut(id);
                if rank == 0 {
                    backend.fill(sum, 0.0)?;
                }
                let share = backend.upload(&part[offset..offset + len])?;
                backend.add_assign(sum, &share)?;
                offset += len;
            }
        }
        stats.seconds += started.elapsed().as_secs_f64();
        self.stats.set(stats);
        Ok(())
    }
}

#[cfg(feature = "mpi")]
mod mpi_backend {
    //! The MPI calls, through rsmpi; MPI is initialised on the first call under a launcher.

    use std::sync::Mutex;

    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Equivalence};

    use super::World;

    /// The environment variables by which MPI launchers tell a process it is one of a job.
    const LAUNCHER_VARIABLES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

    /// The MPI environment, once initialised (`None` inside: not under a launcher).
    static UNIVERSE: Mutex<Option<Option<Universe>>> = Mutex::new(None);

    fn communicator() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// The MPI world, initialising MPI on the first call; `None` when not under a launcher.
    pub(super) fn world() -> Option<World> {
        let mut guard = UNIVERSE.lock().unwrap_or_else(|e| e.into_inner());
        let universe = guard.get_or_insert_with(|| {
            LAUNCHER_VARIABLES
                .iter()
                .any(|v| std::env::var_os(v).is_some())
                .then(mpi::initialize)
                .flatten()
        });
        universe.as_ref().map(|u| {
            let world = u.world();
            World {
                rank: world.rank() as usize,
                size: world.size() as usize,
            }
        })
    }

    pub(super) fn finalize() {
        let mut guard = UNIVERSE.lock().unwrap_or_else(|e| e.into_inner());
        // Dropping the universe calls MPI_Finalize.
        guard.take();
    }

    pub(super) fn barrier() {
        communicator().barrier();
    }

    pub(super) fn all_gather<T: Equivalence + Copy + Default>(local: &[T], size: usize) -> Vec<T> {
        let mut all = vec![T::default(); local.len() * size];
        communicator().all_gather_into(local, &mut all[..]);
        all
    }

    /// Every process's `local`, concatenated in rank order, and their lengths.
    pub(super) fn all_gather_varcount<T: Equivalence + Copy + Default>(
        local: &[T],
        size: usize,
    ) -> (Vec<T>, Vec<i32>) {
        let counts: Vec<i32> = all_gather(&[local.len() as i32], size);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0, |acc, &c| {
                let at = *acc;
                *acc += c;
                Some(at)
            })
            .collect();
        let total: i32 = counts.iter().sum();
        let mut all = vec![T::default(); total as usize];
        let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
        communicator().all_gather_varcount_into(local, &mut partition);
        (all, counts)
    }

    pub(super) fn abort(code: i32) -> ! {
        communicator().abort(code)
    }
}
