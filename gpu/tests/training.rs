//! Training on the wgpu backend: a few steps of MLM training with dropout and the optimizer
//! give the CPU's losses (dropout masks are identical, the rest agrees to rounding), and after
//! the first steps no step creates a device buffer. Loss-scaled updates: gradients holding an
//! infinity or a NaN skip the update bit for bit on the device; finite ones unscale to the CPU's
//! update.

mod common;

use std::path::Path;

use common::gpu;
use deberta_core::config::{PosAttType, RawConfig};
use deberta_core::model::{BackwardContext, DeviceBatch, Dropout, HostBatch, MlmLayout};
use deberta_core::train::{
    GeneratorBatch, MicroBatch, MlmTargets, Optimizer, OptimizerConfig, PairBatch, RtdPair,
    Schedule, Sharing, Trainer, Workspace, mlm_step,
};
use deberta_core::{Backend, CpuBackend, ModelConfig, Precision};
use deberta_gpu::{AdapterChoice, DeviceOptions, WgpuBackend};
use deberta_host::checkpoint::read_tensor_file;
use deberta_host::model_dir::load_model_dir;

/// What [`train`] reports: the MLM losses, the device buffers created after each step (`None`
/// on the CPU) and the elements of the attention probabilities and c2p/p2c tables the
/// workspace holds after the last step.
struct Trained {
    losses: Vec<f32>,
    created: Vec<Option<u64>>,
    probability_elements: usize,
}

/// `steps` MLM training steps on the `tiny` fixture, the `Linear` and attention products at
/// `products`.
fn train<B: Backend>(
    backend: &B,
    steps: u32,
    products: Precision,
    buffers: impl Fn() -> Option<u64>,
) -> Trained {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny");
    let loaded = load_model_dir(&dir).unwrap();
    let inputs = read_tensor_file(&dir.join("inputs.safetensors")).unwrap();
    let ints = |name: &str| inputs[name].as_int().unwrap().to_vec();
    let (ids, mask, labels) = (ints("input_ids"), ints("attention_mask"), ints("labels"));
    let shape = inputs["input_ids"].shape.clone();
    let mut params = loaded.upload(backend).unwrap();
    params.set_products(products);
    let mut grads = loaded.layout.zeros(backend).unwrap();
    let trainable: Vec<_> = loaded.layout.iter().map(|(id, _)| id).collect();
    let mut optimizer = Optimizer::new(
        backend,
        &loaded.layout,
        &trainable,
        OptimizerConfig::xadam(),
    )
    .unwrap();
    let mut workspace = Workspace::new();
    let (mut losses, mut created) = (Vec::new(), Vec::new());
    for step in 0..steps {
        // A new batch every step, as a data loader would upload it.
        let host = HostBatch {
            input_ids: &ids,
            attention_mask: &mask,
            token_type_ids: None,
            batch: shape[0],
            len: shape[1],
        };
        let batch = GeneratorBatch {
            batch: DeviceBatch::upload(backend, loaded.config(), &host).unwrap(),
            targets: MlmTargets::from_labels(backend, &labels, loaded.config().vocab_size).unwrap(),
        };
        for g in grads.iter_mut() {
            backend.fill(g, 0.0).unwrap();
        }
        let dropout = Dropout {
            hidden: 0.1,
            attention: 0.1,
            seed: 42,
            step,
            model: 0,
        };
        let mut ctx = BackwardContext::new(backend, &params, &mut grads);
        let loss = mlm_step(
            &loaded.model,
            &mut ctx,
            &batch,
            Some(&dropout),
            1.0,
            &mut workspace,
            None,
        )
        .unwrap();
        optimizer
            .update(backend, &mut params, &grads, 1e-3)
            .unwrap();
        losses.push(loss);
        created.push(buffers());
    }
    let acts = workspace.activations().expect("a forward ran");
    let probability_elements = acts
        .layers
        .iter()
        .map(|layer| &layer.attention)
        .flat_map(|a| {
            [
                Some(&a.probs),
                a.probs_dropped.as_ref(),
                a.c2p.as_ref(),
                a.p2c.as_ref(),
            ]
        })
        .flatten()
        .map(|t| backend.len(t))
        .sum();
    Trained {
        losses,
        created,
        probability_elements,
    }
}

#[test]
fn training_steps_match_the_cpu_and_reuse_every_buffer() {
    if gpu().is_none() {
        return;
    }
    // A device of its own: the buffer count is per device, and the tests beside this one
    // allocate on the shared one. With the multi-tensor kernels, a GPU's default (a software
    // adapter's is a kernel per tensor), so that its optimizers update through them.
    let options = DeviceOptions {
        multi_tensor: Some(true),
        ..DeviceOptions::from_env().unwrap()
    };
    let own = WgpuBackend::with_options(AdapterChoice::default(), options).expect("second device");
    assert!(own.multi_tensor());
    let gpu = &own;
    let cpu = train(&CpuBackend::new(), 4, Precision::F32, || None);
    let gpu_run = train(gpu, 4, Precision::F32, || Some(gpu.buffers_created()));
    let (created, cpu_losses, gpu_losses) = (&gpu_run.created, &cpu.losses, &gpu_run.losses);
    println!("losses cpu {cpu_losses:?} gpu {gpu_losses:?}; buffers created {created:?}");
    for (c, g) in cpu_losses.iter().zip(gpu_losses) {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "cpu {c} vs gpu {g}"
        );
    }
    assert_eq!(
        created[2], created[3],
        "a steady-state step created device buffers"
    );
    // The CPU's composed training attention keeps the probabilities (and their dropped copy,
    // and the c2p/p2c tables); the fused wgpu one keeps per-row statistics and never
    // allocates them.
    println!(
        "probability elements: cpu {}, wgpu {}",
        cpu.probability_elements, gpu_run.probability_elements
    );
    assert!(cpu.probability_elements > 0);
    assert_eq!(gpu_run.probability_elements, 0);
}

/// Mixed precision's f16 products (where the adapter has `SHADER_F16`) take the same fused
/// training attention, whose kernels round their operands to f16 as the matmuls do: the losses
/// stay within f16 rounding of the CPU's f32 ones, and no probabilities are allocated.
#[test]
fn f16_training_steps_keep_no_probabilities() {
    let Some(gpu) = gpu() else { return };
    let products = gpu.mixed_products();
    println!("mixed-precision products on this adapter: {products:?}");
    let cpu = train(&CpuBackend::new(), 4, Precision::F32, || None);
    let mixed = train(gpu, 4, products, || None);
    println!(
        "losses cpu f32 {:?}, wgpu {products:?} {:?}",
        cpu.losses, mixed.losses
    );
    for (c, g) in cpu.losses.iter().zip(&mixed.losses) {
        // f16 operands: relative rounding 2⁻¹¹ per operand, through two layers and the head
        // (measured on lavapipe: 1.4e-5 nats).
        assert!(
            (c - g).abs() <= 1e-3 * c.abs().max(1.0),
            "cpu {c} vs gpu {g}"
        );
    }
    assert_eq!(mixed.probability_elements, 0);
}

/// Weights, moments and step count of an optimizer, on the host.
type Snapshot = (Vec<Vec<f32>>, Vec<Vec<f32>>, u64);

/// The [`Snapshot`] of an optimizer over `weights`.
fn snapshot<B: Backend>(
    backend: &B,
    weights: &deberta_core::model::ParamStore<B::Tensor>,
    optimizer: &Optimizer<B::Tensor>,
) -> Snapshot {
    let host = |t: &B::Tensor| {
        let mut out = vec![0.0; backend.len(t)];
        backend.download(t, &mut out).unwrap();
        out
    };
    let params = optimizer.params.iter().map(|&id| host(weights.get(id)));
    let moments = optimizer.m.iter().chain(&optimizer.v).map(host);
    (params.collect(), moments.collect(), optimizer.step)
}

/// The loss-scaled update on the device: gradients holding an infinity or a NaN (summed into
/// the per-parameter norms on the device and read back) skip the update — weights, moments
/// and step count bit-identical — and finite ones, seeded with the loss scale 2¹⁴, give the
/// CPU's unscaled update (the clip active) within rounding.
#[test]
fn loss_scaled_updates_skip_on_overflow_and_unscale_on_the_device() {
    use deberta_core::model::{Init, ParamLayout};
    let Some(gpu) = gpu() else { return };
    let mut layout = ParamLayout::new();
    let ids = [
        layout.add("a.weight".into(), &[300], Init::Normal(0.5)),
        layout.add("b.bias".into(), &[7, 5], Init::Normal(0.5)),
    ];
    let scale = 16384.0f32;
    let gradient = |i: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|k| ((k * 7 + i) % 13) as f32 * 0.3 - 1.7)
            .collect()
    };
    // One step on `backend` from gradients `scaled` × the loss's, with `poison` written into
    // one element first; returns (applied, snapshot before, snapshot after).
    fn step<B: Backend>(
        backend: &B,
        layout: &ParamLayout,
        ids: &[deberta_core::model::ParamId],
        gradient: impl Fn(usize, usize) -> Vec<f32>,
        loss_scale: f32,
        poison: Option<f32>,
    ) -> (bool, Snapshot, Snapshot) {
        let mut weights = layout.initialise(backend, 3).unwrap();
        let mut grads = layout.zeros(backend).unwrap();
        let mut optimizer = Optimizer::new(backend, layout, ids, OptimizerConfig::xadam()).unwrap();
        // A first, clean update so that the moments and step are not zero.
        for (i, &id) in ids.iter().enumerate() {
            let n = layout.spec(id).numel();
            let g: Vec<f32> = gradient(i, n).iter().map(|v| v * loss_scale).collect();
            backend.write(grads.get_mut(id), 0, &g).unwrap();
        }
        assert!(
            optimizer
                .update_scaled(backend, &mut weights, &grads, |_| 1e-2, loss_scale)
                .unwrap()
        );
        if let Some(poison) = poison {
            backend.write(grads.get_mut(ids[1]), 3, &[poison]).unwrap();
        }
        let before = snapshot(backend, &weights, &optimizer);
        let applied = optimizer
            .update_scaled(backend, &mut weights, &grads, |_| 1e-2, loss_scale)
            .unwrap();
        (applied, before, snapshot(backend, &weights, &optimizer))
    }
    for poison in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let (applied, before, after) = step(gpu, &layout, &ids, gradient, scale, Some(poison));
        assert!(!applied, "{poison}: the update was applied");
        assert_eq!(before.2, after.2, "{poison}: step count");
        let bits = |s: &Snapshot| -> Vec<u32> {
            s.0.iter()
                .chain(&s.1)
                .flatten()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(
            bits(&before),
            bits(&after),
            "{poison}: weights or moments changed"
        );
    }
    let (applied, _, gpu_after) = step(gpu, &layout, &ids, gradient, scale, None);
    assert!(applied);
    let (_, _, cpu_after) = step(&CpuBackend::new(), &layout, &ids, gradient, 1.0, None);
    assert_eq!(gpu_after.2, cpu_after.2);
    for (g, c) in gpu_after
        .0
        .iter()
        .chain(&gpu_after.1)
        .zip(cpu_after.0.iter().chain(&cpu_after.1))
    {
        for (x, y) in g.iter().zip(c) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "gpu {x} vs cpu {y}"
            );
        }
    }
}

/// The two models of a replaced-token-detection step never hold activations or gradients at
/// once: each phase releases the other model's workspace, whose buffers the pool then hands to
/// this one, and gives its gradients (and their micro-batch sums) back after its update, in
/// either schedule, with and without micro-batches. In steady state each phase ends
/// with the same bytes in live tensors as in the first step (where the other model had not yet
/// allocated any) and no gradient buffer, and no step after the second creates a device
/// buffer, nor after the third a bind group.
#[test]
fn each_phase_releases_the_other_models_activations_and_gradients() {
    if gpu().is_none() {
        return;
    }
    for (schedule, micro_batches) in [
        (Schedule::Decoupled, 1),
        (Schedule::Decoupled, 2),
        (Schedule::Joint, 2),
    ] {
        release_each_phase(schedule, micro_batches);
    }
}

/// Four steps of `micro_batches` micro-batches on a device of its own (the byte counts are per
/// device), checked as [`each_phase_releases_the_other_models_activations_and_gradients`] says.
fn release_each_phase(schedule: Schedule, micro_batches: usize) {
    let own =
        WgpuBackend::with_options(AdapterChoice::default(), DeviceOptions::from_env().unwrap())
            .expect("second device");
    let backend = &own;
    let raw = |layers: i64| RawConfig {
        vocab_size: Some(64),
        hidden_size: Some(32),
        num_hidden_layers: Some(layers),
        num_attention_heads: Some(2),
        intermediate_size: Some(128),
        max_position_embeddings: Some(64),
        relative_attention: Some(true),
        position_buckets: Some(16),
        max_relative_positions: Some(64),
        pos_att_type: Some(PosAttType {
            c2p: true,
            p2c: true,
        }),
        ..RawConfig::default()
    };
    let generator = ModelConfig::from_raw(&raw(1)).unwrap();
    let discriminator = ModelConfig::from_raw(&raw(2)).unwrap();
    let pair = RtdPair::new(
        &generator,
        &discriminator,
        Sharing::Gdes,
        MlmLayout::LmPredictions,
        true,
    )
    .unwrap();
    let params = pair.layout.initialise(backend, 7).unwrap();
    let (batch, len) = (4, 48);
    let ids: Vec<i64> = (0..batch * len).map(|i| 5 + (i as i64 * 7) % 50).collect();
    let mask = vec![1i64; ids.len()];
    let masked = |i: usize| i % 6 == 1;
    let input: Vec<i64> = (0..ids.len())
        .map(|i| if masked(i) { 3 } else { ids[i] })
        .collect();
    let labels: Vec<i64> = (0..ids.len())
        .map(|i| if masked(i) { ids[i] } else { -100 })
        .collect();
    let corrupted: Vec<i64> = (0..ids.len())
        .map(|i| if i % 12 == 1 { 60 } else { ids[i] })
        .collect();
    let host = HostBatch {
        input_ids: &input,
        attention_mask: &mask,
        token_type_ids: None,
        batch,
        len,
    };
    let batch = PairBatch::upload(backend, &pair, &host, &corrupted, &labels).unwrap();
    let mut trainer = Trainer::new(
        backend,
        pair,
        params,
        schedule,
        50.0,
        OptimizerConfig::xadam(),
    )
    .unwrap();
    let in_use = || backend.device_memory().in_use_bytes;
    let (mut after_generator, mut after_discriminator, mut created) =
        (Vec::new(), Vec::new(), Vec::new());
    for step in 0..4 {
        let dropout = |model| Dropout {
            hidden: 0.1,
            attention: 0.1,
            seed: 3,
            step,
            model,
        };
        for j in 0..micro_batches {
            trainer
                .generator_phase(
                    backend,
                    &batch.generator,
                    1e-3,
                    Some(&dropout(0)),
                    None,
                    MicroBatch::of(j, micro_batches),
                )
                .unwrap();
        }
        after_generator.push(in_use());
        // The joint update waits for the discriminator's phase.
        if schedule == Schedule::Decoupled {
            assert!(trainer.grads.iter().all(|g| backend.len(g) == 0));
        }
        for j in 0..micro_batches {
            trainer
                .discriminator_phase(
                    backend,
                    &batch.discriminator,
                    1e-3,
                    Some(&dropout(1)),
                    None,
                    MicroBatch::of(j, micro_batches),
                )
                .unwrap();
        }
        after_discriminator.push(in_use());
        assert!(trainer.grads.iter().all(|g| backend.len(g) == 0));
        created.push((
            backend.buffers_created(),
            backend.bind_groups_created().unwrap(),
        ));
    }
    let peak = backend.device_memory().peak_in_use_bytes;
    println!(
        "{schedule:?}, {micro_batches} micro-batches: bytes in live tensors after the generator phases {after_generator:?}, after the \
         discriminator phases {after_discriminator:?}, peak {peak}; buffers and bind groups created {created:?}"
    );
    assert!(
        after_generator.iter().all(|&b| b == after_generator[0]),
        "the discriminator's activations outlived its phase"
    );
    assert!(
        after_discriminator
            .iter()
            .all(|&b| b == after_discriminator[0]),
        "the generator's activations outlived its phase"
    );
    assert_eq!(
        created[1].0, created[3].0,
        "a steady-state step created device buffers"
    );
    // Each tensor of a released workspace gets its buffer back the next step, so every
    // kernel finds its cached bind group.
    assert_eq!(
        created[2].1, created[3].1,
        "a steady-state step created bind groups"
    );
}
