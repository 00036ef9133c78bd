// The helpers the two backward passes of the training attention share (appended after
// attention_rows.wgsl; they read the backward's `dcontext` and `value` bindings and write its
// `dtable`, the c2p or p2c table gradient).

// dO_i·V_j over one head (operands as `operand`).
fn dout_dot_value(tq: u32, tk: u32, column0: u32) -> f32 {
    let q_at = tq * params.width + column0;
    let k_at = tk * params.width + column0;
    var x = 0.0;
    for (var c = 0u; c < params.head_dim; c += 1u) {
        x += operand(dcontext[q_at + c]) * operand(value[k_at + c]);
    }
    return x;
}

// The workgroup's row of the table gradient (`dtable[table + r]`, r < params.rows) is summed in
// workgroup memory where it has at most TABLE_ROWS_MAX window rows (every sequence of up to 512
// tokens: rows ≤ 2·len − 1), and written out once at the end; longer rows are summed in place.
// Thread 0 adds the terms in key (query) order either way, so the sums are the same; in
// workgroup memory each add waits for workgroup memory instead of a read-modify-write of device
// memory, which serialises thread 0 while the others wait at the next barrier.
const TABLE_ROWS_MAX: u32 = 1024u;
var<workgroup> table_row: array<f32, TABLE_ROWS_MAX>;

// Zeroes the row (every thread, before the first add; a barrier must follow).
fn table_row_clear(lid: u32, table: u32) {
    for (var r = lid; r < params.rows; r += ATTN_ROWS_WG) {
        if (params.rows <= TABLE_ROWS_MAX) {
            table_row[r] = 0.0;
        } else {
            dtable[table + r] = 0.0;
        }
    }
}

// Adds `value` to window row `r` (one thread).
fn table_row_add(table: u32, r: u32, value: f32) {
    if (params.rows <= TABLE_ROWS_MAX) {
        table_row[r] += value;
    } else {
        dtable[table + r] += value;
    }
}

// Writes the row out (every thread, after a barrier that follows the last add).
fn table_row_store(lid: u32, table: u32) {
    if (params.rows <= TABLE_ROWS_MAX) {
        for (var r = lid; r < params.rows; r += ATTN_ROWS_WG) {
            dtable[table + r] = table_row[r];
        }
    }
}
