#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for FUZZ_SECONDS seconds (default 30) each and fails on
# any crash: a panic, an overflow (fuzz builds keep debug assertions), a failed assertion, an
# input slower than FUZZ_INPUT_TIMEOUT seconds (default 20) or more than 2 GB of memory.
#
# Works with the stable toolchain: `-s none` (no sanitizer) needs no nightly flag. Installs
# cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++ compiler (libFuzzer is C++) when
# missing. FUZZ_TARGETS="a b" runs only those targets.
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/, never written to) plus the
# scratch corpus fuzz/target/corpus/<target>/, which collects what the fuzzer finds and is
# reused by later local runs. A crash input is saved under fuzz/artifacts/<target>/; make it a
# regression test (tests/tests/fuzz_seeds.rs) and a seed named regression-*.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
seconds="${FUZZ_SECONDS:-30}"
input_timeout="${FUZZ_INPUT_TIMEOUT:-20}"
start=$(date +%s)

if ! command -v c++ >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} fuzz targets (release, debug assertions, no sanitizer)"
cargo fuzz build -s none
built=$(date +%s)
echo "built in $((built - start))s"

mkdir -p target/corpus target/logs
failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="target/corpus/$target"
    log="target/logs/$target.log"
    mkdir -p "$corpus"
    t0=$(date +%s)
    set +e
    cargo fuzz run -s none "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout="$input_timeout" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    inputs=$(find "$corpus" -type f | wc -l)
    line=$(printf '%-18s %10s executions in %3ds, corpus %5d inputs' \
        "$target" "${runs:-?}" "$(($(date +%s) - t0))" "$inputs")
    if [ "$rc" -ne 0 ]; then
        line="$line  CRASH (exit $rc)"
        failed+=("$target")
        echo "---- $target: last lines of $log"
        tail -n 40 "$log"
        ls -1 "artifacts/$target" 2>/dev/null | sed "s|^|crash input: fuzz/artifacts/$target/|" || true
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "fuzzing summary (${seconds}s per target; build $((built - start))s, total $(($(date +%s) - start))s):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
