//! Helpers shared by every side of the data path: chunk ids and frame
//! checksums. They live here so the client, the datanode and the coordinator
//! agree on one definition.

use crate::{CHUNK_ID_LEN, ChecksumAlgorithm, ChunkData, DEFAULT_FRAME_BYTES};
use bytes::Bytes;

/// Returns true when `id` is a well-formed chunk id: exactly 32 lowercase
/// hexadecimal characters. Anything else (`../../etc/passwd`, upper case,
/// empty) must be rejected before it touches a path.
pub fn is_valid_chunk_id(id: &str) -> bool {
    id.len() == CHUNK_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checksum of `data` with the protocol's algorithm (CRC32C).
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends a running checksum with more bytes.
pub fn checksum_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Checksum of `a ++ b` from the checksum of `a`, the bytes `b` and their
/// already known checksum `crc_b` (a verified frame or block), so a reader
/// that checks every frame gets the whole chunk's checksum without a second
/// pass over the bytes. For [`DEFAULT_FRAME_BYTES`]-long `b` (every frame but
/// a chunk's last) it is four table lookups; other lengths extend `crc_a`
/// over the bytes, which is cheaper than the crc32c crate's general combine
/// (a 32x32 GF(2) matrix product per length bit: perf showed it costing more
/// than checksumming a 256 KiB frame outright).
pub fn checksum_extend(crc_a: u32, b: &[u8], crc_b: u32) -> u32 {
    if b.len() == DEFAULT_FRAME_BYTES {
        frame_shift().apply(crc_a) ^ crc_b
    } else {
        checksum_append(crc_a, b)
    }
}

/// Multiplication of a CRC by x^(8 * DEFAULT_FRAME_BYTES): linear over
/// GF(2), so it is a table per byte of the CRC, built once from 32 calls of
/// the crate's combine (on single bits) and XORs.
struct Shift([[u32; 256]; 4]);

impl Shift {
    fn new(len: usize) -> Shift {
        let mut t = [[0u32; 256]; 4];
        for (k, table) in t.iter_mut().enumerate() {
            let bits: Vec<u32> = (0..8)
                .map(|b| crc32c::crc32c_combine(1u32 << (8 * k + b), 0, len))
                .collect();
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|b| v & (1 << b) != 0)
                    .fold(0, |acc, b| acc ^ bits[b]);
            }
        }
        Shift(t)
    }

    fn apply(&self, crc: u32) -> u32 {
        let [b0, b1, b2, b3] = crc.to_le_bytes();
        self.0[0][b0 as usize]
            ^ self.0[1][b1 as usize]
            ^ self.0[2][b2 as usize]
            ^ self.0[3][b3 as usize]
    }
}

fn frame_shift() -> &'static Shift {
    static SHIFT: std::sync::OnceLock<Shift> = std::sync::OnceLock::new();
    SHIFT.get_or_init(|| Shift::new(DEFAULT_FRAME_BYTES))
}

/// Whether a message's algorithm is one this build understands.
/// UNSPECIFIED is read as CRC32C for peers that did not set it.
pub fn is_supported_algorithm(algorithm: i32) -> bool {
    matches!(
        ChecksumAlgorithm::try_from(algorithm),
        Ok(ChecksumAlgorithm::Crc32c | ChecksumAlgorithm::Unspecified)
    )
}

impl ChunkData {
    /// Builds a frame over `data`, computing its checksum.
    pub fn frame(data: Bytes, offset: u64, is_final: bool) -> Self {
        let frame_checksum = checksum(&data);
        Self::frame_with_checksum(data, offset, is_final, frame_checksum)
    }

    /// A frame whose checksum is already known (a datanode reading a whole
    /// verified block has just computed it): saves a pass over the bytes.
    /// The caller guarantees `frame_checksum == checksum(&data)`.
    pub fn frame_with_checksum(
        data: Bytes,
        offset: u64,
        is_final: bool,
        frame_checksum: u32,
    ) -> Self {
        debug_assert_eq!(checksum(&data), frame_checksum);
        ChunkData {
            data,
            offset,
            is_final,
            frame_checksum,
            session_id: String::new(),
            prepare: None,
        }
    }

    /// True when the frame's bytes match the checksum it carries.
    pub fn verify(&self) -> bool {
        checksum(&self.data) == self.frame_checksum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_validated() {
        assert!(is_valid_chunk_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef/123456789abcdef",
            "0123456789abcdeg0123456789abcdef",
        ] {
            assert!(!is_valid_chunk_id(bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn frames_verify_their_checksum() {
        let mut frame = ChunkData::frame(Bytes::from_static(b"hello world"), 0, false);
        assert!(frame.verify());
        frame.data = Bytes::from_static(b"hello worle");
        assert!(!frame.verify());
    }

    #[test]
    fn checksum_is_crc32c() {
        // Known answer from RFC 3720 (iSCSI): 32 bytes of zeros.
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
        let whole = checksum(b"hello world");
        assert_eq!(checksum_append(checksum(b"hello "), b"world"), whole);
    }

    #[test]
    fn extend_matches_one_pass_over_the_bytes() {
        let data: Vec<u8> = (0..DEFAULT_FRAME_BYTES * 2 + 1000)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut crc = 0;
        for piece in data.chunks(DEFAULT_FRAME_BYTES) {
            crc = checksum_extend(crc, piece, checksum(piece));
        }
        assert_eq!(crc, checksum(&data));
        // A non-zero start through the table path.
        let a = checksum(b"prefix");
        let b = &data[..DEFAULT_FRAME_BYTES];
        assert_eq!(checksum_extend(a, b, checksum(b)), checksum_append(a, b));
    }
}
