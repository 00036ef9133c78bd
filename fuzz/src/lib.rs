//! Helpers shared by the fuzz targets of `fuzz_targets/` (see `scripts/fuzz.sh`).
//!
//! Every target feeds arbitrary bytes to a real loader of `deberta-host` or `deberta-core` and,
//! when the bytes are accepted, goes on through what the program does next with the result
//! (building the model, a forward pass, detection), so that an accepted-but-inconsistent input
//! is caught where it would do harm. A panic, an overflow (fuzz builds keep debug assertions),
//! an out-of-memory or a failed assertion here is a crash.

use std::path::{Path, PathBuf};

use deberta_core::CpuBackend;
use deberta_core::model::HostBatch;
use deberta_host::checkpoint::TensorMap;
use deberta_host::hf_config::{HfConfig, parse_config};
use deberta_host::inference::Session;
use deberta_host::model_dir::model_from_tensors;

/// `config.json` of the `tiny` fixtures (`tests/fixtures/tiny`, also `tiny-bin`): hidden 32,
/// 2 layers, vocabulary 128, MLM head.
pub const TINY_CONFIG: &str = include_str!("../../tests/fixtures/tiny/config.json");

/// `config.json` of the discriminator of a 2-step `deberta pretrain` run (hidden 16, 2 layers,
/// vocabulary 120, RTD head); `seeds/safetensors/pretrain-discriminator.safetensors` holds its
/// weights and `fixtures/tokenizer.json` its tokenizer.
pub const DISCRIMINATOR_CONFIG: &str = include_str!("../fixtures/discriminator-config.json");

/// The `tokenizer.json` trained by that run (Unigram, 120 ids, the five special tokens).
pub const TOKENIZER_JSON: &[u8] = include_bytes!("../fixtures/tokenizer.json");

/// Parses one of the bundled configurations (they are valid: a failure is a bug).
pub fn config(text: &str) -> HfConfig {
    parse_config(Path::new("config.json"), text).expect("bundled config.json parses")
}

/// Loads `tensors` as the weights of the model `hf` describes, as `deberta forward` does after
/// reading the files, and when every tensor is there with its shape, runs the encoder and its
/// heads on two short sequences (one padded). Weights are just numbers: NaN, infinities and
/// huge values must flow through without a panic or an error.
pub fn load_and_run(hf: &HfConfig, tensors: TensorMap) {
    let Ok(loaded) = model_from_tensors(hf, tensors, PathBuf::from("fuzz-weights")) else {
        return;
    };
    let backend = CpuBackend::new();
    let session = Session::new(&backend, &loaded).expect("a loaded model uploads");
    let vocab = loaded.config().vocab_size as i64;
    let input_ids: Vec<i64> = [1, 5, 9, 4, 1, 7, 0, 0]
        .iter()
        .map(|id| id % vocab)
        .collect();
    let attention_mask = [1, 1, 1, 1, 1, 1, 0, 0];
    let batch = HostBatch {
        input_ids: &input_ids,
        attention_mask: &attention_mask,
        token_type_ids: None,
        batch: 2,
        len: 4,
    };
    session
        .outputs(&batch)
        .expect("a loaded model runs on valid ids");
}
