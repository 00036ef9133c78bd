#!/usr/bin/env bash
# Runs every test of the project. Installs what it needs on a fresh machine (only the Rust
# toolchain is assumed), so CI and developers run exactly the same thing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - start ))"; }

step "toolchain components and targets"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add thumbv7em-none-eabihf

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --release -- -D warnings

step "deberta-core without std (Cortex-M4, with and without alloc)"
cargo build -p deberta-core --no-default-features --features alloc --target thumbv7em-none-eabihf --release
cargo build -p deberta-core --no-default-features --target thumbv7em-none-eabihf --release

step "tests (optimised build; the CLI tests run the release binary)"
cargo build --release -p deberta-host
cargo test --workspace --release

step "done in $(( $(date +%s) - start ))s"
