//! Buffers of one model's forward and backward, kept across the micro-batches of a phase and
//! reallocated only when the batch shape changes. Across phases they are kept too (a
//! steady-state step allocates nothing), except on a backend that recycles memory (a GPU's
//! buffer pool), where the trainer releases them ([`Workspace::release`]) while the other
//! model's phase runs, so that the two models' activations never hold device memory at once.

use crate::Error;
use crate::backend::Backend;
use crate::model::{Activations, BackwardScratch, Deberta, DeviceBatch};

/// The shape a workspace was allocated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    batch: usize,
    len: usize,
    window_rows: usize,
    mlm_rows: Option<usize>,
    training: bool,
}

/// The forward's saved activations and the backward's scratch.
pub struct ModelBuffers<T> {
    /// Saved activations.
    pub activations: Activations<T>,
    /// Backward scratch (loss gradients included).
    pub scratch: BackwardScratch<T>,
}

/// Activations and backward scratch of one model.
pub struct Workspace<B: Backend> {
    shape: Option<Shape>,
    buffers: Option<ModelBuffers<B::Tensor>>,
}

impl<B: Backend> Default for Workspace<B> {
    fn default() -> Self {
        Workspace {
            shape: None,
            buffers: None,
        }
    }
}

impl<B: Backend> Workspace<B> {
    /// An empty workspace (allocates on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffers for `batch` with `mlm_rows` selected MLM rows, allocating them if the shape
    /// differs from the last call.
    pub fn prepare(
        &mut self,
        model: &Deberta,
        backend: &B,
        batch: &DeviceBatch<B>,
        mlm_rows: Option<usize>,
        training: bool,
    ) -> Result<&mut ModelBuffers<B::Tensor>, Error> {
        let shape = Shape {
            batch: batch.batch,
            len: batch.len,
            window_rows: batch.window.rows,
            mlm_rows,
            training,
        };
        if self.shape != Some(shape) || self.buffers.is_none() {
            self.buffers = None;
            self.buffers = Some(ModelBuffers {
                activations: model.activations(backend, batch, mlm_rows, training)?,
                scratch: model.backward_scratch(backend, batch, mlm_rows.unwrap_or(0))?,
            });
            self.shape = Some(shape);
        }
        self.buffers.as_mut().ok_or(Error::Device {
            what: "workspace buffers",
        })
    }

    /// Gives the buffers back to the backend (a GPU backend's pool keeps them for the next
    /// allocations of their sizes, e.g. the other model's workspace); the next
    /// [`Workspace::prepare`] allocates them again.
    pub fn release(&mut self) {
        self.buffers = None;
        self.shape = None;
    }

    /// The saved activations of the last forward (`None` before the first).
    pub fn activations(&self) -> Option<&Activations<B::Tensor>> {
        self.buffers.as_ref().map(|b| &b.activations)
    }

    /// The MLM logits of the last forward, when the model has an MLM head.
    pub fn logits(&self) -> Option<&B::Tensor> {
        self.buffers
            .as_ref()?
            .activations
            .mlm
            .as_ref()
            .map(|m| &m.logits)
    }
}
