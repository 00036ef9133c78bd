//! # deberta-host
//!
//! The host side of the DeBERTa-v3 implementation: Hugging Face checkpoints in (safetensors,
//! sharded safetensors, PyTorch `pytorch_model.bin` read without Python), `config.json`
//! parsing, the inference session, and the `deberta` command-line tool.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod distributed;
pub mod edge_export;
pub mod error;

pub mod fs_util;
pub mod gradients;
pub mod hf_config;
pub mod hf_export;
pub mod inference;
pub mod model_dir;
pub mod pretrain;
pub mod resources;

pub mod tensor;

pub use error::{Error, Result};
