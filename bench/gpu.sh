#!/usr/bin/env bash
# Ours against PyTorch on one machine with an NVIDIA GPU: the wgpu backend (Vulkan) against
# PyTorch eager on CUDA (TF32 off), in f32 and mixed precision, and optionally the CPU backend
# against PyTorch on the CPU with every core, on the same shapes, alternating the two programs.
#
# Usage: bench/gpu.sh [RESULTS.jsonl]
# Environment: DEBERTA (our binary, default target/release/deberta), PYTHON (a python3 with
#              torch and transformers, default python3), ITERS (default 20), WARMUP (default 3),
#              LARGE_ITERS / LARGE_WARMUP (default 5 / 1: cases of 4096 tokens or more),
#              MATMUL_SIZES (default "512 1024 2048"), MATMUL_PRECISIONS (default "f32 f16"),
#              CASES (forward, default "xsmall:1x128 xsmall:8x128"), STEP_CASES (default
#              "xsmall:8x128 xsmall:32x512"), STEP_PRECISIONS (default "f32 mixed"),
#              Variants of ours, timed after every default case (and the CPU side), so that
#              a run the time limit cuts short has the defaults, one variant at a time over
#              every case, in this order (the open questions first): COOP_SWEEP, UNFUSED_SWEEP,
#              then LOOP_SWEEP (default 1: every
#              sgemm, forward and step with the kernels compiled with naga's loop bounds,
#              DEBERTA_WGPU_LOOP_BOUNDS=on; label ours-wgpu-loopbounds; 0: not), PREFETCH_SWEEP
#              (default 1: every sgemm, forward and step with the tiled matmuls loading each
#              step's operands at the step instead of prefetching them during the step before,
#              DEBERTA_WGPU_MATMUL_PREFETCH=off; label ours-wgpu-noprefetch; 0: not),
#              VECTOR_SWEEP (default 1: every sgemm, forward and step with the tiled matmuls
#              reading their operands one element at a time instead of four where the layout
#              allows, DEBERTA_WGPU_MATMUL_VECTOR_LOADS=off; label ours-wgpu-scalarloads; 0:
#              not), SUBMIT_SWEEP (default 1: every forward and step with the recorded kernels
#              submitted only when the host waits for a result instead of every 64,
#              DEBERTA_WGPU_EARLY_SUBMIT=off; label ours-wgpu-latesubmit; 0: not), PASS_SWEEP
#              (default 1: every step with a compute pass per kernel instead of one per
#              submission, DEBERTA_WGPU_SHARED_PASS=off; label ours-wgpu-passeach; 0: not),
#              TENSOR_SWEEP (default 1: every step with a kernel per tensor of an optimizer for
#              the gradient norms' first stages and the Adam updates instead of seven tensors to
#              a kernel, DEBERTA_WGPU_MULTI_TENSOR=off, where the default runs them seven to a
#              kernel (a GPU); label ours-wgpu-pertensor; 0: not), COOP_SWEEP
#              (default 1: where `deberta info` lists a GPU (not a software adapter) whose f16
#              cooperative matrices the kernel takes, so that the default runs the f16
#              products on them, every f16 sgemm
#              and mixed step with the register-blocked f16 kernels instead,
#              DEBERTA_WGPU_COOPERATIVE=off; label ours-wgpu-nocoop; 0: not),
#              UNFUSED_SWEEP (default 1: every forward and step with attention composed of
#              the unfused kernels, its products matmuls (on cooperative matrices under mixed
#              precision where the default has them) and its probabilities kept, instead of
#              the fused tiled kernels' f32 arithmetic, DEBERTA_WGPU_FUSED_ATTENTION=off; label
#              ours-wgpu-unfused; 0: not),
#              ROUNDING_SWEEP
#              (default 1: every f16 sgemm and mixed step with the f16 operands rounded by the
#              kernels, DEBERTA_WGPU_F16_ROUNDING=on, the cost of that rounding where the probe
#              leaves it to the driver's conversion; label ours-wgpu-kernelrounding; 0: not),
#              SUBGROUP_SWEEP=1 (every forward and step with the tree
#              reductions instead of subgroup ones, DEBERTA_WGPU_SUBGROUPS=off; label
#              ours-wgpu-nosubgroups), TILE_SWEEP=1 (every sgemm, forward and step with
#              DEBERTA_WGPU_MATMUL_TILES set to auto, the occupancy rule instead of the default
#              measured choice, and forced to 128, 64, 32, 128v and 64v, the contiguous blocks
#              read as vec4s: labels ours-wgpu-tauto, -t128, -t64, -t32, -t128v, -t64v);
#              forwards and steps of the variants record kernel times, except the forced tiles.
#              CPU=1 to add the CPU backend against PyTorch on the CPU (CPU_THREADS,
#              default nproc; CPU_STEP_CASES, default STEP_CASES). KERNEL_TIMES (default 1): our
#              wgpu forward and step also print and record the device time of each kernel
#              (`--kernel-times`: three more runs, timed per kernel). TIME_LIMIT (seconds, default
#              540, so that the whole script fits one 10-minute call on a lent machine): once it
#              has passed, the remaining cases are skipped (and listed), so a run always ends with
#              the table of what it measured. TORCH_DEVICE (default cuda; cpu checks the script
#              on a machine without CUDA, e.g. against lavapipe). DEBERTA_WGPU_TILE_CACHE
#              (default: tile-cache/ beside RESULTS): where our runs keep the matmul tile sizes
#              they measure, so that the later runs reuse them and the choices come back with
#              the results.
# Precisions: ours f32 (fp32 products) against PyTorch fp32 (TF32 off); ours mixed (f16
# products where the adapter has SHADER_F16, f32 master weights, dynamic loss scaling) against
# PyTorch AMP (fp16 autocast + one GradScaler per optimizer). The matmuls: f32 and f16 operands
# (f32 sums) against cuBLAS fp32 (no TF32) and fp16.
# Each timed figure is the median over the iterations after the warm-ups, measured inside each
# program (model building and uploads are not timed); peak device memory is each program's own,
# reserved and in live tensors (ours: the buffer pool's high-water mark and that of the buffers
# tensors hold; PyTorch: torch.cuda.max_memory_reserved and max_memory_allocated). The
# results file gets one JSON object per measurement; the table at the end shows
# ratio = pytorch_ms / ours_ms (> 1: we are faster).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEBERTA="${DEBERTA:-$ROOT/target/release/deberta}"
PYTHON="${PYTHON:-python3}"
ITERS="${ITERS:-20}"
WARMUP="${WARMUP:-3}"
LARGE_ITERS="${LARGE_ITERS:-5}"
LARGE_WARMUP="${LARGE_WARMUP:-1}"
CPU_THREADS="${CPU_THREADS:-$(nproc)}"
MATMUL_SIZES="${MATMUL_SIZES:-512 1024 2048}"
MATMUL_PRECISIONS="${MATMUL_PRECISIONS:-f32 f16}"
CASES="${CASES:-xsmall:1x128 xsmall:8x128}"
STEP_CASES="${STEP_CASES:-xsmall:8x128 xsmall:32x512}"
STEP_PRECISIONS="${STEP_PRECISIONS:-f32 mixed}"
RESULTS="${1:-$ROOT/target/gpu-bench.jsonl}"
TIME_LIMIT="${TIME_LIMIT:-540}"
TORCH_DEVICE="${TORCH_DEVICE:-cuda}"
KERNEL_TIMES="${KERNEL_TIMES:-1}"
DEBERTA_WGPU_TILE_CACHE="${DEBERTA_WGPU_TILE_CACHE:-$(dirname "$RESULTS")/tile-cache}"
export DEBERTA_WGPU_TILE_CACHE
kernel_times=()
[ "$KERNEL_TIMES" = 1 ] && kernel_times=(--kernel-times)
: >"$RESULTS"
started=$(date +%s)
ERR="$(mktemp)"
trap 'rm -f "$ERR"' EXIT

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
    if out=$(timeout "$left" "$@" 2>"$ERR"); then
        local line
        line=$(printf '%s\n' "$out" | tail -n 1)
        printf '%s\n' "$out" | grep -v '^{' >&2
        printf '{"label":"%s","result":%s}\n' "$label" "$line" >>"$RESULTS"
    else
        echo "FAILED ($label): $*" >&2
        tail -n 5 "$ERR" >&2
    fi
}

echo "== adapters" >&2
info="$("$DEBERTA" info 2>&1)" || echo "deberta info failed" >&2
printf '%s\n' "$info" >&2
# Without an adapter every case of ours would fail: stop here, with the Vulkan loader's own
# account of why (e.g. an NVIDIA driver whose Vulkan part cannot start in this container),
# rather than spend the time limit on PyTorch alone.
if printf '%s\n' "$info" | grep -q '^wgpu adapters: none'; then
    echo "no wgpu adapter: nothing of ours can run; the Vulkan loader says:" >&2
    VK_LOADER_DEBUG=error,warn "$DEBERTA" info 2>&1 | grep -E 'ERROR|WARNING' | sort -u >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >&2 || true

timing() { # timing BATCH SEQ: the warm-up and iteration flags for a case of that size
    if [ $(($1 * $2)) -ge 4096 ]; then
        echo --warmup "$LARGE_WARMUP" --iters "$LARGE_ITERS" --json
    else
        echo --warmup "$WARMUP" --iters "$ITERS" --json
    fi
}

# The wgpu variants timed besides the default, for `bench` (matmul, forward, step) at
# `precision`: one "SUFFIX SETTING" line each (label ours-wgpu-SUFFIX, environment SETTING),
# the open questions first (tensor cores against the register-blocked f16 kernels, unfused
# attention against the fused kernels), so that a run the time limit cuts short has them.
variants() {
    local bench="$1" precision="$2"
    if [ "${COOP_SWEEP:-1}" = 1 ] && { [ "$precision" = f16 ] || [ "$precision" = mixed ]; } &&
        printf '%s\n' "$info" | awk '/the cooperative matmul takes/ && previous !~ /, Cpu,/ {
            found = 1 } { previous = $0 } END { exit !found }'; then
        echo "nocoop DEBERTA_WGPU_COOPERATIVE=off"
    fi
    if [ "${UNFUSED_SWEEP:-1}" = 1 ] && [ "$bench" != matmul ]; then
        echo "unfused DEBERTA_WGPU_FUSED_ATTENTION=off"
    fi
    if [ "${LOOP_SWEEP:-1}" = 1 ]; then
        echo "loopbounds DEBERTA_WGPU_LOOP_BOUNDS=on"
    fi
    if [ "${PREFETCH_SWEEP:-1}" = 1 ]; then
        echo "noprefetch DEBERTA_WGPU_MATMUL_PREFETCH=off"
    fi
    if [ "${VECTOR_SWEEP:-1}" = 1 ]; then
        echo "scalarloads DEBERTA_WGPU_MATMUL_VECTOR_LOADS=off"
    fi
    if [ "${SUBMIT_SWEEP:-1}" = 1 ] && [ "$bench" != matmul ]; then
        echo "latesubmit DEBERTA_WGPU_EARLY_SUBMIT=off"
    fi
    if [ "${PASS_SWEEP:-1}" = 1 ] && [ "$bench" = step ]; then
        echo "passeach DEBERTA_WGPU_SHARED_PASS=off"
    fi
    if [ "${TENSOR_SWEEP:-1}" = 1 ] && [ "$bench" = step ]; then
        echo "pertensor DEBERTA_WGPU_MULTI_TENSOR=off"
    fi
    if [ "${ROUNDING_SWEEP:-1}" = 1 ] && { [ "$precision" = f16 ] || [ "$precision" = mixed ]; }; then
        echo "kernelrounding DEBERTA_WGPU_F16_ROUNDING=on"
    fi
    if [ "${SUBGROUP_SWEEP:-0}" = 1 ] && [ "$bench" != matmul ]; then
        echo "nosubgroups DEBERTA_WGPU_SUBGROUPS=off"
    fi
    if [ "${TILE_SWEEP:-0}" = 1 ]; then
        for tiles in auto 128 64 32 128v 64v; do
            echo "t$tiles DEBERTA_WGPU_MATMUL_TILES=$tiles"
        done
    fi
}

# The variant lines of standard input whose suffix is $SWEEP (all where it is unset).
only_sweep() { awk -v only="${SWEEP:-}" 'only == "" || $1 == only'; }

# The sgemm cases: `main` (ours with the defaults, then PyTorch) or `sweeps` (the variants).
run_matmul() {
    local pass="$1"
    for precision in $MATMUL_PRECISIONS; do
        for size in $MATMUL_SIZES; do
            stem="matmul $size $precision"
            common=(--size "$size" --warmup "$WARMUP" --iters "$ITERS" --json)
            echo "== $pass $stem" >&2
            if [ "$pass" = main ]; then
                record "$stem ours-wgpu" "$DEBERTA" bench matmul --backend wgpu \
                    --precision "$precision" "${common[@]}"
                record "$stem pytorch-$TORCH_DEVICE" "$PYTHON" "$ROOT/bench/pytorch_bench.py" \
                    matmul --device "$TORCH_DEVICE" --dtype "$precision" "${common[@]}"
                continue
            fi
            while read -r suffix setting; do
                record "$stem ours-wgpu-$suffix" env "$setting" "$DEBERTA" bench matmul \
                    --backend wgpu --precision "$precision" "${common[@]}"
            done < <(variants matmul "$precision" | only_sweep)
        done
    done
}

# The PyTorch counterpart of our training precision: fp32, or AMP (fp16 autocast + GradScaler).
autocast_of() { [ "$1" = mixed ] && echo fp16 || echo off; }

# Runs the forward and step cases on one side: gpu (ours on wgpu against PyTorch on CUDA) or
# cpu (both on CPU_THREADS cores); `main` (ours with the defaults, then PyTorch) or, on the
# gpu side, `sweeps` (our variants, with kernel times except for the forced tile sizes).
run_cases() {
    local side="$1" pass="$2"
    for bench in forward step; do
        cases="$CASES"
        precisions=f32
        if [ "$bench" = step ]; then
            cases="$STEP_CASES"
            precisions="$STEP_PRECISIONS"
            [ "$side" = cpu ] && cases="${CPU_STEP_CASES-$STEP_CASES}"
        fi
        for case in $cases; do
            shape="${case%%:*}"
            bs="${case#*:}"
            batch="${bs%x*}"
            seq="${bs#*x}"
            shape_args=(--shape "$shape" --batch "$batch" --seq "$seq")
            read -r -a common <<<"$(timing "$batch" "$seq")"
            for precision in $precisions; do
                stem="$bench $shape $bs $precision"
                ours_precision=()
                theirs_precision=()
                if [ "$bench" = step ]; then
                    ours_precision=(--precision "$precision")
                    theirs_precision=(--autocast "$(autocast_of "$precision")")
                fi
                echo "== $side $pass $stem" >&2
                if [ "$side" = cpu ]; then
                    [ "$precision" = mixed ] && ours_precision=(--precision bf16-mixed) &&
                        theirs_precision=(--autocast bf16)
                    record "$stem ours-cpu" "$DEBERTA" bench "$bench" --backend cpu \
                        --threads "$CPU_THREADS" "${shape_args[@]}" "${ours_precision[@]}" "${common[@]}"
                    record "$stem pytorch-cpu" "$PYTHON" "$ROOT/bench/pytorch_bench.py" \
                        "$bench" --device cpu --threads "$CPU_THREADS" "${shape_args[@]}" \
                        "${theirs_precision[@]}" "${common[@]}"
                elif [ "$pass" = main ]; then
                    record "$stem ours-wgpu" "$DEBERTA" bench "$bench" --backend wgpu \
                        "${shape_args[@]}" "${ours_precision[@]}" "${kernel_times[@]}" "${common[@]}"
                    record "$stem pytorch-$TORCH_DEVICE" "$PYTHON" "$ROOT/bench/pytorch_bench.py" \
                        "$bench" --device "$TORCH_DEVICE" "${shape_args[@]}" "${theirs_precision[@]}" "${common[@]}"
                else
                    while read -r suffix setting; do
                        times=("${kernel_times[@]}")
                        [ "${suffix#t}" != "$suffix" ] && times=()
                        record "$stem ours-wgpu-$suffix" env "$setting" "$DEBERTA" bench "$bench" \
                            --backend wgpu "${shape_args[@]}" "${ours_precision[@]}" "${times[@]}" \
                            "${common[@]}"
                    done < <(variants "$bench" "$precision" | only_sweep)
                fi
            done
        done
    done
}

# Every default case and its PyTorch counterpart first, so that a run the time limit cuts
# short has them; then the CPU side (CPU=1); then our variants, one at a time.
run_matmul main
run_cases gpu main
[ "${CPU:-0}" = 1 ] && run_cases cpu main
# One variant at a time over every case, in the order of `variants`, so that a run the time
# limit cuts short has whole variants.
for SWEEP in $({ variants step mixed; variants step f32; variants forward f32
    variants matmul f16; variants matmul f32; } | awk '!seen[$1]++ { print $1 }'); do
    run_matmul sweeps
    run_cases gpu sweeps
done

echo "== summary (ratio = pytorch_ms / ours_ms; > 1: we are faster; $(($(date +%s) - started)) s)" >&2
"$PYTHON" - "$RESULTS" "$TORCH_DEVICE" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {r["label"]: r["result"] for r in rows}
for label, res in by.items():
    stem, side = label.rsplit(" ", 1)
    # Ours: the defaults (ours-wgpu, ours-cpu) and every variant (ours-wgpu-SUFFIX).
    if not side.startswith("ours-"):
        continue
    other = by.get(stem + (" pytorch-cpu" if side == "ours-cpu" else " pytorch-" + sys.argv[2]))
    ours = res["median_ms"]
    extra = ""
    if label.startswith("matmul"):
        extra = f" {res.get('gflops') or 0:9.1f} GFLOP/s"
        if other:
            extra += f" (pytorch {other.get('gflops') or 0:9.1f})"
    if res.get("peak_rss_mb"):
        extra += f" peak RSS {res['peak_rss_mb']:.0f} MiB"
    def device_memory(r):
        # Reserved (what the device had to have: our pool, PyTorch's caching allocator) and,
        # where the run reports it, the part in live tensors.
        live = r.get("peak_device_allocated_mb")
        live = f" ({live:.0f} live)" if live is not None else ""
        return f"{r['peak_device_mb']:.0f} MiB{live}"
    if res.get("peak_device_mb"):
        extra += f", GPU peak {device_memory(res)}"
    if other is None:
        print(f"{stem:32s} {side:24s} {ours:10.3f} ms{extra}")
        continue
    theirs = other["median_ms"]
    dev = f", pytorch GPU peak {device_memory(other)}" if other.get("peak_device_mb") else ""
    print(f"{stem:32s} {side:24s} {ours:10.3f} ms  pytorch {theirs:10.3f} ms  ratio {theirs / ours:6.2f}{extra}{dev}")
EOF
