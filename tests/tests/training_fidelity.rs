//! Multi-step training fidelity against PyTorch: every trajectory in `fixtures/<set>/train/`
//! (`<MODE>-<optimizer>-<schedule>.safetensors`) is rerun through `deberta step --steps N` with
//! the flags of `fixtures/tiny/train/README.md`, and every step's `loss_mlm`/`loss_rtd` must be
//! within 1e-4 relative and every final parameter within `3e-5 + 1e-4·|ref|`. The worst figures
//! of each file are printed (`--nocapture`).

use std::path::Path;

use deberta_host::checkpoint::TensorMap;
use deberta_tests::{deberta, fixture, load, temp_dir, trajectory_failures, values};

/// The fixture sets that carry a `train/` folder.
const SETS: [&str; 3] = ["tiny", "v2style", "long"];

/// `(sharing, optimizer, schedule)` of a trajectory file, from its name.
fn flags_of(file: &Path) -> Option<(String, String, String)> {
    let stem = file.file_stem()?.to_str()?;
    let mut parts = stem.split('-');
    let (mode, optimizer, schedule) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !["GDES", "ES", "NES"].contains(&mode) {
        return None;
    }
    Some((
        mode.to_lowercase(),
        optimizer.to_string(),
        schedule.to_string(),
    ))
}

/// Runs one trajectory through the CLI and returns its output.
fn run(set: &str, sharing: &str, optimizer: &str, schedule: &str, steps: usize) -> TensorMap {
    let dir = fixture(set);
    let rtd = dir.join("rtd");
    let scratch = temp_dir(&format!("fidelity-{set}-{sharing}-{optimizer}-{schedule}"));
    let out = scratch.join("out.safetensors");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let args = [
        "step".to_string(),
        "--weights".into(),
        path(&rtd.join("weights.safetensors")),
        "--gen-config".into(),
        path(&rtd.join("gen_config.json")),
        "--disc-config".into(),
        path(&rtd.join("disc_config.json")),
        "--batch".into(),
        path(&dir.join("train").join("batches.safetensors")),
        "--sharing".into(),
        sharing.into(),
        "--rtd-weight".into(),
        "50".into(),
        "--emd".into(),
        "off".into(),
        "--steps".into(),
        steps.to_string(),
        "--schedule".into(),
        schedule.into(),
        "--optimizer".into(),
        optimizer.into(),
        "--lr".into(),
        "0.001".into(),
        "--warmup-steps".into(),
        "3".into(),
        "--weight-decay".into(),
        "0.01".into(),
        "--clip".into(),
        "1".into(),
        "--out".into(),
        path(&out),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = deberta(&args);
    assert_eq!(
        result.code,
        Some(0),
        "{set} {sharing} {optimizer} {schedule}: {}",
        result.stderr
    );
    load(&out)
}

#[test]
fn every_training_trajectory_matches_pytorch() {
    let mut failures = Vec::new();
    let mut files = 0;
    let mut combinations = std::collections::BTreeSet::new();
    for set in SETS {
        let train = fixture(set).join("train");
        let mut entries: Vec<_> = std::fs::read_dir(&train)
            .unwrap_or_else(|e| panic!("{}: {e}", train.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for file in entries {
            let Some((sharing, optimizer, schedule)) = flags_of(&file) else {
                continue;
            };
            let reference = load(&file);
            let steps = values(&reference, "loss_mlm").len();
            let ours = run(set, &sharing, &optimizer, &schedule, steps);
            let label = format!(
                "{set}/{}",
                file.file_stem().and_then(|s| s.to_str()).unwrap_or("?")
            );
            failures.extend(trajectory_failures(&label, &ours, &reference));
            if set == "tiny" {
                combinations.insert((sharing, optimizer, schedule));
            }
            files += 1;
        }
    }
    // Every sharing × optimizer × schedule combination on `tiny`, and some on other sets.
    assert_eq!(combinations.len(), 12, "tiny covers {combinations:?}");
    assert!(files > 12, "only {files} trajectory files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_learning_rate_follows_the_zero_based_schedule() {
    let ours = run("tiny", "gdes", "xadam", "decoupled", 12);
    let lr = values(&ours, "lr");
    // lr·warmup_linear(k, 12, 3/12): 0 at step 0, then k/3 of the peak, then 1 − k/12.
    for (k, &rate) in lr.iter().enumerate() {
        let x = k as f64 / 12.0;
        let factor = if x < 0.25 { x / 0.25 } else { 1.0 - x };
        assert!(
            (rate - 1e-3 * factor).abs() <= 1e-9,
            "step {k}: lr {rate} vs {}",
            1e-3 * factor
        );
    }
    assert_eq!(lr[0], 0.0);
    // With lr 0 nothing moved at step 0, so its losses are the one-step fixture's.
    let one_step = load(&fixture("tiny").join("rtd").join("GDES.safetensors"));
    for key in ["loss_mlm", "loss_rtd"] {
        let (a, r) = (values(&ours, key)[0], values(&one_step, key)[0]);
        assert!((a - r).abs() <= 1e-6 * r.abs(), "{key}: {a} vs {r}");
    }
    for key in ["grad_norm.generator", "grad_norm.discriminator"] {
        assert_eq!(values(&ours, key).len(), 12, "{key}");
    }
}
