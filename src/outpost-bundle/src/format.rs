//! The container: a fixed 128-byte header, the manifest (JSON), then the parts
//! concatenated in manifest order. Nothing else, so a device can check the signature
//! after reading a few kilobytes and then stream each part straight to its place.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "OUTPOSTB"
//!      8     2  container version, big endian (1)
//!     10     2  flags, big endian: bit 0 = signed; other bits must be 0
//!     12     4  manifest length in bytes, big endian
//!     16    32  signer's ed25519 public key (zeros when unsigned)
//!     48    64  ed25519 signature over the manifest bytes (zeros when unsigned)
//!    112    16  reserved, zero
//!    128     …  manifest, then the parts
//! ```
//!
//! The signature lives in the header at a fixed place, so signing a multi-hundred-
//! megabyte bundle rewrites 102 bytes in place instead of copying the file.

use crate::error::Refusal;

pub const MAGIC: [u8; 8] = *b"OUTPOSTB";
pub const CONTAINER_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 128;
/// A manifest lists a handful of parts; anything near this is not ours. The bound keeps
/// a device from allocating what a hostile header asks for.
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;

const FLAG_SIGNED: u16 = 1;
/// Where the part of the header that signing rewrites starts and ends.
pub(crate) const SEAL_RANGE: std::ops::Range<usize> = 10..112;
const SIGNER_AT: usize = 16;
const SIGNATURE_AT: usize = 48;
const RESERVED_AT: usize = 112;

/// Who signed the manifest, and the signature itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub manifest_len: u32,
    /// `None` for a bundle that `outpostctl bundle build` made and nobody signed yet.
    pub seal: Option<Seal>,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&CONTAINER_VERSION.to_be_bytes());
        let flags = if self.seal.is_some() { FLAG_SIGNED } else { 0 };
        b[10..12].copy_from_slice(&flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.manifest_len.to_be_bytes());
        if let Some(seal) = &self.seal {
            b[SIGNER_AT..SIGNATURE_AT].copy_from_slice(&seal.signer);
            b[SIGNATURE_AT..RESERVED_AT].copy_from_slice(&seal.signature);
        }
        b
    }

    /// Strict: every byte has one meaning, so a header either is ours or is refused.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, Refusal> {
        if b[..8] != MAGIC {
            return Err(Refusal::NotABundle);
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != CONTAINER_VERSION {
            return Err(Refusal::UnsupportedContainer { version });
        }
        let flags = u16::from_be_bytes([b[10], b[11]]);
        if flags & !FLAG_SIGNED != 0 {
            return Err(Refusal::MalformedHeader {
                reason: format!("unknown flags {flags:#06x}"),
            });
        }
        if b[RESERVED_AT..].iter().any(|&x| x != 0) {
            return Err(Refusal::MalformedHeader {
                reason: "reserved bytes are not zero".into(),
            });
        }
        let manifest_len = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(Refusal::MalformedHeader {
                reason: format!("manifest length {manifest_len} is outside 1..={MAX_MANIFEST_LEN}"),
            });
        }
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&b[SIGNER_AT..SIGNATURE_AT]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[SIGNATURE_AT..RESERVED_AT]);
        let seal = if flags & FLAG_SIGNED != 0 {
            Some(Seal { signer, signature })
        } else if signer.iter().chain(signature.iter()).any(|&x| x != 0) {
            return Err(Refusal::MalformedHeader {
                reason: "unsigned, yet the signature field is not empty".into(),
            });
        } else {
            None
        };
        Ok(Header { manifest_len, seal })
    }

    /// Offset of the first part.
    pub fn payload_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.manifest_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> Header {
        Header {
            manifest_len: 300,
            seal: Some(Seal {
                signer: [7; 32],
                signature: [9; 64],
            }),
        }
    }

    #[test]
    fn round_trips_signed_and_unsigned() {
        let h = signed();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let u = Header {
            manifest_len: 1,
            seal: None,
        };
        assert_eq!(Header::decode(&u.encode()).unwrap(), u);
        assert_eq!(u.payload_offset(), 129);
    }

    #[test]
    fn refuses_foreign_or_odd_headers() {
        let good = signed().encode();

        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(Refusal::NotABundle)));

        let mut b = good;
        b[9] = 2;
        assert!(matches!(
            Header::decode(&b),
            Err(Refusal::UnsupportedContainer { version: 2 })
        ));

        let mut b = good;
        b[11] |= 0x80;
        assert!(matches!(
            Header::decode(&b),
            Err(Refusal::MalformedHeader { .. })
        ));

        let mut b = good;
        b[127] = 1;
        assert!(matches!(
            Header::decode(&b),
            Err(Refusal::MalformedHeader { .. })
        ));

        let mut b = good;
        b[12..16].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_be_bytes());
        assert!(matches!(
            Header::decode(&b),
            Err(Refusal::MalformedHeader { .. })
        ));

        // Clearing only the flag must not turn a signed header into a valid unsigned one.
        let mut b = good;
        b[11] = 0;
        assert!(matches!(
            Header::decode(&b),
            Err(Refusal::MalformedHeader { .. })
        ));
    }
}
