// The operands of the f32 products (prepended to matmul.wgsl): stored and multiplied as loaded.
alias Operand = f32;
