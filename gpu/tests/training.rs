//! Training on the wgpu backend: a few steps of MLM training with dropout and the optimizer
//! give the CPU's losses (dropout masks are identical, the rest agrees to rounding), and after
//! the first steps no step creates a device buffer.

mod common;

use std::path::Path;

use common::gpu;
use deberta_core::model::{BackwardContext, DeviceBatch, Dropout, HostBatch};
use deberta_core::train::{
    GeneratorBatch, MlmTargets, Optimizer, OptimizerConfig, Workspace, mlm_step,
};
use deberta_core::{Backend, CpuBackend};
use deberta_host::checkpoint::read_tensor_file;
use deberta_host::model_dir::load_model_dir;

/// MLM losses of `steps` training steps on the `tiny` fixture, and the device buffers created
/// after each step (`None` on the CPU).
fn train<B: Backend>(
    backend: &B,
    steps: u32,
    buffers: impl Fn() -> Option<u64>,
) -> (Vec<f32>, Vec<Option<u64>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny");
    let loaded = load_model_dir(&dir).unwrap();
    let inputs = read_tensor_file(&dir.join("inputs.safetensors")).unwrap();
    let ints = |name: &str| inputs[name].as_int().unwrap().to_vec();
    let (ids, mask, labels) = (ints("input_ids"), ints("attention_mask"), ints("labels"));
    let shape = inputs["input_ids"].shape.clone();
    let mut params = loaded.upload(backend).unwrap();
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
    (losses, created)
}

#[test]
fn training_steps_match_the_cpu_and_reuse_every_buffer() {
    let Some(gpu) = gpu() else { return };
    let (cpu_losses, _) = train(&CpuBackend::new(), 4, || None);
    let (gpu_losses, created) = train(gpu, 4, || Some(gpu.buffers_created()));
    println!("losses cpu {cpu_losses:?} gpu {gpu_losses:?}; buffers created {created:?}");
    for (c, g) in cpu_losses.iter().zip(&gpu_losses) {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "cpu {c} vs gpu {g}"
        );
    }
    assert_eq!(
        created[2], created[3],
        "a steady-state step created device buffers"
    );
}
