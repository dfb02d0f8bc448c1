//! The blob batch a sensor fetches in one request (docs/feeds.md, "Serving releases"):
//! a zstd stream holding `OFB1`, a big-endian `u32` count, then per blob its raw 32-byte
//! SHA-256, a big-endian `u64` length and the bytes. Nothing is trusted from it: the
//! reader hands out each blob's claimed digest and length, and the sensor hashes what it
//! stores and compares it with what it asked for.
//!
//! zstd is done by `ruzstd`, pure Rust: the device only decodes, and a pure-Rust decoder
//! keeps `outpostd` a static aarch64 musl binary with no C cross-build (the `zstd` crate
//! would compile libzstd with clang). Its encoder, used by the portal, only has zstd's
//! fastest level; feed text still shrinks several times over, and the portal does it
//! once per request without a C toolchain either.

use std::io::{self, Read, Write};

use ruzstd::decoding::StreamingDecoder;
use ruzstd::encoding::{compress_to_vec, CompressionLevel};

const MAGIC: &[u8; 4] = b"OFB1";
/// A length above this is nonsense from a broken or hostile portal, not a feed file.
const MAX_ENTRY: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("the blob batch is not valid: {0}")]
    Invalid(String),
    #[error("reading the blob batch: {0}")]
    Io(#[from] io::Error),
}

/// One blob as the batch announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// Lowercase hex, as claimed by the sender.
    pub sha256: String,
    pub len: u64,
}

/// Frames and compresses `(sha256 hex, bytes)` pairs into one batch.
pub fn encode<'a>(
    entries: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, BatchError> {
    let mut raw = Vec::new();
    raw.extend_from_slice(MAGIC);
    let count = u32::try_from(entries.len())
        .map_err(|_| BatchError::Invalid("too many blobs for one batch".into()))?;
    raw.extend_from_slice(&count.to_be_bytes());
    for (sha, bytes) in entries {
        let digest = decode_hex(sha)
            .ok_or_else(|| BatchError::Invalid(format!("{sha:?} is not a sha256 digest")))?;
        raw.extend_from_slice(&digest);
        raw.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        raw.write_all(bytes)?;
    }
    Ok(compress_to_vec(&raw[..], CompressionLevel::Fastest))
}

/// Reads a batch entry by entry; each entry's bytes are read with [`BatchReader::content`]
/// before the next [`BatchReader::next_entry`] (left-over bytes are skipped).
pub struct BatchReader<R: Read> {
    inner: StreamingDecoder<R, ruzstd::decoding::FrameDecoder>,
    left: u32,
    unread: u64,
}

impl<R: Read> BatchReader<R> {
    pub fn new(source: R) -> Result<BatchReader<R>, BatchError> {
        let mut inner = StreamingDecoder::new(source)
            .map_err(|e| BatchError::Invalid(format!("not a zstd stream: {e}")))?;
        let mut head = [0u8; 8];
        inner.read_exact(&mut head)?;
        if &head[..4] != MAGIC {
            return Err(BatchError::Invalid("it does not start with OFB1".into()));
        }
        let left = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        Ok(BatchReader {
            inner,
            left,
            unread: 0,
        })
    }

    /// Entries not read yet.
    pub fn remaining(&self) -> u32 {
        self.left
    }

    pub fn next_entry(&mut self) -> Result<Option<EntryHeader>, BatchError> {
        if self.unread > 0 {
            io::copy(&mut (&mut self.inner).take(self.unread), &mut io::sink())?;
            self.unread = 0;
        }
        if self.left == 0 {
            return Ok(None);
        }
        let mut head = [0u8; 40];
        self.inner.read_exact(&mut head)?;
        let len = u64::from_be_bytes([
            head[32], head[33], head[34], head[35], head[36], head[37], head[38], head[39],
        ]);
        if len > MAX_ENTRY {
            return Err(BatchError::Invalid(format!("a blob claims {len} bytes")));
        }
        self.left -= 1;
        self.unread = len;
        Ok(Some(EntryHeader {
            sha256: hex(&head[..32]),
            len,
        }))
    }

    /// The current entry's bytes. A short read is an error of the reader, not a short blob:
    /// callers read exactly the announced length.
    pub fn content(&mut self) -> impl Read + '_ {
        let len = self.unread;
        self.unread = 0;
        (&mut self.inner).take(len)
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(D[usize::from(x >> 4)]));
        s.push(char::from(D[usize::from(x & 15)]));
    }
    s
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = nib(pair[0])? << 4 | nib(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_skipping() {
        let a = "ab".repeat(32);
        let b = "0c".repeat(32);
        let big = b"script_oid(\"1.3.6.1.4.1.25623.1.0.1\");\n".repeat(1000);
        let wire = encode([(a.as_str(), &big[..]), (b.as_str(), &b"x"[..])].into_iter()).unwrap();
        assert!(wire.len() < big.len() / 4, "compressed: {}", wire.len());
        let mut r = BatchReader::new(&wire[..]).unwrap();
        assert_eq!(r.remaining(), 2);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!((e.sha256.as_str(), e.len), (a.as_str(), big.len() as u64));
        // Not read: skipped by the next call.
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.sha256, b);
        let mut got = Vec::new();
        r.content().read_to_end(&mut got).unwrap();
        assert_eq!(got, b"x");
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(BatchReader::new(&b"not zstd at all"[..]).is_err());
        let plain = compress_to_vec(&b"XXXX\0\0\0\x01"[..], CompressionLevel::Fastest);
        assert!(BatchReader::new(&plain[..]).is_err());
        assert!(encode([("zz", &b""[..])].into_iter()).is_err());
        // A cut stream is an error, not a short blob.
        let a = "ab".repeat(32);
        let wire = encode([(a.as_str(), &[7u8; 100][..])].into_iter()).unwrap();
        let raw_cut = {
            let mut d = StreamingDecoder::new(&wire[..]).unwrap();
            let mut v = Vec::new();
            d.read_to_end(&mut v).unwrap();
            v.truncate(60);
            compress_to_vec(&v[..], CompressionLevel::Fastest)
        };
        let mut r = BatchReader::new(&raw_cut[..]).unwrap();
        r.next_entry().unwrap();
        let mut sink = Vec::new();
        r.content().read_to_end(&mut sink).unwrap();
        assert!(sink.len() < 100, "the reader sees the cut as a short read");
    }
}
