//! What a backward pass carries through the layers.

use super::params::ParamStore;
use crate::backend::Backend;

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
        }
    }
}
