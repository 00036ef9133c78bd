//! The block-sparse message of one process's gradients in a bucket. Each parameter's values
//! split into blocks of [`BLOCK`] values from its start (its last block may be shorter); the
//! message holds the bits of every block that has anything but `+0.0`, in order, followed by a
//! bitmap with one bit per block of the bucket (set for the blocks sent). Rows of an embedding
//! table that no token of the process touched are exactly `+0.0`, so they cost one bit per
//! block instead of their values; dense tensors cost one extra bit per block. Reading restores
//! every value bit for bit.
//!
//! The bitmap comes last so that a message can be written one parameter at a time, straight
//! from the gradients, without knowing the bucket's length in advance.

/// Values per block (half a 128-wide embedding row).
pub const BLOCK: usize = 64;

/// Blocks of a parameter of `len` values.
pub fn blocks(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

/// Bitmap words (32 blocks each) of a message of `blocks` blocks.
fn bitmap_words(blocks: usize) -> usize {
    blocks.div_ceil(32)
}

/// The longest message of `values` values in `blocks` blocks (every block sent).
pub fn message_bound(values: usize, blocks: usize) -> usize {
    values + bitmap_words(blocks)
}

/// Writes a message, one parameter at a time.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The bitmap so far.
    bitmap: Vec<u32>,
    /// Blocks so far.
    blocks: usize,
}

impl Encoder {
    /// Appends the blocks of one parameter's `values` to `message` (the values of the blocks
    /// that are not all `+0.0`).
    pub fn push(&mut self, values: &[f32], message: &mut Vec<u32>) {
        for block in values.chunks(BLOCK) {
            let b = self.blocks;
            if b.is_multiple_of(32) {
                self.bitmap.push(0);
            }
            if block.iter().any(|v| v.to_bits() != 0) {
                self.bitmap[b / 32] |= 1 << (b % 32);
                message.extend(block.iter().map(|v| v.to_bits()));
            }
            self.blocks += 1;
        }
    }

    /// Ends `message` with the bitmap, and starts over for the next message.
    pub fn finish(&mut self, message: &mut Vec<u32>) {
        message.extend_from_slice(&self.bitmap);
        self.bitmap.clear();
        self.blocks = 0;
    }
}

/// Reads a message block by block, in the order they were written.
#[derive(Debug)]
pub struct Reader<'m> {
    /// The values not read yet.
    values: &'m [u32],
    bitmap: &'m [u32],
    /// The next block.
    block: usize,
    blocks: usize,
}

impl<'m> Reader<'m> {
    /// A reader of `message`, a message of `blocks` blocks; `None` when it is too short.
    pub fn new(message: &'m [u32], blocks: usize) -> Option<Reader<'m>> {
        let (values, bitmap) =
            message.split_at_checked(message.len().checked_sub(bitmap_words(blocks))?)?;
        Some(Reader {
            values,
            bitmap,
            block: 0,
            blocks,
        })
    }

    /// The bits of the next block, of `len` values (`Some(None)`: every value `+0.0`);
    /// `None` when the message has no such block.
    #[inline]
    pub fn next(&mut self, len: usize) -> Option<Option<&'m [u32]>> {
        let b = self.block;
        if b >= self.blocks {
            return None;
        }
        self.block += 1;
        if self.bitmap[b / 32] & (1 << (b % 32)) == 0 {
            return Some(None);
        }
        let (head, rest) = self.values.split_at_checked(len)?;
        self.values = rest;
        Some(Some(head))
    }

    /// The values of the next `out.len()` values into `out` (every value written); `None`
    /// when the message has no such blocks.
    pub fn read(&mut self, out: &mut [f32]) -> Option<()> {
        for block in out.chunks_mut(BLOCK) {
            match self.next(block.len())? {
                Some(bits) => {
                    for (v, &b) in block.iter_mut().zip(bits) {
                        *v = f32::from_bits(b);
                    }
                }
                None => block.fill(0.0),
            }
        }
        Some(())
    }

    /// `Some` when every block and value of the message has been read.
    pub fn finish(self) -> Option<()> {
        (self.block == self.blocks && self.values.is_empty()).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(parameters: &[&[f32]], message: &mut Vec<u32>) {
        let mut encoder = Encoder::default();
        message.clear();
        for values in parameters {
            encoder.push(values, message);
        }
        encoder.finish(message);
    }

    #[test]
    fn messages_restore_every_bit_and_skip_untouched_blocks() {
        let mut values = vec![0.0f32; 5 * BLOCK + 7];
        values[3] = 1.5;
        values[2 * BLOCK] = -0.0; // a negative zero is sent
        values[5 * BLOCK + 6] = f32::from_bits(1); // a subnormal
        let second = [0.0f32, 2.0, 0.0];
        let mut message = Vec::new();
        encode(&[&values, &second], &mut message);
        // Three of six blocks of the first parameter (the last one short), the second's only
        // block, and one bitmap word.
        assert_eq!(message.len(), 2 * BLOCK + 7 + 3 + 1);
        let total = blocks(values.len()) + blocks(second.len());
        assert_eq!(total, 7);
        let mut reader = Reader::new(&message, total).unwrap();
        // Into buffers holding other values: every value is written.
        let mut out = vec![7.0f32; values.len()];
        reader.read(&mut out).unwrap();
        let mut out2 = [7.0f32; 3];
        reader.read(&mut out2).unwrap();
        reader.finish().unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&values, &out) && same(&second, &out2));
        // Block by block: the untouched blocks are `None`.
        let mut reader = Reader::new(&message, total).unwrap();
        let sent: Vec<bool> = (0..6)
            .map(|b| {
                reader
                    .next(BLOCK.min(values.len() - b * BLOCK))
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(sent, [true, false, true, false, false, true]);
        assert!(reader.next(3).unwrap().is_some());
        assert!(reader.next(3).is_none());
        reader.finish().unwrap();
        assert_eq!(message_bound(values.len() + 3, total), values.len() + 3 + 1);
        // Truncated, padded or of other lengths: refused.
        let refused = |message: &[u32], lens: &[usize]| {
            let total = lens.iter().map(|&l| blocks(l)).sum();
            let Some(mut reader) = Reader::new(message, total) else {
                return true;
            };
            lens.iter()
                .all(|&l| reader.read(&mut vec![0.0; l]).is_some())
                .then(|| reader.finish())
                .flatten()
                .is_none()
        };
        assert!(!refused(&message, &[values.len(), 3]));
        assert!(refused(&message[1..], &[values.len(), 3]));
        let mut long = message.clone();
        long.insert(0, 0);
        assert!(refused(&long, &[values.len(), 3]));
        assert!(refused(&message, &[values.len(), 3 + BLOCK]));
        assert!(refused(&message, &[values.len()]));
        assert!(refused(&[], &[1]));
        encode(&[], &mut message);
        assert!(message.is_empty());
        assert!(!refused(&message, &[]));
    }
}
