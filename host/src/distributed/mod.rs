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

pub use reduce::{AllReduce, Exchange, ExchangeStats};

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

    use super::{Exchange, World};

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

    /// One bucket's exchange in flight: this process's message sent to every other process,
    /// and one receive from each (into the spare capacity of a buffer that can hold the
    /// bucket's largest message, since a message's length depends on its zero blocks). The
    /// buffers are owned here and not touched while MPI may read or write them.
    struct InFlight {
        /// This process's message (the send buffer).
        message: Vec<u32>,
        /// One receive buffer per process (this process's own: unused), of length 0 until
        /// its receive has completed.
        received: Vec<Vec<u32>>,
        /// The sends, then the receives; null once completed.
        requests: Vec<ffi::MPI_Request>,
        /// The requests' statuses, written when they complete.
        statuses: Vec<ffi::MPI_Status>,
        /// Whether every request has completed.
        done: bool,
        /// This process's rank.
        rank: usize,
    }

    impl InFlight {
        /// Starts sending `message` (of a bucket whose messages are at most `bound` words) to
        /// every other process of `comm`, and receiving theirs (into buffers from `spare`);
        /// `tag` numbers the bucket.
        fn start(
            message: Vec<u32>,
            bound: usize,
            tag: i32,
            comm: &SimpleCommunicator,
            spare: &mut Vec<Vec<u32>>,
        ) -> InFlight {
            let (rank, size) = (comm.rank(), comm.size());
            let others: Vec<i32> = (0..size).filter(|&r| r != rank).collect();
            let mut flight = InFlight {
                message,
                received: (0..size)
                    .map(|r| {
                        if r == rank {
                            return Vec::new();
                        }
                        let mut buffer = spare.pop().unwrap_or_default();
                        buffer.clear();
                        buffer.reserve(bound);
                        buffer
                    })
                    .collect(),
                // SAFETY: reading an MPI constant.
                requests: vec![unsafe { ffi::RSMPI_REQUEST_NULL }; 2 * others.len()],
                // SAFETY: `MPI_Status` is a C struct of integers, for which zero is valid.
                statuses: vec![unsafe { std::mem::zeroed() }; 2 * others.len()],
                done: false,
                rank: rank as usize,
            };
            let (sends, receives) = flight.requests.split_at_mut(others.len());
            for ((&other, send), receive) in others.iter().zip(sends).zip(receives) {
                let buffer = &mut flight.received[other as usize];
                // SAFETY: `message` and `buffer` are heap buffers owned by `flight`, neither
                // moved nor touched until every request has completed (`test`, `wait`, `Drop`);
                // the counts are the message's length and the buffer's capacity (at least
                // `bound`), into which the receive writes.
                unsafe {
                    ffi::MPI_Isend(
                        flight.message.as_ptr().cast(),
                        flight.message.len() as i32,
                        u32::equivalent_datatype().as_raw(),
                        other,
                        tag,
                        comm.as_raw(),
                        send,
                    );
                    ffi::MPI_Irecv(
                        buffer.as_mut_ptr().cast(),
                        bound as i32,
                        u32::equivalent_datatype().as_raw(),
                        other,
                        tag,
                        comm.as_raw(),
                        receive,
                    );
                }
            }
            flight
        }

        /// Moves the exchange on without blocking.
        fn test(&mut self) {
            if self.done {
                return;
            }
            let mut flag = 0;
            // SAFETY: `requests` are this object's requests (or null) and `statuses` has room
            // for one status each.
            unsafe {
                ffi::MPI_Testall(
                    self.requests.len() as i32,
                    self.requests.as_mut_ptr(),
                    &mut flag,
                    self.statuses.as_mut_ptr(),
                );
            }
            self.done = flag != 0;
        }

        /// Waits for every request.
        fn wait(&mut self) {
            if self.done {
                return;
            }
            // SAFETY: as in `test`.
            unsafe {
                ffi::MPI_Waitall(
                    self.requests.len() as i32,
                    self.requests.as_mut_ptr(),
                    self.statuses.as_mut_ptr(),
                );
            }
            self.done = true;
        }

        /// Every process's message, in rank order (after `wait`).
        fn gathered(mut self) -> Vec<Vec<u32>> {
            let sends = self.requests.len() / 2;
            let statuses = self.statuses.split_off(sends);
            let mut receives = statuses.iter();
            let mut messages = std::mem::take(&mut self.received);
            for (rank, message) in messages.iter_mut().enumerate() {
                if rank == self.rank {
                    *message = std::mem::take(&mut self.message);
                    continue;
                }
                let mut count = 0;
                if let Some(status) = receives.next() {
                    // SAFETY: `status` is the status of a completed receive of `u32`s.
                    unsafe {
                        ffi::MPI_Get_count(status, u32::equivalent_datatype().as_raw(), &mut count);
                    }
                }
                let count = (count.max(0) as usize).min(message.capacity());
                // SAFETY: the completed receive wrote `count` `u32`s (any bits are a valid
                // `u32`) at the start of the buffer, within its capacity.
                unsafe { message.set_len(count) };
            }
            messages
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            // MPI may still use the buffers of an abandoned exchange: wait before freeing.
            // (`gathered` takes the buffers only after `wait`.)
            self.wait();
        }
    }

    /// The exchange of gradient buckets over MPI: each process sends its message of a bucket
    /// to every other process and receives theirs with immediate (non-blocking) point-to-point
    /// operations, on a communicator of their own, as soon as the bucket is full. MPI is
    /// called from the training thread only (the default `MPI_THREAD_SINGLE` level suffices);
    /// the exchanges progress whenever the backward pass hands over gradients. Messages of
    /// one bucket share a tag, and MPI delivers messages between two processes in the order
    /// they were sent, so every receive gets its bucket.
    pub(crate) struct Immediate {
        comm: SimpleCommunicator,
        flights: VecDeque<InFlight>,
        buckets: u64,
        /// Buffers to receive into, from buckets summed already.
        spare: Vec<Vec<u32>>,
    }

    impl Immediate {
        /// Creates the exchange's communicator (collective: every process calls it at the
        /// same point).
        pub(crate) fn new() -> Immediate {
            Immediate {
                comm: communicator().duplicate(),
                flights: VecDeque::new(),
                buckets: 0,
                spare: Vec::new(),
            }
        }
    }

    impl Exchange for Immediate {
        fn start(&mut self, message: Vec<u32>, bound: usize) {
            // Tags from 0 to 32767, the least upper bound MPI guarantees.
            let tag = (self.buckets % 32768) as i32;
            self.buckets += 1;
            let flight = InFlight::start(message, bound, tag, &self.comm, &mut self.spare);
            self.flights.push_back(flight);
        }

        fn progress(&mut self) {
            for flight in &mut self.flights {
                flight.test();
            }
        }

        fn next(&mut self) -> Option<Vec<Vec<u32>>> {
            let mut flight = self.flights.pop_front()?;
            flight.wait();
            Some(flight.gathered())
        }

        fn recycle(&mut self, buffers: Vec<Vec<u32>>) {
            self.spare.extend(buffers);
        }
    }
}
