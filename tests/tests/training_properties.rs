//! Properties of the training math over random small configurations, batches and masks
//! (proptest): GDES/ES/NES gradient routing, the export of the discriminator embedding, and
//! model-level finite differences of the backward pass with dropout on, and the gradient sum
//! of data-parallel processes against gradient accumulation.

use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::model::{
    BackwardContext, Dropout, GradientsReady, HostBatch, MlmLayout, ParamId, ParamStore,
};
use deberta_core::random::RandomStream;
use deberta_core::train::{
    GradientReducer, LossScaler, MicroBatch, OptimizerConfig, OptimizerKind, PairBatch, RtdPair,
    ScaledUpdate, Schedule, Sharing, Trainer, Workspace,
};
use deberta_core::{Backend, CpuBackend, ModelConfig};
use deberta_host::distributed::{AllReduce, ExchangeStats};
use proptest::prelude::*;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Barrier, Mutex};

type Params = ParamStore<Vec<f32>>;

/// A random small pair configuration and batch, all drawn from `seed`.
struct Case {
    generator: ModelConfig,
    discriminator: ModelConfig,
    emd: bool,
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
    corrupted: Vec<i64>,
    batch: usize,
    len: usize,
}

fn case(seed: u64) -> Case {
    let rng = RandomStream {
        seed,
        step: 0,
        stream: 99,
    };
    let mut i = 0u64;
    let mut pick = |n: u32| -> u32 {
        i += 1;
        rng.bits(i) % n
    };
    let heads = [1, 2, 4][pick(3) as usize];
    let hidden = heads * [4, 6][pick(2) as usize];
    let vocab = 20 + pick(20) as i64;
    let pos = [
        PosAttType {
            c2p: true,
            p2c: true,
        },
        PosAttType {
            c2p: true,
            p2c: false,
        },
        PosAttType {
            c2p: false,
            p2c: true,
        },
    ][pick(3) as usize];
    let position_biased_input = pick(2) == 0;
    let raw = |layers: i64| RawConfig {
        vocab_size: Some(vocab),
        hidden_size: Some(hidden as i64),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(heads as i64),
        intermediate_size: Some(2 * hidden as i64),
        max_position_embeddings: Some(16),
        relative_attention: Some(true),
        position_buckets: Some([-1, 4][(seed % 2) as usize]),
        max_relative_positions: Some(8),
        pos_att_type: Some(pos),
        share_att_key: Some(!seed.is_multiple_of(3)),
        norm_rel_ebd_layer_norm: Some(!seed.is_multiple_of(5)),
        position_biased_input: Some(position_biased_input),
        ..RawConfig::default()
    };
    let disc_layers = 1 + pick(2) as i64;
    let generator = ModelConfig::from_raw(&raw(1 + pick(disc_layers as u32) as i64)).unwrap();
    let discriminator = ModelConfig::from_raw(&raw(disc_layers)).unwrap();
    let (batch, len) = (1 + pick(2) as usize, 3 + pick(6) as usize);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut labels = Vec::new();
    let mut corrupted = Vec::new();
    for _ in 0..batch {
        let valid = 2 + pick(len as u32 - 1) as usize;
        let masked_at = 1 + pick(valid as u32 - 1) as usize;
        for t in 0..len {
            let real = t < valid;
            let original = if real {
                1 + pick(vocab as u32 - 1) as i64
            } else {
                0
            };
            let masked = real && (t == masked_at || pick(4) == 0);
            ids.push(if masked { 3 } else { original });
            mask.push(i64::from(real));
            labels.push(if masked { original } else { -100 });
            corrupted.push(if masked && pick(2) == 0 {
                1 + pick(vocab as u32 - 1) as i64
            } else {
                original
            });
        }
    }
    Case {
        generator,
        discriminator,
        emd: pick(3) == 0,
        ids,
        mask,
        labels,
        corrupted,
        batch,
        len,
    }
}

fn setup(
    case: &Case,
    sharing: Sharing,
    init_seed: u64,
) -> (CpuBackend, RtdPair, Params, PairBatch<CpuBackend>) {
    let backend = CpuBackend::new();
    let pair = RtdPair::new(
        &case.generator,
        &case.discriminator,
        sharing,
        MlmLayout::LmPredictions,
        case.emd,
    )
    .unwrap();
    let params = pair.layout.initialise(&backend, init_seed).unwrap();
    let host = HostBatch {
        input_ids: &case.ids,
        attention_mask: &case.mask,
        token_type_ids: None,
        batch: case.batch,
        len: case.len,
    };
    let batch = PairBatch::upload(&backend, &pair, &host, &case.corrupted, &case.labels).unwrap();
    (backend, pair, params, batch)
}

fn tensor<'a>(pair: &RtdPair, store: &'a Params, name: &str) -> &'a [f32] {
    store.get(
        pair.layout
            .find(name)
            .unwrap_or_else(|| panic!("no parameter {name}")),
    )
}

fn joint(
    backend: &CpuBackend,
    pair: &RtdPair,
    params: &Params,
    batch: &PairBatch<CpuBackend>,
) -> Params {
    let mut grads = pair.layout.zeros(backend).unwrap();
    let mut ctx = BackwardContext::new(backend, params, &mut grads);
    pair.joint_gradient(&mut ctx, batch, 50.0, None, None)
        .unwrap();
    grads
}

const E_G: &str = "generator.deberta.embeddings.word_embeddings.weight";

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// GDES: the RTD loss leaves E_G's gradient bit-identical to the MLM-only gradient, and
    /// E_Δ's gradient equals the RTD part of E_G's gradient under ES.
    #[test]
    fn gdes_routes_the_rtd_gradient_into_e_delta_only(seed in any::<u64>()) {
        let case = case(seed);
        let (backend, pair, params, batch) = setup(&case, Sharing::Gdes, seed);
        let joint_grads = joint(&backend, &pair, &params, &batch);
        let mut mlm_only = pair.layout.zeros(&backend).unwrap();
        pair.generator_step(&mut BackwardContext::new(&backend, &params, &mut mlm_only), &batch.generator, None, 1.0, &mut Workspace::new(), None).unwrap();
        prop_assert_eq!(tensor(&pair, &joint_grads, E_G), tensor(&pair, &mlm_only, E_G));

        let (_, es_pair, es_params, es_batch) = setup(&case, Sharing::Es, seed);
        let mut rtd_only = es_pair.layout.zeros(&backend).unwrap();
        es_pair.discriminator_step(&mut BackwardContext::new(&backend, &es_params, &mut rtd_only), &es_batch.discriminator, 50.0, None, &mut Workspace::new(), None).unwrap();
        prop_assert_eq!(tensor(&pair, &joint_grads, "E_delta"), tensor(&es_pair, &rtd_only, E_G));
        prop_assert!(tensor(&pair, &joint_grads, "E_delta").iter().any(|&g| g != 0.0));
    }

    /// ES: E_G's gradient is the MLM part plus λ times the RTD part.
    #[test]
    fn es_sums_both_losses_into_the_shared_table(seed in any::<u64>()) {
        let case = case(seed);
        let (backend, pair, params, batch) = setup(&case, Sharing::Es, seed);
        let joint_grads = joint(&backend, &pair, &params, &batch);
        let mut mlm = pair.layout.zeros(&backend).unwrap();
        pair.generator_step(&mut BackwardContext::new(&backend, &params, &mut mlm), &batch.generator, None, 1.0, &mut Workspace::new(), None).unwrap();
        let mut rtd = pair.layout.zeros(&backend).unwrap();
        pair.discriminator_step(&mut BackwardContext::new(&backend, &params, &mut rtd), &batch.discriminator, 50.0, None, &mut Workspace::new(), None).unwrap();
        let (j, a, b) = (tensor(&pair, &joint_grads, E_G), tensor(&pair, &mlm, E_G), tensor(&pair, &rtd, E_G));
        let scale = j.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        for k in 0..j.len() {
            prop_assert!((j[k] - (a[k] + b[k])).abs() <= 1e-5 * scale, "{} vs {} + {}", j[k], a[k], b[k]);
        }
        prop_assert!(b.iter().any(|&g| g != 0.0));
    }

    /// NES: the generator's gradients do not depend on the discriminator's parameters and
    /// vice versa; in every mode the generator's non-embedding gradients are the same.
    #[test]
    fn nes_models_are_independent_and_generator_gradients_agree_across_modes(seed in any::<u64>()) {
        let case = case(seed);
        let (backend, pair, params, batch) = setup(&case, Sharing::Nes, seed);
        let base = joint(&backend, &pair, &params, &batch);
        let mut perturbed = params.clone();
        for (id, spec) in pair.layout.iter() {
            let shift = if spec.name.starts_with("generator.") { 0.0 } else { 0.01 };
            for v in perturbed.get_mut(id).iter_mut() {
                *v += shift;
            }
        }
        let after_disc_change = joint(&backend, &pair, &perturbed, &batch);
        let mut perturbed = params.clone();
        for (id, spec) in pair.layout.iter() {
            let shift = if spec.name.starts_with("generator.") { 0.01 } else { 0.0 };
            for v in perturbed.get_mut(id).iter_mut() {
                *v += shift;
            }
        }
        let after_gen_change = joint(&backend, &pair, &perturbed, &batch);
        for (id, spec) in pair.layout.iter() {
            if spec.name.starts_with("generator.") {
                prop_assert_eq!(base.get(id), after_disc_change.get(id), "{}", &spec.name);
            } else {
                prop_assert_eq!(base.get(id), after_gen_change.get(id), "{}", &spec.name);
            }
        }
        for sharing in [Sharing::Es, Sharing::Gdes] {
            let (_, other_pair, other_params, other_batch) = setup(&case, sharing, seed);
            let other = joint(&backend, &other_pair, &other_params, &other_batch);
            for (id, spec) in pair.layout.iter() {
                let shared_table = spec.name.contains("word_embeddings") || spec.name.contains("position_embeddings");
                if spec.name.starts_with("generator.") && !shared_table {
                    let other_id = other_pair.layout.find(&spec.name).unwrap();
                    prop_assert_eq!(base.get(id), other.get(other_id), "{} under {:?}", &spec.name, sharing);
                }
            }
        }
    }

    /// GDES: at step 0 the discriminator's embedding equals E_G exactly; after k decoupled
    /// steps (with dropout) the exported embedding equals E_G + E_Δ, and E_Δ has moved.
    #[test]
    fn gdes_export_is_e_g_plus_e_delta(seed in any::<u64>(), steps in 1usize..4) {
        let case = case(seed);
        let (backend, pair, params, batch) = setup(&case, Sharing::Gdes, seed);
        let (word, _) = pair.discriminator_tables(&backend, &params).unwrap();
        prop_assert_eq!(word.as_slice(), tensor(&pair, &params, E_G));
        let mut trainer = Trainer::new(&backend, pair, params, Schedule::Decoupled, 50.0, OptimizerConfig::xadam()).unwrap();
        for step in 0..steps {
            let dropout = |model| Dropout { hidden: 0.1, attention: 0.1, seed, step: step as u32, model };
            trainer.step(&backend, &batch, 1e-3, Some((dropout(0), dropout(1)))).unwrap();
        }
        let (word, _) = trainer.pair.discriminator_tables(&backend, &trainer.params).unwrap();
        let e_g = tensor(&trainer.pair, &trainer.params, E_G);
        let delta = tensor(&trainer.pair, &trainer.params, "E_delta");
        prop_assert!(delta.iter().any(|&d| d != 0.0));
        for k in 0..word.len() {
            prop_assert_eq!(word[k], e_g[k] + delta[k]);
        }
    }
}

/// Central differences of the pair's joint loss in f64 of the f32 model, with dropout on
/// (the counter-based masks make the loss a deterministic function of the weights), against
/// the analytic gradient, for a sample of coordinates of every parameter.
#[test]
fn pair_backward_matches_finite_differences_with_dropout() {
    for seed in [3u64, 8, 21] {
        let case = case(seed);
        for sharing in [Sharing::Gdes, Sharing::Es, Sharing::Nes] {
            let (backend, pair, params, batch) = setup(&case, sharing, seed);
            // Larger weights than the 0.02 init so that every path carries signal.
            let mut params = params;
            for (id, spec) in pair.layout.iter() {
                let rng = RandomStream {
                    seed,
                    step: 7,
                    stream: id.index() as u32,
                };
                for (k, v) in params.get_mut(id).iter_mut().enumerate() {
                    let bump = rng.normal(k as u64) * 0.3;
                    *v = if spec.name.contains("LayerNorm.weight") {
                        1.0 + bump
                    } else {
                        *v * 10.0 + bump
                    };
                }
            }
            let dropout = |model| Dropout {
                hidden: 0.1,
                attention: 0.1,
                seed,
                step: 5,
                model,
            };
            let drop = (dropout(0), dropout(1));
            let loss = |p: &Params| -> f64 {
                let mut g = pair.layout.zeros(&backend).unwrap();
                let l = pair
                    .joint_gradient(
                        &mut BackwardContext::new(&backend, p, &mut g),
                        &batch,
                        2.0,
                        Some((&drop.0, &drop.1)),
                        None,
                    )
                    .unwrap();
                l.total as f64
            };
            let mut grads = pair.layout.zeros(&backend).unwrap();
            pair.joint_gradient(
                &mut BackwardContext::new(&backend, &params, &mut grads),
                &batch,
                2.0,
                Some((&drop.0, &drop.1)),
                None,
            )
            .unwrap();
            // Under GDES the discriminator reads E_G (and a shared position table) through a
            // stop-gradient: the analytic gradient deliberately omits that path, so finite
            // differences of the joint loss do not apply to those tables.
            let frozen = |name: &str| {
                sharing == Sharing::Gdes
                    && (name == E_G
                        || (pair.position_delta.is_some()
                            && name == "generator.deberta.embeddings.position_embeddings.weight"))
            };
            let mut checked = 0;
            for (id, spec) in pair.layout.iter().filter(|(_, s)| !frozen(&s.name)) {
                let n = spec.numel();
                for probe in 0..3 {
                    let k = (probe * 7919 + id.index() * 31) % n;
                    let h = 1e-2f32;
                    let mut plus = params.clone();
                    plus.get_mut(id)[k] += h;
                    let mut minus = params.clone();
                    minus.get_mut(id)[k] -= h;
                    let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
                    let analytic = grads.get(id)[k] as f64;
                    let tol = 2e-3 + 3e-2 * analytic.abs().max(numeric.abs());
                    assert!(
                        (numeric - analytic).abs() <= tol,
                        "seed {seed} {sharing:?} {}[{k}]: numeric {numeric:.6} vs analytic {analytic:.6}",
                        spec.name
                    );
                    checked += 1;
                }
            }
            assert!(checked > 30);
            let _ = backend.name();
        }
    }
}

/// Saving the weights and optimizer state after k steps, restoring them into a fresh trainer
/// and stepping again equals the uninterrupted run bit for bit (both optimizers, both
/// schedules, dropout on).
#[test]
fn optimizer_state_round_trip_is_bit_exact() {
    use deberta_core::train::OptimizerKind;
    let case = case(5);
    for (kind, schedule) in [
        (OptimizerKind::XAdam, Schedule::Decoupled),
        (OptimizerKind::AdamW, Schedule::Joint),
    ] {
        let config = OptimizerConfig {
            kind,
            ..OptimizerConfig::xadam()
        };
        let dropout = |step: u32| {
            let d = |model| Dropout {
                hidden: 0.1,
                attention: 0.1,
                seed: 9,
                step,
                model,
            };
            Some((d(0), d(1)))
        };
        let (backend, pair, params, batch) = setup(&case, Sharing::Gdes, 1);
        let mut straight = Trainer::new(
            &backend,
            pair.clone(),
            params.clone(),
            schedule,
            50.0,
            config,
        )
        .unwrap();
        for step in 0..3 {
            straight
                .step(&backend, &batch, 1e-3, dropout(step))
                .unwrap();
        }
        let mut first =
            Trainer::new(&backend, pair.clone(), params, schedule, 50.0, config).unwrap();
        for step in 0..2 {
            first.step(&backend, &batch, 1e-3, dropout(step)).unwrap();
        }
        // Save: weights plus every optimizer's named moments and step.
        let saved_params = first.params.clone();
        type NamedState = Vec<(String, Vec<f32>)>;
        let saved: Vec<(u64, NamedState)> = first
            .optimizers
            .iter()
            .map(|o| (o.step, o.named_state(&backend, &first.pair.layout).unwrap()))
            .collect();
        drop(first);
        let mut resumed =
            Trainer::new(&backend, pair, saved_params, schedule, 50.0, config).unwrap();
        for (optimizer, (step, state)) in resumed.optimizers.iter_mut().zip(&saved) {
            let layout = resumed.pair.layout.clone();
            optimizer
                .restore(&backend, &layout, *step, |name| {
                    state
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                })
                .unwrap();
        }
        resumed.step(&backend, &batch, 1e-3, dropout(2)).unwrap();
        for (id, spec) in resumed.pair.layout.iter() {
            assert_eq!(
                resumed.params.get(id),
                straight.params.get(id),
                "{kind:?}: {}",
                spec.name
            );
        }
    }
}

/// The trainer fits a fixed batch: both losses fall far below their starting values in a few
/// dozen decoupled steps (no dropout), and the discriminator separates replaced tokens.
#[test]
fn trainer_overfits_a_fixed_batch() {
    let case = case(12);
    for sharing in [Sharing::Gdes, Sharing::Nes] {
        let (backend, pair, params, batch) = setup(&case, sharing, 3);
        let mut trainer = Trainer::new(
            &backend,
            pair,
            params,
            Schedule::Decoupled,
            50.0,
            OptimizerConfig::xadam(),
        )
        .unwrap();
        let first = trainer.step(&backend, &batch, 2e-3, None).unwrap();
        let mut last = first;
        for _ in 0..60 {
            last = trainer.step(&backend, &batch, 2e-3, None).unwrap();
        }
        println!(
            "{sharing:?}: mlm {:.4} → {:.4}, rtd {:.4} → {:.4}",
            first.mlm, last.mlm, first.rtd, last.rtd
        );
        assert!(
            last.mlm < 0.5 * first.mlm,
            "{sharing:?}: MLM {} → {}",
            first.mlm,
            last.mlm
        );
        assert!(
            last.rtd < 0.5 * first.rtd,
            "{sharing:?}: RTD {} → {}",
            first.rtd,
            last.rtd
        );
    }
}

/// Each model trains at its own learning rate (`--discriminator-lr`), in both schedules: with
/// the generator's rate at 0 and the discriminator's above it, one step leaves every generator
/// parameter bit-identical and moves every discriminator-only parameter.
#[test]
fn each_model_trains_at_its_own_learning_rate() {
    let case = case(5);
    for schedule in [Schedule::Decoupled, Schedule::Joint] {
        for sharing in [Sharing::Gdes, Sharing::Nes] {
            let (backend, pair, params, batch) = setup(&case, sharing, 9);
            let before = params.clone();
            let mut trainer = Trainer::new(
                &backend,
                pair,
                params,
                schedule,
                50.0,
                OptimizerConfig {
                    kind: OptimizerKind::AdamW,
                    ..OptimizerConfig::xadam()
                },
            )
            .unwrap();
            trainer
                .generator_phase(
                    &backend,
                    &batch.generator,
                    0.0,
                    None,
                    None,
                    MicroBatch::WHOLE,
                )
                .unwrap();
            trainer
                .discriminator_phase(
                    &backend,
                    &batch.discriminator,
                    1e-3,
                    None,
                    None,
                    MicroBatch::WHOLE,
                )
                .unwrap();
            let generator = trainer.pair.generator_params();
            for &id in generator {
                assert_eq!(
                    trainer.params.get(id),
                    before.get(id),
                    "{schedule:?}/{sharing:?}: generator parameter {id:?} moved at lr 0"
                );
            }
            for &id in trainer.pair.discriminator_params() {
                if generator.contains(&id) {
                    continue;
                }
                assert!(
                    trainer.params.get(id) != before.get(id),
                    "{schedule:?}/{sharing:?}: discriminator parameter {id:?} did not move"
                );
            }
        }
    }
}

/// Rows `rows` of a case's batch, uploaded as the pair's batch.
fn micro_batch(
    backend: &CpuBackend,
    pair: &RtdPair,
    case: &Case,
    rows: std::ops::Range<usize>,
) -> PairBatch<CpuBackend> {
    let span = rows.start * case.len..rows.end * case.len;
    let host = HostBatch {
        input_ids: &case.ids[span.clone()],
        attention_mask: &case.mask[span.clone()],
        token_type_ids: None,
        batch: rows.len(),
        len: case.len,
    };
    PairBatch::upload(
        backend,
        pair,
        &host,
        &case.corrupted[span.clone()],
        &case.labels[span],
    )
    .unwrap()
}

/// One step of `micro` micro-batches `batches` of a trainer made like `setup`'s.
fn train(
    trainer: &mut Trainer<CpuBackend>,
    backend: &CpuBackend,
    batches: &[(PairBatch<CpuBackend>, MicroBatch)],
) {
    for (batch, micro) in batches {
        trainer
            .generator_phase(backend, &batch.generator, 1e-3, None, None, *micro)
            .unwrap();
    }
    for (batch, micro) in batches {
        trainer
            .discriminator_phase(backend, &batch.discriminator, 2e-3, None, None, *micro)
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Two processes of one micro-batch each, their gradients summed by the host's
    /// `AllReduce` (over threads here, over MPI in `deberta pretrain`), end the step with the
    /// weights of one process accumulating both micro-batches, bit for bit, in every schedule
    /// and sharing mode, whatever the bucket size.
    #[test]
    fn two_processes_equal_two_accumulated_micro_batches(seed in any::<u64>()) {
        let case = (seed..).map(case).find(|c| c.batch == 2).unwrap();
        for schedule in [Schedule::Decoupled, Schedule::Joint] {
            for sharing in [Sharing::Gdes, Sharing::Es, Sharing::Nes] {
                let make = || {
                    let (backend, pair, params, _) = setup(&case, sharing, 3);
                    let trainer = Trainer::new(
                        &backend, pair, params, schedule, 50.0, OptimizerConfig::xadam(),
                    )
                    .unwrap();
                    (backend, trainer)
                };
                let (backend, mut one) = make();
                let batches = [
                    (micro_batch(&backend, &one.pair, &case, 0..1), MicroBatch::of(0, 2)),
                    (micro_batch(&backend, &one.pair, &case, 1..2), MicroBatch::of(1, 2)),
                ];
                train(&mut one, &backend, &batches);
                // One exchange after the backward pass, and buckets of 26 values: one per
                // parameter, handed over layer by layer while the backward pass runs.
                for bucket_mib in [0.0, 1e-4] {
                    let slots = Arc::new(Mutex::new(vec![Vec::new(); 2]));
                    let barrier = Arc::new(Barrier::new(2));
                    let replicas: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..2)
                            .map(|rank| {
                                let (slots, barrier) = (slots.clone(), barrier.clone());
                                let make = &make;
                                let case = &case;
                                scope.spawn(move || {
                                    let (backend, mut trainer) = make();
                                    let gather = move |local: &[u32]| {
                                        slots.lock().unwrap()[rank] = local.to_vec();
                                        barrier.wait();
                                        let all = slots.lock().unwrap().clone();
                                        barrier.wait();
                                        all
                                    };
                                    trainer.set_reducer(Box::new(AllReduce::with_gather(
                                        gather,
                                        bucket_mib,
                                        Rc::new(Cell::new(ExchangeStats::default())),
                                    )));
                                    let micro = MicroBatch { index: 0, count: 1, total: 2 };
                                    let batch = micro_batch(&backend, &trainer.pair, case, rank..rank + 1);
                                    train(&mut trainer, &backend, &[(batch, micro)]);
                                    trainer.params.iter().cloned().collect()
                                })
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    let expected: Vec<Vec<f32>> = one.params.iter().cloned().collect();
                    for (rank, replica) in replicas.iter().enumerate() {
                        let same = replica
                            .iter()
                            .zip(&expected)
                            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
                        prop_assert!(same, "{schedule:?}/{sharing:?}, buckets of {bucket_mib} MiB: process {rank} differs from one process");
                    }
                }
            }
        }
    }
}

/// Dropout of both models at `step` (seed 9).
fn pair_dropout(step: u32) -> Option<(Dropout, Dropout)> {
    let d = |model| Dropout {
        hidden: 0.1,
        attention: 0.1,
        seed: 9,
        step,
        model,
    };
    Some((d(0), d(1)))
}

/// An XAdam trainer of `pair` from `params` (gradient norms clipped at 50) with dynamic loss
/// scaling on or off.
fn xadam_trainer(
    backend: &CpuBackend,
    pair: &RtdPair,
    params: &Params,
    schedule: Schedule,
    scaling: bool,
) -> Trainer<CpuBackend> {
    let config = OptimizerConfig::xadam();
    let mut trainer = Trainer::new(
        backend,
        pair.clone(),
        params.clone(),
        schedule,
        50.0,
        config,
    )
    .unwrap();
    trainer.set_loss_scaling(scaling);
    trainer
}

/// Dynamic loss scaling with f32 products changes no bit of a run (the scale is a power of
/// two and every gradient is linear in the loss's): five steps of both schedules with dropout
/// give the unscaled run's losses, weights, moments and gradient norms, and no step is skipped.
#[test]
fn loss_scaling_with_f32_products_changes_no_bit() {
    let case = case(7);
    for schedule in [Schedule::Decoupled, Schedule::Joint] {
        let (backend, pair, params, batch) = setup(&case, Sharing::Gdes, 2);
        let run = |scaling: bool| {
            let mut trainer = xadam_trainer(&backend, &pair, &params, schedule, scaling);
            let losses: Vec<_> = (0..5)
                .map(|step| {
                    trainer
                        .step(&backend, &batch, 1e-3, pair_dropout(step))
                        .unwrap()
                })
                .collect();
            (trainer, losses)
        };
        let ((plain, plain_losses), (scaled, scaled_losses)) = (run(false), run(true));
        assert_eq!(plain_losses, scaled_losses, "{schedule:?}");
        for (id, spec) in plain.pair.layout.iter() {
            assert_eq!(
                plain.params.get(id),
                scaled.params.get(id),
                "{schedule:?}: {}",
                spec.name
            );
        }
        for (a, b) in plain.optimizers.iter().zip(&scaled.optimizers) {
            assert_eq!((a.step, &a.m, &a.v), (b.step, &b.m, &b.v), "{schedule:?}");
            assert_eq!(
                a.last_grad_norm(&backend).unwrap(),
                b.last_grad_norm(&backend).unwrap()
            );
        }
        assert!(plain.loss_scalers().is_empty());
        assert_eq!(scaled.loss_scalers().len(), plain.optimizers.len());
        for scaler in scaled.loss_scalers() {
            assert_eq!(
                (scaler.scale(), scaler.clean_steps(), scaler.skipped_steps()),
                (LossScaler::INITIAL_SCALE, 5, 0)
            );
        }
    }
}

/// Sums nothing (one process of a pretend two) but writes an infinity into the gradient of
/// `param` on the `at`-th phase that produces it: an overflow injected into one gradient.
struct InjectInfinity {
    param: ParamId,
    at: usize,
    seen: usize,
}

impl GradientsReady<CpuBackend> for InjectInfinity {
    fn ready(
        &mut self,
        _: &CpuBackend,
        _: &Params,
        _: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        Ok(())
    }
}

impl GradientReducer<CpuBackend> for InjectInfinity {
    fn finish(
        &mut self,
        backend: &CpuBackend,
        grads: &mut Params,
        ids: &[ParamId],
    ) -> Result<(), deberta_core::Error> {
        if ids.contains(&self.param) {
            self.seen += 1;
            if self.seen == self.at {
                backend.write(grads.get_mut(self.param), 0, &[f32::INFINITY])?;
            }
        }
        Ok(())
    }
}

/// An infinity in one discriminator gradient at step 2 skips that update — the
/// discriminator's weights, moments and step count stay as step 1 left them, bit for bit — and
/// halves the discriminator's loss scale, while the generator (decoupled: its own scaler)
/// steps as without the infinity; under the joint schedule the whole update is skipped. The
/// next step runs at the halved scale.
#[test]
fn an_overflow_skips_the_update_and_halves_the_scale() {
    let case = case(11);
    for schedule in [Schedule::Decoupled, Schedule::Joint] {
        let (backend, pair, params, batch) = setup(&case, Sharing::Gdes, 4);
        let target = pair.discriminator_params()[0];
        let trainer = |at: usize| {
            let mut trainer = xadam_trainer(&backend, &pair, &params, schedule, true);
            trainer.set_reducer(Box::new(InjectInfinity {
                param: target,
                at,
                seen: 0,
            }));
            trainer
        };
        // One micro-batch of a pretend two-process step: the reducer runs.
        let micro = MicroBatch {
            index: 0,
            count: 1,
            total: 2,
        };
        let step = |trainer: &mut Trainer<CpuBackend>| {
            trainer
                .generator_phase(&backend, &batch.generator, 1e-3, None, None, micro)
                .unwrap();
            trainer
                .discriminator_phase(&backend, &batch.discriminator, 1e-3, None, None, micro)
                .unwrap();
        };
        let (mut clean, mut injected) = (trainer(usize::MAX), trainer(2));
        step(&mut clean);
        step(&mut injected);
        let before = injected.params.clone();
        let state = |t: &Trainer<CpuBackend>| {
            t.optimizers
                .iter()
                .map(|o| (o.step, o.m.clone(), o.v.clone()))
                .collect::<Vec<_>>()
        };
        let state_before = state(&injected);
        step(&mut clean);
        step(&mut injected);
        let last = injected.optimizers.len() - 1;
        let scaler = injected.loss_scalers()[last];
        assert_eq!(
            (scaler.scale(), scaler.clean_steps(), scaler.skipped_steps()),
            (LossScaler::INITIAL_SCALE / 2.0, 0, 1),
            "{schedule:?}"
        );
        assert_eq!(
            scaler.last(),
            Some(ScaledUpdate {
                scale: LossScaler::INITIAL_SCALE,
                skipped: true
            })
        );
        assert_eq!(state(&injected)[last], state_before[last], "{schedule:?}");
        assert!(
            !injected.optimizers[last]
                .last_grad_norm(&backend)
                .unwrap()
                .is_finite()
        );
        for (id, spec) in injected.pair.layout.iter() {
            let in_skipped_update = injected.optimizers[last].params.contains(&id);
            let expected = if in_skipped_update {
                before.get(id)
            } else {
                clean.params.get(id)
            };
            assert_eq!(
                injected.params.get(id),
                expected,
                "{schedule:?}: {}",
                spec.name
            );
        }
        if schedule == Schedule::Decoupled {
            let generator = injected.loss_scalers()[0];
            assert_eq!((generator.scale(), generator.clean_steps()), (16384.0, 2));
            assert_eq!(state(&injected)[0], state(&clean)[0]);
        }
        // The next step applies at the halved scale.
        step(&mut injected);
        let scaler = injected.loss_scalers()[last];
        assert_eq!(
            scaler.last(),
            Some(ScaledUpdate {
                scale: LossScaler::INITIAL_SCALE / 2.0,
                skipped: false
            })
        );
        assert_eq!(injected.optimizers[last].step, 2);
    }
}
