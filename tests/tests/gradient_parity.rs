//! Gradient parity with PyTorch/transformers: `grads.safetensors` of every model fixture
//! (d mlm_loss / d param) and the RTD pair fixtures `rtd/{ES,NES,GDES}.safetensors` and
//! `rtd/GDES-EMD.safetensors` — every tensor within `1e-5 + 1e-4·|ref|` element-wise. The worst
//! tensor of each fixture is printed (`--nocapture`).

use std::path::PathBuf;

use deberta_core::CpuBackend;
use deberta_core::train::Sharing;
use deberta_host::checkpoint::TensorMap;
use deberta_host::gradients::{StepRequest, mlm_gradients, pair_gradients};
use deberta_tests::{MODEL_FIXTURES, fixture, load, values};

const ABS: f64 = 1e-5;
const REL: f64 = 1e-4;

/// For every reference tensor: the largest `|a − r| / (ABS + REL·|r|)` (≤ 1 passes) and the
/// largest absolute error. Returns failures and the worst tensor.
fn compare(
    label: &str,
    ours: &TensorMap,
    reference: &TensorMap,
    skip: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut worst = (String::new(), 0.0f64, 0.0f64);
    for (name, tensor) in reference {
        if skip(name) {
            continue;
        }
        let Some(mine) = ours.get(name) else {
            failures.push(format!("{label}: `{name}` missing from our output"));
            continue;
        };
        if mine.shape != tensor.shape {
            failures.push(format!(
                "{label}: `{name}` shape {:?} vs {:?}",
                mine.shape, tensor.shape
            ));
            continue;
        }
        let (a, r) = (values(ours, name), values(reference, name));
        let (mut ratio, mut abs) = (0.0f64, 0.0f64);
        for (x, y) in a.iter().zip(&r) {
            let d = (x - y).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            ratio = ratio.max(d / (ABS + REL * y.abs()));
            abs = abs.max(d);
        }
        if ratio > 1.0 {
            failures.push(format!(
                "{label}: `{name}` off by {abs:.3e} ({ratio:.2}x the tolerance)"
            ));
        }
        if ratio >= worst.1 {
            worst = (name.clone(), ratio, abs);
        }
    }
    println!(
        "{label:<22} worst tensor {:<70} max abs err {:.3e} ({:.3}x tolerance)",
        worst.0, worst.2, worst.1
    );
    failures
}

#[test]
fn mlm_gradients_match_transformers() {
    let mut failures = Vec::new();
    for set in MODEL_FIXTURES {
        let dir = fixture(set);
        let ours = mlm_gradients(&CpuBackend::new(), &dir, &dir.join("inputs.safetensors"))
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        let mut reference = load(&dir.join("grads.safetensors"));
        let outputs = load(&dir.join("outputs.safetensors"));
        reference.insert("mlm_loss".into(), outputs["mlm_loss"].clone());
        failures.extend(compare(&format!("{set}/grads"), &ours, &reference, |_| {
            false
        }));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn step(set: &str, sharing: Sharing, emd: bool) -> TensorMap {
    let rtd = fixture(set).join("rtd");
    let mut weights: Vec<PathBuf> = vec![rtd.join("weights.safetensors")];
    if emd {
        weights.push(rtd.join("weights-emd.safetensors"));
    }
    pair_gradients(
        &CpuBackend::new(),
        &StepRequest {
            weights,
            generator_config: rtd.join("gen_config.json"),
            discriminator_config: rtd.join("disc_config.json"),
            batch: rtd.join("inputs.safetensors"),
            sharing,
            rtd_weight: 50.0,
            emd,
        },
    )
    .unwrap_or_else(|e| panic!("{set} {sharing:?}: {e}"))
}

#[test]
fn pair_gradients_match_pytorch_in_every_sharing_mode() {
    let mut failures = Vec::new();
    for set in MODEL_FIXTURES {
        for (mode, sharing) in [
            ("ES", Sharing::Es),
            ("NES", Sharing::Nes),
            ("GDES", Sharing::Gdes),
        ] {
            let ours = step(set, sharing, false);
            let reference = load(&fixture(set).join("rtd").join(format!("{mode}.safetensors")));
            failures.extend(compare(&format!("{set}/{mode}"), &ours, &reference, |n| {
                n.starts_with("grad_split.")
            }));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gdes_with_the_enhanced_mask_decoder_matches_pytorch() {
    let mut failures = Vec::new();
    for set in ["tiny", "long"] {
        let ours = step(set, Sharing::Gdes, true);
        let reference = load(&fixture(set).join("rtd").join("GDES-EMD.safetensors"));
        failures.extend(compare(
            &format!("{set}/GDES-EMD"),
            &ours,
            &reference,
            |n| n.starts_with("grad_split."),
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
