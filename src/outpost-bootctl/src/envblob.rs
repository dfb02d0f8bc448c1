//! U-Boot's `env export -c -s 0x1000` / `env import -c` blob: a little-endian CRC32
//! (zlib polynomial) over the 4092 data bytes, then `name=value` entries each ending in
//! NUL, an extra NUL after the last entry, and NUL padding to the end.

use std::collections::BTreeMap;

/// Size of one boot-state copy, header included. Fixed so a rewrite never changes the
/// file's size (and so never touches the FAT allocation).
pub const ENV_SIZE: usize = 4096;
const CRC_LEN: usize = 4;
const DATA_LEN: usize = ENV_SIZE - CRC_LEN;

/// Variables in one blob. A `BTreeMap` so export order is sorted, as U-Boot's is.
pub type EnvVars = BTreeMap<String, String>;

/// Why a blob could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("has the wrong size ({len} bytes read), expected exactly {ENV_SIZE}")]
    WrongSize { len: usize },
    #[error("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("entry {index} has no '=' or an empty name")]
    BadEntry { index: usize },
    #[error("entry {index} is not valid UTF-8")]
    NotUtf8 { index: usize },
    #[error("last entry is not NUL-terminated")]
    Unterminated,
    #[error("variable name {name:?} is not allowed (empty, or contains '=' or NUL)")]
    BadName { name: String },
    #[error("value of {name} contains NUL")]
    BadValue { name: String },
    #[error("variables need {needed} bytes but only {DATA_LEN} fit")]
    TooLarge { needed: usize },
}

/// CRC32 as zlib and U-Boot compute it.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Decodes one copy. Anything but a complete, CRC-valid blob is an error: that is how a
/// torn or missing write is told apart from a good one.
pub fn decode(blob: &[u8]) -> Result<EnvVars, BlobError> {
    if blob.len() != ENV_SIZE {
        return Err(BlobError::WrongSize { len: blob.len() });
    }
    let (header, data) = blob.split_at(CRC_LEN);
    let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let computed = crc32(data);
    if stored != computed {
        return Err(BlobError::BadCrc { stored, computed });
    }

    let mut vars = EnvVars::new();
    let mut rest = data;
    let mut index = 0;
    loop {
        // An empty entry (two NULs in a row) ends the list, like U-Boot's himport.
        match rest.first() {
            None => break,
            Some(0) => break,
            Some(_) => {}
        }
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BlobError::Unterminated)?;
        let entry = std::str::from_utf8(&rest[..end]).map_err(|_| BlobError::NotUtf8 { index })?;
        let (name, value) = entry
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or(BlobError::BadEntry { index })?;
        // A repeated name overrides the earlier one, as importing it into U-Boot would.
        vars.insert(name.to_string(), value.to_string());
        rest = &rest[end + 1..];
        index += 1;
    }
    Ok(vars)
}

/// Encodes variables into one full copy, sorted by name and NUL-padded.
pub fn encode(vars: &EnvVars) -> Result<Vec<u8>, BlobError> {
    let mut data = Vec::with_capacity(DATA_LEN);
    for (name, value) in vars {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(BlobError::BadName { name: name.clone() });
        }
        if value.contains('\0') {
            return Err(BlobError::BadValue { name: name.clone() });
        }
        data.extend_from_slice(name.as_bytes());
        data.push(b'=');
        data.extend_from_slice(value.as_bytes());
        data.push(0);
    }
    // The list terminator; an empty list is a single NUL.
    data.push(0);
    if data.len() > DATA_LEN {
        return Err(BlobError::TooLarge { needed: data.len() });
    }
    data.resize(DATA_LEN, 0);

    let mut blob = Vec::with_capacity(ENV_SIZE);
    blob.extend_from_slice(&crc32(&data).to_le_bytes());
    blob.extend_from_slice(&data);
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Builds a blob by hand, the way U-Boot lays it out, with a correct CRC.
    fn raw_blob(data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        d.resize(DATA_LEN, 0);
        let mut blob = crc32(&d).to_le_bytes().to_vec();
        blob.extend_from_slice(&d);
        blob
    }

    #[test]
    fn crc32_matches_zlib_check_value() {
        // The standard check value of CRC-32/ISO-HDLC (zlib's crc32).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip() {
        let v = vars(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "0"),
            ("BOOT_SEQ", "12"),
        ]);
        let blob = encode(&v).unwrap();
        assert_eq!(blob.len(), ENV_SIZE);
        assert_eq!(decode(&blob).unwrap(), v);
    }

    #[test]
    fn layout_is_u_boot_export_layout() {
        let blob = encode(&vars(&[("BOOT_SEQ", "9"), ("BOOT_ORDER", "A B")])).unwrap();
        // Sorted entries, each NUL-terminated, then the extra NUL, then padding.
        let expected_data = b"BOOT_ORDER=A B\0BOOT_SEQ=9\0\0";
        assert_eq!(&blob[4..4 + expected_data.len()], expected_data);
        assert!(blob[4 + expected_data.len()..].iter().all(|&b| b == 0));
        let stored = u32::from_le_bytes(blob[..4].try_into().unwrap());
        assert_eq!(stored, crc32(&blob[4..]));
    }

    #[test]
    fn decodes_a_hand_built_blob_with_empty_value() {
        let blob = raw_blob(b"X=\0Y=a=b\0\0");
        assert_eq!(decode(&blob).unwrap(), vars(&[("X", ""), ("Y", "a=b")]));
    }

    #[test]
    fn empty_environment() {
        let blob = encode(&EnvVars::new()).unwrap();
        assert!(decode(&blob).unwrap().is_empty());
    }

    #[test]
    fn rejects_wrong_size() {
        let blob = encode(&vars(&[("A", "1")])).unwrap();
        assert_eq!(decode(&blob[..100]), Err(BlobError::WrongSize { len: 100 }));
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(BlobError::WrongSize { len: ENV_SIZE + 1 })
        );
    }

    #[test]
    fn rejects_any_single_bit_flip() {
        let blob = encode(&vars(&[("BOOT_ORDER", "A B"), ("BOOT_SEQ", "4")])).unwrap();
        for byte in [0usize, 3, 4, 10, 30, 2000, ENV_SIZE - 1] {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(decode(&bad), Err(BlobError::BadCrc { .. })),
                    "flip at byte {byte} bit {bit} was accepted"
                );
            }
        }
    }

    #[test]
    fn rejects_malformed_entries_with_valid_crc() {
        assert_eq!(
            decode(&raw_blob(b"NOEQUALS\0\0")),
            Err(BlobError::BadEntry { index: 0 })
        );
        assert_eq!(
            decode(&raw_blob(b"A=1\0=2\0\0")),
            Err(BlobError::BadEntry { index: 1 })
        );
        assert_eq!(
            decode(&raw_blob(b"A=\xff\0\0")),
            Err(BlobError::NotUtf8 { index: 0 })
        );
        // Data filled to the very end with no terminating NUL.
        let full = vec![b'x'; DATA_LEN];
        assert_eq!(decode(&raw_blob(&full)), Err(BlobError::Unterminated));
    }

    #[test]
    fn later_duplicate_wins() {
        assert_eq!(
            decode(&raw_blob(b"A=1\0A=2\0\0")).unwrap(),
            vars(&[("A", "2")])
        );
    }

    #[test]
    fn refuses_bad_names_values_and_overflow() {
        assert!(matches!(
            encode(&vars(&[("A=B", "1")])),
            Err(BlobError::BadName { .. })
        ));
        assert!(matches!(
            encode(&vars(&[("", "1")])),
            Err(BlobError::BadName { .. })
        ));
        assert!(matches!(
            encode(&vars(&[("A", "x\0y")])),
            Err(BlobError::BadValue { .. })
        ));
        let big = "v".repeat(DATA_LEN);
        assert!(matches!(
            encode(&vars(&[("A", &big)])),
            Err(BlobError::TooLarge { .. })
        ));
        // Exactly full: "A=" + value + NUL + terminator NUL == DATA_LEN.
        let fits = "v".repeat(DATA_LEN - 4);
        let blob = encode(&vars(&[("A", &fits)])).unwrap();
        assert_eq!(decode(&blob).unwrap()["A"], fits);
    }
}
