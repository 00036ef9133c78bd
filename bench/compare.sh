#!/usr/bin/env bash
# Speed ratio of our `deberta bench forward|step` against PyTorch/transformers on the CPU.
#
# Usage: bench/compare.sh [THREADS]          (THREADS defaults to `nproc`)
#        BENCH=step bench/compare.sh [THREADS]
# Environment: BENCH (forward, the default, or step),
#              ITERS (timed runs per invocation, default 10), WARMUP (default 2),
#              ROUNDS (ours/pytorch alternations per shape, default 2),
#              SHAPE (DeBERTa-v3 shape, default xsmall),
#              CASES (BATCHxSEQ list, default "1x128 8x128 1x512"; "8x128" for step),
#              PRECISIONS (ours: forward any of f32 bf16 int8, step any of f32 bf16-mixed;
#              default "f32"),
#              AUTOCAST (PyTorch, any of off bf16, default "off"; bf16 runs the forward
#              passes under torch.autocast("cpu", dtype=torch.bfloat16)).
#
# BENCH=step times one full RTD + GDES pretraining step instead (generator with half the
# layers and the EMD: forward, sampling, backward, clip, XAdam update; then the
# discriminator: forward on the corrupted ids, backward, clip, XAdam update) -- see the
# docstring of bench/pytorch_bench.py for what the PyTorch side mirrors. Both tables show
# each process's peak RSS.
#
# What it measures: for every BATCHxSEQ case, the encoder forward pass of the same
# published DeBERTa-v3 shape with random float32 weights, timed inside each program
# (median over ITERS runs after WARMUP untimed ones; model building and loading are not
# timed). The two programs are run alternately -- ours, pytorch, ours, pytorch, ... --
# so that slow drifts of the machine hit both; the table shows the median over ROUNDS
# of each side's median and ratio = pytorch_ms / ours_ms (> 1: we are faster).
# Run it on an otherwise idle machine: both sides use THREADS cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

THREADS="${1:-$(nproc)}"
ITERS="${ITERS:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-2}"
SHAPE="${SHAPE:-xsmall}"
BENCH="${BENCH:-forward}"
PRECISIONS="${PRECISIONS:-f32}"
AUTOCAST="${AUTOCAST:-off}"
case "$BENCH" in
    forward) CASES="${CASES:-1x128 8x128 1x512}" ;;
    step) CASES="${CASES:-8x128}" ;;
    *)
        echo "error: BENCH must be forward or step, not '$BENCH'" >&2
        exit 2
        ;;
esac
VENV="$ROOT/bench/.venv"
OURS="$ROOT/target/release/deberta"

echo "== building deberta-host (release)" >&2
cargo build --release -p deberta-host >&2

# PyTorch side: a private virtualenv (ignored by git), filled on first use. The plain
# PyPI wheels are used (the download.pytorch.org CPU index is not reachable here); they
# pull CUDA libraries that stay unused on a CPU-only machine.
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV" >&2
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch, transformers' >/dev/null 2>&1; then
    echo "== installing torch and transformers into $VENV" >&2
    "$PY" -m pip install --quiet torch transformers >&2
fi

LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/deberta-compare.XXXXXX")"
RESULTS="$LOG_DIR/results.jsonl"
: >"$RESULTS"
echo "== raw outputs in $LOG_DIR" >&2

# Runs one benchmark invocation, echoes its human line, and appends its last stdout
# line (the JSON object) to $RESULTS tagged with the case and round.
run_one() {
    local who="$1" case="$2" round="$3"
    shift 3
    local out="$LOG_DIR/${who}-${case}-r${round}.txt"
    if ! "$@" >"$out" 2>"$out.err"; then
        echo "error: $who failed for $case (round $round):" >&2
        cat "$out.err" >&2
        exit 1
    fi
    grep -v '^{' "$out" | sed "s/^/   [$who r$round] /" >&2 || true
    python3 - "$out" "$who" "$case" "$round" >>"$RESULTS" <<'EOF'
import json, sys
path, who, case, rnd = sys.argv[1:5]
lines = [l for l in open(path).read().splitlines() if l.strip()]
record = json.loads(lines[-1])  # raises (and stops the script) if the last line is not JSON
record.update({"who": who, "case": case, "round": int(rnd)})
print(json.dumps(record))
EOF
}

for case in $CASES; do
    batch="${case%x*}"
    seq="${case#*x}"
    args=("$BENCH" --shape "$SHAPE" --batch "$batch" --seq "$seq" --threads "$THREADS"
          --warmup "$WARMUP" --iters "$ITERS" --json)
    if [[ "$BENCH" == forward ]]; then
        echo "== $SHAPE $case, $THREADS threads" >&2
    else
        echo "== $BENCH $SHAPE $case, $THREADS threads" >&2
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for precision in $PRECISIONS; do
            run_one "ours-$precision" "$case" "$round" "$OURS" bench "${args[@]}" \
                --precision "$precision"
        done
        for mode in $AUTOCAST; do
            run_one "pytorch-$mode" "$case" "$round" "$PY" bench/pytorch_bench.py "${args[@]}" \
                --autocast "$mode"
        done
    done
done

python3 - "$RESULTS" "$SHAPE" "$CASES" "$THREADS" "$BENCH" "$PRECISIONS" "$AUTOCAST" <<'EOF'
import json, statistics, sys
path, shape, cases, threads, bench = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4], sys.argv[5]
precisions, autocast = sys.argv[6].split(), sys.argv[7].split()
records = [json.loads(l) for l in open(path) if l.strip()]

def median_of(who, case, key="median_ms"):
    values = [r[key] for r in records if r["who"] == who and r["case"] == case]
    return statistics.median(values)

versions = next((r for r in records if r["who"].startswith("pytorch")), {})
print(f"# {'step: ' if bench == 'step' else ''}{shape}, CPU, {threads} threads; torch {versions.get('torch', '?')}, "
      f"transformers {versions.get('transformers', '?')}; median over rounds of per-run medians")
rows = []
# One row per case and precision of ours; a time and a ratio (pytorch_ms / ours_ms) per
# PyTorch mode (fp32: autocast off; bf16: autocast bf16); peak RSS of each (ours: VmHWM;
# pytorch: ru_maxrss, which includes the framework's own libraries -- rss_after_import_mb in
# its JSON line says how much).
header = ["shape", "threads", "ours", "ours_ms", "ours_MiB"]
for mode in autocast:
    name = "fp32" if mode == "off" else mode
    header += [f"pytorch_{name}_ms", f"ratio_{name}", f"pytorch_{name}_MiB"]
for case in cases:
    for precision in precisions:
        ours = median_of(f"ours-{precision}", case)
        row = [f"{shape} {case}", threads, precision, f"{ours:.2f}",
               f"{median_of(f'ours-{precision}', case, 'peak_rss_mb'):.0f}"]
        for mode in autocast:
            torch_ms = median_of(f"pytorch-{mode}", case)
            row += [f"{torch_ms:.2f}", f"{torch_ms / ours:.2f}x",
                    f"{median_of(f'pytorch-{mode}', case, 'peak_rss_mb'):.0f}"]
        rows.append(tuple(row))
widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
for row in (header, *rows):
    print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
EOF
