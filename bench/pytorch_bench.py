#!/usr/bin/env python3
"""PyTorch / Hugging Face reference benchmark mirroring `deberta bench forward`.

Usage:
    python3 bench/pytorch_bench.py forward --shape xsmall --batch 1 --seq 128 \
        --threads 2 --warmup 2 --iters 10 [--json]

What is measured (kept identical to the Rust `deberta bench forward`, see
host/src/cli/bench.rs, so that the two medians can be divided):

* the model is `transformers.DebertaV2Model` -- the encoder only, no head, no
  pooler -- built from a `DebertaV2Config` of the published DeBERTa-v3 shape with
  random weights (nothing is downloaded from the hub);
* float32, eval mode (dropout off), under `torch.inference_mode()` (no autograd
  bookkeeping);
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

The last stdout line with `--json` is one JSON object; bench/compare.sh parses it.
Subcommands are argparse subparsers so that further benchmarks (e.g. a training
step) can be added next to `forward`.
"""

from __future__ import annotations

import argparse
import json
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
    import transformers
    from transformers import DebertaV2Config, DebertaV2Model
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
    "xsmall": (384, 12, 6, 1536),
    "small": (768, 6, 12, 3072),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
}


def make_config(shape: str) -> DebertaV2Config:
    hidden, layers, heads, ffn = SHAPES[shape]
    return DebertaV2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        **COMMON_CONFIG,
    )


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
    threads = set_threads(args.threads)
    cfg = make_config(args.shape)
    if args.seq > cfg.max_position_embeddings:
        # Not a hard limit for DeBERTa-v3 (no absolute positions), just noted.
        sys.stderr.write(f"note: seq {args.seq} > max_position_embeddings {cfg.max_position_embeddings}\n")

    torch.manual_seed(0)
    model = DebertaV2Model(cfg).to(torch.float32).eval()

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, cfg.vocab_size, (args.batch, args.seq), generator=generator, dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)

    times_ms = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            out = model(input_ids=input_ids, attention_mask=attention_mask)
            # CPU execution is synchronous; reading one element mirrors the Rust readback.
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
        f"forward {args.shape} batch {args.batch} seq {args.seq} on pytorch-cpu ({threads} threads): "
        f"median {median:.2f} ms (min {lo:.2f}, max {hi:.2f}) over {args.iters} runs, "
        f"{tokens_per_s:.0f} tokens/s, {gflops:.1f} GFLOP/s"
    )
    if args.json:
        record = {
            "bench": "forward",
            "impl": "pytorch",
            "backend": "cpu",
            "shape": args.shape,
            "batch": args.batch,
            "seq": args.seq,
            "median_ms": median,
            "min_ms": lo,
            "max_ms": hi,
            "tokens_per_s": tokens_per_s,
            "gflops": gflops,
            "threads": threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peak_rss_mb": peak_rss_mb(),
        }
        print(json.dumps(record, separators=(",", ":")))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- CLI


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="xsmall", choices=sorted(SHAPES), help="published DeBERTa-v3 shape")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring")
    p.add_argument("--iters", type=int, default=10, help="timed runs")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="PyTorch/transformers benchmarks mirroring `deberta bench`.",
    )
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    fwd = sub.add_parser("forward", help="encoder forward pass (DebertaV2Model, no head)")
    add_common_args(fwd)
    fwd.set_defaults(func=bench_forward)
    # Further benchmarks: add a subparser here with its own `func`.
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
