//! Running the inference forward pass and collecting its outputs under the fixture names.

use deberta_core::model::{Activations, AttentionProbs, DeviceBatch, ForwardOptions, HostBatch};
use deberta_core::relative_position::relative_position;
use deberta_core::{Backend, Precision};

use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};
use crate::model_dir::LoadedModel;
use crate::tensor::HostTensor;

/// Copies a device tensor to the host with the given shape.
pub fn fetch<B: Backend>(backend: &B, tensor: &B::Tensor, shape: Vec<usize>) -> Result<HostTensor> {
    let mut values = vec![0.0f32; shape.iter().product()];
    backend
        .download(tensor, &mut values)
        .map_err(|e| Error::model("reading results from the device", e))?;
    Ok(HostTensor::float(shape, values))
}

/// A loaded model on a backend, with its weight-only constants (the normalised relative table
/// and every layer's position projections) computed once.
pub struct Session<'m, 'b, B: Backend> {
    backend: &'b B,
    loaded: &'m LoadedModel,
    params: deberta_core::model::ParamStore<B::Tensor>,
    relative: Option<deberta_core::model::encoder::RelativeEmbeddings<B::Tensor>>,
}

impl<'m, 'b, B: Backend> Session<'m, 'b, B> {
    /// Uploads the weights and precomputes the position projections (f32 products).
    pub fn new(backend: &'b B, loaded: &'m LoadedModel) -> Result<Self> {
        Self::with_precision(backend, loaded, Precision::F32)
    }

    /// [`Session::new`] with the `Linear` products at `precision` (weights converted once).
    pub fn with_precision(
        backend: &'b B,
        loaded: &'m LoadedModel,
        precision: Precision,
    ) -> Result<Self> {
        let mut params = loaded.upload(backend)?;
        // The position projections multiply the f32 weights, which the conversion then frees.
        let relative = loaded
            .model
            .relative_embeddings(backend, &params, None, None)
            .map_err(|e| Error::model("projecting the relative embeddings", e))?;
        params
            .pack(backend, &loaded.layout, precision)
            .map_err(|e| Error::model("converting the weights", e))?;
        Ok(Session {
            backend,
            loaded,
            params,
            relative,
        })
    }

    /// Validates and uploads a batch, then runs the inference forward pass (no attention
    /// probabilities kept: every attention may run fused).
    pub fn run(&self, host: &HostBatch<'_>) -> Result<(DeviceBatch<B>, Activations<B::Tensor>)> {
        self.run_with(host, AttentionProbs::Discard)
    }

    /// [`Session::run`] keeping the attention probabilities `probs` asks for.
    pub fn run_with(
        &self,
        host: &HostBatch<'_>,
        probs: AttentionProbs,
    ) -> Result<(DeviceBatch<B>, Activations<B::Tensor>)> {
        let model = &self.loaded.model;
        let batch = DeviceBatch::upload(self.backend, &model.config, host)
            .map_err(|e| Error::model("invalid input", e))?;
        let mut acts = model
            .activations(self.backend, &batch, None, false)
            .map_err(|e| Error::model("allocating activations", e))?;
        model
            .forward(
                self.backend,
                &self.params,
                self.relative.as_ref(),
                &batch,
                &ForwardOptions {
                    attention_probs: probs,
                    ..ForwardOptions::inference()
                },
                &mut acts,
            )
            .map_err(|e| Error::model("forward pass", e))?;
        Ok((batch, acts))
    }

    /// Runs the forward pass and collects every output under the fixture names and shapes:
    /// `embedding_output`, `hidden_states.{0..L}`, `last_hidden_state`, `attentions.0`,
    /// `rel_pos`, and `mlm_logits` / `rtd_logits` when the model has those heads. Layer 0's
    /// attention runs unfused (it yields `attentions.0`); the others may run fused.
    pub fn outputs(&self, host: &HostBatch<'_>) -> Result<TensorMap> {
        self.outputs_with(host, AttentionProbs::FirstLayer)
    }

    /// [`Session::outputs`] under another probabilities policy: without layer 0's
    /// (`AttentionProbs::Discard`: every attention may run fused) `attentions.0` is left out.
    pub fn outputs_with(&self, host: &HostBatch<'_>, probs: AttentionProbs) -> Result<TensorMap> {
        let (batch, acts) = self.run_with(host, probs)?;
        let cfg = &self.loaded.model.config;
        let (b, s, h) = (batch.batch, batch.len, cfg.hidden_size);
        let backend = self.backend;
        let mut out = TensorMap::new();
        out.insert(
            "embedding_output".into(),
            fetch(backend, &acts.embeddings.output, vec![b, s, h])?,
        );
        for i in 0..=cfg.num_hidden_layers {
            if let Some(state) = acts.hidden_state(i) {
                out.insert(
                    format!("hidden_states.{i}"),
                    fetch(backend, state, vec![b, s, h])?,
                );
            }
        }
        out.insert(
            "last_hidden_state".into(),
            fetch(backend, acts.last_hidden_state(), vec![b, s, h])?,
        );
        if let Some(layer) = acts.layers.first().filter(|_| probs.keeps(0)) {
            let heads = cfg.num_attention_heads;
            out.insert(
                "attentions.0".into(),
                fetch(backend, &layer.attention.probs, vec![b, heads, s, s])?,
            );
        }
        if cfg.relative_attention {
            let rel: Vec<f32> = (0..s * s)
                .map(|k| relative_position(k / s, k % s, cfg) as f32)
                .collect();
            out.insert("rel_pos".into(), HostTensor::float(vec![1, s, s], rel));
        }
        if let Some(mlm) = &acts.mlm {
            out.insert(
                "mlm_logits".into(),
                fetch(backend, &mlm.logits, vec![b, s, cfg.vocab_size])?,
            );
        }
        if let Some(rtd) = &acts.rtd {
            out.insert(
                "rtd_logits".into(),
                fetch(backend, &rtd.logits, vec![b, s])?,
            );
        }
        Ok(out)
    }

    /// The loaded model.
    pub fn loaded(&self) -> &LoadedModel {
        self.loaded
    }
}
