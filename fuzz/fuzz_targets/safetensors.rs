//! safetensors checkpoint loading: `parse_safetensors` (what `read_safetensors`, model
//! directories and `state/` checkpoints use) on arbitrary bytes, then, when it parses, the
//! tensors as the weights of the `tiny` fixture model and of a pretrained discriminator
//! (`model_from_tensors` and a forward pass).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use deberta_fuzz::{DISCRIMINATOR_CONFIG, TINY_CONFIG, config, load_and_run};
use deberta_host::checkpoint::parse_safetensors;
use deberta_host::hf_config::HfConfig;
use deberta_host::tensor::TensorData;
use libfuzzer_sys::fuzz_target;

static CONFIGS: LazyLock<[HfConfig; 2]> =
    LazyLock::new(|| [config(TINY_CONFIG), config(DISCRIMINATOR_CONFIG)]);

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = parse_safetensors(Path::new("fuzz.safetensors"), data) else {
        return;
    };
    for (name, tensor) in &tensors {
        let len = match &tensor.data {
            TensorData::Float(v) => v.len(),
            TensorData::Int(v) => v.len(),
        };
        assert_eq!(
            len,
            tensor.numel(),
            "{name}: elements do not fill the shape"
        );
    }
    for hf in CONFIGS.iter() {
        load_and_run(hf, tensors.clone());
    }
});
