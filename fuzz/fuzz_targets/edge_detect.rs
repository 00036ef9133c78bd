//! The edge format and runtime (`deberta_core::edge`, what the firmware and `deberta detect`
//! run): `EdgeModel::parse` on arbitrary bytes (at a 16-byte-aligned address, as the runtime
//! requires) and, when a file parses, `detect` on a few sequences with a fixed-size arena.
//! Each input is tried as given and again with its header and payload CRC-32s recomputed,
//! so that mutations reach the validation behind the checksums.
#![no_main]

use deberta_core::edge::format::{HEADER_CRC_START, RawHeader};
use deberta_core::edge::{EdgeError, EdgeModel, arena_bytes, crc32, detect};
use deberta_host::edge_export::AlignedBytes;
use libfuzzer_sys::fuzz_target;

/// The arena every detection gets (the seeds' models need a few KiB).
const ARENA_BYTES: usize = 256 << 10;

/// `bytes` with both checksums rewritten to match, when the header can be read.
fn with_checksums(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = RawHeader::decode(bytes).ok()?;
    let mut fixed = bytes.to_vec();
    let start = header.payload_offset as usize;
    let payload = fixed.get(start..start.checked_add(header.payload_len as usize)?)?;
    let crc = crc32(payload);
    fixed[12..16].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32(fixed.get(HEADER_CRC_START..start)?);
    fixed[8..12].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

fn parse_and_detect(bytes: &[u8]) {
    let aligned = AlignedBytes::new(bytes);
    let Ok(model) = EdgeModel::parse(aligned.bytes()) else {
        return;
    };
    let _ = model.tokenizer();
    let vocab = model.config().vocab_size;
    let max = model.max_seq_len();
    let mut arena = vec![0u8; ARENA_BYTES];
    let mut out = [0.0f32; 16];
    for len in [1, 2, 5, 16] {
        let len = len.min(max);
        let ids: Vec<u32> = (0..len)
            .map(|i| ((7 * i + 1) % vocab.max(1)) as u32)
            .collect();
        let result = detect(&model, &ids, &mut arena, &mut out[..len]);
        // A parsed model runs on valid ids whenever the arena is large enough.
        match arena_bytes(&model, len) {
            Ok(needed) if needed <= ARENA_BYTES => {
                result.expect("detect on a parsed model and valid ids");
            }
            _ => assert!(result.is_err(), "detect ran in an arena that is too small"),
        }
    }
    let too_large = [u32::try_from(vocab).unwrap_or(u32::MAX)];
    assert!(matches!(
        detect(&model, &too_large, &mut arena, &mut out),
        Err(EdgeError::TokenOutOfRange { .. })
    ));
}

fuzz_target!(|data: &[u8]| {
    parse_and_detect(data);
    if let Some(fixed) = with_checksums(data) {
        if fixed != data {
            parse_and_detect(&fixed);
        }
    }
});
