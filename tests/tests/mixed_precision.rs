//! `deberta pretrain --precision mixed`: the backend's mixed precision with dynamic loss
//! scaling (f16 `Linear` and attention products on wgpu where the adapter has `SHADER_F16`, f32 products
//! with the scaler still on where it has not, bf16 products on the CPU).
//!
//! * On the CPU, `mixed` gives the rows of `bf16-mixed` bit for bit (power-of-two scale).
//! * Resume: a run stopped half-way and resumed logs the rows of the uninterrupted run
//!   (`loss_scale_*`, `skipped_*`, `skipped_steps_*` included) and saves the same scaler state.
//! * wgpu learns in mixed precision as in f32: 20 `nano` steps (batch 2 × 64 tokens), every
//!   logged training loss and the final held-out losses within `MIXED_LOSS_TOL` nats of the f32
//!   run's (measured on lavapipe with f16 products: 2.6e-4 nats with the fused training
//!   attention, 4.2e-5 with the composed one it replaced), some differing (the f16
//!   products ran), the loss falling, no step skipped. Where the adapter lacks `SHADER_F16`
//!   (or under `DEBERTA_WGPU_F16=off`, which the test also runs) `--precision mixed` runs with
//!   f32 products and the scaler on, and says so in one line.
//!
//! With `DEBERTA_WGPU_COOPERATIVE=on` the f16 products run on the cooperative-matrix kernel
//! where the adapter has one (`scripts/lavapipe-next.sh` runs this test so on Mesa 26's lavapipe).
//!
//! The wgpu tests need a GPU adapter (Mesa's lavapipe in CI): without one they fail under
//! `CI=true` and are skipped with a notice otherwise.

use std::path::{Path, PathBuf};

use deberta_tests::{
    deberta, deberta_with_env, deterministic_rows, gpu_adapter_present, sonnets_corpus as corpus,
    temp_dir,
};

/// Largest difference in nats between a mixed and an f32 wgpu run's logged losses.
const MIXED_LOSS_TOL: f64 = 0.01;

/// The line `--precision mixed` prints where it multiplies in f32.
const FALLBACK: &str = "f32 products, loss scaling on";

/// The start of the line the CLI prints where f16 products run on cooperative matrices
/// (`DEBERTA_WGPU_COOPERATIVE=on` on an adapter that can: `scripts/lavapipe-next.sh`, which sets
/// `DEBERTA_REQUIRE_COOPERATIVE=1` to make anything else a failure).
const COOPERATIVE: &str = "f16 products on cooperative matrices";

/// A small `nano` run into `out` (batches small enough for lavapipe) with `extra` options and
/// environment; returns its stderr.
fn pretrain_with_env(
    corpus: &str,
    out: &Path,
    backend: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> String {
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
    let run = deberta_with_env(&args, env);
    assert_eq!(run.code, Some(0), "{backend} {extra:?}: {}", run.stderr);
    run.stderr
}

/// [`pretrain_with_env`] in the test's environment.
fn pretrain(corpus: &str, out: &Path, backend: &str, extra: &[&str]) -> String {
    pretrain_with_env(corpus, out, backend, extra, &[])
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

#[test]
fn mixed_precision_on_wgpu_learns_like_f32() {
    if !gpu_adapter_present() {
        return;
    }
    let dir = temp_dir("mixed-wgpu");
    let corpus = corpus(&dir);
    let steps = ["--steps", "20", "--save-every", "0"];
    let run = |precision: &str| {
        let out = dir.join(precision);
        let mut options = steps.to_vec();
        options.extend(["--precision", precision]);
        let stderr = pretrain(&corpus, &out, "wgpu", &options);
        (deterministic_rows(&out), stderr)
    };
    let ((f32_rows, _), (mixed_rows, stderr)) = (run("f32"), run("mixed"));
    let f16 = !stderr.contains(FALLBACK);
    let cooperative = stderr.contains(COOPERATIVE);
    println!(
        "mixed on wgpu: {}",
        match (f16, cooperative) {
            (true, true) => "f16 products on cooperative matrices",
            (true, false) => "f16 products (SHADER_F16)",
            (false, _) => "f32 products (no SHADER_F16: the fallback)",
        }
    );
    if std::env::var("DEBERTA_REQUIRE_COOPERATIVE").as_deref() == Ok("1") {
        assert!(cooperative, "DEBERTA_REQUIRE_COOPERATIVE=1: {stderr}");
    }
    assert_eq!(f32_rows.len(), mixed_rows.len());
    let (mut worst, mut differs, mut compared) = (0.0f64, false, 0);
    for (a, b) in f32_rows.iter().zip(&mixed_rows) {
        assert_eq!(a["step"], b["step"]);
        for key in ["loss_mlm", "loss_rtd", "eval_loss_mlm", "eval_loss_rtd"] {
            let (Some(x), Some(y)) = (a.get(key), b.get(key)) else {
                continue;
            };
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= MIXED_LOSS_TOL,
                "step {}: {key} {y} (mixed) vs {x} (f32)",
                a["step"]
            );
            worst = worst.max((x - y).abs());
            differs |= x != y;
            compared += 1;
        }
        if b.contains_key("loss_mlm") {
            for model in ["generator", "discriminator"] {
                assert_eq!(b[&format!("skipped_{model}")], false, "{b:?}");
                assert!(b[&format!("loss_scale_{model}")].as_f64().unwrap() >= 1.0);
            }
        }
    }
    println!("mixed vs f32 on wgpu over 20 steps: worst |loss difference| {worst:.2e} nats");
    assert!(compared >= 42, "only {compared} losses compared");
    // The f16 products round differently from f32; the f32 fallback with a power-of-two loss
    // scale gives the f32 bits.
    assert_eq!(
        differs, f16,
        "f16 products ran: {f16}, losses differ: {differs}"
    );
    let loss = |rows: &[serde_json::Map<String, serde_json::Value>], step: u64| {
        rows.iter()
            .find(|r| r["step"] == step && r.contains_key("loss_mlm"))
            .unwrap()["loss_mlm"]
            .as_f64()
            .unwrap()
    };
    assert!(loss(&mixed_rows, 20) < loss(&mixed_rows, 1) - 0.2);

    // Without SHADER_F16: f32 products, the scaler on, one line saying so.
    let out = dir.join("fallback");
    let stderr = pretrain_with_env(
        &corpus,
        &out,
        "wgpu",
        &["--steps", "2", "--save-every", "0", "--precision", "mixed"],
        &[("DEBERTA_WGPU_F16", "off")],
    );
    assert_eq!(stderr.matches(FALLBACK).count(), 1, "{stderr}");
    let rows = deterministic_rows(&out);
    let last = rows.iter().rfind(|r| r.contains_key("loss_mlm")).unwrap();
    assert_eq!(last["loss_scale_generator"], 16384.0);
}

/// On the CPU, `mixed` is `bf16-mixed` with the loss scaler on; the scale being a power of two,
/// the two give the same bits while nothing overflows: every logged row (losses, gradient
/// norms, the final evaluation) is equal.
#[test]
fn cpu_mixed_is_bf16_mixed_bit_for_bit() {
    let dir = temp_dir("mixed-cpu");
    let corpus = corpus(&dir);
    let run = |precision: &str| {
        let out = dir.join(precision);
        let options = [
            "--precision",
            precision,
            "--steps",
            "6",
            "--save-every",
            "0",
        ];
        pretrain(&corpus, &out, "cpu", &options);
        deterministic_rows(&out)
    };
    let (mixed, bf16) = (run("mixed"), run("bf16-mixed"));
    assert_eq!(mixed.len(), bf16.len());
    for (a, b) in mixed.iter().zip(&bf16) {
        for (key, value) in b {
            assert_eq!(a.get(key), Some(value), "step {}: {key}", b["step"]);
        }
    }
}
