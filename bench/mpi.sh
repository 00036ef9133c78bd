#!/usr/bin/env bash
# Scaling efficiency of data-parallel pretraining over MPI.
#
# Usage: bench/mpi.sh [PROCESSES...]        (default: 2)
# Environment: STEPS (training steps per run, default 40), ROWS (rows per process and step,
#              default 8), ROUNDS (alternations of the one-process and N-process runs,
#              default 3), DEBERTA_MPI_BIN (a deberta built with --features mpi; built here
#              when unset), BACKEND (cpu, the default, or wgpu), BUCKET_MB (the overlapped
#              runs' --bucket-mb; default: pretrain's default), IDLE (on a shared machine:
#              before each run, wait up to 10 minutes for a second in which at least IDLE % of
#              the CPU time was idle, e.g. IDLE=90; default 0, no waiting).
#
# What it measures: the nano preset on the bundled corpus (its tokenizer trained once, not
# timed), each process pinned to one core with one thread (`--threads 1`, `--bind-to core`),
# ROWS×64 tokens per process and step (weak scaling: N processes train a global batch of
# N·ROWS). tokens/s is the closing line of `deberta pretrain` (training steps only: no
# evaluation, checkpoints or tokenization). Efficiency = tokens/s of N processes ÷ (N ×
# tokens/s of one process), median over ROUNDS alternated runs, once without overlap
# (`--bucket-mb 0`: one exchange after the backward pass) and once with buckets exchanged during
# the backward pass. "side by side" is N independent one-process runs at once, each pinned to a
# core (their mean tokens/s ÷ one process alone): the ceiling without any communication, which
# shows what sharing the machine (memory bandwidth, caches) costs. "gradient sum" is the share
# of the training time rank 0 spends in the gradient sum (staging, encoding, exchange,
# decoding, addition), "waiting" the part of it spent blocked on the exchange (transfer not
# hidden, and waiting for slower ranks). Run it on an otherwise idle machine with at least
# max(PROCESSES) cores.
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

# Runs `deberta pretrain` in N processes (1: without mpirun) with `--bucket-mb` $2 (default
# when empty); prints "tokens/s sum% wait% volume%".
run() {
    local n="$1" bucket="${2:-}" out="$WORK/run-$1-$RANDOM"
    local args=(pretrain --tokenizer "$WORK/tokenizer.json" --out "$out" --steps "$STEPS"
        --batch-size $((n * ROWS)) --threads 1 --backend "$BACKEND" --eval-every 0
        --save-every 0 --quiet)
    [ -n "$bucket" ] && args+=(--bucket-mb "$bucket")
    local log
    wait_idle
    if [ "$n" -eq 1 ]; then
        log="$("$BIN" "${args[@]}" 2>&1)"
    else
        log="$(mpirun --allow-run-as-root --oversubscribe --bind-to core -np "$n" \
            "$BIN" "${args[@]}" 2>&1)"
    fi
    rm -rf "$out"
    local rate share wait volume
    rate="$(grep -o '[0-9]* tokens/s in the training steps' <<<"$log" | grep -o '^[0-9]*')"
    share="$(grep -o '[0-9.]* % of the training steps summing' <<<"$log" | grep -o '^[0-9.]*' || echo 0)"
    wait="$(grep -o '[0-9.]* % waiting for the exchange' <<<"$log" | grep -o '^[0-9.]*' || echo 0)"
    volume="$(grep -o '[0-9]* % of the dense gradient volume' <<<"$log" | grep -o '^[0-9]*' || echo 100)"
    echo "$rate $share $wait $volume"
}

# N independent one-process runs at once, process i pinned to core i (no MPI, no exchange):
# prints their mean tokens/s, what N processes could reach if communication cost nothing.
side_by_side() {
    local n="$1" pids=() i
    wait_idle
    for i in $(seq 0 $((n - 1))); do
        taskset -c "$i" "$BIN" pretrain --tokenizer "$WORK/tokenizer.json" \
            --out "$WORK/side-$i" --steps "$STEPS" --batch-size "$ROWS" --threads 1 \
            --backend "$BACKEND" --eval-every 0 --save-every 0 --quiet \
            >"$WORK/side-$i.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    for i in $(seq 0 $((n - 1))); do
        grep -o '[0-9]* tokens/s in the training steps' "$WORK/side-$i.log" | grep -o '^[0-9]*'
        rm -rf "$WORK/side-$i" "$WORK/side-$i.log"
    done | awk '{s += $1} END {printf "%.0f\n", s / NR}'
}

# Waits (up to 10 minutes) for a second in which at least $IDLE % of the CPU time was idle.
wait_idle() {
    [ "${IDLE:-0}" -gt 0 ] || return 0
    local tries=0 a b
    while [ "$tries" -lt 600 ]; do
        a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
        local total=0 i
        for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
        [ $((100 * (b[4] - a[4]) >= IDLE * total)) -eq 1 ] && return 0
        tries=$((tries + 1))
    done
    echo "warning: the machine was not idle" >&2
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
percent() { awk -v m="$1" -v o="$2" -v n="$3" 'BEGIN {printf "%.1f %%", 100 * m / (n * o)}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "nano preset, ${ROWS}x64 tokens per process and step, $STEPS steps, --threads 1 per process, backend $BACKEND, median of $ROUNDS alternated rounds"
printf '| processes | tokens/s, one process | side by side, no MPI | overlap | tokens/s, N processes | efficiency | gradient sum, %% of step | waiting, %% of step | sent, %% of dense volume |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for n in "${PROCESSES[@]}"; do
    singles=() sides=() rows_off=() rows_on=()
    for _ in $(seq "$ROUNDS"); do
        read -r rate _ _ _ < <(run 1)
        singles+=("$rate")
        sides+=("$(side_by_side "$n")")
        rows_off+=("$(run "$n" 0)")
        rows_on+=("$(run "$n" "${BUCKET_MB:-}")")
    done
    one="$(printf '%s\n' "${singles[@]}" | median)"
    side="$(printf '%s\n' "${sides[@]}" | median)"
    for mode in off on; do
        if [ "$mode" = off ]; then rows=("${rows_off[@]}"); label="no (--bucket-mb 0)"
        else rows=("${rows_on[@]}"); label="yes (--bucket-mb ${BUCKET_MB:-1})"; fi
        col() { printf '%s\n' "${rows[@]}" | cut -d' ' -f"$1" | median; }
        many="$(col 1)"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$one" \
            "$(percent "$side" "$one" 1)" "$label" "$many" "$(percent "$many" "$one" "$n")" \
            "$(col 2)" "$(col 3)" "$(col 4)"
    done
done
