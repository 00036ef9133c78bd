//! SentencePiece's precompiled character map (`normalizer_spec.precompiled_charsmap`): the
//! normalisation rules (`nmt_nfkc`: NFKC plus NMT clean-up) compiled into a darts-clone
//! double-array trie over UTF-8 byte strings, whose values are offsets of NUL-terminated
//! replacements.
//!
//! Layout: a little-endian `u32` with the trie's size in bytes, the trie (little-endian `u32`
//! units), then the replacement strings. Every array access is bounds-checked: a corrupt map
//! ends a lookup rather than panicking.

/// A parsed character map.
#[derive(Debug, Clone, Default)]
pub struct Charsmap {
    units: Vec<u32>,
    replacements: String,
}

/// darts-clone unit accessors.
fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}

fn value(unit: u32) -> usize {
    (unit & 0x7fff_ffff) as usize
}

fn label(unit: u32) -> u32 {
    unit & 0x8000_00ff
}

fn offset(unit: u32) -> usize {
    ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
}

impl Charsmap {
    /// Parses the bytes of a precompiled character map; an empty map has no rules.
    ///
    /// # Errors
    ///
    /// A one-line reason when the sizes are inconsistent or the replacements are not UTF-8.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Charsmap::default());
        }
        let size_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("the precompiled charsmap is shorter than its 4-byte header")?;
        let trie_len = u32::from_le_bytes(size_bytes) as usize;
        let rest = &bytes[4..];
        if trie_len >= rest.len() || !trie_len.is_multiple_of(4) {
            return Err(format!(
                "the precompiled charsmap's trie size {trie_len} does not fit its {} bytes",
                rest.len()
            ));
        }
        let units = rest[..trie_len]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let replacements = String::from_utf8(rest[trie_len..].to_vec())
            .map_err(|_| "the precompiled charsmap's replacements are not UTF-8")?;
        Ok(Charsmap {
            units,
            replacements,
        })
    }

    /// The longest rule matching a prefix of `input`: the number of bytes it consumes and its
    /// replacement (SentencePiece's `Normalizer::NormalizePrefix`). `None` when no rule
    /// matches, or when the matching rule's replacement is unreadable.
    pub fn longest_match(&self, input: &[u8]) -> Option<(usize, &str)> {
        if self.units.is_empty() {
            return None;
        }
        let mut longest: Option<(usize, usize)> = None;
        let mut node = offset(*self.units.first()?);
        for (i, &byte) in input.iter().enumerate() {
            node ^= usize::from(byte);
            let Some(&unit) = self.units.get(node) else {
                break;
            };
            if label(unit) != u32::from(byte) {
                break;
            }
            node ^= offset(unit);
            if has_leaf(unit) {
                let Some(&leaf) = self.units.get(node) else {
                    break;
                };
                longest = Some((i + 1, value(leaf)));
            }
        }
        let (length, start) = longest?;
        let tail = self.replacements.get(start..)?;
        let end = tail.find('\0').unwrap_or(tail.len());
        Some((length, &tail[..end]))
    }
}
