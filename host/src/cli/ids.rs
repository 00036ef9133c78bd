//! Parsing `--ids "1,5,9;1,7"` into a padded batch.

use crate::error::{Error, Result};

/// Sequences separated by `;`, ids by `,` (spaces allowed), padded with `pad` to the longest
/// sequence. Returns `(ids, mask, batch, len)`.
pub fn parse_id_batch(text: &str, pad: i64) -> Result<(Vec<i64>, Vec<i64>, usize, usize)> {
    let sequences: Vec<Vec<i64>> = text
        .split(';')
        .map(|seq| {
            seq.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    t.parse::<i64>().map_err(|_| {
                        Error::Usage(format!("--ids: \"{t}\" is not an integer token id"))
                    })
                })
                .collect::<Result<Vec<i64>>>()
        })
        .collect::<Result<_>>()?;
    if sequences.iter().any(Vec::is_empty) {
        return Err(Error::Usage(
            "--ids: every sequence needs at least one id (use ';' between sequences)".into(),
        ));
    }
    let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let batch = sequences.len();
    let mut ids = Vec::with_capacity(batch * len);
    let mut mask = Vec::with_capacity(batch * len);
    for seq in &sequences {
        ids.extend_from_slice(seq);
        ids.extend(std::iter::repeat_n(pad, len - seq.len()));
        mask.extend(std::iter::repeat_n(1, seq.len()));
        mask.extend(std::iter::repeat_n(0, len - seq.len()));
    }
    Ok((ids, mask, batch, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_rejects() {
        let (ids, mask, b, l) = parse_id_batch("1,5,9; 1,7", 0).unwrap();
        assert_eq!((b, l), (2, 3));
        assert_eq!(ids, vec![1, 5, 9, 1, 7, 0]);
        assert_eq!(mask, vec![1, 1, 1, 1, 1, 0]);
        assert!(parse_id_batch("1,x", 0).is_err());
        assert!(parse_id_batch("1;;2", 0).is_err());
        assert!(parse_id_batch("", 0).is_err());
    }
}
