#!/usr/bin/env bash
# Ours against PyTorch on one machine with an NVIDIA GPU: the wgpu backend (Vulkan) against
# PyTorch eager float32 on CUDA (TF32 off), and the CPU backend against PyTorch on the CPU
# with every core, on the same shapes, alternating the two programs.
#
# Usage: bench/gpu.sh [RESULTS.jsonl]
# Environment: DEBERTA (our binary, default target/release/deberta), PYTHON (a python3 with
#              torch and transformers, default python3), ITERS (default 20), WARMUP (default 3),
#              CPU_THREADS (default nproc), CASES (default "nano:1x128 nano:8x128 xsmall:1x128
#              xsmall:8x128 xsmall:1x512"), STEP_CASES (default "nano:8x128 xsmall:8x128 xsmall:32x512"),
#              CPU_STEP_CASES (default STEP_CASES; empty: none), SKIP_CPU=1 to time the GPU only. Every wgpu case also runs with
#              DEBERTA_WGPU_MATMUL_TILES=128, 64 and 32 (labels ours-wgpu-t128, -t64, -t32) to
#              check the automatic tile choice against each forced size. TIME_LIMIT (seconds,
#              default 540, so that the whole script fits one 10-minute call on a lent machine):
#              once it has passed, the remaining cases are skipped (and listed), so a run
#              always ends with the table of what it measured.
# Each timed figure is the median over ITERS runs after WARMUP untimed ones, measured inside
# each program (model building and uploads are not timed). The results file gets one JSON
# object per measurement; the table at the end shows ratio = pytorch_ms / ours_ms (> 1: we
# are faster).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEBERTA="${DEBERTA:-$ROOT/target/release/deberta}"
PYTHON="${PYTHON:-python3}"
ITERS="${ITERS:-20}"
WARMUP="${WARMUP:-3}"
CPU_THREADS="${CPU_THREADS:-$(nproc)}"
CASES="${CASES:-nano:1x128 nano:8x128 xsmall:1x128 xsmall:8x128 xsmall:1x512}"
STEP_CASES="${STEP_CASES:-nano:8x128 xsmall:8x128 xsmall:32x512}"
RESULTS="${1:-$ROOT/target/gpu-bench.jsonl}"
TIME_LIMIT="${TIME_LIMIT:-540}"
: >"$RESULTS"
started=$(date +%s)

# Runs one benchmark command and appends its JSON line (the last stdout line) to RESULTS.
record() {
    local label="$1"
    shift
    local out left
    left=$((TIME_LIMIT - ($(date +%s) - started)))
    if [ "$left" -le 0 ]; then
        echo "SKIPPED (TIME_LIMIT ${TIME_LIMIT}s passed): $label" >&2
        return
    fi
    [ "$left" -gt 300 ] && left=300
    if out=$(timeout "$left" "$@" 2>/tmp/gpu-bench.err); then
        local line
        line=$(printf '%s\n' "$out" | tail -n 1)
        printf '%s\n' "$out" | grep -v '^{' >&2
        printf '{"label":"%s","result":%s}\n' "$label" "$line" >>"$RESULTS"
    else
        echo "FAILED ($label): $*" >&2
        tail -n 5 /tmp/gpu-bench.err >&2
    fi
}

echo "== adapters" >&2
"$DEBERTA" info >&2 || echo "deberta info failed" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2 || true

common=(--warmup "$WARMUP" --iters "$ITERS" --json)

echo "== matmul" >&2
for size in 512 1024 2048; do
    record "matmul $size ours-wgpu" "$DEBERTA" bench matmul --backend wgpu --size "$size" "${common[@]}"
    for tiles in 128 64 32; do
        record "matmul $size ours-wgpu-t$tiles" env DEBERTA_WGPU_MATMUL_TILES=$tiles "$DEBERTA" \
            bench matmul --backend wgpu --size "$size" "${common[@]}"
    done
    record "matmul $size pytorch-cuda" "$PYTHON" "$ROOT/bench/pytorch_bench.py" matmul --device cuda \
        --size "$size" "${common[@]}"
done

# Runs the forward and step cases on one side: gpu (ours on wgpu, also with each tile size forced,
# against PyTorch on CUDA) or cpu (both on CPU_THREADS cores). GPU first, so that a run cut
# short still has the GPU figures.
run_cases() {
    local side="$1"
    for bench in forward step; do
        cases="$CASES"
        [ "$bench" = step ] && cases="$STEP_CASES"
        [ "$bench" = step ] && [ "$side" = cpu ] && cases="${CPU_STEP_CASES-$STEP_CASES}"
        for case in $cases; do
            shape="${case%%:*}"
            bs="${case#*:}"
            batch="${bs%x*}"
            seq="${bs#*x}"
            shape_args=(--shape "$shape" --batch "$batch" --seq "$seq")
            echo "== $side $bench $shape ${batch}x${seq}" >&2
            if [ "$side" = gpu ]; then
                record "$bench $shape $bs ours-wgpu" "$DEBERTA" bench "$bench" --backend wgpu \
                    "${shape_args[@]}" "${common[@]}"
                # Every product on one tile size, against the automatic choice above.
                for tiles in 128 64 32; do
                    record "$bench $shape $bs ours-wgpu-t$tiles" env DEBERTA_WGPU_MATMUL_TILES=$tiles \
                        "$DEBERTA" bench "$bench" --backend wgpu "${shape_args[@]}" "${common[@]}"
                done
                record "$bench $shape $bs pytorch-cuda" "$PYTHON" "$ROOT/bench/pytorch_bench.py" \
                    "$bench" --device cuda "${shape_args[@]}" "${common[@]}"
            else
                record "$bench $shape $bs ours-cpu" "$DEBERTA" bench "$bench" --backend cpu \
                    --threads "$CPU_THREADS" "${shape_args[@]}" "${common[@]}"
                record "$bench $shape $bs pytorch-cpu" "$PYTHON" "$ROOT/bench/pytorch_bench.py" \
                    "$bench" --device cpu --threads "$CPU_THREADS" "${shape_args[@]}" "${common[@]}"
            fi
        done
    done
}

run_cases gpu
[ "${SKIP_CPU:-0}" = 1 ] || run_cases cpu

echo "== summary (ratio = pytorch_ms / ours_ms; > 1: we are faster)" >&2
"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {r["label"]: r["result"] for r in rows}
for label, res in by.items():
    if label.startswith("matmul") or not label.endswith(("ours-wgpu", "ours-wgpu-t128", "ours-wgpu-t64", "ours-wgpu-t32", "ours-cpu")):
        continue
    stem, side = label.rsplit(" ", 1)
    other = by.get(stem + (" pytorch-cpu" if side == "ours-cpu" else " pytorch-cuda"))
    ours = res["median_ms"]
    extra = f" peak RSS {res.get('peak_rss_mb') or 0:.0f} MiB" if res.get("peak_rss_mb") else ""
    if res.get("peak_device_mb"):
        extra += f", GPU peak {res['peak_device_mb']:.0f} MiB (pool)"
    if other is None:
        print(f"{stem:28s} {side:10s} {ours:10.3f} ms{extra}")
        continue
    theirs = other["median_ms"]
    dev = other.get("peak_device_mb")
    dev = f", pytorch GPU peak {dev:.0f} MiB" if dev else ""
    print(f"{stem:28s} {side:10s} {ours:10.3f} ms  pytorch {theirs:10.3f} ms  ratio {theirs / ours:6.2f}{extra}{dev}")
for label, res in by.items():
    if label.startswith("matmul"):
        print(f"{label:40s} {res.get('gflops') or 0:8.1f} GFLOP/s")
EOF
