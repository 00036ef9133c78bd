#!/usr/bin/env python3
"""PyTorch / Hugging Face reference benchmarks mirroring `deberta bench forward|step`.

Usage:
    python3 bench/pytorch_bench.py forward --shape xsmall --batch 1 --seq 128 \
        --threads 2 --warmup 2 --iters 10 [--json]
    python3 bench/pytorch_bench.py step --shape xsmall --batch 8 --seq 128 \
        --threads 2 --warmup 2 --iters 10 [--json]
    python3 bench/pytorch_bench.py matmul --size 512 1024 2048 [--dtype f32|f16|bf16] [--json]
Every subcommand takes `--device cpu|cuda` (default cpu; on CUDA TF32 is off: fp32 eager).
Shapes: the published xsmall/small/base/large and this project's nano.

What `forward` measures (kept identical to the Rust `deberta bench forward`, see
host/src/cli/bench.rs, so that the two medians can be divided):

* the model is `transformers.DebertaV2Model` -- the encoder only, no head, no
  pooler -- built from a `DebertaV2Config` of the published DeBERTa-v3 shape with
  random weights (nothing is downloaded from the hub);
* float32, eval mode (dropout off), under `torch.inference_mode()` (no autograd
  bookkeeping); with `--autocast bf16` also under `torch.autocast("cpu",
  dtype=torch.bfloat16)` (the products in bf16, the rest in float32), the
  counterpart of `deberta bench forward --precision bf16|int8`;
* the input is `batch x seq` random token ids in [1, vocab) with an all-ones
  attention mask and no token type ids;
* each timed sample is one full forward call, wall-clock time from
  `time.perf_counter()`; `--warmup` untimed calls come first (they let oneDNN /
  MKL pick kernels and let the allocator settle);
* reported: median, min and max over `--iters` samples, tokens/s at the median, and
  GFLOP/s computed from the *same nominal FLOP count* as the Rust side
  (`forward_flops`): Hugging Face actually does a little more arithmetic (it
  projects all 2S relative-embedding rows in every layer instead of the rows a
  sequence can read, and recomputes those projections every call), so its
  GFLOP/s is "useful work per second" and the GFLOP/s ratio equals the speed
  ratio.

`step` mirrors `deberta bench step` (host/src/cli/bench.rs, SPEC.md sections 5-7 and
Appendix A): one full RTD + GDES pretraining step in float32, train mode (dropout 0.1
as Hugging Face applies it), timed as a whole:

* generator = `DebertaV2ForMaskedLM(legacy=False)` with half the layers plus an
  absolute position table `E_pos` for the Enhanced Mask Decoder; discriminator =
  `DebertaV2Model` of the full shape plus the RTD head (`LMMaskPredictionHead`), whose
  word table is `sg(E_G) + E_delta` (GDES, `E_delta` zero-initialised; the
  discriminator's own word table is deleted, as the official code does). By default
  the looked-up rows are summed, `E_G[id] + E_delta[id]` as ours does;
  `--gdes-materialise` builds the whole [vocab, H] sum every step instead, as the
  official forward pre-hook does;
* (1) generator: embeddings and the first L-1 layers, then the EMD (the last layer
  twice with keys/values = its input and queries `E_pos + H_(L-1)`; the unused normal
  pass of the last layer is skipped, like ours), the MLM head on the masked positions,
  mean cross-entropy, `multinomial(softmax(logits))` replacements, backward, global
  clip 1.0, optimizer step; (2) discriminator on the corrupted ids, BCE-with-logits
  mean over the non-padding tokens times 50, backward, clip 1.0, optimizer step;
* optimizer: XAdam (microsoft/DeBERTa: no bias correction, eps 1e-6 outside the
  square root, decoupled weight decay 0.01 except `bias` / `LayerNorm.weight`,
  lr 1e-4) written with `torch._foreach_*` ops; `--optimizer adamw` uses
  `torch.optim.AdamW(foreach=True)` instead;
* the batch: `batch x seq` random ids in [5, vocab), all-ones attention mask,
  round(0.15 seq) positions of every sequence masked with id 4 at
  `1 + k (seq - 2) // count`, the same positions as ours.

The last stdout line with `--json` is one JSON object; bench/compare.sh parses it.
Subcommands are argparse subparsers, each with its own `func`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

# Never touch the network: the model is built from a config with random weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

try:
    import torch
    import torch.nn.functional as F
    import transformers
    from torch import nn
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2Model
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        f"error: {exc}.\n"
        "This benchmark needs PyTorch and Hugging Face transformers. Install them, e.g.\n"
        "    python3 -m venv bench/.venv && bench/.venv/bin/pip install torch transformers\n"
        "and run it with bench/.venv/bin/python (bench/compare.sh does both).\n"
    )
    sys.exit(2)


# --------------------------------------------------------------------------- shapes

# Shared by every published DeBERTa-v3 checkpoint (config.json of microsoft/deberta-v3-*).
COMMON_CONFIG = dict(
    vocab_size=128100,
    relative_attention=True,
    position_buckets=256,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type="p2c|c2p",
    layer_norm_eps=1e-7,
    max_position_embeddings=512,
    max_relative_positions=-1,
    position_biased_input=False,
    type_vocab_size=0,
    hidden_act="gelu",
    attention_head_size=64,
)

# shape -> (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)
SHAPES = {
    "nano": (128, 4, 4, 512),
    "xsmall": (384, 12, 6, 1536),
    "small": (768, 6, 12, 3072),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}

# `nano` is this project's preset (Rust `ModelConfig::deberta_v3("nano")`): 8000 tokens,
# heads of 32, 64 buckets over 128 relative positions.
SHAPE_OVERRIDES = {
    "nano": dict(vocab_size=8000, attention_head_size=32, position_buckets=64, max_relative_positions=128),
}


def make_config(shape: str, vocab_size: int | None = None) -> DebertaV2Config:
    """The shape's configuration, with `vocab_size` tokens instead of its own where given."""
    hidden, layers, heads, ffn = SHAPES[shape]
    config = dict(COMMON_CONFIG)
    config.update(SHAPE_OVERRIDES.get(shape, {}))
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    return DebertaV2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        **config,
    )


def select_device(name: str) -> torch.device:
    """`cpu` or `cuda` (the first GPU). fp32 matrix products stay fp32 on the GPU: TF32 is
    switched off, so the comparison with our f32 kernels is like for like."""
    if name == "cuda":
        if not torch.cuda.is_available():
            sys.stderr.write("error: --device cuda but PyTorch sees no CUDA device\n")
            sys.exit(2)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def vocab_label(args: argparse.Namespace) -> str:
    return f" (vocabulary {args.vocab_size})" if args.vocab_size is not None else ""


def device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def peak_device_mb(device: torch.device) -> float | None:
    """The most device memory the caching allocator reserved (what the GPU had to have)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / (1024.0 * 1024.0)
    return None


def peak_device_allocated_mb(device: torch.device) -> float | None:
    """The most device memory live tensors held at once."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / (1024.0 * 1024.0)
    return None


# --------------------------------------------------------------------------- FLOPs


def make_log_bucket_position(relative: int, bucket_size: int, max_position: int) -> int:
    """Hugging Face's `make_log_bucket_position` for one relative distance.

    Computed with torch float32 scalars exactly as transformers does (int64 / int true
    division -> float32, `torch.tensor((max_position - 1) / mid)` -> float32), so the
    bucket edges agree bit for bit with both HF and core/src/relative_position.rs.
    Identity for |r| <= bucket_size/2, log-compressed beyond, odd-symmetric, and not
    clamped to max_position.
    """
    mid = bucket_size // 2
    abs_pos = mid - 1 if -mid < relative < mid else abs(relative)
    if abs_pos <= mid:
        return relative
    ratio = torch.tensor(abs_pos, dtype=torch.int64) / mid  # float32
    denom = torch.log(torch.tensor((max_position - 1) / mid, dtype=torch.float32))
    log_pos = torch.ceil(torch.log(ratio) / denom * (mid - 1)) + mid
    return int(log_pos.item()) * (1 if relative > 0 else -1)


def relative_window_rows(cfg: DebertaV2Config, seq: int) -> int:
    """Rows R of the 2S-row relative-embedding table a sequence of `seq` tokens reads.

    Row of the table for query i, key j: clamp(bucket(i - j) + S, 0, 2S - 1) with S the
    attention span; the bucket function is monotone, so the rows read are the contiguous
    window from idx(-(L-1)) to idx(L-1). R = 2L - 1 while L <= bucket_size/2 + 1.
    """
    buckets = getattr(cfg, "position_buckets", -1)
    max_rel = cfg.max_relative_positions
    if max_rel < 1:
        max_rel = cfg.max_position_embeddings
    span = buckets if buckets > 0 else max_rel

    def idx(rel: int) -> int:
        if buckets > 0 and max_rel > 0:
            rel = make_log_bucket_position(rel, buckets, max_rel)
        return min(max(rel + span, 0), 2 * span - 1)

    return idx(seq - 1) - idx(-(seq - 1)) + 1


def forward_flops(cfg: DebertaV2Config, batch: int, seq: int) -> float:
    """2 x multiply-adds of one encoder forward -- same formula as Rust `forward_flops`.

    Per layer, with N = B*L tokens, H hidden, h heads of size d (hd = h*d), F the
    feed-forward width and R the relative window rows:
      Q, K, V projections      2*N*H*hd*3
      scores and context       2*B*h*L*L*d*2
      c2p and p2c tables       2*B*h*L*R*d*(number of c2p/p2c terms, here 2)
      attention output         2*N*hd*H
      feed-forward             2*N*H*F*2
    Embeddings, layer norms, softmax, GELU and the position projections (cached on the
    Rust side) are not counted.
    """
    b, l = float(batch), float(seq)
    hidden = float(cfg.hidden_size)
    ffn = float(cfg.intermediate_size)
    heads = float(cfg.num_attention_heads)
    d = float(getattr(cfg, "attention_head_size", cfg.hidden_size // cfg.num_attention_heads))
    hd = heads * d
    n = b * l
    rows = float(relative_window_rows(cfg, seq))
    rel_terms = sum(1 for t in ("c2p", "p2c") if t in (cfg.pos_att_type or []))
    per_layer = (
        2.0 * n * hidden * hd * 3.0
        + 2.0 * b * heads * l * l * d * 2.0
        + 2.0 * b * heads * l * rows * d * rel_terms
        + 2.0 * n * hd * hidden
        + 2.0 * n * hidden * ffn * 2.0
    )
    return per_layer * cfg.num_hidden_layers


# --------------------------------------------------------------------------- benches


def set_threads(threads: int | None) -> int:
    """Intra-op threads as asked (default: all cores available); one inter-op thread.

    `set_num_interop_threads` must run before any parallel work starts, so this is the
    first thing a subcommand does.
    """
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel call; intra-op threads are what matter
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def bench_forward(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.seq < 1 or args.iters < 1 or args.warmup < 0:
        sys.stderr.write("error: --batch, --seq and --iters must be at least 1\n")
        return 2
    if args.vocab_size is not None and args.vocab_size < 6:
        sys.stderr.write("error: --vocab-size: at least 6 tokens (5 special ones and a word)\n")
        return 2
    threads = set_threads(args.threads)
    cfg = make_config(args.shape, args.vocab_size)
    if args.seq > cfg.max_position_embeddings:
        # Not a hard limit for DeBERTa-v3 (no absolute positions), just noted.
        sys.stderr.write(f"note: seq {args.seq} > max_position_embeddings {cfg.max_position_embeddings}\n")

    device = select_device(args.device)
    torch.manual_seed(0)
    model = DebertaV2Model(cfg).to(torch.float32).eval().to(device)

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq), generator=generator, dtype=torch.long)
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids)

    # --autocast bf16: torch.autocast's CPU bfloat16 policy (linear layers and matmuls in
    # bf16 through oneDNN/MKL, layer norm and softmax in float32), the usual bf16 inference.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16")
    times_ms = []
    with torch.inference_mode(), autocast:
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            out = model(input_ids=input_ids, attention_mask=attention_mask)
            # Reading one element back mirrors the Rust readback (and waits for the GPU).
            _ = out.last_hidden_state[0, 0, 0].item()
            elapsed = (time.perf_counter() - start) * 1e3
            if i >= args.warmup:
                times_ms.append(elapsed)

    times_ms.sort()
    # Same median convention as Rust: element len/2 of the sorted samples.
    median = times_ms[len(times_ms) // 2]
    lo, hi = times_ms[0], times_ms[-1]
    tokens = args.batch * args.seq
    tokens_per_s = tokens / (median / 1e3)
    gflops = forward_flops(cfg, args.batch, args.seq) / (median / 1e3) / 1e9
    print(
        f"forward {args.shape}{vocab_label(args)} batch {args.batch} seq {args.seq} on pytorch-{device_label(device)}, "
        f"autocast {args.autocast} ({threads} threads): "
        f"median {median:.2f} ms (min {lo:.2f}, max {hi:.2f}) over {args.iters} runs, "
        f"{tokens_per_s:.0f} tokens/s, {gflops:.1f} GFLOP/s"
    )
    if args.json:
        record = {
            "bench": "forward",
            "impl": "pytorch",
            "backend": device_label(device),
            "shape": args.shape,
            "vocab_size": args.vocab_size,
            "batch": args.batch,
            "seq": args.seq,
            "median_ms": median,
            "min_ms": lo,
            "max_ms": hi,
            "tokens_per_s": tokens_per_s,
            "gflops": gflops,
            "threads": threads,
            "autocast": args.autocast,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peak_rss_mb": peak_rss_mb(),
            "peak_device_mb": peak_device_mb(device),
            "peak_device_allocated_mb": peak_device_allocated_mb(device),
        }
        print(json.dumps(record, separators=(",", ":")))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- step


def decays(name: str) -> bool:
    """microsoft/DeBERTa's grouping: every parameter decays except `bias` and `LayerNorm.weight`
    names (so embeddings, `rel_embeddings`, `E_pos` and `E_delta` decay) -- as Rust `decays`."""
    return not ("bias" in name or "LayerNorm.weight" in name)


class XAdam(torch.optim.Optimizer):
    """XAdam of microsoft/DeBERTa (SPEC 6.4) over `named_params`, with `torch._foreach_*` ops.

    m = b1 m + (1 - b1) g ; v = b2 v + (1 - b2) g^2 ; p -= lr (m / (sqrt(v) + eps) + wd p)
    with no bias correction and wd = 0 for `bias` / `LayerNorm.weight`. The decoupled decay
    is applied as p *= (1 - lr wd) before the addcdiv: the same value up to rounding. The
    moments are allocated up front (as ours are). Gradient clipping is done by the caller.
    A `torch.optim.Optimizer`, so that AMP's GradScaler can unscale and step it.
    """

    def __init__(self, named_params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.01):
        named = list(named_params)
        groups = []
        for wd in (weight_decay, 0.0):
            params = [p for n, p in named if decays(n) == (wd != 0.0)]
            if params:
                groups.append({"params": params, "weight_decay": wd})
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["m"] = torch.zeros_like(p)
                self.state[p]["v"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            ps = [p for p in group["params"] if p.grad is not None]
            if not ps:
                continue
            grads = [p.grad for p in ps]
            ms_ = [self.state[p]["m"] for p in ps]
            vs_ = [self.state[p]["v"] for p in ps]
            torch._foreach_mul_(ms_, b1)
            torch._foreach_add_(ms_, grads, alpha=1.0 - b1)
            torch._foreach_mul_(vs_, b2)
            torch._foreach_addcmul_(vs_, grads, grads, value=1.0 - b2)
            denom = torch._foreach_sqrt(vs_)
            torch._foreach_add_(denom, eps)
            if wd != 0.0:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_addcdiv_(ps, ms_, denom, value=-lr)


def make_optimizer(kind: str, module: nn.Module, lr: float):
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if kind == "xadam":
        return XAdam(named, lr)
    # Standard AdamW (bias correction, eps added to sqrt(v_hat)), same decay grouping.
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if decays(n)], "weight_decay": 0.01},
            {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.999),
        eps=1e-6,
        foreach=True,
    )


class Generator(nn.Module):
    """`DebertaV2ForMaskedLM(legacy=False)` plus the EMD's absolute position table."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        self.mlm = DebertaV2ForMaskedLM(cfg)
        self.E_pos = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        nn.init.normal_(self.E_pos.weight, std=cfg.initializer_range)

    def word_table(self) -> torch.Tensor:
        return self.mlm.deberta.embeddings.word_embeddings.weight

    def forward(self, masked_ids, attention_mask, masked):
        """MLM logits `[count, vocab]` at the `masked` positions (bool `[B, S]`), through the EMD.

        Embeddings and layers 0..L-2 as `DebertaV2Encoder.forward` runs them, then
        Hk = H_(L-1) (the input of the last layer, `hidden_states[-2]` of a full pass),
        q = E_pos[0..S) + Hk and the last layer applied twice with keys/values Hk; the normal
        pass of the last layer, whose output the EMD never reads, is not run (ours skips it too).
        """
        deberta = self.mlm.deberta
        encoder = deberta.encoder
        embeddings = deberta.embeddings(input_ids=masked_ids, mask=attention_mask)
        mask4 = encoder.get_attention_mask(attention_mask)
        rel = encoder.get_rel_pos(embeddings)
        rel_embeddings = encoder.get_rel_embedding()
        hk = embeddings
        for layer in encoder.layer[:-1]:
            hk = layer(hk, mask4, relative_pos=rel, rel_embeddings=rel_embeddings)[0]
        seq = masked_ids.shape[1]
        q = self.E_pos(torch.arange(seq, device=masked_ids.device)).unsqueeze(0) + hk
        last = encoder.layer[-1]
        for _ in range(2):
            q = last(hk, mask4, query_states=q, relative_pos=rel, rel_embeddings=rel_embeddings)[0]
        return self.mlm.lm_predictions.lm_head(q[masked], deberta.embeddings.word_embeddings)


class RtdHead(nn.Module):
    """microsoft/DeBERTa `LMMaskPredictionHead` (SPEC 5.3): LN(h + h[:, 0]) -> dense -> gelu -> 1."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, 1)
        for linear in (self.dense, self.classifier):
            nn.init.normal_(linear.weight, std=cfg.initializer_range)
            nn.init.zeros_(linear.bias)

    def forward(self, hidden):
        u = self.LayerNorm(hidden + hidden[:, 0:1, :])
        return self.classifier(F.gelu(self.dense(u))).squeeze(-1)


class Discriminator(nn.Module):
    """`DebertaV2Model` + RTD head; its word table is `sg(E_G) + E_delta` (GDES)."""

    def __init__(self, cfg: DebertaV2Config):
        super().__init__()
        self.deberta = DebertaV2Model(cfg)
        # GDES replaces the discriminator's own table (microsoft/DeBERTa deletes the
        # `weight` of its word embedding): it is never read, never trained, and not kept.
        self.deberta.embeddings.word_embeddings = None
        self.mask_predictions = RtdHead(cfg)
        self.E_delta = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.hidden_size))

    def forward(self, ids, attention_mask, word_table, materialise: bool):
        if materialise:
            # The official forward pre-hook: the whole table sg(E_G) + E_delta, then a lookup.
            embeds = F.embedding(ids, word_table.detach() + self.E_delta, padding_idx=0)
        else:
            # Same values row by row (E_G[id] + E_delta[id], ours does this), no [V, H] sum.
            with torch.no_grad():
                frozen = F.embedding(ids, word_table)
            embeds = frozen + F.embedding(ids, self.E_delta, padding_idx=0)
        hidden = self.deberta(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return self.mask_predictions(hidden)


def step_batch(batch: int, seq: int, vocab: int):
    """Original ids, masked ids, bool mask of masked positions -- same positions as ours."""
    generator = torch.Generator().manual_seed(1)
    original = torch.randint(5, vocab, (batch, seq), generator=generator, dtype=torch.long)
    # Rust `f64::round` (half away from zero), not Python's banker's rounding.
    per_sequence = max(1, math.floor(seq * 0.15 + 0.5))
    masked = torch.zeros(batch, seq, dtype=torch.bool)
    for k in range(per_sequence):
        masked[:, 1 + (k * (seq - 2)) // per_sequence] = True
    masked_ids = original.masked_fill(masked, 4)
    return original, masked_ids, masked


def bench_step(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.seq < 2 or args.iters < 1 or args.warmup < 0:
        sys.stderr.write("error: --batch and --iters must be at least 1, --seq at least 2\n")
        return 2
    if args.vocab_size is not None and args.vocab_size < 6:
        sys.stderr.write("error: --vocab-size: at least 6 tokens (5 special ones and a word)\n")
        return 2
    threads = set_threads(args.threads)
    rss_after_import = peak_rss_mb()
    disc_cfg = make_config(args.shape, args.vocab_size)
    if args.seq > disc_cfg.max_position_embeddings:
        sys.stderr.write(f"error: --seq {args.seq} exceeds the shape's {disc_cfg.max_position_embeddings} positions\n")
        return 2
    gen_cfg = make_config(args.shape, args.vocab_size)
    gen_cfg.num_hidden_layers = disc_cfg.num_hidden_layers // 2
    gen_cfg.legacy = False

    device = select_device(args.device)
    torch.manual_seed(0)
    generator = Generator(gen_cfg).to(torch.float32).train().to(device)
    discriminator = Discriminator(disc_cfg).to(torch.float32).train().to(device)
    lr = 1e-4
    opt_g = make_optimizer(args.optimizer, generator, lr)
    opt_d = make_optimizer(args.optimizer, discriminator, lr)
    gen_params = [p for p in generator.parameters() if p.requires_grad]
    disc_params = [p for p in discriminator.parameters() if p.requires_grad]

    original, masked_ids, masked = step_batch(args.batch, args.seq, disc_cfg.vocab_size)
    original, masked_ids, masked = original.to(device), masked_ids.to(device), masked.to(device)
    attention_mask = torch.ones_like(original)
    keep = attention_mask.bool()
    labels = original[masked]
    rtd_weight = 50.0
    losses = [0.0, 0.0]

    # --autocast bf16: the forward passes and losses under torch.autocast's bfloat16 policy
    # (matmuls and linear layers in bf16, float32 master weights, gradients and optimizer
    # state; no loss scaling for bf16), the usual bf16 mixed-precision recipe: the counterpart
    # of `deberta bench step --precision bf16-mixed`.
    # --autocast fp16: PyTorch AMP, torch.autocast(dtype=float16) with one GradScaler per
    # optimizer (generator and discriminator scaled independently, as the official decoupled
    # recipe: initial scale 2^14, x2 after 250 clean steps): the counterpart of `deberta bench
    # step --precision mixed` on wgpu.
    autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast]

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None)

    scaling = args.autocast == "fp16"
    scaler_g = torch.amp.GradScaler(device.type, init_scale=2.0**14, growth_interval=250, enabled=scaling)
    scaler_d = torch.amp.GradScaler(device.type, init_scale=2.0**14, growth_interval=250, enabled=scaling)

    def one_step() -> None:
        # (1) generator: forward through the EMD, CE, sampling, backward, clip, update.
        opt_g.zero_grad(set_to_none=True)
        with autocast():
            logits = generator(masked_ids, attention_mask, masked)
            mlm_loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            sampled = torch.multinomial(F.softmax(logits.detach().float(), dim=-1), 1).squeeze(1)
        scaler_g.scale(mlm_loss).backward()
        scaler_g.unscale_(opt_g)
        torch.nn.utils.clip_grad_norm_(gen_params, 1.0, foreach=True)
        scaler_g.step(opt_g)
        scaler_g.update()
        losses[0] = mlm_loss.item()
        # (2) discriminator on the corrupted ids, reading the just-updated E_G.
        corrupted = original.clone()
        corrupted[masked] = sampled
        rtd_labels = (masked & (corrupted != original)).to(torch.float32)
        opt_d.zero_grad(set_to_none=True)
        with autocast():
            rtd_logits = discriminator(corrupted, attention_mask, generator.word_table(), args.gdes_materialise)
            rtd_loss = F.binary_cross_entropy_with_logits(rtd_logits[keep], rtd_labels[keep])
        scaler_d.scale(rtd_weight * rtd_loss).backward()
        scaler_d.unscale_(opt_d)
        torch.nn.utils.clip_grad_norm_(disc_params, 1.0, foreach=True)
        scaler_d.step(opt_d)
        scaler_d.update()
        losses[1] = rtd_loss.item()

    times_ms = []
    for i in range(args.warmup + args.iters):
        start = time.perf_counter()
        one_step()  # `.item()` of both losses waits for the GPU
        elapsed = (time.perf_counter() - start) * 1e3
        if i >= args.warmup:
            times_ms.append(elapsed)

    times_ms.sort()
    median = times_ms[len(times_ms) // 2]
    lo, hi = times_ms[0], times_ms[-1]
    tokens = args.batch * args.seq
    tokens_per_s = tokens / (median / 1e3)
    peak = peak_rss_mb()
    sys.stderr.write(f"note: last step's losses: mlm {losses[0]:.4f}, rtd {losses[1]:.4f}\n")
    print(
        f"step {args.shape}{vocab_label(args)} batch {args.batch} seq {args.seq} on pytorch-{device_label(device)}, "
        f"autocast {args.autocast} ({threads} threads): "
        f"median {median:.2f} ms (min {lo:.2f}, max {hi:.2f}) over {args.iters} runs, "
        f"{tokens_per_s:.0f} tokens/s, peak RSS {peak:.0f} MiB"
    )
    if args.json:
        record = {
            "bench": "step",
            "impl": "pytorch",
            "backend": device_label(device),
            "shape": args.shape,
            "vocab_size": args.vocab_size,
            "batch": args.batch,
            "seq": args.seq,
            "median_ms": median,
            "min_ms": lo,
            "max_ms": hi,
            "tokens_per_s": tokens_per_s,
            "gflops": None,
            "threads": threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peak_rss_mb": peak,
            "peak_device_mb": peak_device_mb(device),
            "peak_device_allocated_mb": peak_device_allocated_mb(device),
            # Peak RSS right after `import torch, transformers` (libraries only, no model):
            # the part of peak_rss_mb that is the framework rather than the step.
            "rss_after_import_mb": rss_after_import,
            "optimizer": args.optimizer,
            "gdes_materialise": args.gdes_materialise,
            "autocast": args.autocast,
        }
        print(json.dumps(record, separators=(",", ":")))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- matmul


def bench_matmul(args: argparse.Namespace) -> int:
    """Square `C = A·B` (`--dtype`, float32 by default) at each `--size`, as `deberta bench matmul`: median over
    `--iters` products after `--warmup`, each timed to completion (GPU synchronised)."""
    threads = set_threads(args.threads)
    device = select_device(args.device)
    generator = torch.Generator().manual_seed(0)
    for size in args.size:
        dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        a = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
        c = torch.empty(size, size, device=device, dtype=dtype)
        times_ms = []
        for i in range(args.warmup + args.iters):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            synchronize(device)
            elapsed = (time.perf_counter() - start) * 1e3
            if i >= args.warmup:
                times_ms.append(elapsed)
        times_ms.sort()
        median = times_ms[len(times_ms) // 2]
        gflops = 2.0 * size**3 / (median / 1e3) / 1e9
        print(
            f"matmul {size}x{size}x{size} {args.dtype} on pytorch-{device_label(device)} ({threads} threads): "
            f"median {median:.3f} ms (min {times_ms[0]:.3f}, max {times_ms[-1]:.3f}), {gflops:.1f} GFLOP/s"
        )
        if args.json:
            record = {
                "bench": "matmul",
                "impl": "pytorch",
                "backend": device_label(device),
                "size": size,
                "precision": args.dtype,
                "median_ms": median,
                "min_ms": times_ms[0],
                "max_ms": times_ms[-1],
                "gflops": gflops,
                "threads": threads,
                "torch": torch.__version__,
            }
            print(json.dumps(record, separators=(",", ":")))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- CLI


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="xsmall", choices=sorted(SHAPES), help="published DeBERTa-v3 shape")
    p.add_argument("--vocab-size", type=int, default=None, help="the shape with this many tokens instead of its own")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring")
    p.add_argument("--iters", type=int, default=10, help="timed runs")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where PyTorch computes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="PyTorch/transformers benchmarks mirroring `deberta bench`.",
    )
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    fwd = sub.add_parser("forward", help="encoder forward pass (DebertaV2Model, no head)")
    add_common_args(fwd)
    fwd.add_argument(
        "--autocast",
        default="off",
        choices=["off", "bf16"],
        help="bf16: run under torch.autocast('cpu', dtype=torch.bfloat16)",
    )
    fwd.set_defaults(func=bench_forward)
    stp = sub.add_parser("step", help="one RTD + GDES training step (generator with EMD, discriminator, updates)")
    add_common_args(stp)
    stp.add_argument(
        "--autocast",
        default="off",
        choices=["off", "bf16", "fp16"],
        help="bf16: forward passes and losses under torch.autocast(dtype=torch.bfloat16); "
        "fp16: AMP, torch.autocast(dtype=torch.float16) and a GradScaler per optimizer",
    )
    stp.add_argument(
        "--optimizer",
        default="xadam",
        choices=["xadam", "adamw"],
        help="xadam: microsoft/DeBERTa XAdam with _foreach ops (default, as ours); adamw: torch.optim.AdamW(foreach=True)",
    )
    stp.add_argument(
        "--gdes-materialise",
        action="store_true",
        help="build the whole table sg(E_G) + E_delta each step (the official pre-hook) instead of summing looked-up rows",
    )
    stp.set_defaults(func=bench_step)
    mm = sub.add_parser("matmul", help="square matrix product (GFLOP/s)")
    mm.add_argument("--size", type=int, nargs="+", default=[512, 1024, 2048], help="matrix sizes")
    mm.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    mm.add_argument("--warmup", type=int, default=3, help="untimed products before measuring")
    mm.add_argument("--iters", type=int, default=20, help="timed products")
    mm.add_argument("--json", action="store_true", help="one JSON object per size on stdout")
    mm.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where PyTorch computes")
    mm.add_argument(
        "--dtype",
        default="f32",
        choices=["f32", "f16", "bf16"],
        help="operand and result type (f32 without TF32 on CUDA; f16/bf16: cuBLAS's half-precision GEMM)",
    )
    mm.set_defaults(func=bench_matmul)
    # Further benchmarks: add a subparser here with its own `func`.
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
