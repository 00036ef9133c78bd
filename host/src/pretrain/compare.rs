//! `deberta compare-sharing`: the three embedding-sharing modes of SPEC §7 — GDES, ES and
//! NES — trained with identical data, seed and budget (one tokenizer, one set of options; only
//! `sharing` differs), then compared on their final held-out figures, their evaluation curves
//! and the word-embedding analysis of the DeBERTa-v3 paper (§5: the average cosine similarity
//! of word embeddings, which MLM pulls together and RTD pushes apart — the "tug-of-war" GDES
//! is meant to end).
//!
//! The runs are ordinary `deberta pretrain` runs in `DIR/gdes`, `DIR/es` and `DIR/nes`; the
//! comparison is `DIR/comparison.md`, `DIR/comparison.json` and `DIR/comparison.png`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::metrics::{number, read_rows};
use super::options::{PretrainFlags, PretrainOptions};
use super::{PretrainRequest, interruption_flag, plot, run_pretraining, tokenizer};
use crate::checkpoint::read_tensor_file;
use crate::data::{Corpus, Dataset, TokenCache};
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// The sharing modes compared, in the order they are trained.
pub const MODES: [&str; 3] = ["gdes", "es", "nes"];

/// Size of the token sample of the embedding analysis: the most frequent non-special token
/// ids of the training split (all of them when there are fewer).
pub const EMBEDDING_SAMPLE: usize = 1000;

/// The Hugging Face name of the word-embedding table in both exported models (the
/// discriminator's holds its effective table: `E_G + E_Δ` under GDES).
pub const WORD_EMBEDDINGS: &str = "deberta.embeddings.word_embeddings.weight";

/// The held-out figures of the final evaluation compared per mode: `metrics.jsonl` keys and
/// what the table calls them.
pub const EVAL_FIGURES: [(&str, &str); 6] = [
    ("eval_loss_mlm", "held-out MLM loss"),
    ("eval_mlm_accuracy", "held-out MLM accuracy"),
    ("eval_loss_rtd", "held-out RTD loss"),
    ("eval_rtd_accuracy", "held-out RTD accuracy"),
    ("eval_rtd_recall", "held-out RTD recall (replaced tokens)"),
    ("eval_rtd_auc", "held-out RTD AUC"),
];

/// What `deberta compare-sharing` was asked to do.
pub struct CompareRequest {
    /// Options of the three runs (command line over `--config`); `sharing` is set per run.
    pub flags: PretrainFlags,
    /// `--out` (default `runs/compare-<preset>-<seed>`).
    pub out: Option<PathBuf>,
    /// Whether the runs draw progress bars.
    pub progress: bool,
}

/// The mode as the table names it.
fn title(mode: &str) -> String {
    mode.to_uppercase()
}

/// The discriminator's word embeddings under `mode`.
fn discriminator_table(mode: &str) -> &'static str {
    match mode {
        "gdes" => "E_G + E_Δ",
        "es" => "E_G (the shared table)",
        _ => "E_D (its own table)",
    }
}

/// Cosine similarity of two vectors in `f64`; 0 when either is zero. Identical vectors give
/// exactly 1.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        dot / (aa * bb).sqrt()
    }
}

/// Mean cosine similarity over all unordered pairs of distinct rows (zero rows count as
/// cosine 0); `None` for fewer than two rows. Computed in O(n·d) from the sum `S` of the
/// normalised rows `u_i`: `Σ_{i≠j} u_i·u_j = |S|² − Σ|u_i|²`.
pub fn mean_pairwise_cosine(rows: &[&[f32]]) -> Option<f64> {
    let n = rows.len();
    let dim = rows.first()?.len();
    if n < 2 {
        return None;
    }
    let mut sum = vec![0.0f64; dim];
    let mut self_terms = 0.0f64;
    for row in rows {
        let norm = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            continue;
        }
        let mut squared = 0.0;
        for (s, &x) in sum.iter_mut().zip(row.iter()) {
            let u = f64::from(x) / norm;
            *s += u;
            squared += u * u;
        }
        self_terms += squared;
    }
    let total = sum.iter().map(|s| s * s).sum::<f64>();
    Some((total - self_terms) / (n * (n - 1)) as f64)
}

/// Mean over `i` of `cosine(a[i], b[i])`; `None` when empty or of different lengths.
pub fn mean_paired_cosine(a: &[&[f32]], b: &[&[f32]]) -> Option<f64> {
    (!a.is_empty() && a.len() == b.len())
        .then(|| a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / a.len() as f64)
}

/// The `limit` most frequent non-special token ids of the training split of `dataset`, most
/// frequent first (ties: the smaller id first).
pub fn frequent_tokens(dataset: &Dataset, limit: usize) -> Result<Vec<u32>> {
    let special = dataset.special();
    let len = dataset.max_seq_len();
    let (mut ids, mut mask) = (vec![0i64; len], vec![0i64; len]);
    let mut counts: HashMap<u32, u64> = HashMap::new();
    for rank in 0..dataset.train_len() {
        let used = dataset.read_sequence(dataset.train_index(rank), &mut ids, &mut mask)?;
        for &id in &ids[..used] {
            if let Ok(id) = u32::try_from(id)
                && !special.contains(id)
            {
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(u32, u64)> = counts.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(ranked.into_iter().take(limit).map(|(id, _)| id).collect())
}

/// The rows `ids` of the word-embedding table of the model file `path`.
fn embedding_rows<'a>(table: &'a HostTensor, ids: &[u32], path: &Path) -> Result<Vec<&'a [f32]>> {
    let bad = |reason: String| Error::BadTensor {
        path: path.to_path_buf(),
        name: WORD_EMBEDDINGS.into(),
        reason,
    };
    let values = table
        .as_float()
        .ok_or_else(|| bad("an integer tensor".into()))?;
    let [rows, dim] = table.shape[..] else {
        return Err(bad(format!(
            "shape {:?}, expected [vocab, dim]",
            table.shape
        )));
    };
    if dim == 0 || rows.checked_mul(dim) != Some(values.len()) {
        return Err(bad(format!(
            "shape {:?} does not hold its data",
            table.shape
        )));
    }
    ids.iter()
        .map(|&id| match id as usize {
            row if row < rows => Ok(&values[row * dim..(row + 1) * dim]),
            _ => Err(bad(format!("token id {id} is outside its {rows} rows"))),
        })
        .collect()
}

/// Cosine similarities of one run's word embeddings over the token sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmbeddingSimilarity {
    /// Mean pairwise cosine among the generator's rows (`E_G`).
    pub generator: f64,
    /// Mean pairwise cosine among the discriminator's effective rows (`E_G + E_Δ` under
    /// GDES, `E_G` under ES, `E_D` under NES).
    pub discriminator: f64,
    /// Mean cosine of a token's generator row and its discriminator row.
    pub generator_discriminator: f64,
}

/// The embedding analysis of the run in `run_dir`, read from its exported
/// `generator/model.safetensors` and `discriminator/model.safetensors`.
pub fn embedding_similarity(run_dir: &Path, ids: &[u32]) -> Result<EmbeddingSimilarity> {
    let read = |part: &str| -> Result<(PathBuf, HostTensor)> {
        let path = run_dir.join(part).join("model.safetensors");
        let table = read_tensor_file(&path)?
            .remove(WORD_EMBEDDINGS)
            .ok_or_else(|| Error::MissingTensors {
                path: path.clone(),
                names: vec![WORD_EMBEDDINGS.into()],
            })?;
        Ok((path, table))
    };
    let (gen_path, gen_table) = read("generator")?;
    let (disc_path, disc_table) = read("discriminator")?;
    if gen_table.shape != disc_table.shape {
        return Err(Error::BadTensor {
            path: disc_path,
            name: WORD_EMBEDDINGS.into(),
            reason: format!(
                "shape {:?} differs from the generator's {:?}",
                disc_table.shape, gen_table.shape
            ),
        });
    }
    let generator = embedding_rows(&gen_table, ids, &gen_path)?;
    let discriminator = embedding_rows(&disc_table, ids, &disc_path)?;
    let too_few = || Error::Usage("the embedding analysis needs at least two tokens".into());
    Ok(EmbeddingSimilarity {
        generator: mean_pairwise_cosine(&generator).ok_or_else(too_few)?,
        discriminator: mean_pairwise_cosine(&discriminator).ok_or_else(too_few)?,
        generator_discriminator: mean_paired_cosine(&generator, &discriminator)
            .ok_or_else(too_few)?,
    })
}

/// What one mode's run produced.
struct ModeResult {
    mode: &'static str,
    run_dir: PathBuf,
    wall_s: f64,
    rows: Vec<Map<String, Value>>,
    final_eval: Map<String, Value>,
    embeddings: EmbeddingSimilarity,
}

impl ModeResult {
    /// `comparison.json`'s object of this mode: every compared figure under a flat key.
    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("run_dir".into(), json!(self.run_dir));
        out.insert(
            "discriminator_embeddings".into(),
            json!(discriminator_table(self.mode)),
        );
        out.insert(
            "eval_step".into(),
            self.final_eval.get("step").cloned().unwrap_or(Value::Null),
        );
        for (key, _) in EVAL_FIGURES {
            out.insert(
                key.into(),
                self.final_eval.get(key).cloned().unwrap_or(Value::Null),
            );
        }
        for (key, value) in self.cosines() {
            out.insert(key.into(), number(Some(value)));
        }
        out.insert("wall_s".into(), number(Some(self.wall_s)));
        Value::Object(out)
    }

    /// The embedding figures under their `comparison.json` keys.
    fn cosines(&self) -> [(&'static str, f64); 3] {
        [
            ("embedding_cosine_generator", self.embeddings.generator),
            (
                "embedding_cosine_discriminator",
                self.embeddings.discriminator,
            ),
            (
                "embedding_cosine_generator_discriminator",
                self.embeddings.generator_discriminator,
            ),
        ]
    }
}

/// The last held-out evaluation row of a run.
fn final_eval(rows: &[Map<String, Value>], path: &Path) -> Result<Map<String, Value>> {
    rows.iter()
        .rev()
        .find(|r| r.contains_key("eval_mlm_accuracy"))
        .cloned()
        .ok_or_else(|| Error::format(path, "no held-out evaluation row"))
}

/// `comparison.md`: what was run, then one row per figure and one column per mode.
fn markdown(
    options: &PretrainOptions,
    vocab: usize,
    sample: usize,
    results: &[ModeResult],
) -> String {
    let format = |value: Option<f64>, decimals: usize| {
        value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
    };
    let mut md = String::from("# Embedding sharing: GDES, ES and NES\n\n");
    md.push_str(&format!(
        "`deberta compare-sharing`: three `{}` runs of {} steps (batch {}×{} tokens, seed {}, \
         vocabulary {vocab}, corpus {}) with identical data, seed, tokenizer and options; only \
         the embedding sharing differs. Held-out figures of the final evaluation (step {}).\n\n",
        options.preset,
        options.steps,
        options.batch_size,
        options.max_seq_len,
        options.seed,
        options
            .corpus
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", "),
        options.steps,
    ));
    md.push_str(&if options.schedule == "joint" {
        format!(
            "Schedule: joint — one loss L_MLM + λ·L_RTD (λ = {}) and one optimizer, so that \
             under ES the shared table receives both gradients (ELECTRA's sharing, the \
             \"tug-of-war\"); under GDES the stop-gradient leaves E_G to the MLM loss.\n\n",
            options.rtd_weight
        )
    } else {
        "Schedule: decoupled — note that ES's discriminator then reads the generator's table \
         but its RTD gradient does not train it (SPEC §7): the three generators train \
         identically. `--schedule joint` (the comparison's default) trains ELECTRA's ES.\n\n"
            .to_string()
    });
    md.push('|');
    for r in results {
        md.push_str(&format!(" | {}", title(r.mode)));
    }
    md.push_str(" |\n|---");
    md.push_str(&"|---:".repeat(results.len()));
    md.push_str("|\n");
    let mut row = |label: &str, cells: Vec<String>| {
        md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    };
    for (key, label) in EVAL_FIGURES {
        row(
            label,
            results
                .iter()
                .map(|r| format(r.final_eval.get(key).and_then(Value::as_f64), 4))
                .collect(),
        );
    }
    let embedding_labels = [
        "mean pairwise cosine, generator word embeddings (E_G)",
        "mean pairwise cosine, discriminator word embeddings (GDES: E_G + E_Δ, ES: E_G, NES: E_D)",
        "mean cosine of a token's generator and discriminator embeddings",
    ];
    for (i, label) in embedding_labels.into_iter().enumerate() {
        row(
            label,
            results
                .iter()
                .map(|r| format(Some(r.cosines()[i].1), 4))
                .collect(),
        );
    }
    row(
        "wall time, s (tokenization, training, evaluation, checkpoints)",
        results.iter().map(|r| format(Some(r.wall_s), 1)).collect(),
    );
    md.push_str(&format!(
        "\nCosines over the {sample} most frequent non-special token ids of the training split \
         (at most {EMBEDDING_SAMPLE}), read from each run's exported `generator/` and \
         `discriminator/` `model.safetensors`. MLM pulls the embeddings of related tokens \
         together (a high pairwise cosine), RTD pushes them apart; under ES both losses train \
         one table, so the generator and the discriminator see the same embeddings (cosine 1 \
         between them).\n"
    ));
    md
}

/// Trains the three modes and writes the comparison; returns `comparison.md`'s path.
pub fn run_comparison(request: CompareRequest) -> Result<PathBuf> {
    let mut flags = request.flags;
    // ES differs from GDES only where the RTD loss reaches the shared table: under the
    // decoupled schedule the discriminator's optimizer does not own E_G (SPEC §7), so ES's
    // generator trains exactly as GDES's. The comparison therefore trains with the joint loss
    // L_MLM + λ·L_RTD (ELECTRA's ES) unless a schedule is given.
    if flags.schedule.is_none() {
        flags.schedule = Some("joint".into());
    }
    // Set per run below; one from a --config file does not apply.
    flags.sharing = None;
    let preset = flags.preset.clone().unwrap_or_else(|| "nano".into());
    let mut options = flags.clone().apply(PretrainOptions::preset(&preset)?);
    options.validate()?;
    let dir = request.out.unwrap_or_else(|| {
        Path::new("runs").join(format!("compare-{}-{}", options.preset, options.seed))
    });
    for mode in MODES {
        if dir.join(mode).join("state").exists() {
            return Err(Error::Usage(format!(
                "{} already holds a run: choose another --out",
                dir.join(mode).display()
            )));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // One tokenizer for the three runs, so that their vocabularies are identical.
    let corpus = Corpus::open(&options.corpus, options.lossy)?;
    let (tokenizer, tokenizer_path) = tokenizer(&options, &dir, false, &corpus, None)?;
    flags.tokenizer = Some(tokenizer_path);
    options.tokenizer = flags.tokenizer.clone();
    eprintln!(
        "compare-sharing: GDES, ES and NES, {} steps each with the {} schedule, in {}",
        options.steps,
        options.schedule,
        dir.display()
    );
    let interrupted = interruption_flag();
    let mut runs = Vec::new();
    for (i, mode) in MODES.into_iter().enumerate() {
        let run_dir = dir.join(mode);
        eprintln!(
            "compare-sharing: training {} ({}/{}) in {}",
            title(mode),
            i + 1,
            MODES.len(),
            run_dir.display()
        );
        let started = Instant::now();
        run_pretraining(PretrainRequest {
            flags: PretrainFlags {
                sharing: Some(mode.into()),
                ..flags.clone()
            },
            out: Some(run_dir.clone()),
            resume: None,
            stop_after: None,
            progress: request.progress,
        })
        .map_err(|e| Error::context(format!("sharing mode {mode}"), e))?;
        if interrupted.load(Ordering::SeqCst) {
            return Err(Error::Interrupted(format!(
                "{} stopped with a checkpoint in {}; the comparison was not written",
                title(mode),
                run_dir.display()
            )));
        }
        runs.push((mode, run_dir, started.elapsed().as_secs_f64()));
    }
    let cache = TokenCache::open(&dir.join(MODES[0]).join("data"))?;
    let dataset = Dataset::new(
        cache,
        tokenizer.special(),
        options.max_seq_len,
        options.seed,
    )?;
    let sample = frequent_tokens(&dataset, EMBEDDING_SAMPLE)?;
    let mut results = Vec::new();
    for (mode, run_dir, wall_s) in runs {
        let context = |e| Error::context(format!("sharing mode {mode}"), e);
        let metrics = run_dir.join("metrics.jsonl");
        let rows = read_rows(&metrics).map_err(context)?;
        let final_eval = final_eval(&rows, &metrics).map_err(context)?;
        let embeddings = embedding_similarity(&run_dir, &sample).map_err(context)?;
        results.push(ModeResult {
            mode,
            run_dir,
            wall_s,
            rows,
            final_eval,
            embeddings,
        });
    }
    let vocab = tokenizer.vocab_size();
    let mut shared = serde_json::to_value(&options)
        .map_err(|e| Error::format(dir.join("comparison.json"), e.to_string()))?;
    if let Some(map) = shared.as_object_mut() {
        map.remove("sharing");
    }
    let json = json!({
        "options": shared,
        "vocab_size": vocab,
        "embedding_sample": {
            "tokens": sample.len(),
            "selection": format!(
                "the {} most frequent non-special token ids of the training split (at most {EMBEDDING_SAMPLE})",
                sample.len()
            ),
        },
        "modes": results
            .iter()
            .map(|r| (r.mode.to_string(), r.to_json()))
            .collect::<Map<String, Value>>(),
    });
    let json_path = dir.join("comparison.json");
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Error::format(&json_path, e.to_string()))?;
    crate::fs_util::write_atomic(&json_path, text.as_bytes())?;
    let md = markdown(&options, vocab, sample.len(), &results);
    let md_path = dir.join("comparison.md");
    crate::fs_util::write_atomic(&md_path, md.as_bytes())?;
    let png_path = dir.join("comparison.png");
    let curves: Vec<(String, Vec<Map<String, Value>>)> = results
        .into_iter()
        .map(|r| (title(r.mode), r.rows))
        .collect();
    plot::plot_comparison(&png_path, &curves)?;
    println!("\n{md}");
    println!(
        "comparison: {}, {}, {}",
        md_path.display(),
        json_path.display(),
        png_path.display()
    );
    Ok(md_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair, the slow way.
    fn brute_force(rows: &[&[f32]]) -> f64 {
        let mut sum = 0.0;
        let mut pairs = 0;
        for i in 0..rows.len() {
            for j in 0..rows.len() {
                if i != j {
                    sum += cosine(rows[i], rows[j]);
                    pairs += 1;
                }
            }
        }
        sum / f64::from(pairs)
    }

    #[test]
    fn cosines_of_hand_made_vectors() {
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
        assert_eq!(cosine(&[1.0, 1.0], &[-3.0, -3.0]), -1.0);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-15);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
        // A vector with itself: exactly 1, whatever its values.
        let v = [0.013f32, -0.4, 7.25, 1e-3, 0.3];
        assert_eq!(cosine(&v, &v), 1.0);

        // Three orthogonal unit directions: every pair 0; two equal and one opposite:
        // pairs (a,a)=1, (a,−a)=−1 twice → mean over the 3 pairs −1/3.
        let (x, y, z) = ([1.0f32, 0.0, 0.0], [0.0f32, 5.0, 0.0], [0.0f32, 0.0, 0.1]);
        assert_eq!(mean_pairwise_cosine(&[&x, &y, &z]), Some(0.0));
        let minus = [-2.0f32, 0.0, 0.0];
        let mean = mean_pairwise_cosine(&[&x, &x, &minus]).unwrap();
        assert!((mean + 1.0 / 3.0).abs() < 1e-15, "{mean}");
        assert_eq!(mean_pairwise_cosine(&[&x]), None);
        assert_eq!(mean_pairwise_cosine(&[]), None);
        // A zero row counts as cosine 0 with everything.
        let zero = [0.0f32; 3];
        assert_eq!(mean_pairwise_cosine(&[&x, &x, &zero]), Some(1.0 / 3.0));

        // The O(n·d) identity agrees with all pairs on arbitrary rows.
        let table: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                (0..16)
                    .map(|j| ((i * 31 + j * 17) % 23) as f32 / 7.0 - 1.3)
                    .collect()
            })
            .collect();
        let rows: Vec<&[f32]> = table.iter().map(Vec::as_slice).collect();
        let fast = mean_pairwise_cosine(&rows).unwrap();
        assert!((fast - brute_force(&rows)).abs() < 1e-12, "{fast}");

        assert_eq!(mean_paired_cosine(&rows, &rows), Some(1.0));
        assert_eq!(mean_paired_cosine(&[&x, &x], &[&y, &minus]), Some(-0.5));
        assert_eq!(mean_paired_cosine(&[&x], &[]), None);
    }

    #[test]
    fn embedding_rows_reject_bad_tables() {
        let path = Path::new("m.safetensors");
        let table = HostTensor::float(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let rows = embedding_rows(&table, &[2, 0], path).unwrap();
        assert_eq!(rows, [&[5.0f32, 6.0][..], &[1.0, 2.0][..]]);
        assert!(embedding_rows(&table, &[3], path).is_err());
        let flat = HostTensor::float(vec![6], vec![0.0; 6]);
        assert!(embedding_rows(&flat, &[0], path).is_err());
        let short = HostTensor::float(vec![4, 2], vec![0.0; 6]);
        assert!(embedding_rows(&short, &[0], path).is_err());
    }
}
