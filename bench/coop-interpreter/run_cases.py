#!/usr/bin/env python3
"""Runs matmul_cooperative's SPIR-V in SPIRV-Interpreter on products of several shapes and
layouts, one interpreter run per workgroup (C carried from run to run), and compares C with the
product of the binary16-rounded operands summed in double: every element of the m×n product
within 1e-3·Σ|a·b| (f32 sums of exact f16 products; the interpreter prints six significant
digits, so the errors it shows are mostly that), nothing outside it written.
Usage: run_cases.py SPIRV_RUN KERNEL.spv WORK_DIR; exit status 1 if any case fails."""
import json
import os
import struct
import subprocess
import sys

SENTINEL = -777.0
# `struct Params` of gpu/src/shaders/matmul_common.wgsl, in order.
FIELDS = ['batch1', 'm', 'n', 'k', 'a_offset', 'a_row_stride', 'a_col_stride', 'a_batch_stride0',
          'a_batch_stride1', 'b_offset', 'b_row_stride', 'b_col_stride', 'b_batch_stride0',
          'b_batch_stride1', 'c_offset', 'c_row_stride', 'c_col_stride', 'c_batch_stride0',
          'c_batch_stride1', 'entry_base', 'a_k_contiguous', 'b_k_contiguous', 'alpha', 'beta',
          'k_split', 'splits', 'a_vector_loads', 'b_vector_loads']
TILE = 64


def f16(x):
    return struct.unpack('<e', struct.pack('<e', x))[0]


def f32(x):
    return struct.unpack('<f', struct.pack('<f', x))[0]


def value(i, j, salt):
    # Distinct small values (an index mix-up shows), some not exact in binary16.
    return (((i * 7 + j * 3 + salt) % 17) - 8) / 8.0 * (1 + ((i + 2 * j) % 3) / 1024)


def product(m, n, k, b_transposed, vector_loads, alpha=1.0, beta=0.0, k_split=0):
    """Params and operand buffers of an m×n×k product: A row-major; B row-major or stored
    transposed; C row-major with three more columns and one more row, which must keep their
    sentinel (α·A·B + β·C), or with `k_split` > 0 the split-K pieces' slabs (row-major m×n
    each, α = 1, β = 0, as gpu/src/ops/matmul.rs `split_k` binds them). `vector_loads`: as the host sets the flags
    (gpu/src/ops/matmul.rs `reads_in_fours`), or False for scalar loads."""
    p = dict.fromkeys(FIELDS, 0)
    p.update(batch1=1, m=m, n=n, k=k, a_row_stride=k, a_col_stride=1, a_k_contiguous=1,
             c_row_stride=n + 3, c_col_stride=1, alpha=alpha, beta=beta, splits=1)
    if k_split:
        p.update(c_row_stride=n, k_split=k_split, splits=(k + k_split - 1) // k_split)
    if b_transposed:
        p.update(b_row_stride=1, b_col_stride=k, b_k_contiguous=1)
    else:
        p.update(b_row_stride=n, b_col_stride=1, b_k_contiguous=0)
    if vector_loads:
        p['a_vector_loads'] = int(p['a_row_stride'] % 4 == 0)
        other_b = p['b_col_stride'] if b_transposed else p['b_row_stride']
        p['b_vector_loads'] = int(other_b % 4 == 0)
    a = [[value(i, kk, 0) for kk in range(k)] for i in range(m)]
    b = [[value(kk, j, 5) for j in range(n)] for kk in range(k)]
    a_buffer = [None] * (m * k)
    for i in range(m):
        for kk in range(k):
            a_buffer[i * p['a_row_stride'] + kk * p['a_col_stride']] = a[i][kk]
    b_buffer = [None] * (k * n)
    for kk in range(k):
        for j in range(n):
            b_buffer[kk * p['b_row_stride'] + j * p['b_col_stride']] = b[kk][j]
    return p, a, b, a_buffer, b_buffer


CASES = [
    # (m, n, k, B transposed, vector loads[, α, β, split depth])
    (64, 64, 32, False, True),
    (64, 64, 32, False, False),
    (64, 64, 32, True, True),
    (64, 64, 32, True, False),
    (40, 52, 20, False, True),   # a partial tile, every operand read as vec4s
    (40, 50, 20, False, True),   # B's rows 50 apart: B read one element at a time
    (40, 50, 20, False, False),
    (80, 100, 40, False, True),  # 2×2 workgroups
    (80, 100, 40, True, True),
    (40, 52, 20, False, True, 0.5, 0.25),   # accumulating into C
    (40, 52, 40, False, True, 1.0, 0.0, 16),  # split-K: pieces of 16, 16 and 8 along k
]


# Every word of the operands' buffers outside the matrices: a lane outside the product that is
# not zeroed shows in the sums. The buffers run on far enough past the matrices that every
# read of the kernel (whole groups and tiles, and the next step's k) lands in them: the writer
# leaves indices unchecked, and the interpreter stops at one past an array's end.
POISON = 1e30


def vec4s(buffer, m, n, k):
    reach = (max(m, n, k) + 2 * TILE) ** 2
    buffer = [POISON if x is None else x for x in buffer] + [POISON] * reach
    buffer += [POISON] * (-len(buffer) % 4)
    return buffer, [buffer[i:i + 4] for i in range(0, len(buffer), 4)]


def run(interpreter, spirv, work, case):
    m, n, k = case[:3]
    p, a, b, a_buffer, b_buffer = product(*case)
    splits = p['splits'] if p['k_split'] else 1
    a_buffer, a4 = vec4s(a_buffer, m, n, k)
    b_buffer, b4 = vec4s(b_buffer, m, n, k)
    ldc = p['c_row_stride']
    # Where β ≠ 0, C's old values; elsewhere the sentinel. Split-K: one slab per piece.
    rows = m * splits if p['k_split'] else m + 1
    c = [f32(value(i, j, 9)) if p['beta'] else SENTINEL for i in range(rows) for j in range(ldc)]
    c_old = list(c)
    name = f'{m}x{n}x{k}{" B^T" if p["b_k_contiguous"] else ""}, vector loads A {p["a_vector_loads"]} B {p["b_vector_loads"]}'
    if p['beta']:
        name += f', alpha {p["alpha"]} beta {p["beta"]}'
    if p['k_split']:
        name += f', split-K pieces of {p["k_split"]}'
    workgroups = [(x, y, z) for z in range(splits) for y in range((m + TILE - 1) // TILE)
                  for x in range((n + TILE - 1) // TILE)]
    for x, y, z in workgroups:
        # The interpreter binds A and its vec4 view as two buffers: both get the same data.
        given = {'params': {'': p}, 'a': {'': a_buffer}, 'b': {'': b_buffer}, 'a4': {'': a4},
                 'b4': {'': b4}, 'c': {'': c}, 'wid': [x, y, z]}
        inputs, outputs = os.path.join(work, 'in.json'), os.path.join(work, 'out.json')
        json.dump(given, open(inputs, 'w'))
        ran = subprocess.run([interpreter, '-q', '-i', inputs, '-o', outputs, '-f', 'json', spirv],
                             capture_output=True, text=True)
        if ran.returncode != 0:
            print(f'FAIL {name}: the interpreter stopped: {(ran.stdout + ran.stderr)[-800:]}')
            return False
        c = json.load(open(outputs))['c']['']
    worst, wrong, outside = 0.0, [], 0
    for row in range(rows):
        for j in range(ldc):
            got = c[row * ldc + j]
            piece, i = divmod(row, m) if p['k_split'] else (0, row)
            if i >= m or j >= n:
                # The interpreter prints six significant digits.
                outside += abs(got - c_old[row * ldc + j]) > 1e-5 * abs(c_old[row * ldc + j])
                continue
            depth = p['k_split'] or k
            ks = range(piece * depth, min(k, (piece + 1) * depth))
            terms = [f16(a[i][kk]) * f16(b[kk][j]) for kk in ks]
            expected = p['alpha'] * sum(terms) + p['beta'] * c_old[row * ldc + j]
            error = abs(got - expected)
            worst = max(worst, error)
            if error > 1e-3 * (sum(abs(t) for t in terms) + abs(c_old[row * ldc + j])):
                wrong.append((row, j, got, expected))
    verdict = 'ok  ' if not wrong and not outside else 'FAIL'
    print(f'{verdict} {name}: worst error {worst:.3g}, {len(wrong)} of {m * n} elements wrong, '
          f'{outside} written outside the product')
    for element in wrong[:8]:
        print('     C[%d][%d] = %r, expected %r' % element)
    return not wrong and not outside


def main():
    interpreter, spirv, work = sys.argv[1:4]
    results = [run(interpreter, spirv, work, case) for case in CASES]
    sys.exit(0 if all(results) else 1)


main()
