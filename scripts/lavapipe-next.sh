#!/usr/bin/env bash
# The wgpu tests on a second Vulkan driver: Mesa 26's lavapipe (Debian trixie-backports), which,
# unlike bookworm's Mesa 22, reports f16 cooperative matrices (8×8×8 on 8-wide subgroups), so
# that the cooperative-matrix matmul runs in CI. Nothing is installed on the system: apt
# resolves mesa-vulkan-drivers and libvulkan1 with all their dependencies (trixie's C library
# among them) against an empty package database in a private directory, dpkg-deb unpacks them
# there, and the tests run under that C library's dynamic loader with its libraries and the
# lavapipe ICD. Runs:
#
#   * `deberta info` there (the adapter and what it offers);
#   * every test suite of deberta-gpu three times: with the defaults (cooperative matrices are
#     off on a software adapter), with DEBERTA_WGPU_COOPERATIVE=on (f16 products on the
#     cooperative-matrix kernel once its probe at opening passes;
#     DEBERTA_REQUIRE_COOPERATIVE=1 makes an adapter that cannot run it a failure), and so with
#     DEBERTA_WGPU_MATMUL_TILES=128 (every tiled f16 product on four-subgroup workgroups);
#   * with cooperative matrices, the CLI's mixed-precision checks (20 nano steps learn like f32,
#     resume restores the loss scalers), 10 wgpu steps against the CPU, and the wgpu cases of
#     `bench` and `forward`/`detect`: the tests on this machine's own driver, the `deberta` they
#     run under the loader (DEBERTA_TEST_RUNNER; not the test that compares the test process's
#     adapters with `deberta info`'s, which sees the other driver).
#
# Only on x86_64 Debian-family machines with apt. Where the download fails: an error under
# CI=true, a notice otherwise. Environment: CARGO_TARGET_DIR (default target/; the driver goes
# to $CARGO_TARGET_DIR/mesa-next, kept between runs), MESA_NEXT_SUITE (default
# trixie-backports).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
suite="${MESA_NEXT_SUITE:-trixie-backports}"
dir="$CARGO_TARGET_DIR/mesa-next"
root="$dir/root"
libs="$root/usr/lib/x86_64-linux-gnu"

unavailable() {
    if [ "${CI:-}" = true ]; then
        echo "error: Mesa from $suite is unavailable: $*" >&2
        exit 1
    fi
    echo "SKIPPED: Mesa from $suite is unavailable ($*); set CI=true to make this a failure"
    exit 0
}

[ "$(uname -m)" = x86_64 ] || unavailable "this machine is $(uname -m), the driver amd64"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || unavailable "no apt-get/dpkg-deb"

if [ ! -f "$dir/unpacked" ]; then
    rm -rf "$dir"
    mkdir -p "$dir/apt/etc/apt/apt.conf.d" "$dir/apt/etc/apt/preferences.d" \
        "$dir/apt/etc/apt/sources.list.d" "$dir/apt/lists/partial" \
        "$dir/apt/archives/partial" "$root"
    touch "$dir/apt/status"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    cat > "$dir/apt/etc/apt/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
deb [signed-by=$keyring] http://deb.debian.org/debian $suite main
EOF
    apt=(apt-get -qq -o "Dir=$dir/apt" -o "Dir::State::status=$dir/apt/status"
        -o "Dir::State::Lists=$dir/apt/lists" -o "Dir::Cache::Archives=$dir/apt/archives"
        -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
    "${apt[@]}" update || unavailable "apt-get update of trixie failed"
    "${apt[@]}" install --download-only -y --no-install-recommends -t "$suite" \
        mesa-vulkan-drivers libvulkan1 || unavailable "downloading mesa-vulkan-drivers failed"
    for deb in "$dir"/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    rm -rf "$dir/apt/archives" "$dir/apt/lists"
    touch "$dir/unpacked"
fi
[ -x "$libs/ld-linux-x86-64.so.2" ] || unavailable "no dynamic loader in the unpacked packages"
under_mesa_next=(env "VK_ICD_FILENAMES=$root/usr/share/vulkan/icd.d/lvp_icd.json"
    "$libs/ld-linux-x86-64.so.2" --library-path "$libs")

cargo build --release -p deberta-host
"${under_mesa_next[@]}" "$CARGO_TARGET_DIR/release/deberta" info

# The deberta-gpu test executables (not its examples).
mapfile -t suites < <(cargo test --release -p deberta-gpu --no-run --message-format=json |
    grep -o '"executable":"[^"]*/deps/[^"]*"' | sed 's/^"executable":"//; s/"$//')
[ "${#suites[@]}" -gt 0 ] || { echo "error: no deberta-gpu test executables" >&2; exit 1; }
failed=0
run_suites() {
    for suite_bin in "${suites[@]}"; do
        echo "-- $(basename "$suite_bin") $*"
        env "$@" CI=true "${under_mesa_next[@]}" "$suite_bin" --quiet || failed=1
    done
}
run_suites
run_suites DEBERTA_WGPU_COOPERATIVE=on DEBERTA_REQUIRE_COOPERATIVE=1
# Forced 128-wide tiles: every tiled f16 product on the four-subgroup cooperative kernel.
run_suites DEBERTA_WGPU_COOPERATIVE=on DEBERTA_REQUIRE_COOPERATIVE=1 DEBERTA_WGPU_MATMUL_TILES=128

# The CLI checks: the test on this machine's own driver, the binary it runs under the loader.
mapfile -t cli < <(cargo test --release -p deberta-tests --test mixed_precision \
    --test wgpu_pretrain --test bench_cli --test export_detect --no-run --message-format=json |
    grep -o '"executable":"[^"]*/deps/[^"]*"' | sed 's/^"executable":"//; s/"$//')
for cli_bin in "${cli[@]}"; do
    echo "-- $(basename "$cli_bin") DEBERTA_WGPU_COOPERATIVE=on DEBERTA_REQUIRE_COOPERATIVE=1"
    env DEBERTA_WGPU_COOPERATIVE=on DEBERTA_REQUIRE_COOPERATIVE=1 CI=true \
        DEBERTA_TEST_RUNNER="${under_mesa_next[*]}" "$cli_bin" --quiet --skip cpu_ \
        --skip info_lists_every_adapter || failed=1
done
exit "$failed"
