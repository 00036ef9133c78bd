//! Evaluation on the held-out split: the generator's MLM loss and accuracy and the
//! discriminator's RTD loss, accuracy, precision, recall and AUC, in inference mode (no
//! dropout), with masks and samples drawn from fixed streams so that evaluations of different
//! steps see the same masked positions.

use deberta_core::Backend;
use deberta_core::model::{AttentionProbs, DeviceBatch, ForwardOptions, HostBatch, MlmRows};
use deberta_core::random::RandomStream;
use deberta_core::train::{MlmTargets, Trainer};
use serde_json::{Map, Value, json};

use super::baseline::UnigramReference;
use super::metrics::{number, rtd_stats};
use super::options::PretrainOptions;
use super::{EVAL_MASKING_STREAM, EVAL_SAMPLING_STREAM};
use crate::data::{Dataset, Masker};
use crate::error::{Error, Result};

fn model_error(what: &'static str) -> impl Fn(deberta_core::Error) -> Error {
    move |e| Error::model(what, e)
}

/// `(Σ cross-entropy, correct argmax)` of `logits` rows against `targets`.
fn cross_entropy(logits: &[f32], targets: &[i64], vocab: usize) -> (f64, usize) {
    let mut loss = 0.0f64;
    let mut correct = 0;
    for (row, &target) in logits.chunks_exact(vocab).zip(targets) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = f64::from(max)
            + row
                .iter()
                .map(|&v| f64::from(v - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - f64::from(row[target as usize]);
        let best = row
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
        correct += usize::from(best as i64 == target);
    }
    (loss, correct)
}

/// Evaluates the trainer's current weights on up to `eval_batches` held-out batches and
/// returns the `eval_*` metrics row of `step`.
pub fn evaluate<B: Backend>(
    backend: &B,
    trainer: &Trainer<B>,
    dataset: &Dataset,
    masker: &Masker,
    options: &PretrainOptions,
    step: u64,
) -> Result<Map<String, Value>> {
    let pair = &trainer.pair;
    let (generator, discriminator) = (&pair.generator, &pair.discriminator);
    let vocab = generator.config.vocab_size;
    let params = &trainer.params;
    let gen_relative = generator
        .relative_embeddings(backend, params, None, None)
        .map_err(model_error("evaluation: generator projections"))?;
    let disc_relative = discriminator
        .relative_embeddings(backend, params, None, None)
        .map_err(model_error("evaluation: discriminator projections"))?;
    let (mut mlm_loss, mut mlm_correct, mut mlm_total) = (0.0f64, 0usize, 0usize);
    let mut rtd_pairs = Vec::new();
    let mut rtd_loss = 0.0f64;
    for i in 0..options.eval_batches {
        let first = (i * options.batch_size) as u64;
        if first >= dataset.eval_len() {
            break;
        }
        let batch = dataset.eval_batch(first, options.batch_size)?;
        let rng = |stream| RandomStream {
            seed: options.seed,
            step: i as u32,
            stream,
        };
        let masked = masker.mask_batch(
            &batch.input_ids,
            &batch.attention_mask,
            rng(EVAL_MASKING_STREAM),
        )?;
        let host = HostBatch {
            input_ids: &masked.input_ids,
            attention_mask: &batch.attention_mask,
            token_type_ids: None,
            batch: batch.batch,
            len: batch.len,
        };
        let device = DeviceBatch::upload(backend, &generator.config, &host)
            .map_err(model_error("evaluation input"))?;
        let targets = MlmTargets::from_labels(backend, &masked.labels, vocab)
            .map_err(model_error("evaluation labels"))?;
        let options_gen = ForwardOptions::<B> {
            dropout: None,
            mlm_rows: MlmRows::Selected {
                positions: &targets.positions,
                count: targets.count,
            },
            attention_probs: AttentionProbs::Discard,
        };
        let mut acts = generator
            .activations(backend, &device, Some(targets.count), false)
            .map_err(model_error("evaluation buffers"))?;
        generator
            .forward(
                backend,
                params,
                gen_relative.as_ref(),
                &device,
                &options_gen,
                &mut acts,
            )
            .map_err(model_error("evaluation: generator forward"))?;
        let logits = &acts
            .mlm
            .as_ref()
            .ok_or_else(|| Error::Usage("generator without MLM head".into()))?
            .logits;
        let mut host_logits = vec![0.0f32; targets.count * vocab];
        backend
            .download(logits, &mut host_logits)
            .map_err(model_error("evaluation logits"))?;
        let positions: Vec<usize> = (0..masked.labels.len())
            .filter(|&p| masked.labels[p] != -100)
            .collect();
        let labels: Vec<i64> = positions.iter().map(|&p| masked.labels[p]).collect();
        let (loss, correct) = cross_entropy(&host_logits, &labels, vocab);
        mlm_loss += loss;
        mlm_correct += correct;
        mlm_total += positions.len();
        let mut sampled = backend
            .upload_indices(&vec![0; positions.len()])
            .map_err(model_error("sample buffer"))?;
        backend
            .sample_categorical(logits, vocab, rng(EVAL_SAMPLING_STREAM), &mut sampled)
            .map_err(model_error("evaluation sampling"))?;
        let mut ids = vec![0u32; positions.len()];
        backend
            .download_indices(&sampled, &mut ids)
            .map_err(model_error("evaluation samples"))?;
        let mut corrupted = batch.input_ids.clone();
        for (&p, &id) in positions.iter().zip(&ids) {
            corrupted[p] = i64::from(id);
        }
        let disc_host = HostBatch {
            input_ids: &corrupted,
            ..host
        };
        let disc_device = DeviceBatch::upload(backend, &discriminator.config, &disc_host)
            .map_err(model_error("evaluation input"))?;
        let mut disc_acts = discriminator
            .activations(backend, &disc_device, None, false)
            .map_err(model_error("evaluation buffers"))?;
        discriminator
            .forward(
                backend,
                params,
                disc_relative.as_ref(),
                &disc_device,
                &ForwardOptions::inference(),
                &mut disc_acts,
            )
            .map_err(model_error("evaluation: discriminator forward"))?;
        let rtd = disc_acts
            .rtd
            .as_ref()
            .ok_or_else(|| Error::Usage("discriminator without RTD head".into()))?;
        let mut rtd_logits = vec![0.0f32; corrupted.len()];
        backend
            .download(&rtd.logits, &mut rtd_logits)
            .map_err(model_error("evaluation logits"))?;
        for p in 0..corrupted.len() {
            if batch.attention_mask[p] == 0 {
                continue;
            }
            let replaced = masked.labels[p] != -100 && masked.labels[p] != corrupted[p];
            let z = f64::from(rtd_logits[p]);
            let y = if replaced { 1.0 } else { 0.0 };
            rtd_loss += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
            rtd_pairs.push((rtd_logits[p], replaced));
        }
    }
    let stats = rtd_stats(&rtd_pairs);
    let mut row = Map::new();
    row.insert("step".into(), json!(step));
    row.insert(
        "eval_loss_mlm".into(),
        number(Some(mlm_loss / mlm_total.max(1) as f64)),
    );
    row.insert(
        "eval_mlm_accuracy".into(),
        number(Some(mlm_correct as f64 / mlm_total.max(1) as f64)),
    );
    row.insert(
        "eval_loss_rtd".into(),
        number(Some(rtd_loss / rtd_pairs.len().max(1) as f64)),
    );
    row.insert("eval_rtd_accuracy".into(), number(Some(stats.accuracy)));
    row.insert("eval_rtd_precision".into(), number(stats.precision));
    row.insert("eval_rtd_recall".into(), number(stats.recall));
    row.insert("eval_rtd_auc".into(), number(stats.auc));
    row.insert("eval_p_replaced".into(), number(stats.mean_p_replaced));
    row.insert("eval_p_original".into(), number(stats.mean_p_original));
    row.insert("eval_tokens".into(), json!(rtd_pairs.len()));
    Ok(row)
}

/// The closing lines of a run: the held-out figures of an evaluation row next to the unigram
/// reference, so that a user sees at once whether the run learned.
pub fn summary(row: &Map<String, Value>, unigram: &UnigramReference) -> String {
    let get = |key: &str| row.get(key).and_then(Value::as_f64);
    let show = |key: &str| get(key).map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    let below = get("eval_loss_mlm").map_or_else(String::new, |loss| {
        let gap = unigram.loss - loss;
        let side = if gap >= 0.0 { "below" } else { "above" };
        format!(", {:.2} nats {side} it", gap.abs())
    });
    format!(
        "held-out split, step {}:\n  generator      MLM loss {} (unigram reference {:.3}{below}), \
         accuracy {} (unigram {:.3})\n  discriminator  RTD AUC {}, accuracy {}, precision {}, \
         recall {} (threshold p = 0.5)",
        row.get("step").and_then(Value::as_u64).unwrap_or(0),
        show("eval_loss_mlm"),
        unigram.loss,
        show("eval_mlm_accuracy"),
        unigram.accuracy,
        show("eval_rtd_auc"),
        show("eval_rtd_accuracy"),
        show("eval_rtd_precision"),
        show("eval_rtd_recall"),
    )
}
