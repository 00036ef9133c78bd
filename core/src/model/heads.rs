//! Prediction heads, forward and backward: the MLM head with its decoder tied to the word
//! embeddings (SPEC §5.2) and the RTD head `LMMaskPredictionHead` (SPEC §5.3).

use alloc::format;

use super::context::BackwardContext;
use super::modules::{LayerNorm, Linear};
use super::params::{Init, ParamId, ParamLayout, ParamStore};
use crate::backend::Backend;
use crate::kernels::{MatmulSpec, MatrixLayout};
use crate::{Activation, Error, ModelConfig, Precision};

/// Which state-dict layout an MLM head uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlmLayout {
    /// `lm_predictions.lm_head.{dense, LayerNorm, bias}` (microsoft/DeBERTa, HF `legacy=False`);
    /// the transform keeps the hidden width.
    LmPredictions,
    /// `cls.predictions.{transform.dense, transform.LayerNorm, bias}` (HF `legacy=True`); the
    /// transform maps to `embedding_size`.
    ClsPredictions,
}

impl MlmLayout {
    /// The prefix of the head's parameters.
    pub fn prefix(self) -> &'static str {
        match self {
            MlmLayout::LmPredictions => "lm_predictions.lm_head",
            MlmLayout::ClsPredictions => "cls.predictions",
        }
    }
}

/// `logits = LN(act(dense(h)))·E_wordᵀ + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlmHead {
    /// The state-dict layout.
    pub layout: MlmLayout,
    /// `dense` (`transform.dense`).
    pub dense: Linear,
    /// The activation (`hidden_act`).
    pub activation: Activation,
    /// `LayerNorm` (`transform.LayerNorm`).
    pub norm: LayerNorm,
    /// The output bias, `[vocab]`.
    pub bias: ParamId,
    /// The tied decoder: the model's word-embedding table, `[vocab, width]`.
    pub decoder: ParamId,
    /// Vocabulary size.
    pub vocab: usize,
}

/// Saved activations of the MLM head over `R` rows.
pub struct MlmActivations<T> {
    /// `dense(h)`, `[R, W]`.
    pub dense: T,
    /// `act(dense(h))`.
    pub activated: T,
    /// LayerNorm statistics.
    pub stats: T,
    /// `LN(act(dense(h)))`.
    pub normed: T,
    /// Logits, `[R, vocab]`.
    pub logits: T,
}

/// Loss and backward buffers of the MLM head over `R` rows.
pub struct MlmScratch<T> {
    /// Per-row cross-entropy, `[R]`.
    pub losses: T,
    /// `∂L/∂logits`, `[R, vocab]`.
    pub dlogits: T,
    dnormed: T,
    dactivated: T,
    ddense: T,
}

impl MlmHead {
    /// Registers the head under `{root}{layout.prefix()}`, tied to `decoder`.
    pub fn new(
        params: &mut ParamLayout,
        root: &str,
        layout: MlmLayout,
        cfg: &ModelConfig,
        decoder: ParamId,
    ) -> Self {
        let prefix = format!("{root}{}", layout.prefix());
        let (width, dense_prefix, norm_prefix) = match layout {
            MlmLayout::LmPredictions => (
                cfg.hidden_size,
                format!("{prefix}.dense"),
                format!("{prefix}.LayerNorm"),
            ),
            MlmLayout::ClsPredictions => (
                cfg.embedding_size,
                format!("{prefix}.transform.dense"),
                format!("{prefix}.transform.LayerNorm"),
            ),
        };
        MlmHead {
            layout,
            dense: Linear::new(
                params,
                &dense_prefix,
                cfg.hidden_size,
                width,
                true,
                cfg.initializer_range,
            ),
            activation: cfg.hidden_act,
            norm: LayerNorm::new(params, &norm_prefix, width, cfg.layer_norm_eps),
            bias: params.add(format!("{prefix}.bias"), &[cfg.vocab_size], Init::Zeros),
            decoder,
            vocab: cfg.vocab_size,
        }
    }

    /// Buffers for `rows` rows.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        rows: usize,
    ) -> Result<MlmActivations<B::Tensor>, Error> {
        let w = self.dense.output;
        Ok(MlmActivations {
            dense: backend.zeros(rows * w)?,
            activated: backend.zeros(rows * w)?,
            stats: backend.zeros(rows * 2)?,
            normed: backend.zeros(rows * w)?,
            logits: backend.zeros(rows * self.vocab)?,
        })
    }

    /// Loss and backward buffers for `rows` rows.
    pub fn scratch<B: Backend>(
        &self,
        backend: &B,
        rows: usize,
    ) -> Result<MlmScratch<B::Tensor>, Error> {
        let w = self.dense.output;
        Ok(MlmScratch {
            losses: backend.zeros(rows)?,
            dlogits: backend.zeros(rows * self.vocab)?,
            dnormed: backend.zeros(rows * w)?,
            dactivated: backend.zeros(rows * w)?,
            ddense: backend.zeros(rows * w)?,
        })
    }

    /// Logits for `rows` rows of `hidden` `[rows, H]`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        hidden: &B::Tensor,
        rows: usize,
        acts: &mut MlmActivations<B::Tensor>,
    ) -> Result<(), Error> {
        self.dense
            .forward(backend, params, hidden, &mut acts.dense, rows)?;
        backend.activation(self.activation, &acts.dense, &mut acts.activated)?;
        self.norm.forward(
            backend,
            params,
            &acts.activated,
            &mut acts.normed,
            Some(&mut acts.stats),
            rows,
        )?;
        let width = self.dense.output;
        backend.matmul_bias(
            [&acts.normed, params.get(self.decoder)],
            params.get(self.bias),
            None,
            &mut acts.logits,
            &MatmulSpec::linear(rows, width, self.vocab),
            Precision::F32,
        )
    }

    /// Backward from `scratch.dlogits`: adds to the head's gradients, to the tied word
    /// embeddings' gradient, and `∂L/∂hidden` to `dhidden`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        hidden: &B::Tensor,
        rows: usize,
        acts: &MlmActivations<B::Tensor>,
        scratch: &mut MlmScratch<B::Tensor>,
        dhidden: &mut B::Tensor,
    ) -> Result<(), Error> {
        let (backend, params) = (ctx.backend, ctx.params);
        let (w, v) = (self.dense.output, self.vocab);
        backend.sum_rows(&scratch.dlogits, ctx.grads.get_mut(self.bias), v, true)?;
        // Tied decoder: dE += dlogitsᵀ · normed ; dnormed = dlogits · E.
        backend.matmul(
            &scratch.dlogits,
            &acts.normed,
            ctx.grads.get_mut(self.decoder),
            &MatmulSpec {
                a: MatrixLayout::row_major(v).transposed(),
                b: MatrixLayout::row_major(w),
                c: MatrixLayout::row_major(w),
                beta: 1.0,
                ..MatmulSpec::dense(v, w, rows)
            },
        )?;
        backend.matmul(
            &scratch.dlogits,
            params.get(self.decoder),
            &mut scratch.dnormed,
            &MatmulSpec::dense(rows, w, v),
        )?;
        backend.fill(&mut scratch.dactivated, 0.0)?;
        self.norm.backward(
            ctx,
            &acts.activated,
            &acts.stats,
            &scratch.dnormed,
            &mut scratch.dactivated,
            rows,
        )?;
        backend.activation_backward(
            self.activation,
            &acts.dense,
            &scratch.dactivated,
            &mut scratch.ddense,
            false,
        )?;
        self.dense
            .backward(ctx, hidden, &scratch.ddense, Some(dhidden), rows)
    }
}

/// Log-odds of the fraction of replaced tokens in RTD pretraining (15 % masking, nearly every
/// sample different from the original): the initial classifier bias of a new RTD head. Starting
/// at the base rate spares the first steps from learning it — which a post-LN discriminator
/// otherwise does by collapsing every token to the same representation, a state it does not
/// leave (observed at learning rates of 1e-4 to 1e-3). Loaded checkpoints keep their bias.
pub const RTD_PRIOR_LOGIT: f32 = -1.734_601_1; // ln(0.15 / 0.85)

/// `logit = classifier(act(dense(LN(h + h_CLS))))`, keys `mask_predictions.*`.
#[derive(Debug, Clone, PartialEq)]
pub struct RtdHead {
    /// `mask_predictions.LayerNorm`.
    pub norm: LayerNorm,
    /// `mask_predictions.dense`.
    pub dense: Linear,
    /// The activation (`hidden_act`).
    pub activation: Activation,
    /// `mask_predictions.classifier`, `H → 1`.
    pub classifier: Linear,
    /// Hidden size.
    pub hidden: usize,
}

/// Saved activations of the RTD head over `N` tokens.
pub struct RtdActivations<T> {
    /// `h + h_CLS`, `[N, H]`.
    pub with_context: T,
    /// LayerNorm statistics.
    pub stats: T,
    /// `LN(h + h_CLS)`.
    pub normed: T,
    /// `dense(·)`.
    pub dense: T,
    /// `act(dense(·))`.
    pub activated: T,
    /// One logit per token, `[N]`.
    pub logits: T,
}

/// Loss and backward buffers of the RTD head over `N` tokens.
pub struct RtdScratch<T> {
    /// Per-token BCE, `[N]`.
    pub losses: T,
    /// `∂L/∂logits`, `[N]`.
    pub dlogits: T,
    dactivated: T,
    ddense: T,
    dnormed: T,
    dwith_context: T,
}

impl RtdHead {
    /// Registers `{root}mask_predictions.*`.
    pub fn new(layout: &mut ParamLayout, root: &str, cfg: &ModelConfig) -> Self {
        let prefix = format!("{root}mask_predictions");
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        RtdHead {
            norm: LayerNorm::new(
                layout,
                &format!("{prefix}.LayerNorm"),
                h,
                cfg.layer_norm_eps,
            ),
            dense: Linear::new(layout, &format!("{prefix}.dense"), h, h, true, std),
            activation: cfg.hidden_act,
            classifier: {
                let classifier =
                    Linear::new(layout, &format!("{prefix}.classifier"), h, 1, true, std);
                if let Some(bias) = classifier.bias {
                    layout.set_init(bias, Init::Constant(RTD_PRIOR_LOGIT));
                }
                classifier
            },
            hidden: h,
        }
    }

    /// Buffers for `tokens` tokens.
    pub fn activations<B: Backend>(
        &self,
        backend: &B,
        tokens: usize,
    ) -> Result<RtdActivations<B::Tensor>, Error> {
        let n = tokens * self.hidden;
        Ok(RtdActivations {
            with_context: backend.zeros(n)?,
            stats: backend.zeros(tokens * 2)?,
            normed: backend.zeros(n)?,
            dense: backend.zeros(n)?,
            activated: backend.zeros(n)?,
            logits: backend.zeros(tokens)?,
        })
    }

    /// Loss and backward buffers for `tokens` tokens.
    pub fn scratch<B: Backend>(
        &self,
        backend: &B,
        tokens: usize,
    ) -> Result<RtdScratch<B::Tensor>, Error> {
        let n = tokens * self.hidden;
        Ok(RtdScratch {
            losses: backend.zeros(tokens)?,
            dlogits: backend.zeros(tokens)?,
            dactivated: backend.zeros(n)?,
            ddense: backend.zeros(n)?,
            dnormed: backend.zeros(n)?,
            dwith_context: backend.zeros(n)?,
        })
    }

    /// One replaced-token logit per token of `hidden` `[batch, len, H]`.
    pub fn forward<B: Backend>(
        &self,
        backend: &B,
        params: &ParamStore<B::Tensor>,
        hidden: &B::Tensor,
        batch: usize,
        len: usize,
        acts: &mut RtdActivations<B::Tensor>,
    ) -> Result<(), Error> {
        let n = batch * len;
        backend.add_sequence_row(hidden, &mut acts.with_context, batch, len, self.hidden, 0)?;
        self.norm.forward(
            backend,
            params,
            &acts.with_context,
            &mut acts.normed,
            Some(&mut acts.stats),
            n,
        )?;
        self.dense
            .forward(backend, params, &acts.normed, &mut acts.dense, n)?;
        backend.activation(self.activation, &acts.dense, &mut acts.activated)?;
        self.classifier
            .forward(backend, params, &acts.activated, &mut acts.logits, n)
    }

    /// Backward from `scratch.dlogits`: adds to the head's gradients and `∂L/∂hidden` to
    /// `dhidden`.
    pub fn backward<B: Backend>(
        &self,
        ctx: &mut BackwardContext<'_, B>,
        batch: usize,
        len: usize,
        acts: &RtdActivations<B::Tensor>,
        scratch: &mut RtdScratch<B::Tensor>,
        dhidden: &mut B::Tensor,
    ) -> Result<(), Error> {
        let backend = ctx.backend;
        let n = batch * len;
        backend.fill(&mut scratch.dactivated, 0.0)?;
        self.classifier.backward(
            ctx,
            &acts.activated,
            &scratch.dlogits,
            Some(&mut scratch.dactivated),
            n,
        )?;
        backend.activation_backward(
            self.activation,
            &acts.dense,
            &scratch.dactivated,
            &mut scratch.ddense,
            false,
        )?;
        backend.fill(&mut scratch.dnormed, 0.0)?;
        self.dense.backward(
            ctx,
            &acts.normed,
            &scratch.ddense,
            Some(&mut scratch.dnormed),
            n,
        )?;
        backend.fill(&mut scratch.dwith_context, 0.0)?;
        self.norm.backward(
            ctx,
            &acts.with_context,
            &acts.stats,
            &scratch.dnormed,
            &mut scratch.dwith_context,
            n,
        )?;
        backend.add_sequence_row_backward(
            &scratch.dwith_context,
            dhidden,
            [batch, len, self.hidden],
            0,
            true,
        )
    }
}
