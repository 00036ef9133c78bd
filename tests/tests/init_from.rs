//! `deberta pretrain --init-from DIR`: continued pretraining from an official-layout
//! directory (`tests/fixtures/spm-official`: `config.json`, `pytorch_model.bin` with an RTD head
//! and an `spm.model`, made by transformers and sentencepiece), then `export --format hf` back
//! to the same tokenizer form.

use std::path::{Path, PathBuf};

use deberta_tests::{CliRun, assert_one_line_error, deberta, fixture, load, temp_dir, values};
use serde_json::Value;

const TEXT: &str = "Shall I compare thee to a summer's day?";

fn official() -> PathBuf {
    fixture("spm-official")
}

fn ok(run: CliRun) -> CliRun {
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    run
}

fn pretrain(dir: &Path, out: &Path, extra: &[&str]) -> CliRun {
    let mut args = vec![
        "pretrain",
        "--init-from",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "16",
        "--max-seq-len",
        "64",
        "--eval-batches",
        "4",
        "--save-every",
        "0",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    deberta(&args)
}

/// Every output of `deberta forward --text TEXT` on a model directory.
fn forward(model: &Path, out: &Path) -> deberta_host::checkpoint::TensorMap {
    ok(deberta(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--text",
        TEXT,
        "--out",
        out.to_str().unwrap(),
    ]));
    load(out)
}

/// The last `eval_rtd_auc` of a run.
fn final_auc(run: &Path) -> f64 {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).unwrap()["eval_rtd_auc"].as_f64())
        .next_back()
        .expect("an evaluation row")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One step at learning rate 0 (the first update of a warm-up) leaves the discriminator as
/// published: its outputs equal the checkpoint's bit for bit (RTD head included) and
/// transformers' `last_hidden_state`; the run's model directories carry DIR's `spm.model` and
/// `tokenizer_config.json`. 300 steps raise the held-out RTD AUC; the export is in DIR's form.
#[test]
fn init_from_starts_as_published_learns_and_exports() {
    let dir = official();
    let work = temp_dir("init-from");
    let start = work.join("start");
    ok(pretrain(&dir, &start, &["--steps", "1"]));
    let published = forward(&dir, &work.join("published.safetensors"));
    let first = forward(
        &start.join("discriminator"),
        &work.join("first.safetensors"),
    );
    for name in ["last_hidden_state", "rtd_logits", "hidden_states.1"] {
        assert_eq!(values(&first, name), values(&published, name), "{name}");
    }
    let reference: Value = serde_json::from_slice(&read(&dir.join("forward.json"))).unwrap();
    let expected: Vec<f64> = reference[0]["last_hidden_state"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let ours = values(&first, "last_hidden_state");
    assert_eq!(ours.len(), expected.len());
    let worst = ours
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "max |diff| from transformers {worst}");
    for part in ["discriminator", "generator"] {
        for file in ["spm.model", "tokenizer_config.json"] {
            assert_eq!(read(&start.join(part).join(file)), read(&dir.join(file)));
        }
        assert!(!start.join(part).join("tokenizer.json").exists());
    }

    let trained = work.join("trained");
    ok(pretrain(
        &dir,
        &trained,
        &[
            "--steps",
            "300",
            "--eval-every",
            "100",
            "--discriminator-lr",
            "2e-3",
        ],
    ));
    let (before, after) = (final_auc(&start), final_auc(&trained));
    assert!(
        after > before + 0.05,
        "held-out RTD AUC {before:.3} at the start, {after:.3} after 300 steps"
    );

    let exported = work.join("exported");
    ok(deberta(&[
        "export",
        "--in",
        trained.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        exported.to_str().unwrap(),
    ]));
    let mut files: Vec<String> = std::fs::read_dir(&exported)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "model.safetensors",
            "spm.model",
            "tokenizer_config.json"
        ]
    );
    for file in ["spm.model", "tokenizer_config.json"] {
        assert_eq!(read(&exported.join(file)), read(&dir.join(file)));
    }
    let encoded = ok(deberta(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        exported.to_str().unwrap(),
        "--text",
        TEXT,
        "--json",
    ]));
    let encoded: Value = serde_json::from_str(encoded.stdout.trim()).unwrap();
    assert_eq!(encoded["ids"], reference[0]["ids"]);
    let config: Value = serde_json::from_slice(&read(&exported.join("config.json"))).unwrap();
    assert_eq!(config["vocab_size"], 1000);
    assert_eq!(config["hidden_size"], 32);
}

/// `--init-generator`: the generator starts from another directory and, under GDES, E_Δ
/// absorbs the difference of the word tables, so the discriminator still starts as published.
#[test]
fn init_generator_keeps_the_discriminator_as_published() {
    let dir = official();
    let work = temp_dir("init-generator");
    let donor = work.join("donor");
    ok(pretrain(
        &dir,
        &donor,
        &["--steps", "20", "--eval-every", "0"],
    ));
    let run = work.join("run");
    let generator = donor.join("generator");
    ok(pretrain(
        &dir,
        &run,
        &[
            "--steps",
            "1",
            "--init-generator",
            generator.to_str().unwrap(),
        ],
    ));
    let published = forward(&dir, &work.join("published.safetensors"));
    let first = forward(&run.join("discriminator"), &work.join("first.safetensors"));
    let worst = values(&first, "last_hidden_state")
        .iter()
        .zip(values(&published, "last_hidden_state"))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // E_G + (E_D − E_G) rounds in float32.
    assert!(worst < 1e-5, "max |diff| {worst}");
    let donor_generator = load(&generator.join("model.safetensors"));
    let run_generator = load(&run.join("generator").join("model.safetensors"));
    let word = "deberta.embeddings.word_embeddings.weight";
    assert_eq!(values(&run_generator, word), values(&donor_generator, word));
}

/// Options contradicting DIR, a directory without a tokenizer, a tokenizer larger than the
/// checkpoint's vocabulary and a corrupt `spm.model` are one-line errors.
#[test]
fn init_from_bad_input_is_one_line_errors() {
    let dir = official();
    let work = temp_dir("init-from-bad");
    let out = work.join("run");
    assert_one_line_error(
        &pretrain(&dir, &out, &["--tokenizer", "x.json"]),
        "--tokenizer contradicts --init-from",
    );
    assert_one_line_error(
        &pretrain(&dir, &out, &["--vocab-size", "500"]),
        "--vocab-size 500 contradicts --init-from",
    );
    let config = work.join("run.toml");
    std::fs::write(&config, "[model]\nhidden_size = 64\n").unwrap();
    assert_one_line_error(
        &pretrain(&dir, &out, &["--config", config.to_str().unwrap()]),
        "[model] hidden_size = 64 contradicts --init-from",
    );
    assert_one_line_error(
        &pretrain(&fixture("tiny-bin"), &out, &[]),
        "no tokenizer in the directory",
    );
    // The tiny-bin checkpoint has 128 rows; the spm.model has 1000 pieces.
    let too_small = work.join("too-small");
    std::fs::create_dir_all(&too_small).unwrap();
    for file in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fixture("tiny-bin").join(file), too_small.join(file)).unwrap();
    }
    std::fs::copy(dir.join("spm.model"), too_small.join("spm.model")).unwrap();
    assert_one_line_error(
        &pretrain(&too_small, &out, &[]),
        "the tokenizer has 1000 tokens, more than the checkpoint's vocabulary of 128",
    );
    let corrupt = work.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for file in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(dir.join(file), corrupt.join(file)).unwrap();
    }
    let model = read(&dir.join("spm.model"));
    std::fs::write(corrupt.join("spm.model"), &model[..1000]).unwrap();
    assert_one_line_error(&pretrain(&corrupt, &out, &[]), "not a SentencePiece model");
    assert!(!out.join("state").exists());
}

/// A directory with a `tokenizer.json` and no RTD head (the `tiny-bin` MLM checkpoint): the
/// backbone starts as published, the head as from scratch, and the export keeps the
/// `tokenizer.json` byte for byte.
#[test]
fn init_from_tokenizer_json_without_rtd_head() {
    let work = temp_dir("init-from-json");
    let dir = work.join("mlm");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "pytorch_model.bin"] {
        std::fs::copy(fixture("tiny-bin").join(file), dir.join(file)).unwrap();
    }
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz")
        .join("fixtures")
        .join("tokenizer.json");
    std::fs::copy(&tokenizer, dir.join("tokenizer.json")).unwrap();
    let run = work.join("run");
    let started = ok(pretrain(&dir, &run, &["--steps", "1"]));
    assert!(
        started
            .stderr
            .contains("not used to initialise the discriminator"),
        "{}",
        started.stderr
    );
    let published = forward(&dir, &work.join("published.safetensors"));
    let first = forward(&run.join("discriminator"), &work.join("first.safetensors"));
    assert_eq!(
        values(&first, "last_hidden_state"),
        values(&published, "last_hidden_state")
    );
    assert!(first.contains_key("rtd_logits") && !published.contains_key("rtd_logits"));
    let exported = work.join("exported");
    ok(deberta(&[
        "export",
        "--in",
        run.to_str().unwrap(),
        "--format",
        "hf",
        "--out",
        exported.to_str().unwrap(),
    ]));
    assert_eq!(read(&exported.join("tokenizer.json")), read(&tokenizer));
    assert!(!exported.join("spm.model").exists());
}

/// A run started with `--init-from` resumes exactly: the resumed run's last training row
/// equals the uninterrupted run's.
#[test]
fn init_from_run_resumes_exactly() {
    let dir = official();
    let work = temp_dir("init-from-resume");
    let whole = work.join("whole");
    let parts = work.join("parts");
    let steps = ["--steps", "6", "--eval-every", "0", "--warmup", "0"];
    ok(pretrain(&dir, &whole, &steps));
    let mut first = steps.to_vec();
    first.extend_from_slice(&["--stop-after", "3"]);
    ok(pretrain(&dir, &parts, &first));
    ok(deberta(&[
        "pretrain",
        "--resume",
        parts.to_str().unwrap(),
        "--quiet",
    ]));
    let last_loss = |run: &Path| {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines()
            .filter_map(|line| {
                let row: Value = serde_json::from_str(line).unwrap();
                (row["step"] == 6 && row.get("loss_rtd").is_some()).then(|| row["loss_rtd"].clone())
            })
            .next_back()
            .expect("a training row of step 6")
    };
    assert_eq!(last_loss(&parts), last_loss(&whole));
}
