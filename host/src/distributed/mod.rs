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

mod blocks;
mod reduce;

pub use reduce::{AllReduce, Exchange, ExchangeStats, Gathered};

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

    /// The exchange of gradient buckets among the processes: immediate (non-blocking)
    /// all-gathers under MPI, progressed whenever the backward pass hands over gradients.
    pub fn gradient_exchange(&self) -> Box<dyn Exchange> {
        #[cfg(feature = "mpi")]
        if self.size > 1 {
            return Box::new(mpi_backend::Immediate::new());
        }
        reduce::blocking(|local| vec![local.to_vec()])
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

#[cfg(feature = "mpi")]
mod mpi_backend {
    //! The MPI calls, through rsmpi; MPI is initialised on the first call under a launcher.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use mpi::ffi;
    use mpi::raw::AsRaw;

    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Equivalence};

    use super::{Exchange, Gathered, World};

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

    /// One bucket's exchange in flight: the all-gather of the message lengths, then the
    /// all-gather of the messages. The buffers are owned here and not touched while MPI may
    /// read or write them.
    struct InFlight {
        /// This process's message, then its length (the send buffers).
        message: Vec<u32>,
        length: Vec<i32>,
        /// Every process's length, and where its message goes in `words`.
        counts: Vec<i32>,
        displs: Vec<i32>,
        words: Vec<u32>,
        /// The pending MPI request (`RSMPI_REQUEST_NULL` when none).
        request: ffi::MPI_Request,
        /// Whether the messages themselves are being gathered (else their lengths).
        gathering_words: bool,
    }

    impl InFlight {
        /// Starts gathering the lengths of `message`'s bucket over `lengths`.
        fn start(message: &[u32], lengths: &SimpleCommunicator) -> InFlight {
            let size = lengths.size() as usize;
            let mut flight = InFlight {
                message: message.to_vec(),
                length: vec![message.len() as i32],
                counts: vec![0; size],
                displs: vec![0; size],
                words: Vec::new(),
                // SAFETY: reading an MPI constant.
                request: unsafe { ffi::RSMPI_REQUEST_NULL },
                gathering_words: false,
            };
            // SAFETY: `length` (1 value) and `counts` (one per process) are heap buffers owned
            // by `flight` and untouched until the request completes (`test`, `wait`, `Drop`).
            unsafe {
                ffi::MPI_Iallgather(
                    flight.length.as_ptr().cast(),
                    1,
                    i32::equivalent_datatype().as_raw(),
                    flight.counts.as_mut_ptr().cast(),
                    1,
                    i32::equivalent_datatype().as_raw(),
                    lengths.as_raw(),
                    &mut flight.request,
                );
            }
            flight
        }

        /// Whether the pending request has completed (then the request is null).
        fn test(&mut self) -> bool {
            let mut flag = 0;
            // SAFETY: `request` is a request of this object's buffers, or null.
            unsafe {
                ffi::MPI_Test(&mut self.request, &mut flag, ffi::RSMPI_STATUS_IGNORE);
            }
            flag != 0
        }

        /// Waits for the pending request.
        fn wait(&mut self) {
            // SAFETY: as in `test`.
            unsafe {
                ffi::MPI_Wait(&mut self.request, ffi::RSMPI_STATUS_IGNORE);
            }
        }

        /// Once the lengths are known: starts gathering the messages over `messages`.
        fn gather_words(&mut self, messages: &SimpleCommunicator) {
            let mut at = 0;
            for (displ, &count) in self.displs.iter_mut().zip(&self.counts) {
                *displ = at;
                at += count;
            }
            self.words = vec![0; at as usize];
            self.gathering_words = true;
            // SAFETY: `message`, `counts`, `displs` and `words` (sized by the gathered
            // counts) are heap buffers owned by `self`, untouched until the request completes.
            unsafe {
                ffi::MPI_Iallgatherv(
                    self.message.as_ptr().cast(),
                    self.message.len() as i32,
                    u32::equivalent_datatype().as_raw(),
                    self.words.as_mut_ptr().cast(),
                    self.counts.as_ptr(),
                    self.displs.as_ptr(),
                    u32::equivalent_datatype().as_raw(),
                    messages.as_raw(),
                    &mut self.request,
                );
            }
        }

        /// Moves the exchange on without blocking; whether its messages are being gathered
        /// (else the lengths are not known yet).
        fn progress(&mut self, messages: &SimpleCommunicator) -> bool {
            if !self.gathering_words {
                if !self.test() {
                    return false;
                }
                self.gather_words(messages);
            }
            self.test();
            true
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            // MPI may still use the buffers of an abandoned exchange: wait before freeing.
            // SAFETY: reading an MPI constant.
            if self.request != unsafe { ffi::RSMPI_REQUEST_NULL } {
                self.wait();
            }
        }
    }

    /// The exchange of gradient buckets over MPI, by immediate all-gathers (MPI-3
    /// `MPI_Iallgather`, `MPI_Iallgatherv`). MPI is called from the training thread only (the
    /// default `MPI_THREAD_SINGLE` level suffices): the exchanges progress whenever the
    /// backward pass hands over gradients. Every process must start its collectives on a
    /// communicator in the same order, but when a bucket's lengths arrive differs between
    /// processes: so the lengths and the messages go over two communicators of their own, and
    /// the messages' gathers start in bucket order.
    pub(crate) struct Immediate {
        lengths: SimpleCommunicator,
        messages: SimpleCommunicator,
        flights: VecDeque<InFlight>,
    }

    impl Immediate {
        /// Creates the two communicators (collective: every process calls it at the same
        /// point).
        pub(crate) fn new() -> Immediate {
            Immediate {
                lengths: communicator().duplicate(),
                messages: communicator().duplicate(),
                flights: VecDeque::new(),
            }
        }
    }

    impl Exchange for Immediate {
        fn start(&mut self, message: &[u32]) {
            self.flights
                .push_back(InFlight::start(message, &self.lengths));
        }

        fn progress(&mut self) {
            for flight in &mut self.flights {
                if !flight.progress(&self.messages) {
                    break;
                }
            }
        }

        fn next(&mut self) -> Option<Gathered> {
            let mut flight = self.flights.pop_front()?;
            if !flight.gathering_words {
                flight.wait();
                flight.gather_words(&self.messages);
            }
            flight.wait();
            Some(Gathered {
                words: std::mem::take(&mut flight.words),
                counts: flight.counts.iter().map(|&c| c as usize).collect(),
            })
        }
    }
}
