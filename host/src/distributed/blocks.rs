//! The block-sparse message of one process's gradients: a bitmap with one bit per block of
//! [`BLOCK`] values, set where the block holds anything but `+0.0`, followed by the bits of the
//! set blocks' values. Rows of an embedding table that no token of the process touched are
//! exactly `+0.0`, so they cost one bit per block instead of their values; dense tensors cost
//! one extra bit per block. Decoding restores every value bit for bit.

/// Values per block (half a 128-wide embedding row).
pub const BLOCK: usize = 64;

/// Bitmap words (32 blocks each) of a message of `len` values.
fn bitmap_words(len: usize) -> usize {
    len.div_ceil(BLOCK).div_ceil(32)
}

/// The longest message of `len` values (every block sent).
pub fn message_bound(len: usize) -> usize {
    bitmap_words(len) + len
}

/// Appends the message of `values` to `message` (cleared first).
pub fn encode(values: &[f32], message: &mut Vec<u32>) {
    message.clear();
    message.resize(bitmap_words(values.len()), 0);
    for (b, block) in values.chunks(BLOCK).enumerate() {
        if block.iter().any(|v| v.to_bits() != 0) {
            message[b / 32] |= 1 << (b % 32);
            message.extend(block.iter().map(|v| v.to_bits()));
        }
    }
}

/// The `len` values of `message` into `out` (resized to `len`; every value is written, so
/// `out` needs no clearing); `None` when the message is not one of `len` values.
pub fn decode(message: &[u32], len: usize, out: &mut Vec<f32>) -> Option<()> {
    let words = bitmap_words(len);
    let (bitmap, mut values) = (message.get(..words)?, message.get(words..)?);
    out.resize(len, 0.0);
    for (b, block) in out.chunks_mut(BLOCK).enumerate() {
        if bitmap[b / 32] & (1 << (b % 32)) != 0 {
            let (head, rest) = values.split_at_checked(block.len())?;
            for (v, &bits) in block.iter_mut().zip(head) {
                *v = f32::from_bits(bits);
            }
            values = rest;
        } else {
            block.fill(0.0);
        }
    }
    values.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_restore_every_bit_and_skip_untouched_blocks() {
        let mut values = vec![0.0f32; 5 * BLOCK + 7];
        values[3] = 1.5;
        values[2 * BLOCK] = -0.0; // a negative zero is sent
        values[5 * BLOCK + 6] = f32::from_bits(1); // a subnormal
        let mut message = Vec::new();
        encode(&values, &mut message);
        // One bitmap word and three of six blocks (the last one short).
        assert_eq!(message.len(), 1 + 2 * BLOCK + 7);
        let mut out = Vec::new();
        decode(&message, values.len(), &mut out).unwrap();
        assert!(
            values
                .iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // Into a buffer holding other values: every value is written.
        let mut dirty = vec![7.0f32; 9 * BLOCK];
        decode(&message, values.len(), &mut dirty).unwrap();
        assert!(
            values
                .iter()
                .zip(&dirty)
                .all(|(a, b)| a.to_bits() == b.to_bits())
                && dirty.len() == values.len()
        );
        assert_eq!(message_bound(values.len()), 1 + values.len());
        // Truncated, padded or of another length: refused.
        assert!(decode(&message[..message.len() - 1], values.len(), &mut out).is_none());
        let mut long = message.clone();
        long.push(0);
        assert!(decode(&long, values.len(), &mut out).is_none());
        assert!(decode(&message, values.len() + BLOCK, &mut out).is_none());
        encode(&[], &mut message);
        assert!(message.is_empty());
    }
}
