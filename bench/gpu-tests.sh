#!/usr/bin/env bash
# The wgpu test suites (deberta-gpu's tests against the CPU backend and the fixtures) on a
# machine with a GPU but no Rust toolchain, such as a rented benchmark machine: CI runs them on
# lavapipe only, and a driver can differ (f16 rounding, workgroup memory, subgroup sizes).
#
# Usage: bench/gpu-tests.sh pack DIR   # here: build the test executables (release), strip
#                                      # them and pack them into DIR/gpu-tests.tar.xz
#        bench/gpu-tests.sh run DIR    # there, from a checkout of the same commit: unpack and
#                                      # run every suite under CI=true (no adapter: failure)
# `run` runs every suite three times: with DEBERTA_WGPU_COOPERATIVE=auto (the default: on a GPU
# whose cooperative matrices the kernel takes, the f16 products on them), so with
# DEBERTA_WGPU_MATMUL_TILES=128 (on four-subgroup workgroups), and with =off; it prints one line
# per suite and pass and the adapter it ran on, keeps each output in
# DIR/gpu-tests/<suite>.<pass>.log, and exits non-zero if any suite failed. The suites read
# tests/fixtures through the path they were built at; `run` links that path to this checkout
# when it does not exist there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
dir="${2:-}"
if [ -z "$mode" ] || [ -z "$dir" ]; then
    echo "usage: $0 pack|run DIR" >&2
    exit 2
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

case "$mode" in
pack)
    stage="$(mktemp -d)"
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/gpu-tests"
    # The test executables cargo builds for deberta-gpu: its integration suites and its unit
    # tests (the probes' among them, which open the device).
    cargo test -p deberta-gpu --release --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] in (["test"], ["lib"]):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
        cp "$exe" "$stage/gpu-tests/$name"
        strip "$stage/gpu-tests/$name"
    done
    echo "$ROOT" >"$stage/gpu-tests/built-at"
    tar -C "$stage" -cJf "$dir/gpu-tests.tar.xz" gpu-tests
    echo "packed $(ls "$stage/gpu-tests" | grep -cv built-at) suites into $dir/gpu-tests.tar.xz ($(du -h "$dir/gpu-tests.tar.xz" | cut -f1))"
    ;;
run)
    tar -C "$dir" -xJf "$dir/gpu-tests.tar.xz"
    built_at="$(cat "$dir/gpu-tests/built-at")"
    if [ ! -e "$built_at" ]; then
        mkdir -p "$(dirname "$built_at")"
        ln -s "$ROOT" "$built_at"
    fi
    failed=0
    # Every suite with the defaults (the f16 products on the cooperative-matrix kernel where the
    # GPU can run it), so with forced 128-wide tiles (the tiled f16 products on its
    # four-subgroup workgroups), then with the register-blocked f16 kernels.
    for pass in "cooperative-auto DEBERTA_WGPU_COOPERATIVE=auto" \
        "cooperative-auto-tiles128 DEBERTA_WGPU_COOPERATIVE=auto DEBERTA_WGPU_MATMUL_TILES=128" \
        "cooperative-off DEBERTA_WGPU_COOPERATIVE=off"; do
        read -r label settings <<<"$pass"
        read -r -a settings <<<"$settings"
        for suite in "$dir"/gpu-tests/*; do
            name="$(basename "$suite")"
            [ "$name" = built-at ] || [[ "$name" == *.log ]] && continue
            log="$suite.$label.log"
            if env CI=true "${settings[@]}" "$suite" >"$log" 2>&1; then
                status=ok
            else
                status=FAILED
                failed=1
            fi
            adapter="$(grep -m1 -o 'wgpu tests run on .*' "$log" || true)"
            echo "$status $name ($label): $(grep -E '^test result' "$log" | tail -n 1) ${adapter}"
            [ "$status" = ok ] || grep -E '^test .* FAILED|panicked' "$log" | head -n 10
        done
    done
    exit "$failed"
    ;;
*)
    echo "usage: $0 pack|run DIR" >&2
    exit 2
    ;;
esac
