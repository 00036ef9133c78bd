//! The edge runtime (`deberta_core::edge`) against the host model: a reproducible random
//! discriminator is written as a Hugging Face directory, exported to f32/f16/int8 edge files
//! and run by the heap-free runtime; its logits are compared with `Deberta::forward`. Parser
//! properties (truncations, bit flips, hostile fields with valid checksums) and the
//! `deberta export` / `deberta detect` commands are checked too.
//!
//! The accuracy check takes the model directory as a parameter: set `DEBERTA_EDGE_MODEL_DIR`
//! to a trained discriminator to run it there as well (`trained_model_accuracy`).
//! `write_nano_model_dir` (ignored) writes the nano model for `scripts/edge-test.sh`.

use std::path::Path;
use std::sync::OnceLock;

use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::edge::format::{DType, ENTRY_LEN, HEADER_CRC_START, HEADER_LEN, RawHeader};
use deberta_core::edge::{EdgeError, EdgeModel, arena_bytes, crc32, detect};
use deberta_core::model::{Deberta, Heads, HostBatch, Init, ParamLayout, SharedTables};
use deberta_core::random::RandomStream;
use deberta_core::{CpuBackend, ModelConfig};
use deberta_host::checkpoint::{TensorMap, write_safetensors};
use deberta_host::edge_export::{AlignedBytes, edge_bytes};
use deberta_host::hf_config::config_json;
use deberta_host::inference::Session;
use deberta_host::model_dir::load_model_dir;
use deberta_host::tensor::HostTensor;
use deberta_tests::{CliRun, deberta, fixture, temp_dir};
use proptest::prelude::*;

/// A v3-layout discriminator configuration: relative attention with shared c2p|p2c
/// projections, a LayerNorm'ed relative table, no absolute positions.
fn v3_config(
    hidden: i64,
    layers: i64,
    heads: i64,
    ffn: i64,
    vocab: i64,
    buckets: i64,
) -> ModelConfig {
    ModelConfig::from_raw(&RawConfig {
        vocab_size: Some(vocab),
        hidden_size: Some(hidden),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(heads),
        intermediate_size: Some(ffn),
        max_position_embeddings: Some(128),
        relative_attention: Some(true),
        position_buckets: Some(buckets),
        max_relative_positions: Some(128),
        position_biased_input: Some(false),
        pos_att_type: Some(PosAttType {
            c2p: true,
            p2c: true,
        }),
        share_att_key: Some(true),
        norm_rel_ebd_layer_norm: Some(true),
        type_vocab_size: Some(0),
        ..RawConfig::default()
    })
    .expect("valid config")
}

/// The nano discriminator of the firmware: hidden 128, 4 layers × 4 heads, FFN 512, vocab
/// 8000, 32 position buckets (a 64-row relative table).
fn nano_config() -> ModelConfig {
    v3_config(128, 4, 4, 512, 8000, 32)
}

/// Writes a randomly initialised discriminator with the RTD head as a Hugging Face directory
/// (`config.json`, `model.safetensors`), reproducibly from `seed`. Matrices are drawn with
/// `scale ×` the configured std; biases and LayerNorm parameters are perturbed too (so every
/// term of the computation is exercised), which with `scale ≈ 5` gives logits far enough
/// from 0 for replaced/original decisions to mean something.
fn write_discriminator(dir: &Path, cfg: &ModelConfig, seed: u64, scale: f32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut layout = ParamLayout::new();
    let heads = Heads {
        mlm: None,
        emd: false,
        rtd: true,
    };
    Deberta::new(&mut layout, "", cfg, heads, SharedTables::default());
    let params = layout.initialise(&CpuBackend::new(), seed).unwrap();
    let mut tensors = TensorMap::new();
    for (id, spec) in layout.iter() {
        let noise = RandomStream {
            seed,
            step: 1,
            stream: id.index() as u32,
        };
        let values: Vec<f32> = params
            .get(id)
            .iter()
            .enumerate()
            .map(|(i, &v)| match spec.init {
                Init::Normal(_) => v * scale,
                Init::Zeros => 0.02 * scale * noise.normal(i as u64),
                Init::Ones => 1.0 + 0.1 * noise.normal(i as u64),
                Init::Constant(c) => c + 0.02 * scale * noise.normal(i as u64),
            })
            .collect();
        tensors.insert(
            spec.name.clone(),
            HostTensor::float(spec.shape.clone(), values),
        );
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let config = config_json(cfg, "DebertaV2ForTokenClassification", false);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Deterministic token ids in `1..vocab`.
fn tokens(len: usize, vocab: usize, seed: u32) -> Vec<u32> {
    let rng = RandomStream {
        seed: 7,
        step: 0,
        stream: seed,
    };
    (0..len as u64)
        .map(|i| 1 + rng.bits(i) % (vocab as u32 - 1))
        .collect()
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-f64::from(x)).exp())
}

/// Runs the edge runtime on an aligned copy of `file`.
fn edge_logits(file: &[u8], ids: &[u32]) -> Result<Vec<f32>, EdgeError> {
    let aligned = AlignedBytes::new(file);
    let model = EdgeModel::parse(aligned.bytes())?;
    let mut arena = vec![0u8; arena_bytes(&model, ids.len())?];
    let mut out = vec![0.0f32; ids.len()];
    detect(&model, ids, &mut arena, &mut out)?;
    Ok(out)
}

/// Worst-case differences of one dtype against the host forward pass.
#[derive(Debug, Default)]
struct Accuracy {
    max_logit_error: f64,
    max_probability_error: f64,
    confident: usize,
    agreeing: usize,
}

/// Exports `dir` in `dtype` and compares every sequence's logits with the host's
/// `Deberta::forward` (inference options, RTD head).
fn accuracy(dir: &Path, dtype: DType, sequences: &[Vec<u32>], max_seq_len: usize) -> Accuracy {
    let loaded = load_model_dir(dir).unwrap();
    let file = edge_bytes(&loaded, dir, dtype, max_seq_len, None).unwrap();
    let backend = CpuBackend::new();
    let session = Session::new(&backend, &loaded).unwrap();
    let mut acc = Accuracy::default();
    for ids in sequences {
        let edge = edge_logits(&file, ids).unwrap();
        let input_ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let mask = vec![1i64; ids.len()];
        let host = session
            .outputs(&HostBatch {
                input_ids: &input_ids,
                attention_mask: &mask,
                token_type_ids: None,
                batch: 1,
                len: ids.len(),
            })
            .unwrap();
        let reference = host["rtd_logits"].as_float().unwrap();
        for (&e, &r) in edge.iter().zip(reference) {
            let (pe, pr) = (sigmoid(e), sigmoid(r));
            acc.max_logit_error = acc.max_logit_error.max(f64::from((e - r).abs()));
            acc.max_probability_error = acc.max_probability_error.max((pe - pr).abs());
            if (pr - 0.5).abs() >= 0.05 {
                acc.confident += 1;
                acc.agreeing += usize::from((pe > 0.5) == (pr > 0.5));
            }
        }
    }
    acc
}

/// The accuracy contract of the edge format on one model directory.
fn check_accuracy(dir: &Path, vocab: usize, max_seq_len: usize) {
    let sequences: Vec<Vec<u32>> = [1usize, 2, 17, 64, max_seq_len]
        .iter()
        .enumerate()
        .map(|(k, &len)| tokens(len.min(max_seq_len), vocab, k as u32))
        .collect();
    let f32 = accuracy(dir, DType::F32, &sequences, max_seq_len);
    let f16 = accuracy(dir, DType::F16, &sequences, max_seq_len);
    let int8 = accuracy(dir, DType::I8, &sequences, max_seq_len);
    eprintln!(
        "{}: f32 {f32:?}\n  f16 {f16:?}\n  int8 {int8:?}",
        dir.display()
    );
    assert!(f32.max_logit_error <= 1e-5, "f32: {f32:?}");
    assert!(f16.max_logit_error <= 1e-2, "f16: {f16:?}");
    assert!(int8.max_probability_error <= 0.05, "int8: {int8:?}");
    assert!(
        int8.agreeing as f64 >= 0.99 * int8.confident as f64,
        "int8 decisions: {int8:?}"
    );
}

#[test]
fn random_nano_discriminator_accuracy() {
    let dir = temp_dir("edge-nano-x5");
    let cfg = nano_config();
    write_discriminator(&dir, &cfg, 17, 5.0);
    check_accuracy(&dir, cfg.vocab_size, 128);
}

#[test]
fn unscaled_random_discriminator_accuracy() {
    let dir = temp_dir("edge-nano-x1");
    let cfg = v3_config(64, 2, 4, 256, 500, 16);
    write_discriminator(&dir, &cfg, 3, 1.0);
    check_accuracy(&dir, cfg.vocab_size, 96);
}

/// The same contract on a trained discriminator when `DEBERTA_EDGE_MODEL_DIR` names one.
#[test]
fn trained_model_accuracy() {
    let Some(dir) = std::env::var_os("DEBERTA_EDGE_MODEL_DIR") else {
        eprintln!("DEBERTA_EDGE_MODEL_DIR not set: nothing to check");
        return;
    };
    let dir = Path::new(&dir);
    let loaded = load_model_dir(dir).unwrap();
    let cfg = loaded.config();
    check_accuracy(dir, cfg.vocab_size, cfg.max_position_embeddings.min(128));
}

/// Writes the nano int8 discriminator directory for `scripts/edge-test.sh` to
/// `$EDGE_NANO_DIR`.
#[test]
#[ignore = "writes the firmware's model directory; run by scripts/edge-test.sh"]
fn write_nano_model_dir() {
    let dir = std::env::var_os("EDGE_NANO_DIR").expect("EDGE_NANO_DIR");
    write_discriminator(Path::new(&dir), &nano_config(), 17, 5.0);
}

/// A small model file for the parser properties (with a tokenizer section), built once.
fn small_file(dtype: DType) -> &'static [u8] {
    static FILES: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let dir = temp_dir("edge-small");
        write_discriminator(&dir, &v3_config(16, 2, 2, 32, 50, 8), 5, 5.0);
        let loaded = load_model_dir(&dir).unwrap();
        let tokenizer = br#"{"model":{"type":"WordLevel"}}"#;
        [DType::F32, DType::F16, DType::I8]
            .map(|d| edge_bytes(&loaded, &dir, d, 12, Some(tokenizer)).unwrap())
    });
    &files[dtype.code() as usize]
}

/// Parses `bytes` (aligned) and, when that succeeds, runs it on a few lengths: whatever the
/// bytes, nothing may panic.
fn parse_and_run(bytes: &[u8]) -> Result<(), EdgeError> {
    let aligned = AlignedBytes::new(bytes);
    let model = EdgeModel::parse(aligned.bytes())?;
    let _ = model.tokenizer();
    for len in [1, model.max_seq_len().min(5), model.max_seq_len()] {
        let ids: Vec<u32> = (0..len as u32).collect();
        let mut arena = vec![0u8; arena_bytes(&model, len)?];
        let mut out = vec![0.0f32; len];
        let _ = detect(&model, &ids, &mut arena, &mut out);
    }
    Ok(())
}

/// Rewrites the header CRC after a mutation, so that validation beyond the checksum runs.
fn fix_header_crc(bytes: &mut [u8]) {
    let Ok(header) = RawHeader::decode(bytes) else {
        return;
    };
    if let Some(covered) = bytes.get(HEADER_CRC_START..header.payload_offset as usize) {
        let crc = crc32(covered);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

fn any_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::I8)]
}

/// Values that probe bounds: zero, one, powers of two around 2³¹, all ones, small numbers.
fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(0x8000_0000),
        Just(0x7FFF_FFFF),
        Just(0x0001_0000),
        0u32..4096,
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn truncations_are_errors(dtype in any_dtype(), cut in any::<prop::sample::Index>()) {
        let file = small_file(dtype);
        let cut = cut.index(file.len());
        prop_assert!(parse_and_run(&file[..cut]).is_err());
    }

    #[test]
    fn bit_flips_are_caught(
        dtype in any_dtype(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let file = small_file(dtype);
        let mut bytes = file.to_vec();
        for (at, bit) in &flips {
            bytes[at.index(file.len())] ^= 1 << bit;
        }
        let aligned = AlignedBytes::new(&bytes);
        let header = RawHeader::decode(file).unwrap();
        let tokenizer_start = header.tokenizer_offset as usize;
        let changed_outside_tokenizer = bytes[..tokenizer_start] != file[..tokenizer_start];
        match EdgeModel::parse(aligned.bytes()) {
            Ok(model) => {
                prop_assert!(!changed_outside_tokenizer);
                let tokenizer_changed = bytes != file;
                prop_assert_eq!(
                    model.tokenizer().unwrap().is_err(),
                    tokenizer_changed
                );
            }
            Err(_) => prop_assert!(changed_outside_tokenizer),
        }
    }

    #[test]
    fn hostile_header_fields_never_panic(
        dtype in any_dtype(),
        word in 5usize..27,
        value in hostile_u32(),
    ) {
        let mut bytes = small_file(dtype).to_vec();
        bytes[4 * word..4 * word + 4].copy_from_slice(&value.to_le_bytes());
        fix_header_crc(&mut bytes);
        let _ = parse_and_run(&bytes);
    }

    #[test]
    fn hostile_table_entries_never_panic(
        dtype in any_dtype(),
        entry in any::<prop::sample::Index>(),
        field in 0usize..8,
        value in hostile_u32(),
    ) {
        let file = small_file(dtype);
        let mut bytes = file.to_vec();
        let count = RawHeader::decode(&bytes).unwrap().tensor_count as usize;
        let start = HEADER_LEN + entry.index(count) * ENTRY_LEN + 4 * field;
        bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
        fix_header_crc(&mut bytes);
        let result = parse_and_run(&bytes);
        if bytes == file {
            prop_assert!(result.is_ok());
        } else if field != 4 && field != 6 {
            // Anything but a data or scale offset (which may move to another aligned place
            // inside the payload) must be rejected.
            prop_assert!(result.is_err(), "field {} = {:#x} accepted", field, value);
        }
    }

    #[test]
    fn any_payload_runs_without_panic(
        dtype in any_dtype(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..16),
    ) {
        // Weights are just numbers: NaN, infinities and huge values must not panic either.
        let mut bytes = small_file(dtype).to_vec();
        let header = RawHeader::decode(&bytes).unwrap();
        let payload = header.payload_offset as usize..(header.payload_offset + header.payload_len) as usize;
        for (at, value) in &edits {
            let at = payload.start + at.index(payload.len() - 4);
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32(&bytes[payload]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(&mut bytes);
        prop_assert!(parse_and_run(&bytes).is_ok());
    }

    #[test]
    fn random_bytes_are_rejected(mut bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"DBTE");
            bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
            fix_header_crc(&mut bytes);
        }
        prop_assert!(parse_and_run(&bytes).is_err());
    }
}

#[test]
fn valid_files_round_trip() {
    for dtype in [DType::F32, DType::F16, DType::I8] {
        let file = small_file(dtype);
        let aligned = AlignedBytes::new(file);
        let model = EdgeModel::parse(aligned.bytes()).unwrap();
        let cfg = model.config();
        assert_eq!(model.dtype(), dtype);
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.num_hidden_layers,
                cfg.num_attention_heads
            ),
            (16, 2, 2)
        );
        assert_eq!(
            (cfg.intermediate_size, cfg.vocab_size, cfg.position_buckets),
            (32, 50, 8)
        );
        assert!(cfg.uses_c2p() && cfg.uses_p2c() && !cfg.position_biased_input);
        assert_eq!(model.max_seq_len(), 12);
        assert_eq!(
            model.tokenizer().unwrap().unwrap(),
            br#"{"model":{"type":"WordLevel"}}"#
        );
        // Sequence limits and ids are checked before any work.
        let mut arena = vec![0u8; arena_bytes(&model, 12).unwrap()];
        let mut out = [0.0f32; 13];
        assert_eq!(
            detect(&model, &[0; 13], &mut arena, &mut out),
            Err(EdgeError::SequenceTooLong { len: 13, max: 12 })
        );
        assert!(matches!(
            detect(&model, &[1, 50], &mut arena, &mut out),
            Err(EdgeError::TokenOutOfRange {
                position: 1,
                id: 50,
                ..
            })
        ));
        assert!(matches!(
            detect(&model, &[1, 2], &mut arena[..10], &mut out),
            Err(EdgeError::ArenaTooSmall { .. })
        ));
        assert!(matches!(
            detect(&model, &[1, 2], &mut arena, &mut out[..1]),
            Err(EdgeError::OutputTooSmall { .. })
        ));
        assert_eq!(
            detect(&model, &[], &mut arena, &mut out),
            Err(EdgeError::EmptyInput)
        );
        detect(&model, &[1, 2, 3], &mut arena, &mut out).unwrap();
        // A misaligned start is refused rather than read unaligned.
        let mut shifted = vec![0u8; file.len() + 16];
        let start = (1..16)
            .find(|s| (shifted.as_ptr().addr() + s) % 4 != 0)
            .unwrap();
        shifted[start..start + file.len()].copy_from_slice(file);
        assert!(matches!(
            EdgeModel::parse(&shifted[start..start + file.len()]),
            Err(EdgeError::Misaligned { .. })
        ));
    }
}

/// The elements of array `key` of the one-line JSON object `deberta detect --json` prints
/// (numbers and strings without commas or brackets, which is all it prints).
fn json_array(stdout: &str, key: &str) -> Vec<String> {
    let text = stdout.trim();
    assert!(
        text.starts_with('{') && text.ends_with('}') && !text.contains('\n'),
        "not one JSON object: {text}"
    );
    let open = format!("\"{key}\":[");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no `{key}` in {text}"))
        + open.len();
    let end = start + text[start..].find(']').expect("closing bracket");
    text[start..end]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

fn assert_one_line_error(run: &CliRun, needle: &str) {
    assert_ne!(
        run.code,
        Some(0),
        "expected failure; stdout: {}",
        run.stdout
    );
    let stderr = run.stderr.trim_end();
    assert!(
        !stderr.contains('\n'),
        "stderr has more than one line:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn cli_export_then_detect() {
    let dir = temp_dir("edge-cli");
    let model_dir = dir.join("model");
    let cfg = v3_config(32, 2, 4, 64, 100, 8);
    write_discriminator(&model_dir, &cfg, 9, 5.0);
    std::fs::write(
        model_dir.join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":7,"world":9},
            "unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let file = dir.join("model.dbt");
    let (model_arg, file_arg) = (model_dir.to_str().unwrap(), file.to_str().unwrap());
    let run = deberta(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "int8",
        "--max-seq-len",
        "16",
        "--in",
        model_arg,
        "--out",
        file_arg,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = deberta(&["detect", "--model", file_arg, "--ids", "1,5,9", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json_array(&run.stdout, "ids"), ["1", "5", "9"]);
    let expected = edge_logits(&std::fs::read(&file).unwrap(), &[1, 5, 9]).unwrap();
    let probabilities = json_array(&run.stdout, "probabilities");
    assert_eq!(probabilities.len(), 3);
    for (p, &logit) in probabilities.iter().zip(&expected) {
        assert!((p.parse::<f64>().unwrap() - sigmoid(logit)).abs() < 1e-6);
    }
    let run = deberta(&[
        "detect",
        "--model",
        file_arg,
        "--text",
        "hello world",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json_array(&run.stdout, "ids"), ["7", "9"]);
    assert_eq!(json_array(&run.stdout, "tokens"), ["hello", "world"]);

    assert_one_line_error(
        &deberta(&["detect", "--model", file_arg, "--ids", "1,100"]),
        "outside the vocabulary",
    );
    let long = vec!["1"; 17].join(",");
    assert_one_line_error(
        &deberta(&["detect", "--model", file_arg, "--ids", &long]),
        "max_seq_len",
    );
    let plain = dir.join("plain.dbt");
    let run = deberta(&[
        "export",
        "--dtype",
        "f16",
        "--max-seq-len",
        "8",
        "--in",
        model_arg,
        "--out",
        plain.to_str().unwrap(),
        "--no-tokenizer",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_one_line_error(
        &deberta(&[
            "detect",
            "--model",
            plain.to_str().unwrap(),
            "--text",
            "hello",
        ]),
        "no tokenizer",
    );
    let mut corrupt = std::fs::read(&file).unwrap();
    let last = corrupt.len() / 2;
    corrupt[last] ^= 0x10;
    std::fs::write(&plain, corrupt).unwrap();
    assert_one_line_error(
        &deberta(&["detect", "--model", plain.to_str().unwrap(), "--ids", "1"]),
        "checksum",
    );
}

#[test]
fn cli_export_needs_the_rtd_head() {
    let out = temp_dir("edge-no-rtd").join("model.dbt");
    let run = deberta(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "f32",
        "--in",
        fixture("tiny").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "mask_predictions");
    assert!(!out.exists());
}
