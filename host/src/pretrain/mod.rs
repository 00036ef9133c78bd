//! `deberta pretrain`: ELECTRA-style RTD pretraining of a DeBERTa-v3 generator/discriminator
//! pair with GDES, from a text corpus to Hugging Face checkpoints.
//!
//! A step: the next batch of the data stream is masked (counter-based randoms keyed by the
//! seed and step), the generator predicts the masked tokens (dropout on) and replacements are
//! sampled from its logits, the generator is updated, the discriminator detects the
//! replacements and is updated. Everything random is a function of `(seed, step)`, so a run
//! resumed from a checkpoint continues exactly as the uninterrupted run would have.

pub mod baseline;
pub mod checkpoint;
pub mod compare;
pub mod evaluate;
pub mod init;
pub mod metrics;
pub mod options;
pub mod plot;
mod step;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use deberta_core::model::{MlmLayout, ParamStore};
use deberta_core::random::RandomStream;
use deberta_core::train::{
    OptimizerConfig, OptimizerKind, RtdPair, Schedule, Sharing, Trainer, warmup_linear,
};
use deberta_core::{Backend, ModelConfig};
use serde_json::{Map, json};

use self::baseline::{UnigramReference, unigram_reference};
use self::checkpoint::{
    LoadedState, LossScalerState, RunState, STATE_VERSION, load_state, remove_temporaries,
};
use self::init::InitSources;
use self::metrics::{MetricsLog, number, rtd_stats};
use self::options::{PretrainFlags, PretrainOptions};
use self::step::{StepInput, train_step};
use crate::data::{
    Corpus, DataCursor, Dataset, MASKING_STREAM, Masker, MaskingStrategy, TokenCache, Tokenizer,
    TrainOptions,
};
use crate::device::{BackendChoice, BackendTask, dispatch};
use crate::distributed::{AllReduce, ExchangeStats, World};
use crate::error::{Error, Result};
use crate::model_dir::take_weights;
use crate::tensor::TensorData;

/// Stream of the generator's sampling (`RandomStream::stream`).
pub const SAMPLING_STREAM: u32 = 0x5A4D_0000;
/// Masking stream of the held-out evaluation (fixed across evaluations).
pub const EVAL_MASKING_STREAM: u32 = 0xE7A1_0001;
/// Sampling stream of the held-out evaluation.
pub const EVAL_SAMPLING_STREAM: u32 = 0xE7A1_0002;

/// What `deberta pretrain` was asked to do.
pub struct PretrainRequest {
    /// Options from the command line over those of a `--config` file.
    pub flags: PretrainFlags,
    /// `--out`.
    pub out: Option<PathBuf>,
    /// `--resume`.
    pub resume: Option<PathBuf>,
    /// `--stop-after`.
    pub stop_after: Option<u64>,
    /// Whether to draw a progress bar.
    pub progress: bool,
}

fn model_error(what: &'static str) -> impl Fn(deberta_core::Error) -> Error {
    move |e| Error::model(what, e)
}

/// The resolved options, the run directory and (when resuming) the saved state.
fn resolve(
    request: &PretrainRequest,
    world: World,
) -> Result<(PretrainOptions, PathBuf, Option<LoadedState>)> {
    match &request.resume {
        Some(run_dir) => {
            let loaded = load_state(run_dir)?;
            let saved = loaded.state.options.clone();
            let options = request.flags.clone().apply(saved.clone());
            if let Some(name) = options.incompatible_change(&saved) {
                return Err(Error::Usage(format!(
                    "--{name} differs from the run in {}: a resumed run cannot change the model or the data",
                    run_dir.display()
                )));
            }
            if request.out.as_ref().is_some_and(|out| out != run_dir) {
                return Err(Error::Usage(
                    "--out and --resume name different run directories".into(),
                ));
            }
            options.validate()?;
            let (saved_micro, micro) = (
                saved.grad_accum * loaded.state.world_size,
                options.grad_accum * world.size(),
            );
            if micro != saved_micro {
                return Err(Error::Usage(format!(
                    "the run in {} takes {saved_micro} micro-batches a step ({} processes × \
                     --grad-accum {}); resume it with processes × --grad-accum = {saved_micro} \
                     (now {} × {})",
                    run_dir.display(),
                    loaded.state.world_size,
                    saved.grad_accum,
                    world.size(),
                    options.grad_accum
                )));
            }
            check_partition(&options, world)?;
            Ok((options, run_dir.clone(), Some(loaded)))
        }
        None => {
            let preset = request
                .flags
                .preset
                .clone()
                .unwrap_or_else(|| "nano".into());
            let options = request
                .flags
                .clone()
                .apply(PretrainOptions::preset(&preset)?);
            options.validate()?;
            check_partition(&options, world)?;
            let run_dir = request.out.clone().unwrap_or_else(|| {
                Path::new("runs").join(format!("{}-{}", options.preset, options.seed))
            });
            if run_dir.join("state").exists() {
                return Err(Error::Usage(format!(
                    "{} already holds a run: continue it with --resume {0}, or choose another --out",
                    run_dir.display()
                )));
            }
            Ok((options, run_dir, None))
        }
    }
}

/// Whether the batch splits into `--grad-accum` micro-batches on each process.
fn check_partition(options: &PretrainOptions, world: World) -> Result<()> {
    let parts = options.grad_accum * world.size();
    if !options.batch_size.is_multiple_of(parts) {
        return Err(Error::Usage(format!(
            "--batch-size {} does not split into {} processes × --grad-accum {} micro-batches",
            options.batch_size,
            world.size(),
            options.grad_accum
        )));
    }
    Ok(())
}

fn sharing(options: &PretrainOptions) -> Sharing {
    match options.sharing.as_str() {
        "es" => Sharing::Es,
        "nes" => Sharing::Nes,
        _ => Sharing::Gdes,
    }
}

fn masking(options: &PretrainOptions) -> Result<MaskingStrategy> {
    <MaskingStrategy as clap::ValueEnum>::from_str(&options.masking, false)
        .map_err(|_| Error::Usage(format!("--masking {}: unknown strategy", options.masking)))
}

fn optimizer_config(options: &PretrainOptions) -> OptimizerConfig {
    OptimizerConfig {
        kind: if options.optimizer == "adamw" {
            OptimizerKind::AdamW
        } else {
            OptimizerKind::XAdam
        },
        weight_decay: options.weight_decay,
        max_grad_norm: (options.clip > 0.0).then_some(options.clip),
        ..OptimizerConfig::xadam()
    }
}

/// The tokenizer of the run: the saved one when resuming, a given one, the one of
/// `--init-from`, or one trained on the corpus (stored in the run directory either way, in the
/// form it came in). Returns it with the path of its file in the run directory.
fn tokenizer(
    options: &PretrainOptions,
    run_dir: &Path,
    resumed: bool,
    corpus: &Corpus,
    init: Option<(&InitSources, &PretrainFlags)>,
) -> Result<(Tokenizer, PathBuf)> {
    if resumed {
        let tokenizer = Tokenizer::from_dir(run_dir)?;
        let path = Tokenizer::find_in_dir(run_dir)?.unwrap_or_default();
        return Ok((tokenizer, path));
    }
    let tokenizer = match (&options.tokenizer, init) {
        (_, Some((init, flags))) => init.tokenizer(flags)?,
        (Some(given), None) => Tokenizer::load(given)?,
        (None, None) => {
            eprintln!(
                "training a {}-token tokenizer on the corpus…",
                options.vocab_size
            );
            let (tokenizer, report) = Tokenizer::train(
                corpus,
                &TrainOptions {
                    vocab_size: options.vocab_size,
                },
            )?;
            eprintln!(
                "tokenizer: {} tokens from {} distinct words",
                report.vocab_size, report.distinct_words
            );
            tokenizer
        }
    };
    let path = tokenizer.save_to_dir(run_dir)?;
    Ok((tokenizer, path))
}

/// Weights from a saved state, by name.
fn restore_params<B: Backend>(
    backend: &B,
    pair: &RtdPair,
    loaded: &LoadedState,
    run_dir: &Path,
) -> Result<ParamStore<B::Tensor>> {
    let path = run_dir.join("state").join("weights.safetensors");
    let (weights, warnings) = take_weights(&pair.layout, loaded.weights.clone(), &path)?;
    if !warnings.is_empty() {
        return Err(Error::format(
            &path,
            format!("corrupted state: {}", warnings.join("; ")),
        ));
    }
    pair.layout
        .build(|id, _| backend.upload(&weights[id.index()]))
        .map_err(model_error("restoring weights"))
}

fn restore_optimizers<B: Backend>(
    backend: &B,
    trainer: &mut Trainer<B>,
    loaded: &LoadedState,
    run_dir: &Path,
) -> Result<()> {
    let path = run_dir.join("state").join("optimizer.safetensors");
    if loaded.state.optimizer_steps.len() != trainer.optimizers.len() {
        return Err(Error::format(
            &path,
            "corrupted state: optimizer count does not match the schedule",
        ));
    }
    let layout = trainer.pair.layout.clone();
    for (i, optimizer) in trainer.optimizers.iter_mut().enumerate() {
        optimizer
            .restore(
                backend,
                &layout,
                loaded.state.optimizer_steps[i],
                |name| match &loaded.moments.get(&format!("opt{i}.{name}"))?.data {
                    TensorData::Float(v) => Some(v.clone()),
                    TensorData::Int(_) => None,
                },
            )
            .map_err(|e| Error::format(&path, format!("corrupted optimizer state: {e}")))?;
    }
    Ok(())
}

/// Restores the loss scalers of a `--precision mixed` run; a state without them (written
/// before mixed precision existed) leaves the fresh ones.
fn restore_loss_scalers<B: Backend>(
    trainer: &mut Trainer<B>,
    loaded: &LoadedState,
    run_dir: &Path,
) -> Result<()> {
    let saved = &loaded.state.loss_scalers;
    if saved.is_empty() {
        return Ok(());
    }
    let path = run_dir.join("state").join("state.json");
    let scalers = saved
        .iter()
        .map(|s| s.scaler())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::format(&path, "corrupted state: impossible loss scaler state"))?;
    trainer
        .restore_loss_scalers(&scalers)
        .map_err(|e| Error::format(&path, format!("corrupted state: {e}")))
}

/// Runs (or resumes) a pretraining run.
///
/// Under an MPI launcher (the `mpi` feature), every process runs this: rank 0 prepares the run
/// directory (tokenizer, token cache) while the others wait, then all train their share of
/// every step, and rank 0 alone evaluates, writes the metrics, checkpoints and plot, and
/// prints.
pub fn run_pretraining(request: PretrainRequest) -> Result<()> {
    let world = World::current();
    let (options, run_dir, resumed) = resolve(&request, world)?;
    let threads = crate::device::set_threads(options.threads);
    let choice = BackendChoice::resolve(&options.backend, options.adapter.as_deref())?;
    let corpus = Corpus::open(&options.corpus, options.lossy)?;
    let init = match resumed {
        Some(_) => None,
        None => InitSources::read(&options)?,
    };
    let init_flags = init.as_ref().map(|init| (init, &request.flags));
    let prepare = || -> Result<(Tokenizer, TokenCache)> {
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
        remove_temporaries(&run_dir.join("checkpoints"))?;
        let (tokenizer, _) = tokenizer(&options, &run_dir, resumed.is_some(), &corpus, init_flags)?;
        let (cache, built) = TokenCache::open_or_build(&run_dir.join("data"), &corpus, &tokenizer)?;
        if built {
            eprintln!("tokenized the corpus: {} tokens", cache.len());
        }
        Ok((tokenizer, cache))
    };
    let (tokenizer, cache) = if world.is_root() {
        let prepared = prepare()?;
        world.barrier();
        prepared
    } else {
        // Rank 0 has written the tokenizer and the token cache of the run directory.
        world.barrier();
        let tokenizer = Tokenizer::from_dir(&run_dir)?;
        let cache = TokenCache::open(&run_dir.join("data"))?;
        (tokenizer, cache)
    };
    let special = tokenizer.special();
    let dataset = Dataset::new(cache, special, options.max_seq_len, options.seed)?;
    let masker = Masker::from_tokenizer(masking(&options)?, &tokenizer, options.max_seq_len)?;
    let (disc_cfg, gen_cfg) = match (&init, &options.init_from) {
        (Some(init), _) => init.configs(&options)?,
        (None, Some(_)) => init::resumed_configs(&run_dir, &options)?,
        (None, None) => options.model_configs(tokenizer.vocab_size(), special.pad as usize)?,
    };
    let tokenizer_files = tokenizer.files()?;
    let unigram = unigram_reference(&dataset, tokenizer.vocab_size())?;
    dispatch(
        &choice,
        Run {
            request: &request,
            options: &options,
            run_dir: &run_dir,
            resumed: resumed.as_ref(),
            threads,
            dataset: &dataset,
            masker: &masker,
            configs: (disc_cfg, gen_cfg),
            unigram,
            world,
            init: init.as_ref(),
            tokenizer_files: &tokenizer_files,
        },
    )
}

/// Everything a run needs besides the backend.
struct Run<'a> {
    request: &'a PretrainRequest,
    options: &'a PretrainOptions,
    run_dir: &'a Path,
    resumed: Option<&'a LoadedState>,
    threads: usize,
    dataset: &'a Dataset,
    masker: &'a Masker,
    configs: (ModelConfig, ModelConfig),
    unigram: UnigramReference,
    world: World,
    /// The weights to start from (`--init-from`), on a fresh run.
    init: Option<&'a InitSources>,
    /// The tokenizer's files, copied into every checkpoint's model directories.
    tokenizer_files: &'a checkpoint::TokenizerFiles,
}

impl BackendTask for Run<'_> {
    type Output = ();

    fn run<B: Backend>(self, backend: &B) -> Result<()> {
        let Run {
            request,
            options,
            run_dir,
            resumed,
            threads,
            dataset,
            masker,
            configs: (disc_cfg, gen_cfg),
            unigram,
            world,
            init,
            tokenizer_files,
        } = self;
        let run_dir = run_dir.to_path_buf();
        let pair = RtdPair::new(
            &gen_cfg,
            &disc_cfg,
            sharing(options),
            MlmLayout::LmPredictions,
            options.emd,
        )
        .map_err(model_error("building the generator/discriminator pair"))?;
        let params = match (&resumed, init) {
            (Some(loaded), _) => restore_params(backend, &pair, loaded, &run_dir)?,
            (None, Some(init)) => {
                let (params, warnings) = init.params(backend, &pair, options.seed)?;
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                params
            }
            (None, None) => pair
                .layout
                .initialise(backend, options.seed)
                .map_err(model_error("initialising weights"))?,
        };
        let schedule = if options.schedule == "joint" {
            Schedule::Joint
        } else {
            Schedule::Decoupled
        };
        let mut trainer = Trainer::new(
            backend,
            pair,
            params,
            schedule,
            options.rtd_weight,
            optimizer_config(options),
        )
        .map_err(model_error("creating the optimizers"))?;
        let precision = deberta_core::Precision::from_name(&options.precision)
            .ok_or_else(|| Error::Usage(format!("unknown --precision {}", options.precision)))?;
        trainer
            .set_precision(backend, precision)
            .map_err(model_error("choosing the precision"))?;
        if precision == deberta_core::Precision::Mixed
            && trainer.products() == deberta_core::Precision::F32
            && world.is_root()
        {
            eprintln!(
                "--precision mixed: the {} backend has no narrower products here (wgpu: the \
                 adapter lacks SHADER_F16); f32 products, loss scaling on",
                backend.name()
            );
        }
        // What summing the gradients over the processes costs.
        let exchange = Rc::new(Cell::new(ExchangeStats::default()));
        if world.size() > 1 {
            trainer.set_reducer(Box::new(AllReduce::new(
                world.gradient_exchange(),
                options.bucket_mb,
                exchange.clone(),
            )));
        }
        let (mut step, mut cursor) = match &resumed {
            Some(loaded) => {
                restore_optimizers(backend, &mut trainer, loaded, &run_dir)?;
                restore_loss_scalers(&mut trainer, loaded, &run_dir)?;
                let cursor: DataCursor = serde_json::from_value(loaded.state.cursor.clone())
                    .map_err(|e| {
                        Error::format(
                            run_dir.join("state").join("state.json"),
                            format!("corrupted data cursor: {e}"),
                        )
                    })?;
                (loaded.state.step, cursor)
            }
            None => (0, DataCursor::default()),
        };
        // Rank 0 writes the metrics.
        let mut log = match world.is_root() {
            true => Some(MetricsLog::open(
                &run_dir,
                resumed.as_ref().map(|l| l.state.step),
            )?),
            false => None,
        };
        if let (Some(log), None) = (log.as_mut(), resumed) {
            let mut row = Map::new();
            row.insert("step".into(), json!(0));
            row.insert("unigram_loss_mlm".into(), number(Some(unigram.loss)));
            row.insert(
                "unigram_mlm_accuracy".into(),
                number(Some(unigram.accuracy)),
            );
            log.write(&row)?;
        }
        let interrupted = interruption_flag();
        let end = request
            .stop_after
            .unwrap_or(options.steps)
            .min(options.steps);
        let params_total = trainer.pair.layout.numel();
        let say = world.is_root();
        if say && world.size() > 1 {
            eprintln!(
                "data-parallel over {} processes: {} micro-batches of {} rows a step",
                world.size(),
                world.size() * options.grad_accum,
                options.batch_size / (world.size() * options.grad_accum)
            );
        }
        if say {
            eprintln!(
                "pretraining {} (generator {} layers, discriminator {} layers, {:.1}M parameters) on {} \
             threads: steps {}..{end} of {}, batch {}×{}, run directory {}",
                options.preset,
                gen_cfg.num_hidden_layers,
                disc_cfg.num_hidden_layers,
                params_total as f64 / 1e6,
                threads,
                step + 1,
                options.steps,
                options.batch_size,
                options.max_seq_len,
                run_dir.display()
            );
            eprintln!(
                "unigram reference on the held-out split (no context): MLM loss {:.3}, accuracy {:.3}",
                unigram.loss, unigram.accuracy
            );
        }
        let progress = progress_bar(request.progress && say, step, end);
        let started = Instant::now();
        let mut window_start = Instant::now();
        let mut window_tokens = 0usize;
        // Throughput of the training steps alone (no evaluation, checkpoints or logging).
        let (mut train_tokens, mut train_seconds) = (0usize, 0.0f64);
        let mut last_eval = None;
        // Rank 0 writes the checkpoints.
        let save = |trainer: &Trainer<B>, step: u64, cursor: DataCursor| -> Result<()> {
            if !world.is_root() {
                return Ok(());
            }
            let state = RunState {
                version: STATE_VERSION,
                step,
                optimizer_steps: trainer.optimizers.iter().map(|o| o.step).collect(),
                cursor: serde_json::to_value(cursor)
                    .map_err(|e| Error::format(&run_dir, e.to_string()))?,
                options: options.clone(),
                world_size: world.size(),
                loss_scalers: trainer
                    .loss_scalers()
                    .iter()
                    .map(LossScalerState::of)
                    .collect(),
            };
            checkpoint::save(backend, &run_dir, trainer, &state, tokenizer_files)?;
            Ok(())
        };
        // This process's rows of every batch.
        let share = options.batch_size / world.size();
        let rows = world.rank() * share..(world.rank() + 1) * share;
        while step < end {
            // Every process stops at the same step when any of them is interrupted.
            let stop = world.sum_u64(&[u64::from(interrupted.load(Ordering::SeqCst))])[0] > 0;
            if stop {
                progress.finish_and_clear();
                save(&trainer, step, cursor)?;
                if say {
                    eprintln!(
                        "interrupted: checkpoint of step {step} written; continue with: deberta pretrain --resume {}",
                        run_dir.display()
                    );
                }
                return Ok(());
            }
            step += 1;
            let logging = step % options.log_every == 0 || step == end;
            let step_start = Instant::now();
            let batch = dataset.next_batch_rows(cursor, options.batch_size, rows.clone())?;
            cursor = batch.cursor;
            let masked = masker.mask_rows(
                &batch.input_ids,
                &batch.attention_mask,
                RandomStream {
                    seed: options.seed,
                    step: step as u32,
                    stream: MASKING_STREAM,
                },
                rows.start,
            )?;
            // The official schedule is indexed from 0: update `step` (1-based, as displayed and
            // saved) runs at the rate of index `step − 1`, so the first one runs at 0 with a
            // warm-up (its gradient still enters the Adam moments).
            let rate = warmup_linear(step - 1, options.steps, options.warmup);
            let lr = (f64::from(options.lr) * rate) as f32;
            let discriminator_lr = options
                .discriminator_lr
                .map_or(lr, |peak| (f64::from(peak) * rate) as f32);
            let (loss_mlm, loss_rtd, stats) = train_step(
                backend,
                &mut trainer,
                options,
                world,
                &StepInput {
                    step,
                    rates: (lr, discriminator_lr),
                    batch: &batch,
                    masked: &masked,
                    logging,
                },
            )?;
            train_seconds += step_start.elapsed().as_secs_f64();
            // Tokens of the whole step, over every process.
            train_tokens += options.batch_size * batch.len;
            window_tokens += options.batch_size * batch.len;
            if let (true, Some(log)) = (logging, log.as_mut()) {
                let elapsed = window_start.elapsed().as_secs_f64();
                let tokens_per_s = window_tokens as f64 / elapsed.max(1e-9);
                window_start = Instant::now();
                window_tokens = 0;
                let rtd = rtd_stats(&stats.rtd);
                let mut row = Map::new();
                row.insert("step".into(), json!(step));
                row.insert("lr".into(), number(Some(f64::from(lr))));
                if options.discriminator_lr.is_some() {
                    row.insert(
                        "lr_discriminator".into(),
                        number(Some(f64::from(discriminator_lr))),
                    );
                }
                row.insert("loss_mlm".into(), number(Some(f64::from(loss_mlm))));
                row.insert("loss_rtd".into(), number(Some(f64::from(loss_rtd))));
                row.insert(
                    "loss_total".into(),
                    number(Some(f64::from(loss_mlm + options.rtd_weight * loss_rtd))),
                );
                row.insert(
                    "mlm_accuracy".into(),
                    number(Some(
                        stats.mlm_correct as f64 / stats.mlm_total.max(1) as f64,
                    )),
                );
                row.insert(
                    "replaced_fraction".into(),
                    number(Some(stats.replaced as f64 / stats.mlm_total.max(1) as f64)),
                );
                row.insert("rtd_accuracy".into(), number(Some(rtd.accuracy)));
                row.insert("rtd_auc".into(), number(rtd.auc));
                row.insert("p_replaced".into(), number(rtd.mean_p_replaced));
                row.insert("p_original".into(), number(rtd.mean_p_original));
                for (i, optimizer) in trainer.optimizers.iter().enumerate() {
                    let suffix = match (schedule, i) {
                        (Schedule::Joint, _) => "",
                        (_, 0) => "_generator",
                        _ => "_discriminator",
                    };
                    let norm = optimizer
                        .last_grad_norm(backend)
                        .map_err(model_error("reading gradient norms"))?;
                    row.insert(format!("grad_norm{suffix}"), number(Some(f64::from(norm))));
                    if let Some(scaler) = trainer.loss_scalers().get(i) {
                        // The scale of this step's update, whether it was skipped, and how
                        // many have been so far.
                        let last = scaler.last();
                        row.insert(
                            format!("loss_scale{suffix}"),
                            number(last.map(|u| f64::from(u.scale))),
                        );
                        row.insert(
                            format!("skipped{suffix}"),
                            json!(last.is_some_and(|u| u.skipped)),
                        );
                        row.insert(
                            format!("skipped_steps{suffix}"),
                            json!(scaler.skipped_steps()),
                        );
                    }
                }
                row.insert("epoch".into(), json!(cursor.epoch));
                row.insert("world_size".into(), json!(world.size()));
                row.insert("tokens_per_s".into(), number(Some(tokens_per_s)));
                row.insert(
                    "elapsed_s".into(),
                    number(Some(started.elapsed().as_secs_f64())),
                );
                log.write(&row)?;
                progress.set_message(format!(
                    "mlm {loss_mlm:.3} rtd {loss_rtd:.3} | acc mlm {:.2} rtd {:.2} | {tokens_per_s:.0} tok/s",
                    stats.mlm_correct as f64 / stats.mlm_total.max(1) as f64,
                    rtd.accuracy
                ));
            }
            progress.set_position(step);
            let evaluating =
                (options.eval_every > 0 && step % options.eval_every == 0) || step == options.steps;
            if let (true, Some(log)) = (evaluating, log.as_mut()) {
                let row = evaluate::evaluate(backend, &trainer, dataset, masker, options, step)?;
                log.write(&row)?;
                last_eval = Some(row);
            }
            if (options.save_every > 0 && step % options.save_every == 0) || step == end {
                save(&trainer, step, cursor)?;
            }
        }
        progress.finish_and_clear();
        if !say {
            return Ok(());
        }
        let plot = plot::plot_run(&run_dir)?;
        let dir = run_dir.display();
        let mut usage = format!(
            "{:.0} tokens/s in the training steps, peak RSS {}",
            train_tokens as f64 / train_seconds.max(1e-9),
            crate::resources::peak_rss_mib()
                .map_or_else(|| "unknown".to_string(), |m| format!("{m:.0} MiB"))
        );
        if world.size() > 1 {
            let exchange = exchange.get();
            usage += &format!(
                " (rank 0); {} processes, {:.1} % of the training steps summing gradients over \
                 them ({:.1} % waiting for the exchange), {:.0} % of the dense gradient volume \
                 sent",
                world.size(),
                100.0 * exchange.seconds / train_seconds.max(1e-9),
                100.0 * exchange.waiting / train_seconds.max(1e-9),
                100.0 * exchange.sent_words as f64 / exchange.dense_words.max(1) as f64
            );
        }
        if step < options.steps {
            println!(
                "stopped after step {step} of {}; checkpoint in {dir}/state ({usage})",
                options.steps
            );
            println!("continue with: deberta pretrain --resume {dir}");
        } else {
            println!(
                "pretraining finished: {step} steps in {:.0} s, {usage}",
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(row) = &last_eval {
            println!("{}", evaluate::summary(row, &unigram));
        }
        println!("run directory: {dir}");
        println!(
            "  discriminator  {dir}/discriminator  (Hugging Face DebertaV2Model + RTD head, tokenizer)"
        );
        println!("  generator      {dir}/generator      (Hugging Face DebertaV2ForMaskedLM)");
        println!(
            "  metrics        {dir}/metrics.jsonl, plot {}",
            plot.display()
        );
        println!("use it:");
        println!(
            "  deberta detect --model {dir}/discriminator --text \"The quick brown fox jumps over the lazy dog\""
        );
        println!("  deberta export --in {dir} --format hf --out exported-model");
        Ok(())
    }
}

fn progress_bar(enabled: bool, start: u64, end: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(end);
    bar.set_position(start);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} step {pos}/{len} [{bar:30}] {msg} | ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The flag Ctrl-C and SIGTERM set, the handler installed on first use. One per process, so
/// that every run of a process (the three of `compare-sharing`) stops on it.
fn interruption_flag() -> &'static AtomicBool {
    static FLAG: AtomicBool = AtomicBool::new(false);
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // An error means another handler exists (an embedding program's): leave it.
        let _ = ctrlc::set_handler(|| FLAG.store(true, Ordering::SeqCst));
    });
    &FLAG
}
