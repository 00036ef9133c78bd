//! Model-level parity on the wgpu backend: the Hugging Face fixtures' forward outputs (within
//! 1e-4 on valid positions, the CPU suite's tolerance) with layer 0 unfused (for
//! `attentions.0`) and with every attention fused, their MLM gradients and one RTD pair's
//! joint gradient under GDES (within 1e-5 + 1e-4·|ref|), and a 12-step GDES training trajectory
//! (every loss within 1e-4 relative, every final parameter within 3e-5 + 1e-4·|ref|). The
//! helpers are generic over the backend and run the same code on the CPU as a control.

mod common;

use std::path::{Path, PathBuf};

use common::gpu;
use deberta_core::model::{AttentionProbs, BackwardContext, DeviceBatch, HostBatch, MlmLayout};
use deberta_core::train::{
    GeneratorBatch, MlmTargets, OptimizerKind, PairBatch, RtdPair, Schedule, Sharing, Workspace,
    mlm_step,
};
use deberta_core::{Backend, CpuBackend};
use deberta_host::checkpoint::{TensorMap, read_tensor_file};
use deberta_host::gradients::{StepRequest, Training, pair_trajectory};
use deberta_host::hf_config::read_config;
use deberta_host::inference::{Session, fetch};
use deberta_host::model_dir::{load_model_dir, take_weights};
use deberta_host::tensor::int_matrix;
use deberta_host::tensor::{HostTensor, TensorData};

const FIXTURES: [&str; 5] = ["tiny", "long", "c2p-only", "p2c-only", "v2style"];
const FORWARD_TOL: f64 = 1e-4;
const GRAD_ABS: f64 = 1e-5;
const GRAD_REL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn load(path: &Path) -> TensorMap {
    read_tensor_file(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn floats(map: &TensorMap, name: &str) -> Vec<f64> {
    match &map
        .get(name)
        .unwrap_or_else(|| panic!("`{name}` missing"))
        .data
    {
        TensorData::Float(v) => v.iter().map(|&x| f64::from(x)).collect(),
        TensorData::Int(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

fn ints(map: &TensorMap, name: &str) -> Vec<i64> {
    map[name]
        .as_int()
        .unwrap_or_else(|| panic!("`{name}` is not integer"))
        .to_vec()
}

/// Every forward output of `set` on `backend`, keyed like `outputs.safetensors` (without
/// `attentions.0` unless `probs` keeps layer 0's).
fn forward<B: Backend>(backend: B, set: &str, probs: AttentionProbs) -> (TensorMap, TensorMap) {
    let loaded = load_model_dir(&fixture(set)).unwrap_or_else(|e| panic!("{set}: {e}"));
    let inputs = load(&fixture(set).join("inputs.safetensors"));
    let (ids, mask) = (ints(&inputs, "input_ids"), ints(&inputs, "attention_mask"));
    let shape = inputs["input_ids"].shape.clone();
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch: shape[0],
        len: shape[1],
    };
    let session = Session::new(&backend, &loaded).unwrap_or_else(|e| panic!("{set}: {e}"));
    (
        session
            .outputs_with(&host, probs)
            .unwrap_or_else(|e| panic!("{set}: {e}")),
        inputs,
    )
}

/// The worst error of every reference output on the positions the CPU suite compares.
fn forward_errors(set: &str, ours: &TensorMap, inputs: &TensorMap) -> Vec<(String, f64)> {
    let reference = load(&fixture(set).join("outputs.safetensors"));
    let valid = ints(inputs, "valid_mask");
    let shape = &inputs["input_ids"].shape;
    let (b, s) = (shape[0], shape[1]);
    let mut report = Vec::new();
    for (name, tensor) in &reference {
        if name == "mlm_loss" || name == "rel_embeddings_normed" {
            continue;
        }
        if name.starts_with("attentions.") && !ours.contains_key(name) {
            continue;
        }
        let (a, r) = (floats(ours, name), floats(&reference, name));
        assert_eq!(a.len(), r.len(), "{set}/{name}");
        let keep = |i: usize| {
            if name.starts_with("attentions.") {
                let heads = tensor.shape[1];
                valid[(i / (heads * s * s)) * s + (i / s) % s] != 0
            } else if name == "rel_pos" {
                true
            } else {
                valid[i / (a.len() / (b * s))] != 0
            }
        };
        let worst = a
            .iter()
            .zip(&r)
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(_, (x, y))| {
                if (x - y).is_nan() {
                    f64::INFINITY
                } else {
                    (x - y).abs()
                }
            })
            .fold(0.0, f64::max);
        report.push((name.clone(), worst));
    }
    report
}

#[test]
fn every_fixture_forward_matches_transformers_on_the_gpu() {
    fixture_forwards(AttentionProbs::FirstLayer);
}

#[test]
fn every_fixture_forward_matches_transformers_with_every_attention_fused() {
    fixture_forwards(AttentionProbs::Discard);
}

fn fixture_forwards(probs: AttentionProbs) {
    let Some(gpu) = gpu() else { return };
    let mut failures = Vec::new();
    for set in FIXTURES {
        let (ours, inputs) = forward(gpu.clone(), set, probs);
        if probs.keeps(0) != ours.contains_key("attentions.0") {
            failures.push(format!("{set}: attentions.0 present iff layer 0 keeps it"));
        }
        for (name, worst) in forward_errors(set, &ours, &inputs) {
            println!("{set:>9} {probs:?} {name:<20} max abs err {worst:.3e}");
            let tol = if name == "rel_pos" { 0.0 } else { FORWARD_TOL };
            if worst > tol {
                failures.push(format!("{set}/{name}: {worst:.3e} > {tol:.0e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `d(mlm_loss)/dθ` of a fixture on `backend`, keyed by HF name, plus `mlm_loss`.
fn mlm_gradients<B: Backend>(backend: &B, set: &str) -> TensorMap {
    let loaded = load_model_dir(&fixture(set)).unwrap();
    let path = fixture(set).join("inputs.safetensors");
    let inputs = load(&path);
    let (ids, batch, len) = int_matrix(&inputs, "input_ids", &path).unwrap();
    let (mask, labels) = (ints(&inputs, "attention_mask"), ints(&inputs, "labels"));
    let params = loaded.upload(backend).unwrap();
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch,
        len,
    };
    let device = GeneratorBatch {
        batch: DeviceBatch::upload(backend, loaded.config(), &host).unwrap(),
        targets: MlmTargets::from_labels(backend, &labels, loaded.config().vocab_size).unwrap(),
    };
    let mut grads = loaded.layout.zeros(backend).unwrap();
    let mut ctx = BackwardContext::new(backend, &params, &mut grads);
    let loss = mlm_step(
        &loaded.model,
        &mut ctx,
        &device,
        None,
        1.0,
        &mut Workspace::new(),
        None,
    )
    .unwrap();
    let mut out = TensorMap::new();
    for (id, spec) in loaded.layout.iter() {
        out.insert(
            spec.name.clone(),
            fetch(backend, grads.get(id), spec.shape.clone()).unwrap(),
        );
    }
    out.insert("mlm_loss".into(), HostTensor::float(vec![1], vec![loss]));
    out
}

/// One joint MLM + λ·RTD gradient of the `tiny` pair under `sharing` on `backend` (λ = 50, no
/// dropout), keyed like `rtd/<MODE>.safetensors`.
fn pair_gradients<B: Backend>(backend: &B, sharing: Sharing) -> TensorMap {
    let rtd = fixture("tiny").join("rtd");
    let mut tensors = load(&rtd.join("weights.safetensors"));
    let gen_cfg = read_config(&rtd.join("gen_config.json")).unwrap();
    let disc_cfg = read_config(&rtd.join("disc_config.json")).unwrap();
    let pair = RtdPair::new(
        &gen_cfg.model,
        &disc_cfg.model,
        sharing,
        MlmLayout::LmPredictions,
        false,
    )
    .unwrap();
    for delta in [pair.word_delta, pair.position_delta].into_iter().flatten() {
        let spec = pair.layout.spec(delta);
        tensors
            .entry(spec.name.clone())
            .or_insert_with(|| HostTensor::float(spec.shape.clone(), vec![0.0; spec.numel()]));
    }
    let (weights, _) = take_weights(&pair.layout, tensors, &rtd).unwrap();
    let path = rtd.join("inputs.safetensors");
    let batch_tensors = load(&path);
    let (ids, batch, len) = int_matrix(&batch_tensors, "gen_input_ids", &path).unwrap();
    let mask = ints(&batch_tensors, "attention_mask");
    let labels = ints(&batch_tensors, "mlm_labels");
    let corrupted = ints(&batch_tensors, "corrupted_ids");
    let params = pair
        .layout
        .build(|id, _| backend.upload(&weights[id.index()]))
        .unwrap();
    let host = HostBatch {
        input_ids: &ids,
        attention_mask: &mask,
        token_type_ids: None,
        batch,
        len,
    };
    let device = PairBatch::upload(backend, &pair, &host, &corrupted, &labels).unwrap();
    let mut grads = pair.layout.zeros(backend).unwrap();
    let mut logits = vec![0.0f32; batch * len];
    let mut ctx = BackwardContext::new(backend, &params, &mut grads);
    let losses = pair
        .joint_gradient(&mut ctx, &device, 50.0, None, Some(&mut logits))
        .unwrap();
    let mut out = TensorMap::new();
    for (name, value) in [
        ("loss_mlm", losses.mlm),
        ("loss_rtd", losses.rtd),
        ("loss_total", losses.total),
    ] {
        out.insert(name.into(), HostTensor::float(vec![1], vec![value]));
    }
    out.insert(
        "rtd_logits".into(),
        HostTensor::float(vec![batch, len], logits),
    );
    for (id, spec) in pair.layout.iter() {
        out.insert(
            format!("grad.{}", spec.name),
            fetch(backend, grads.get(id), spec.shape.clone()).unwrap(),
        );
    }
    out
}

/// Failures of `ours` against `reference` at `|a − r| ≤ 1e-5 + 1e-4·|r|`; prints the worst.
fn gradient_failures(label: &str, ours: &TensorMap, reference: &TensorMap) -> Vec<String> {
    let mut failures = Vec::new();
    let mut worst = (String::new(), 0.0f64);
    for name in reference.keys().filter(|n| !n.starts_with("grad_split.")) {
        let Some(_) = ours.get(name) else {
            failures.push(format!("{label}: `{name}` missing"));
            continue;
        };
        let (a, r) = (floats(ours, name), floats(reference, name));
        let ratio = a
            .iter()
            .zip(&r)
            .map(|(x, y)| {
                let d = (x - y).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d / (GRAD_ABS + GRAD_REL * y.abs())
                }
            })
            .fold(0.0, f64::max);
        if ratio > 1.0 {
            failures.push(format!("{label}: `{name}` at {ratio:.2}x the tolerance"));
        }
        if ratio >= worst.1 {
            worst = (name.clone(), ratio);
        }
    }
    println!(
        "{label:<18} worst tensor {:<60} {:.3}x tolerance",
        worst.0, worst.1
    );
    failures
}

#[test]
fn mlm_gradients_match_transformers_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let mut failures = Vec::new();
    for set in FIXTURES {
        let mut reference = load(&fixture(set).join("grads.safetensors"));
        let outputs = load(&fixture(set).join("outputs.safetensors"));
        reference.insert("mlm_loss".into(), outputs["mlm_loss"].clone());
        failures.extend(gradient_failures(
            &format!("{set}/gpu"),
            &mlm_gradients(gpu, set),
            &reference,
        ));
    }
    // The helper itself, on the CPU, as a control.
    let mut reference = load(&fixture("tiny").join("grads.safetensors"));
    reference.insert(
        "mlm_loss".into(),
        load(&fixture("tiny").join("outputs.safetensors"))["mlm_loss"].clone(),
    );
    failures.extend(gradient_failures(
        "tiny/cpu",
        &mlm_gradients(&CpuBackend::new(), "tiny"),
        &reference,
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gdes_pair_gradient_matches_pytorch_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let reference = load(&fixture("tiny").join("rtd").join("GDES.safetensors"));
    let mut failures = gradient_failures(
        "tiny/GDES/gpu",
        &pair_gradients(gpu, Sharing::Gdes),
        &reference,
    );
    failures.extend(gradient_failures(
        "tiny/GDES/cpu",
        &pair_gradients(&CpuBackend::new(), Sharing::Gdes),
        &reference,
    ));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `deberta step --steps 12` of a `tiny/train/` trajectory on `backend`.
fn trajectory<B: Backend>(backend: &B, sharing: Sharing, training: Training) -> TensorMap {
    let dir = fixture("tiny");
    let rtd = dir.join("rtd");
    pair_trajectory(
        backend,
        &StepRequest {
            weights: vec![rtd.join("weights.safetensors")],
            generator_config: rtd.join("gen_config.json"),
            discriminator_config: rtd.join("disc_config.json"),
            batch: dir.join("train").join("batches.safetensors"),
            sharing,
            rtd_weight: 50.0,
            emd: false,
        },
        &training,
    )
    .unwrap()
}

/// Worst relative loss error over the steps and worst parameter error against a trajectory
/// file, as multiples of the CPU suite's tolerances (1e-4 relative; `3e-5 + 1e-4·|ref|`).
fn trajectory_errors(label: &str, ours: &TensorMap, reference: &TensorMap) -> (f64, f64) {
    let mut loss = 0.0f64;
    for key in ["loss_mlm", "loss_rtd"] {
        for (a, r) in floats(ours, key).iter().zip(floats(reference, key)) {
            let rel = (a - r).abs() / r.abs();
            loss = loss.max(if rel.is_nan() { f64::INFINITY } else { rel });
        }
    }
    let mut param = (0.0f64, 0.0f64, String::new());
    for name in reference.keys().filter(|n| n.starts_with("param.")) {
        for (a, r) in floats(ours, name).iter().zip(floats(reference, name)) {
            let d = (a - r).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            let ratio = d / (3e-5 + 1e-4 * r.abs());
            if ratio >= param.1 {
                param = (d, ratio, name.clone());
            }
        }
    }
    println!(
        "{label:<28} loss {loss:.2e} relative | param max abs err {:.2e} ({:.3}x tolerance) in {}",
        param.0, param.1, param.2
    );
    (loss / 1e-4, param.1)
}

#[test]
fn multi_step_gdes_training_matches_pytorch_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let reference = load(
        &fixture("tiny")
            .join("train")
            .join("GDES-xadam-decoupled.safetensors"),
    );
    let training = Training {
        steps: 12,
        schedule: Schedule::Decoupled,
        optimizer: OptimizerKind::XAdam,
        lr: 1e-3,
        warmup_steps: 3,
        weight_decay: 0.01,
        clip: Some(1.0),
    };
    let mut failures = Vec::new();
    for (label, ours) in [
        (
            "tiny/GDES-xadam-decoupled/gpu",
            trajectory(gpu, Sharing::Gdes, training),
        ),
        (
            "tiny/GDES-xadam-decoupled/cpu",
            trajectory(&CpuBackend::new(), Sharing::Gdes, training),
        ),
    ] {
        let (loss, param) = trajectory_errors(label, &ours, &reference);
        if loss > 1.0 || param > 1.0 {
            failures.push(format!(
                "{label}: losses at {loss:.2}x, parameters at {param:.2}x the tolerance"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
