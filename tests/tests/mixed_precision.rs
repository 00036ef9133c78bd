//! `deberta pretrain --precision mixed`: the backend's mixed precision with dynamic loss
//! scaling (f16 `Linear` products on wgpu where the adapter has `SHADER_F16`, f32 products
//! with the scaler still on where it has not, bf16 products on the CPU).
//!
//! * Resume: a run stopped half-way and resumed logs the rows of the uninterrupted run
//!   (`loss_scale_*`, `skipped_*`, `skipped_steps_*` included) and saves the same scaler state.
//!
//! The wgpu tests need a GPU adapter (Mesa's lavapipe in CI): without one they fail under
//! `CI=true` and are skipped with a notice otherwise.

use std::path::{Path, PathBuf};

use deberta_tests::{deberta, deterministic_rows, gpu_adapter_present, temp_dir};

/// The sonnets, as a corpus file in `dir`.
fn corpus(dir: &Path) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/shakespeare/texts/sonnets.txt"),
    )
    .unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A small `nano` run into `out` (batches small enough for lavapipe) with `extra` options.
fn pretrain(corpus: &str, out: &Path, backend: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "pretrain",
        "--corpus",
        corpus,
        "--out",
        out.to_str().unwrap(),
        "--backend",
        backend,
        "--batch-size",
        "2",
        "--max-seq-len",
        "64",
        "--vocab-size",
        "2000",
        "--eval-every",
        "0",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let run = deberta(&args);
    assert_eq!(run.code, Some(0), "{backend} {extra:?}: {}", run.stderr);
    run.stderr
}

/// The `loss_scalers` of a run's `state/state.json`.
fn saved_scalers(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("state/state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["loss_scalers"].clone()
}

#[test]
fn resumed_mixed_runs_restore_the_loss_scalers_exactly() {
    for backend in ["cpu", "wgpu"] {
        if backend == "wgpu" && !gpu_adapter_present() {
            continue;
        }
        let dir = temp_dir(&format!("mixed-resume-{backend}"));
        let corpus = corpus(&dir);
        let (straight, split): (PathBuf, PathBuf) = (dir.join("straight"), dir.join("split"));
        let options = ["--precision", "mixed", "--steps", "6", "--save-every", "3"];
        pretrain(&corpus, &straight, backend, &options);
        let mut first = options.to_vec();
        first.extend(["--stop-after", "3"]);
        pretrain(&corpus, &split, backend, &first);
        let resumed = deberta(&["pretrain", "--resume", split.to_str().unwrap(), "--quiet"]);
        assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
        let (a, b) = (deterministic_rows(&straight), deterministic_rows(&split));
        assert_eq!(a, b, "{backend}: rows after resuming differ");
        let training: Vec<_> = a.iter().filter(|r| r.contains_key("loss_mlm")).collect();
        assert_eq!(training.len(), 6, "{backend}");
        for row in training {
            for model in ["generator", "discriminator"] {
                assert_eq!(row[&format!("loss_scale_{model}")], 16384.0, "{backend}");
                assert_eq!(row[&format!("skipped_{model}")], false, "{backend}");
                assert_eq!(row[&format!("skipped_steps_{model}")], 0, "{backend}");
            }
        }
        let scalers = saved_scalers(&split);
        assert_eq!(scalers, saved_scalers(&straight), "{backend}");
        assert_eq!(scalers[0]["clean_steps"], 6, "{backend}: {scalers}");
    }
}
