#!/usr/bin/env bash
# The cooperative-matrix matmul (gpu/src/shaders/matmul_cooperative.wgsl with
# matmul_common.wgsl), which no adapter of this project's CI can run (lavapipe reports no
# cooperative matrices), run in a software SPIR-V interpreter that implements
# SPV_KHR_cooperative_matrix: the SPIR-V naga 30 writes for wgpu's Vulkan backend, on products
# of several shapes and layouts (run_cases.py), against the product of the binary16-rounded
# operands (α, β and split-K included); then six broken copies of the kernel (B's matrices
# loaded column-major, the accumulators stored column-major, two blocks' operands swapped, C
# written beyond the product, A's lanes outside the product not zeroed, the current step's A
# loaded again instead of the next one's), each of which must fail.
#
# Usage: bench/coop-interpreter/run.sh INTERPRETER_DIR
#   INTERPRETER_DIR: a checkout of github.com/mmoult/SPIRV-Interpreter at
#   36218af69a2c157e47374ece386df14a7be83685 with its submodule external/glm
#   (b1fed407864225653dae04674f04014c92287a26). interp.patch is applied to it (three additions
#   the kernel needs: OpVectorExtractDynamic, null cooperative matrices, and the parse of a
#   load/store's memory operand is worked around by patch_spv.py), then spirv-run is built
#   (CMake, Ninja and a C++20 compiler; `pip install cmake ninja` provides the first two).
# Environment: WORK (default /tmp/coop-interpreter): build and scratch directory; PYTHON
#   (default python3).
# Not part of CI: the interpreter is fetched from GitHub, which CI does not reach.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shaders="$here/../../gpu/src/shaders"
interp="$(cd "${1:?usage: run.sh INTERPRETER_DIR}" && pwd)"
work="${WORK:-/tmp/coop-interpreter}"
python="${PYTHON:-python3}"
mkdir -p "$work"

if ! grep -q "added for bench/coop-interpreter" "$interp/src/spv/inst-make.cpp"; then
    git -C "$interp" apply "$here/interp.patch"
fi
(cd "$interp" && cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && ninja -C build spirv-run >/dev/null)
run="$interp/build/src/spirv-run"
CARGO_TARGET_DIR="$work/target" cargo build --release --quiet --manifest-path "$here/gen/Cargo.toml"
writer="$work/target/release/coop-spirv"

# check KERNEL.wgsl COMMON.wgsl NAME: writes, patches and runs the kernel; the exit status of
# run_cases.py.
check() {
    "$writer" "$1" "$2" "$work/$3.spv"
    "$python" "$here/patch_spv.py" "$work/$3.spv" "$work/$3-interp.spv" >/dev/null
    "$python" "$here/run_cases.py" "$run" "$work/$3-interp.spv" "$work"
}

echo "== matmul_cooperative"
check "$shaders/matmul_cooperative.wgsl" "$shaders/matmul_common.wgsl" kernel

failed=0
mutate() { # mutate NAME FILE FROM TO: the kernel with FROM replaced by TO in FILE (kernel or
    # common) must fail
    cp "$shaders/matmul_cooperative.wgsl" "$work/$1-kernel.wgsl"
    cp "$shaders/matmul_common.wgsl" "$work/$1-common.wgsl"
    "$python" - "$work/$1-$2.wgsl" "$3" "$4" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert old in text, f"no `{old}` in {path}"
open(path, 'w').write(text.replace(old, new, 1))
PY
    echo "== mutant $1 (must fail)"
    if check "$work/$1-kernel.wgsl" "$work/$1-common.wgsl" "$1"; then
        echo "mutant $1 passed: the cases cannot see it"
        failed=1
    fi
}
mutate b-column-major kernel "coopLoadT<coop_mat16x16<f16, B>>" "coopLoad<coop_mat16x16<f16, B>>"
mutate store-column-major kernel "coopStoreT(m," "coopStore(m,"
mutate swapped-block kernel "c_1_2 = coopMultiplyAdd(a_1, b_2, c_1_2);" "c_1_2 = coopMultiplyAdd(a_2, b_1, c_1_2);"
mutate unbounded-store kernel "if (row < params.m && col < params.n) {" "if (true) {"
mutate unzeroed-lanes common "return vec4<Operand>(select(vec4<f32>(0.0), v, inside));" \
    "return vec4<Operand>(v);"
mutate next-step-not-loaded kernel "next_a = load_groups_a(bases.a, row0, k0 + COOP_K," \
    "next_a = load_groups_a(bases.a, row0, k0,"
[ "$failed" = 0 ] && echo "== every mutant caught"
exit "$failed"
