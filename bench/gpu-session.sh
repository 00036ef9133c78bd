#!/usr/bin/env bash
# One unattended session on a lent GPU machine that has no Rust toolchain: the wgpu test suites
# on its driver, then the benchmarks against PyTorch (`bench/gpu.sh`), all within one time
# limit, every output into one folder.
#
# Usage: bench/gpu-session.sh prepare DIR    # here: the release `deberta`, stripped, and the
#                                            # packed wgpu test suites (bench/gpu-tests.sh) into DIR
#        bench/gpu-session.sh run DIR OUT    # there, from a checkout of the same commit with DIR
#                                            # copied beside it: the card and driver
#                                            # (nvidia-smi), `deberta info`, the test suites, then
#                                            # bench/gpu.sh with what time is left
# Environment (run): TIME_LIMIT (seconds for the whole run, default 540: one 10-minute call
# with room to copy the results back), TESTS (default 1; 0 skips the suites), TEST_LIMIT
# (seconds the suites may take, default a third of TIME_LIMIT); everything else (PYTHON,
# TORCH_DEVICE, the sweeps) passes through to bench/gpu.sh. OUT gets nvidia-smi.txt,
# info.txt, tests.txt and tests-logs.tar.xz, gpu.jsonl, gpu.log and tile-cache/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
dir="${2:-}"
usage() {
    echo "usage: $0 prepare DIR | run DIR OUT" >&2
    exit 2
}
[ -n "$mode" ] && [ -n "$dir" ] || usage

case "$mode" in
prepare)
    set -e
    mkdir -p "$dir"
    (cd "$ROOT" && cargo build --release -p deberta-host)
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/deberta" "$dir/deberta"
    strip "$dir/deberta"
    bash "$ROOT/bench/gpu-tests.sh" pack "$dir"
    echo "prepared $dir: deberta ($(du -h "$dir/deberta" | cut -f1)) and gpu-tests.tar.xz"
    ;;
run)
    out="${3:-}"
    [ -n "$out" ] || usage
    [ -x "$dir/deberta" ] || { echo "error: no $dir/deberta (run prepare first)" >&2; exit 1; }
    mkdir -p "$out"
    started=$(date +%s)
    time_limit="${TIME_LIMIT:-540}"
    elapsed() { echo $(($(date +%s) - started)); }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/nvidia-smi.txt" 2>&1 ||
        echo "no nvidia-smi" >"$out/nvidia-smi.txt"
    cat "$out/nvidia-smi.txt"
    "$dir/deberta" info >"$out/info.txt" 2>&1
    cat "$out/info.txt"
    failed=0
    if [ "${TESTS:-1}" = 1 ]; then
        echo "== the wgpu test suites ($(elapsed) s)"
        timeout "${TEST_LIMIT:-$((time_limit / 3))}" bash "$ROOT/bench/gpu-tests.sh" run "$dir" \
            >"$out/tests.txt" 2>&1 || failed=1
        cut -c1-160 "$out/tests.txt"
        tar -C "$dir/gpu-tests" -cJf "$out/tests-logs.tar.xz" $(cd "$dir/gpu-tests" && ls -- *.log 2>/dev/null)
    fi
    left=$((time_limit - $(elapsed)))
    echo "== bench/gpu.sh with ${left} s left ($(elapsed) s)"
    DEBERTA="$dir/deberta" TIME_LIMIT="$left" DEBERTA_WGPU_TILE_CACHE="$out/tile-cache" \
        bash "$ROOT/bench/gpu.sh" "$out/gpu.jsonl" >"$out/gpu.log" 2>&1 || failed=1
    sed -n '/^== summary/,$p' "$out/gpu.log"
    echo "== done in $(elapsed) s (tests $([ "$failed" = 0 ] && echo passed || echo 'or benchmarks FAILED'))"
    exit "$failed"
    ;;
*)
    usage
    ;;
esac
