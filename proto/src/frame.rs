//! Helpers shared by every side of the data path: chunk ids and frame
//! checksums. They live here so the client, the datanode and the coordinator
//! agree on one definition.

use crate::{CHUNK_ID_LEN, ChecksumAlgorithm, ChunkData};
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
        ChunkData {
            data,
            offset,
            is_final,
            frame_checksum,
            session_id: String::new(),
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
}
