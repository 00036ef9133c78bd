#!/usr/bin/env bash
# Scaling efficiency of data-parallel pretraining over MPI.
#
# Usage: bench/mpi.sh [PROCESSES...]        (default: 2)
# Environment: STEPS (training steps per run, default 40), ROWS (rows per process and step,
#              default 8), ROUNDS (alternations of the one-process and N-process runs,
#              default 3), DEBERTA_MPI_BIN (a deberta built with --features mpi; built here
#              when unset), BACKEND (cpu, the default, or wgpu).
#
# What it measures: the nano preset on the bundled corpus (its tokenizer trained once, not
# timed), each process pinned to one core with one thread (`--threads 1`, `--bind-to core`),
# ROWS×64 tokens per process and step (weak scaling: N processes train a global batch of
# N·ROWS). tokens/s is the closing line of `deberta pretrain` (training steps only: no
# evaluation, checkpoints or tokenization). Efficiency = tokens/s of N processes ÷ (N ×
# tokens/s of one process), median over ROUNDS alternated runs; "sum %" is the share of the
# training time rank 0 spends in the gradient sum (staging, waiting for the other ranks,
# exchange, addition). Run it on an otherwise idle machine with at least max(PROCESSES)
# cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PROCESSES=("${@:-2}")
STEPS="${STEPS:-40}"
ROWS="${ROWS:-8}"
ROUNDS="${ROUNDS:-3}"
BACKEND="${BACKEND:-cpu}"
if [ -z "${DEBERTA_MPI_BIN:-}" ]; then
    cargo build --release -p deberta-host --features mpi >&2
    DEBERTA_MPI_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/deberta"
fi
BIN="$DEBERTA_MPI_BIN"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$BIN" tokenizer train --corpus data/shakespeare/texts --vocab-size 2000 \
    --out "$WORK/tokenizer.json" >/dev/null 2>&1

# Runs `deberta pretrain` in N processes (1: without mpirun); prints "tokens/s sum% volume%".
run() {
    local n="$1" out="$WORK/run-$1-$RANDOM"
    local args=(pretrain --tokenizer "$WORK/tokenizer.json" --out "$out" --steps "$STEPS"
        --batch-size $((n * ROWS)) --threads 1 --backend "$BACKEND" --eval-every 0
        --save-every 0 --quiet)
    local log
    if [ "$n" -eq 1 ]; then
        log="$("$BIN" "${args[@]}" 2>&1)"
    else
        log="$(mpirun --allow-run-as-root --oversubscribe --bind-to core -np "$n" \
            "$BIN" "${args[@]}" 2>&1)"
    fi
    rm -rf "$out"
    local rate share volume
    rate="$(grep -o '[0-9]* tokens/s in the training steps' <<<"$log" | grep -o '^[0-9]*')"
    share="$(grep -o '[0-9.]* % of the training steps summing' <<<"$log" | grep -o '^[0-9.]*' || echo 0)"
    volume="$(grep -o '[0-9]* % of the dense gradient volume' <<<"$log" | grep -o '^[0-9]*' || echo 100)"
    echo "$rate $share $volume"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "nano preset, ${ROWS}x64 tokens per process and step, $STEPS steps, --threads 1 per process, backend $BACKEND"
printf '| processes | tokens/s (one process) | tokens/s (N processes) | efficiency | gradient sum, %% of step | sent, %% of dense volume |\n'
printf '|---|---|---|---|---|---|\n'
for n in "${PROCESSES[@]}"; do
    singles=() multis=() shares=() volumes=()
    for _ in $(seq "$ROUNDS"); do
        read -r rate _ _ < <(run 1)
        singles+=("$rate")
        read -r rate share volume < <(run "$n")
        multis+=("$rate")
        shares+=("$share")
        volumes+=("$volume")
    done
    one="$(printf '%s\n' "${singles[@]}" | median)"
    many="$(printf '%s\n' "${multis[@]}" | median)"
    share="$(printf '%s\n' "${shares[@]}" | median)"
    volume="$(printf '%s\n' "${volumes[@]}" | median)"
    efficiency="$(awk -v m="$many" -v o="$one" -v n="$n" 'BEGIN {printf "%.1f %%", 100 * m / (n * o)}')"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$n" "$one" "$many" "$efficiency" "$share" "$volume"
done
