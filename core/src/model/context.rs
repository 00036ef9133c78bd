//! What a backward pass carries through the layers.

use super::params::{ParamId, ParamStore};
use crate::Error;
use crate::backend::Backend;

/// Told during a backward pass which parameters' gradients the pass has finished: a
/// data-parallel reducer starts exchanging them while the rest of the pass runs.
pub trait GradientsReady<B: Backend> {
    /// The gradients of `ids` in `grads` will not change again in this pass.
    fn ready(
        &mut self,
        backend: &B,
        grads: &ParamStore<B::Tensor>,
        ids: &[ParamId],
    ) -> Result<(), Error>;
}

/// What every layer's backward pass works with: the backend, the parameters the forward read,
/// and the gradients it adds to (laid out as the parameters). Passed by `&mut` from layer to
/// layer, so a backward signature names only what is particular to its layer.
pub struct BackwardContext<'a, B: Backend> {
    /// The backend the pass runs on.
    pub backend: &'a B,
    /// The parameters.
    pub params: &'a ParamStore<B::Tensor>,
    /// The gradients, added to.
    pub grads: &'a mut ParamStore<B::Tensor>,
    /// Told when a group of gradients is final (an encoder layer's, the last layer first).
    ready: Option<&'a mut dyn GradientsReady<B>>,
}

impl<'a, B: Backend> BackwardContext<'a, B> {
    /// The context of a backward pass on `backend` that adds to `grads`.
    pub fn new(
        backend: &'a B,
        params: &'a ParamStore<B::Tensor>,
        grads: &'a mut ParamStore<B::Tensor>,
    ) -> Self {
        BackwardContext {
            backend,
            params,
            grads,
            ready: None,
        }
    }

    /// The same context, telling `ready` which gradients are final as the pass goes.
    pub fn with_ready(mut self, ready: &'a mut dyn GradientsReady<B>) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Reports that the pass will not change the gradients of `ids` again.
    pub fn gradients_ready(&mut self, ids: &[ParamId]) -> Result<(), Error> {
        match self.ready.as_mut() {
            Some(ready) => ready.ready(self.backend, self.grads, ids),
            None => Ok(()),
        }
    }
}
