//! Training: the MLM objective of one model, the generator/discriminator pair of RTD
//! pretraining with its three embedding-sharing modes, the optimizers and the learning-rate
//! schedule (SPEC §5–§7).

pub mod loss_scale;
pub mod mlm;
pub mod optim;
pub mod pair;
pub mod schedule;
pub mod trainer;
pub mod workspace;

pub use loss_scale::{LossScaler, ScaledUpdate};
pub use mlm::{GeneratorBatch, MlmTargets, Sampler, mlm_step};
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use pair::{DiscriminatorBatch, Losses, PairBatch, RtdPair, Sharing};
pub use schedule::warmup_linear;
pub use trainer::{GradientReducer, MicroBatch, PairDropout, Schedule, Trainer};
pub use workspace::Workspace;
