//! `config.json` parsing: `parse_config` (what `read_config` and every model directory use) on
//! arbitrary bytes, then, for an accepted configuration, the parameter layout of the model
//! with every head, and the round trip through `config_json` (what checkpoints write).
#![no_main]

use std::path::Path;

use deberta_core::model::{Deberta, Heads, MlmLayout, ParamLayout, SharedTables};
use deberta_host::hf_config::{config_json, parse_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `read_config` reads the file as UTF-8 text first.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("config.json");
    let Ok(hf) = parse_config(path, text) else {
        return;
    };
    let cfg = &hf.model;
    // The layout is one entry per parameter tensor: a deep (but valid) configuration only
    // costs time, so very deep ones are left to the unit tests.
    if cfg.num_hidden_layers <= 64 {
        let mut layout = ParamLayout::new();
        let heads = Heads {
            mlm: Some(MlmLayout::LmPredictions),
            emd: true,
            rtd: true,
        };
        Deberta::new(&mut layout, "", cfg, heads, SharedTables::default());
        assert!(!layout.specs().is_empty());
    }
    let written = config_json(cfg, "DebertaV2ForMaskedLM", hf.legacy).to_string();
    let back = parse_config(path, &written).expect("a written config.json parses");
    assert_eq!(back, hf, "config.json round trip changed the configuration");
});
