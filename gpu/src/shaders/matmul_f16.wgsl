enable f16;
// The operands of the f16 products (prepended to matmul.wgsl; adapters with SHADER_F16):
// rounded to binary16 as they are loaded (an f32 beyond f16's range becomes ±inf, which the
// loss scaler of mixed-precision training catches), staged in workgroup memory at half the
// width, and multiplied in f32 — exactly, as a binary16 product fits f32's significand — into
// f32 sums: what f16 tensor cores compute.
alias Operand = f16;
// `to_operand`/`to_operand4` (an f32 as an operand) follow, written by the host
// (matmul_source.rs): the driver's conversion where the device's probe found it rounds to
// nearest even, else f16_round.wgsl's rounding first, so that the conversion is exact.
