//! `pytorch_model.bin` loading: `parse_torch_bin` (the zip archive, the pickle machine, the
//! storage views; the same code `read_torch_bin` runs on a file) on arbitrary bytes, then,
//! when it parses, the tensors as the weights of the `tiny` fixture model
//! (`model_from_tensors` and a forward pass).
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use deberta_fuzz::{TINY_CONFIG, config, load_and_run};
use deberta_host::checkpoint::parse_torch_bin;
use deberta_host::hf_config::HfConfig;
use deberta_host::tensor::TensorData;
use libfuzzer_sys::fuzz_target;

static TINY: LazyLock<HfConfig> = LazyLock::new(|| config(TINY_CONFIG));

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = parse_torch_bin(Path::new("pytorch_model.bin"), data) else {
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
    load_and_run(&TINY, tensors);
});
