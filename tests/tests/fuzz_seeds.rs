//! The committed fuzz inputs (`fuzz/seeds/<target>/`) through the same loaders as the fuzz
//! targets, without cargo-fuzz: every seed must be accepted and go all the way (a model that
//! runs, a tokenizer that encodes), so the seeds keep leading the fuzzer past the parsers as
//! the formats evolve; and every `regression-*` input, a crash the fuzzer once found, must now
//! be handled without a panic and give the error it deserves.

use std::path::{Path, PathBuf};

use deberta_core::CpuBackend;
use deberta_core::edge::{EdgeModel, arena_bytes, detect};
use deberta_core::model::HostBatch;
use deberta_host::checkpoint::{TensorMap, parse_safetensors, parse_torch_bin};
use deberta_host::data::{DataCursor, SpmTokenizer, Tokenizer};
use deberta_host::edge_export::AlignedBytes;
use deberta_host::hf_config::{HfConfig, config_json, parse_config, read_config};
use deberta_host::inference::Session;
use deberta_host::model_dir::model_from_tensors;
use deberta_host::pretrain::checkpoint::parse_run_state;
use deberta_tests::fixture;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
}

/// `(file name, bytes)` of every input of `fuzz/seeds/<target>/`, in name order.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn is_regression(name: &str) -> bool {
    name.starts_with("regression-")
}

fn tiny_config() -> HfConfig {
    read_config(&fixture("tiny").join("config.json")).unwrap()
}

fn discriminator_config() -> HfConfig {
    read_config(
        &fuzz_dir()
            .join("fixtures")
            .join("discriminator-config.json"),
    )
    .unwrap()
}

/// Loads `tensors` into the model of `hf` and runs it on a padded batch of two.
fn load_and_run(hf: &HfConfig, tensors: TensorMap) -> deberta_host::Result<()> {
    let loaded = model_from_tensors(hf, tensors, PathBuf::from("seed"))?;
    let backend = CpuBackend::new();
    let session = Session::new(&backend, &loaded)?;
    let vocab = loaded.config().vocab_size as i64;
    let input_ids: Vec<i64> = [1, 5, 9, 4, 1, 7, 0, 0].iter().map(|i| i % vocab).collect();
    let outputs = session.outputs(&HostBatch {
        input_ids: &input_ids,
        attention_mask: &[1, 1, 1, 1, 1, 1, 0, 0],
        token_type_ids: None,
        batch: 2,
        len: 4,
    })?;
    assert!(outputs.contains_key("last_hidden_state"));
    Ok(())
}

#[test]
fn hf_config_seeds() {
    for (name, bytes) in seeds("hf_config") {
        let text = std::str::from_utf8(&bytes).unwrap();
        let parsed = parse_config(Path::new(&name), text);
        if is_regression(&name) {
            assert!(parsed.is_err(), "{name} is accepted");
            continue;
        }
        let hf = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        let written = config_json(&hf.model, "DebertaV2ForMaskedLM", hf.legacy).to_string();
        assert_eq!(parse_config(Path::new(&name), &written).unwrap(), hf);
    }
}

/// The first crash of `fuzz_targets/hf_config.rs`: `layer_norm_eps` 1e-47 passed the f64
/// check, became 0 as f32, and the `config.json` written back for the model did not parse.
#[test]
fn hf_config_regression_layer_norm_eps_rounding_to_zero() {
    let path = fuzz_dir()
        .join("seeds")
        .join("hf_config")
        .join("regression-layer-norm-eps-rounds-to-zero.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let error = parse_config(&path, &text).unwrap_err().to_string();
    assert!(error.contains("layer_norm_eps"), "{error}");
}

#[test]
fn safetensors_seeds() {
    let configs = [tiny_config(), discriminator_config()];
    let mut models = 0;
    for (name, bytes) in seeds("safetensors") {
        let parsed = parse_safetensors(Path::new(&name), &bytes);
        if is_regression(&name) {
            if let Ok(tensors) = parsed {
                for hf in &configs {
                    let _ = load_and_run(hf, tensors.clone());
                }
            }
            continue;
        }
        let tensors = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        models += configs
            .iter()
            .filter(|hf| load_and_run(hf, tensors.clone()).is_ok())
            .count();
    }
    // tiny-bf16 (tiny config) and pretrain-discriminator (discriminator config).
    assert_eq!(models, 2);
}

#[test]
fn torch_bin_seeds() {
    let tiny = tiny_config();
    for (name, bytes) in seeds("torch_bin") {
        let parsed = parse_torch_bin(Path::new(&name), &bytes);
        if is_regression(&name) {
            if let Ok(tensors) = parsed {
                let _ = load_and_run(&tiny, tensors);
            }
            continue;
        }
        let tensors = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        load_and_run(&tiny, tensors).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn tokenizer_seeds() {
    let json = std::fs::read(fuzz_dir().join("fixtures").join("tokenizer.json")).unwrap();
    let tokenizer = Tokenizer::from_bytes(Path::new("tokenizer.json"), &json).unwrap();
    let special = tokenizer.special();
    for (name, bytes) in seeds("tokenizer_encode") {
        let text = String::from_utf8_lossy(&bytes);
        let encoded = tokenizer.encode(&text, true).unwrap();
        assert_eq!(encoded.ids.first(), Some(&special.cls), "{name}");
        assert_eq!(encoded.ids.last(), Some(&special.sep), "{name}");
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_eq!(
            tokenizer.encode_corpus_lines(&lines).unwrap().len(),
            lines.len()
        );
    }
}

#[test]
fn spm_model_seeds() {
    let seeds = seeds("spm_model");
    assert!(!seeds.is_empty());
    for (name, bytes) in seeds {
        let tokenizer = SpmTokenizer::from_bytes(Path::new(&name), bytes, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let special = tokenizer.special();
        let encoded = tokenizer.encode("ﬁne  Ünïcödé [MASK] ☃", true);
        assert_eq!(encoded.ids.first(), Some(&special.cls), "{name}");
        assert_eq!(encoded.ids.last(), Some(&special.sep), "{name}");
        assert!(encoded.ids.len() > 4, "{name}");
    }
}

#[test]
fn run_state_seeds() {
    for (name, bytes) in seeds("run_state") {
        let parsed = parse_run_state(Path::new(&name), &bytes);
        if is_regression(&name) {
            if let Ok(state) = parsed {
                let _ = state.options.validate();
            }
            continue;
        }
        let state = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_value::<DataCursor>(state.cursor.clone()).unwrap();
        state.options.validate().unwrap();
        let options = &state.options;
        options.model_configs(options.vocab_size, 0).unwrap();
    }
}

#[test]
fn run_state_rejects_other_versions_and_bad_bytes() {
    let (_, bytes) = seeds("run_state").remove(0);
    let mut state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    state["version"] = 2.into();
    let error = parse_run_state(Path::new("state.json"), state.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(error.contains("state version 2"), "{error}");
    let error = parse_run_state(Path::new("state.json"), b"\xff{}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("corrupted run state"), "{error}");
}

#[test]
fn edge_seeds() {
    for (name, bytes) in seeds("edge_detect") {
        let aligned = AlignedBytes::new(&bytes);
        let parsed = EdgeModel::parse(aligned.bytes());
        let model = match parsed {
            Ok(model) => model,
            Err(_) if is_regression(&name) => continue,
            Err(e) => panic!("{name}: {e}"),
        };
        let len = model.max_seq_len().min(5);
        let ids: Vec<u32> = (1..=len as u32).collect();
        let mut arena = vec![0u8; arena_bytes(&model, len).unwrap()];
        let mut out = vec![0.0f32; len];
        let result = detect(&model, &ids, &mut arena, &mut out);
        if !is_regression(&name) {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(out.iter().all(|x| x.is_finite()), "{name}: {out:?}");
        }
    }
}
