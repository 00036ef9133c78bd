//! Counter-based random numbers (Philox4x32-10): every draw is a pure function of
//! `(seed, step, stream, index)`, so any backend — and any resumed run — reproduces the same
//! numbers without carrying generator state.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: a bijection of a 128-bit counter under a 64-bit key.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// [`philox4x32`] of `BLOCKS` consecutive counters `first_block..` (counter words 2 and 3 given)
/// at once, in structure-of-arrays form so that the rounds vectorise; returns the four output
/// words of every block, `out[word][block]`.
#[inline(always)]
fn philox4x32_blocks<const BLOCKS: usize>(
    first_block: u64,
    high: [u32; 2],
    key: [u32; 2],
) -> [[u32; BLOCKS]; 4] {
    let mut c: [[u32; BLOCKS]; 4] = [
        core::array::from_fn(|b| (first_block + b as u64) as u32),
        core::array::from_fn(|b| ((first_block + b as u64) >> 32) as u32),
        [high[0]; BLOCKS],
        [high[1]; BLOCKS],
    ];
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let mut next = [[0u32; BLOCKS]; 4];
        for b in 0..BLOCKS {
            let p0 = u64::from(M0) * u64::from(c[0][b]);
            let p1 = u64::from(M1) * u64::from(c[2][b]);
            next[0][b] = (p1 >> 32) as u32 ^ c[1][b] ^ k[0];
            next[1][b] = p1 as u32;
            next[2][b] = (p0 >> 32) as u32 ^ c[3][b] ^ k[1];
            next[3][b] = p0 as u32;
        }
        c = next;
    }
    c
}

/// Independent random streams of one training run (masking, sampling, dropout, init, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomStream {
    /// The run's seed.
    pub seed: u64,
    /// The training step (or 0 for one-off uses such as initialisation).
    pub step: u32,
    /// Which consumer draws (a distinct value per purpose and tensor).
    pub stream: u32,
}

impl RandomStream {
    /// Random words `4·block .. 4·block + 4` of this stream (one Philox block).
    pub fn block(&self, block: u64) -> [u32; 4] {
        philox4x32(
            [block as u32, (block >> 32) as u32, self.step, self.stream],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// Words `4·first_block ..` of this stream, `4·BLOCKS` of them in index order: the same
    /// as [`Self::block`] of each block, computed `BLOCKS` at a time.
    #[inline(always)]
    pub fn blocks<const BLOCKS: usize>(&self, first_block: u64) -> [[u32; 4]; BLOCKS] {
        let words = philox4x32_blocks::<BLOCKS>(
            first_block,
            [self.step, self.stream],
            [self.seed as u32, (self.seed >> 32) as u32],
        );
        core::array::from_fn(|b| core::array::from_fn(|w| words[w][b]))
    }

    /// The `index`-th 32 random bits of this stream.
    pub fn bits(&self, index: u64) -> u32 {
        self.block(index / 4)[(index % 4) as usize]
    }

    /// A uniform float in `[0, 1)` with 24 random bits.
    pub fn uniform(&self, index: u64) -> f32 {
        uniform_from_bits(self.bits(index))
    }

    /// A standard normal draw (Box–Muller over draws `2·index` and `2·index + 1`).
    pub fn normal(&self, index: u64) -> f32 {
        let u1 = 1.0 - self.uniform(2 * index); // (0, 1]
        let u2 = self.uniform(2 * index + 1);
        libm::sqrtf(-2.0 * libm::logf(u1)) * libm::cosf(2.0 * core::f32::consts::PI * u2)
    }
}

/// The uniform float in `[0, 1)` that [`RandomStream::uniform`] makes of 32 random bits (their
/// top 24).
#[inline(always)]
pub fn uniform_from_bits(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123 known-answer vectors for philox4x32_10.
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn blocks_at_once_equal_one_block_at_a_time() {
        let s = RandomStream {
            seed: 0x0123_4567_89ab_cdef,
            step: 9,
            stream: 4,
        };
        for first in [0u64, 5, (1 << 32) - 3] {
            let many = s.blocks::<8>(first);
            for (b, words) in many.iter().enumerate() {
                assert_eq!(
                    *words,
                    s.block(first + b as u64),
                    "block {}",
                    first + b as u64
                );
            }
        }
    }

    #[test]
    fn uniform_and_normal_moments() {
        let s = RandomStream {
            seed: 7,
            step: 3,
            stream: 1,
        };
        let n = 20_000u64;
        let mean_u: f64 = (0..n).map(|i| s.uniform(i) as f64).sum::<f64>() / n as f64;
        assert!((mean_u - 0.5).abs() < 0.01);
        let draws: [f64; 2] = (0..n).fold([0.0, 0.0], |acc, i| {
            let v = s.normal(i) as f64;
            [acc[0] + v, acc[1] + v * v]
        });
        assert!((draws[0] / n as f64).abs() < 0.03);
        assert!((draws[1] / n as f64 - 1.0).abs() < 0.05);
        assert_ne!(s.bits(0), RandomStream { stream: 2, ..s }.bits(0));
    }
}
