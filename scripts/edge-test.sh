#!/usr/bin/env bash
# The edge runtime end to end: takes a trained nano discriminator (the `discriminator/` of a
# `deberta pretrain` run named by DEBERTA_EDGE_MODEL_DIR, which scripts/test.sh trains once for
# this and the accuracy test; without it, a 60-step nano run on the bundled corpus is trained
# here), exports it as an int8 edge file, builds the Cortex-M4 firmware without a heap, runs it
# in QEMU (mps2-an386) and compares every logit it prints with `deberta detect --json` on the
# host (|difference| <= 1e-4). Reports flash and static RAM of the firmware, arena bytes at 64
# and 128 tokens, and guest instructions per inference.
#
# Installs what it needs on a fresh machine (the rustup target; qemu-system-arm via apt when it
# is missing). Environment: CARGO_TARGET_DIR (default target/), EDGE_WORK (scratch directory,
# default $CARGO_TARGET_DIR/edge-test), EDGE_TIMEOUT (QEMU seconds, default 600),
# DEBERTA_EDGE_MODEL_DIR (the discriminator to embed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
work="${EDGE_WORK:-$CARGO_TARGET_DIR/edge-test}"
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - start ))"; }

step "toolchain target and emulator"
rustup target add thumbv7em-none-eabihf
if ! command -v qemu-system-arm >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update
    $sudo_cmd apt-get install -y qemu-system-arm
fi
qemu-system-arm --version | head -n 1

step "trained nano discriminator and its int8 edge file"
rm -rf "$work"
mkdir -p "$work"
cargo build --release -p deberta-host
deberta="$CARGO_TARGET_DIR/release/deberta"
nano="${DEBERTA_EDGE_MODEL_DIR:-}"
if [ -z "$nano" ]; then
    "$deberta" pretrain --preset nano --corpus data/shakespeare/texts --steps 250 --out "$work/run" \
        --quiet
    nano="$work/run/discriminator"
fi
echo "discriminator: $nano"
model="$work/nano-int8.dbt"
"$deberta" export --format edge --dtype int8 --max-seq-len 128 --in "$nano" \
    --out "$model" --no-tokenizer

step "firmware (thumbv7em-none-eabihf, no global allocator)"
(cd firmware && EDGE_MODEL="$model" cargo build --release)
elf="$CARGO_TARGET_DIR/thumbv7em-none-eabihf/release/deberta-firmware"
# Linking would fail if anything needed `alloc` (no #[global_allocator] exists); check the
# symbols as well.
if readelf -sW "$elf" | grep -Eq '__rust_alloc|__rg_alloc|__rust_alloc_error_handler'; then
    echo "error: the firmware links a heap allocator" >&2
    exit 1
fi
echo "no allocator symbols in $elf"

step "QEMU mps2-an386 (Cortex-M4), -icount shift=0"
output="$work/firmware.txt"
timeout "${EDGE_TIMEOUT:-600}" qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
    -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" >"$output"
cut -c1-160 "$output"

step "firmware logits vs deberta detect on the host"
worst=0
sequences=0
while IFS= read -r ids_line && IFS= read -r logits_line && IFS= read -r _ticks; do
    ids=$(echo "${ids_line#ids }" | tr ' ' ',')
    host=$("$deberta" detect --model "$model" --ids "$ids" --json)
    host_logits=$(echo "$host" | grep -o '"logits":\[[^]]*\]' | sed 's/.*\[//; s/\]//' | tr ',' ' ')
    diff=$(awk -v a="${logits_line#logits }" -v b="$host_logits" 'BEGIN {
        n = split(a, x, " "); m = split(b, y, " ");
        if (n != m || n == 0) { print "count"; exit }
        w = 0; for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > w) w = d }
        printf "%.3g", w }')
    if [ "$diff" = count ]; then
        echo "error: firmware and host give different numbers of logits for ids $ids" >&2
        exit 1
    fi
    echo "$(echo "$ids" | tr ',' '\n' | wc -l) tokens: max |firmware - host| = $diff"
    worst=$(awk -v a="$worst" -v b="$diff" 'BEGIN { print (b > a) ? b : a }')
    sequences=$((sequences + 1))
done < <(grep -E '^(ids|logits|ticks) ' "$output")
if [ "$sequences" -eq 0 ] || ! awk -v w="$worst" 'BEGIN { exit !(w <= 1e-4) }'; then
    echo "error: firmware logits differ from the host's by $worst (limit 1e-4) or none were printed" >&2
    exit 1
fi

step "report"
# Section sizes from the ELF section headers (readelf reads any ELF, whatever the host).
flash=0
ram=0
while read -r name type _addr _off size _es flags _rest; do
    [[ $flags == *A* ]] || continue # only sections that occupy memory
    bytes=$((16#$size))
    printf '  %-16s %10d bytes\n' "$name" "$bytes"
    if [ "$type" = NOBITS ]; then
        ram=$((ram + bytes))
    elif [ "$name" = .data ]; then
        ram=$((ram + bytes)) # initial values live in flash, the variables in RAM
        flash=$((flash + bytes))
    else
        flash=$((flash + bytes))
    fi
done < <(readelf -SW "$elf" | sed -n 's/^ *\[ *[0-9]*\] //p')
echo "flash (vector table, code, rodata with the model, .data image): $flash bytes"
echo "static RAM (.data, .bss with the arena; the stack takes the rest of RAM): $ram bytes"
model_bytes=$(stat -c %s "$model")
echo "model file: $model_bytes bytes"
grep '^arena_bytes' "$output" | awk '{ printf "arena at %d tokens: %d bytes\n", $2, $3 }'
calibration=$(grep '^calibration' "$output")
per_tick=$(echo "$calibration" | awk '{ printf "%.4f", $2 / $3 }')
echo "calibration: $(echo "$calibration" | awk '{ print $2 }') instructions = $(echo "$calibration" | awk '{ print $3 }') SysTick ticks -> $per_tick instructions per tick"
grep '^ticks' "$output" | awk -v k="$per_tick" '{ printf "inference, %d tokens: %d ticks = %.1f M instructions\n", $2, $3, $3 * k / 1e6 }'
step "edge test passed in $(( $(date +%s) - start ))s"
