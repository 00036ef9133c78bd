//! The DeBERTa-v2/v3 model written against the [`Backend`](crate::Backend) trait, llm.c style:
//! each block has an explicit `forward` that fills caller-owned activation buffers, which the
//! backward pass of the training path consumes.
//!
//! Parameters live in one [`ParamStore`] indexed by [`ParamId`]s that the modules hold; the
//! [`ParamLayout`] names them exactly as Hugging Face state dicts do. Every backward pass takes
//! a [`BackwardContext`]: the backend, the parameters and the gradients it adds to.

pub mod attention;
pub mod batch;
pub mod context;
pub mod deberta;
pub mod dropout;
pub mod embeddings;
pub mod encoder;
pub mod heads;
pub mod modules;
pub mod params;

pub use batch::{DeviceBatch, HostBatch};
pub use context::{BackwardContext, GradientsReady};
pub use deberta::{
    Activations, AttentionProbs, BackwardScratch, Deberta, ForwardOptions, Heads, MlmRows,
};
pub use dropout::Dropout;
pub use embeddings::{FrozenParam, SharedTables, TableSource};
pub use heads::MlmLayout;
pub use params::{Init, ParamId, ParamLayout, ParamSpec, ParamStore};
