#!/usr/bin/env python3
"""Adds an explicit MemoryAccess None operand to every OpCooperativeMatrixLoadKHR/StoreKHR that
has a Stride but no memory operand (naga writes none): the same SPIR-V in meaning, which
SPIRV-Interpreter's parser needs (it reads the Stride and the memory operand together).
Usage: patch_spv.py IN.spv OUT.spv"""
import struct
import sys

LOAD, STORE = 4457, 4458
data = open(sys.argv[1], 'rb').read()
words = list(struct.unpack('<%dI' % (len(data) // 4), data))
out, i, patched = words[:5], 5, 0
while i < len(words):
    count, opcode = words[i] >> 16, words[i] & 0xffff
    instruction = words[i:i + count]
    # Load: type, result, pointer, layout, stride; store: pointer, object, layout, stride.
    if (opcode == LOAD and count == 6) or (opcode == STORE and count == 5):
        instruction = [((count + 1) << 16) | opcode] + instruction[1:] + [0]
        patched += 1
    out += instruction
    i += count
open(sys.argv[2], 'wb').write(struct.pack('<%dI' % len(out), *out))
print(f'{sys.argv[2]}: {patched} cooperative-matrix loads and stores given a memory operand')
