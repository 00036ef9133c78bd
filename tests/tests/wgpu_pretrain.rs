//! `deberta pretrain --backend wgpu` against the CPU backend: ten `nano` steps (small batches,
//! so that Mesa's software rasteriser keeps up) draw the same masks, samples and dropout on
//! both backends, and every loss agrees within 1e-3 relative. Without a GPU adapter the test
//! fails under `CI=true` and is skipped (with a notice) otherwise.

use deberta_host::pretrain::metrics::read_rows;
use deberta_tests::{deberta, gpu_adapter_present, sonnets_corpus as corpus, temp_dir};

#[test]
fn ten_nano_steps_on_wgpu_match_the_cpu() {
    if !gpu_adapter_present() {
        return;
    }
    let dir = temp_dir("wgpu-pretrain");
    let corpus = corpus(&dir);
    let mut losses = Vec::new();
    for backend in ["cpu", "wgpu"] {
        let out = dir.join(backend);
        let run = deberta(&[
            "pretrain",
            "--corpus",
            &corpus,
            "--out",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--steps",
            "10",
            "--batch-size",
            "2",
            "--max-seq-len",
            "64",
            "--vocab-size",
            "2000",
            "--eval-every",
            "10",
            "--eval-batches",
            "1",
            "--save-every",
            "0",
            "--quiet",
        ]);
        assert_eq!(run.code, Some(0), "{backend}: {}", run.stderr);
        let rows = read_rows(&out.join("metrics.jsonl")).unwrap();
        let values: Vec<(String, f64)> = rows
            .iter()
            .flat_map(|row| {
                let step = row["step"].as_u64().unwrap();
                ["loss_mlm", "loss_rtd", "eval_loss_mlm", "eval_loss_rtd"]
                    .into_iter()
                    .filter_map(move |key| Some((format!("{key}@{step}"), row.get(key)?.as_f64()?)))
            })
            .collect();
        losses.push(values);
    }
    assert_eq!(losses[0].len(), losses[1].len());
    assert!(
        losses[0].len() >= 22,
        "expected 10 training rows and an evaluation"
    );
    let mut worst = 0.0f64;
    for ((key, cpu), (_, gpu)) in losses[0].iter().zip(&losses[1]) {
        let relative = (cpu - gpu).abs() / cpu.abs().max(1e-12);
        worst = worst.max(relative);
        assert!(relative <= 1e-3, "{key}: cpu {cpu} vs wgpu {gpu}");
    }
    println!("worst relative loss difference wgpu vs cpu over 10 steps: {worst:.2e}");
}
