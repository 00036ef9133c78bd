//! Reduced-precision inference against f32 on every forward fixture: `deberta forward
//! --precision bf16` (the CPU backend's bf16 `Linear` products) must stay within a stated
//! bound of the f32 outputs, which themselves match transformers (`model_parity.rs`). The
//! worst figure per tensor is printed (run with `--nocapture`).
//!
//! Bound: on valid token rows, `max |bf16 − f32| ≤ BF16_REL · max |f32|` per tensor (the
//! tensor's own scale; bf16 keeps 8 significant bits, a relative rounding of 2⁻⁹ ≈ 2e-3 per
//! operand, compounded through the layers). Relative positions must be equal, and every
//! tensor computed from a product must differ somewhere (the bf16 path really ran; the
//! embeddings have no product unless the model projects them, as `v2style` does). Measured
//! worst: 3.1e-3 (`v2style`, `last_hidden_state` and `mlm_logits`). int8: the same check
//! with `INT8_REL`; measured worst 1.4e-2 (`p2c-only` and `v2style` `mlm_logits`).
//!
//! Training: `deberta pretrain --precision bf16-mixed` (f32 master weights, bf16 `Linear`
//! products forward and backward) against the same 100-step nano run in f32: every logged
//! training loss within `MIXED_LOSS_TOL` nats, the held-out MLM loss too (measured: at most
//! 3.3e-3 nats over the rows, AMX bf16 products).

use deberta_core::model::AttentionProbs;
use deberta_core::{Backend, CpuBackend, Precision};
use deberta_host::checkpoint::TensorMap;
use deberta_host::model_dir::load_model_dir;
use deberta_tests::{
    MODEL_FIXTURES, assert_one_line_error, deberta, deterministic_rows, fixture, fixture_forward,
    ints, max_abs_diff, temp_dir, values,
};

/// Worst `|bf16 − f32|` of a tensor, as a fraction of its largest `|f32|`.
const BF16_REL: f64 = 1e-2;
/// The same for int8 (per-channel weight and per-row activation scales: 127 steps).
const INT8_REL: f64 = 5e-2;
/// Largest difference in nats between a bf16-mixed and an f32 training run's logged losses.
const MIXED_LOSS_TOL: f64 = 0.02;

/// Every forward output of fixture `set` at `precision` (every attention fused, as
/// `deberta forward` runs) and the fixture's inputs.
fn outputs(set: &str, precision: Precision) -> (TensorMap, TensorMap) {
    let backend = CpuBackend::new();
    fixture_forward(&backend, (set, set), AttentionProbs::FirstLayer, precision)
}

/// Checks every output of every fixture at `precision` against f32 (relative bound `bound`).
fn stays_within_bound_of_f32(precision: Precision, bound: f64) {
    let p = precision.name();
    let mut failures = Vec::new();
    for set in MODEL_FIXTURES {
        let (reference, inputs) = outputs(set, Precision::F32);
        let (ours, _) = outputs(set, precision);
        let valid = ints(&inputs, "valid_mask");
        let shape = &inputs["input_ids"].shape;
        let (b, s) = (shape[0], shape[1]);
        for (name, tensor) in &reference {
            let (a, r) = (values(&ours, name), values(&reference, name));
            let (worst, scale) = if name == "rel_pos" {
                (max_abs_diff(&a, &r, |_| true), 1.0)
            } else if name.starts_with("attentions.") {
                // [B, H, S, S]: rows of valid queries; probabilities are their own scale.
                let heads = tensor.shape[1];
                let keep = |i: usize| valid[(i / (heads * s * s)) * s + (i / s) % s] != 0;
                (max_abs_diff(&a, &r, keep), 1.0)
            } else {
                let row = r.len() / (b * s);
                let keep = |i: usize| valid[i / row] != 0;
                let scale = (0..r.len())
                    .filter(|&i| keep(i))
                    .fold(0.0f64, |m, i| m.max(r[i].abs()));
                (max_abs_diff(&a, &r, keep), scale)
            };
            let relative = worst / scale.max(f64::MIN_POSITIVE);
            println!(
                "{set:>9} {name:<20} max |{p} - f32| {worst:.3e} = {relative:.3e} x max |f32| ({scale:.3})"
            );
            if name == "rel_pos" {
                if worst != 0.0 {
                    failures.push(format!("{set}/{name}: relative positions differ"));
                }
            } else if relative > bound {
                failures.push(format!("{set}/{name}: {relative:.3e} > {bound:.0e}"));
            } else if worst == 0.0
                && !matches!(name.as_str(), "embedding_output" | "hidden_states.0")
            {
                failures.push(format!(
                    "{set}/{name}: identical to f32 ({p} path not taken?)"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bf16_forward_stays_within_its_bound_of_f32_on_every_fixture() {
    stays_within_bound_of_f32(Precision::Bf16, BF16_REL);
}

#[test]
fn int8_forward_stays_within_its_bound_of_f32_on_every_fixture() {
    stays_within_bound_of_f32(Precision::Int8, INT8_REL);
}

#[test]
fn cli_takes_the_precision_on_the_cpu_and_refuses_it_elsewhere() {
    let model = fixture("tiny");
    let model = model.to_str().unwrap();
    let run = deberta(&[
        "forward",
        "--model",
        model,
        "--ids",
        "1,5,9",
        "--precision",
        "bf16",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("last_hidden_state"), "{}", run.stdout);
    let bench = deberta(&[
        "bench",
        "forward",
        "--shape",
        "nano",
        "--seq",
        "8",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--precision",
        "bf16",
        "--json",
    ]);
    assert_eq!(bench.code, Some(0), "{}", bench.stderr);
    let json: serde_json::Value =
        serde_json::from_str(bench.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(json["precision"], "bf16");
    assert!(json["kernel"].is_string(), "{json}");
    let gpu = deberta(&[
        "forward",
        "--model",
        model,
        "--ids",
        "1,5,9",
        "--precision",
        "bf16",
        "--backend",
        "wgpu",
    ]);
    assert_one_line_error(&gpu, "--precision bf16 runs on the CPU backend only");
    let unknown = deberta(&[
        "forward",
        "--model",
        model,
        "--ids",
        "1",
        "--precision",
        "fp8",
    ]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
}

#[test]
fn bf16_mixed_pretraining_follows_the_f32_loss_curve() {
    let run = |precision: &str| {
        let out = temp_dir(&format!("mixed-{precision}"));
        let out_arg = out.to_str().unwrap();
        let run = deberta(&[
            "pretrain",
            "--steps",
            "100",
            "--eval-every",
            "50",
            "--save-every",
            "100",
            "--precision",
            precision,
            "--out",
            out_arg,
        ]);
        assert_eq!(run.code, Some(0), "{precision}: {}", run.stderr);
        deterministic_rows(&out)
    };
    let (f32_rows, mixed_rows) = (run("f32"), run("bf16-mixed"));
    assert_eq!(f32_rows.len(), mixed_rows.len());
    let (mut worst, mut differs, mut compared) = (0.0f64, false, 0);
    for (a, b) in f32_rows.iter().zip(&mixed_rows) {
        assert_eq!(a["step"], b["step"]);
        for key in ["loss_mlm", "loss_rtd", "eval_loss_mlm"] {
            let (Some(x), Some(y)) = (a.get(key), b.get(key)) else {
                continue;
            };
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let diff = (x - y).abs();
            assert!(
                diff <= MIXED_LOSS_TOL,
                "step {}: {key} {y} (bf16-mixed) vs {x} (f32)",
                a["step"]
            );
            worst = worst.max(diff);
            differs |= x != y;
            compared += 1;
        }
    }
    println!("bf16-mixed vs f32 over 100 steps: worst |loss difference| {worst:.2e} nats");
    assert!(compared >= 200, "only {compared} losses compared");
    assert!(
        differs,
        "bf16-mixed gave the f32 losses bit for bit: the bf16 path did not run"
    );
    assert_eq!(mixed_rows.last().unwrap()["step"], 100);
}

#[test]
fn training_precision_is_refused_where_it_does_not_apply() {
    let wgpu_out = temp_dir("mixed-wgpu");
    let gpu = deberta(&[
        "pretrain",
        "--steps",
        "1",
        "--precision",
        "bf16-mixed",
        "--backend",
        "wgpu",
        "--out",
        wgpu_out.to_str().unwrap(),
    ]);
    assert_one_line_error(&gpu, "--precision bf16-mixed runs on the CPU backend only");
    let inference_only = deberta(&["bench", "step", "--precision", "int8"]);
    assert_eq!(inference_only.code, Some(2), "{}", inference_only.stderr);
    let training_only = deberta(&[
        "forward",
        "--model",
        fixture("tiny").to_str().unwrap(),
        "--ids",
        "1",
        "--precision",
        "bf16-mixed",
    ]);
    assert_eq!(training_only.code, Some(2), "{}", training_only.stderr);
    let bench = deberta(&[
        "bench",
        "step",
        "--shape",
        "nano",
        "--seq",
        "32",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--precision",
        "bf16-mixed",
        "--json",
    ]);
    assert_eq!(bench.code, Some(0), "{}", bench.stderr);
    let json: serde_json::Value =
        serde_json::from_str(bench.stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(json["precision"], "bf16-mixed");
}

/// An inference session holds one format of each `Linear` weight: the packed copy (f32 too,
/// where the CPU has FMA), its f32 tensor freed, at every precision.
#[test]
fn packing_for_inference_keeps_one_format_of_each_linear_weight() {
    let backend = CpuBackend::new();
    let loaded = load_model_dir(&fixture("tiny")).unwrap();
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let mut params = loaded.upload(&backend).unwrap();
        params.pack(&backend, &loaded.layout, precision).unwrap();
        let packs = precision != Precision::F32 || backend.packs_f32_weights();
        assert!(!loaded.layout.linear_weights().is_empty());
        for &id in loaded.layout.linear_weights() {
            let name = &loaded.layout.spec(id).name;
            let packed = params.packed(id);
            assert_eq!(packed.is_some(), packs, "{precision:?} {name}: packed copy");
            assert_eq!(
                params.get(id).is_empty(),
                packs,
                "{precision:?} {name}: f32 tensor"
            );
            if let Some(packed) = packed {
                assert_eq!(packed.precision(), precision, "{precision:?} {name}");
            }
        }
    }
}
