#!/usr/bin/env bash
# Runs every test of the project. Installs what it needs on a fresh machine (only the Rust
# toolchain is assumed): the Cortex-M4 target, Mesa's software Vulkan driver (lavapipe) for the
# wgpu backend, QEMU for the firmware, and cargo-fuzz (scripts/fuzz.sh). CI and developers run
# exactly the same thing; with CI=true a missing GPU adapter fails the GPU tests instead of
# skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - start ))"; }

step "toolchain components and targets"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add thumbv7em-none-eabihf

step "system packages (lavapipe for wgpu, QEMU for the firmware, Open MPI and libclang for --features mpi)"
missing=()
compgen -G "/usr/share/vulkan/icd.d/lvp_icd*.json" >/dev/null || missing+=(mesa-vulkan-drivers libvulkan1)
command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
{ command -v mpirun && command -v mpicc; } >/dev/null 2>&1 || missing+=(openmpi-bin libopenmpi-dev)
ldconfig -p | grep -q 'libclang[-.0-9]*\.so' || missing+=(libclang-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --release -- -D warnings
cargo clippy -p deberta-host --release --features mpi -- -D warnings

step "deberta-core without std (Cortex-M4, with and without alloc)"
cargo build -p deberta-core --no-default-features --features alloc --target thumbv7em-none-eabihf --release
cargo build -p deberta-core --no-default-features --target thumbv7em-none-eabihf --release

step "tests (optimised build; the CLI tests run the release binary)"
cargo build --release -p deberta-host
# The learning check and the trained-model edge check run in their own steps below, alone on
# the machine, on one model trained once.
cargo test --workspace --release -- --skip trained_nano_discriminator \
    --skip nano_learns_on_the_bundled_corpus_and_writes_every_artefact --skip mpi_

step "wgpu on a second driver: Mesa 26's lavapipe (trixie-backports, unpacked privately), with cooperative matrices"
scripts/lavapipe-next.sh

step "learning check: deberta pretrain, nano preset, 250 steps on the bundled corpus"
learning_run="${CARGO_TARGET_DIR:-$PWD/target}/nano-learning-run"
DEBERTA_LEARNING_RUN_DIR="$learning_run" cargo test --release -p deberta-tests \
    --test pretrain_e2e -- --exact nano_learns_on_the_bundled_corpus_and_writes_every_artefact \
    --nocapture
export DEBERTA_EDGE_MODEL_DIR="$learning_run/discriminator"

step "edge accuracy on the trained discriminator: f32, f16 and int8 edge files, and the host's --precision int8, against the host"
cargo test --release -p deberta-tests --test edge -- --exact trained_nano_discriminator_accuracy \
    trained_nano_discriminator_host_int8_accuracy --nocapture

step "edge firmware in QEMU against the host runtime (the trained discriminator, int8)"
scripts/edge-test.sh

step "fuzzing: every cargo-fuzz target for ${FUZZ_SECONDS:-30}s (stable, no sanitizer)"
scripts/fuzz.sh

step "data parallelism over MPI: mpirun -np 2 and 4 against --grad-accum (CPU, wgpu), resume, failures"
# Last: the MPI build replaces target/release/deberta with the same binary plus MPI.
cargo build --release -p deberta-host --features mpi
DEBERTA_MPI_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/deberta" \
    cargo test --release -p deberta-tests --test data_parallel -- --test-threads 1

step "done in $(( $(date +%s) - start ))s"
