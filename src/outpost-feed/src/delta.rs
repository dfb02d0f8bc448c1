//! In-file deltas (docs/feeds.md, "Deltas"): a changed feed file sent as copies from the
//! version the sensor already holds plus the new bytes, so a rewritten Notus file or
//! `sha256sums` list moves only what changed in it.
//!
//! Format (uncompressed; it travels inside a blob batch, whose zstd stream compresses the
//! literal bytes):
//!
//! ```text
//! "OFD1" | base SHA-256 (32 raw bytes) | target length (u64, big-endian) | ops... | 0x00
//! op 0x01 COPY: zigzag varint (base offset - end of the previous copy), varint length
//! op 0x02 ADD:  varint length, then that many bytes
//! ```
//!
//! Why not zstd's own "patch-from" (the old file as a prefix dictionary): the device
//! decodes with `ruzstd`, which has no reference-prefix mode, and its encoder only has the
//! fastest level; a copy/add stream is a few dozen lines on each side, needs no window
//! sized to the base (the sensor reads the base from disk at each copy's offset, so its
//! memory does not grow with the file) and its result is checked by SHA-256 like any blob.

use std::io::{self, Read, Write};

const MAGIC: &[u8; 4] = b"OFD1";
const OP_END: u8 = 0;
const OP_COPY: u8 = 1;
const OP_ADD: u8 = 2;
/// Bytes per indexed block of the base: a run shared with the base of at least twice this
/// is always found.
const BLOCK: usize = 16;
/// Candidate base positions kept per hash slot (repetitive JSON has many equal blocks).
const WAYS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta is not valid: {0}")]
    Invalid(String),
    #[error("applying the delta: {0}")]
    Io(#[from] io::Error),
}

/// Random access to the base the delta copies from: the live file on the sensor.
pub trait Base {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset` (within [`Base::len`]).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Base for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A file and its length, read with `pread` so copies need no buffer of the file's size.
pub struct FileBase {
    file: std::fs::File,
    len: u64,
}

impl FileBase {
    pub fn open(path: &std::path::Path) -> io::Result<FileBase> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(FileBase { file, len })
    }
}

impl Base for FileBase {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn block_hash(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    let a = u64::from_le_bytes(x);
    x.copy_from_slice(&b[8..16]);
    let c = u64::from_le_bytes(x);
    let h = (a ^ c.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 31)
}

struct Ops<'a> {
    out: Vec<u8>,
    target: &'a [u8],
    last_copy_end: u64,
}

impl Ops<'_> {
    fn add(&mut self, from: usize, to: usize) {
        if to > from {
            self.out.push(OP_ADD);
            put_varint(&mut self.out, (to - from) as u64);
            self.out.extend_from_slice(&self.target[from..to]);
        }
    }
    fn copy(&mut self, offset: usize, len: usize) {
        self.out.push(OP_COPY);
        let d = offset as i64 - self.last_copy_end as i64;
        put_varint(&mut self.out, ((d << 1) ^ (d >> 63)) as u64);
        put_varint(&mut self.out, len as u64);
        self.last_copy_end = (offset + len) as u64;
    }
}

/// A delta turning `base` (whose SHA-256 is `base_sha256`) into `target`. Greedy: every
/// run shared with the base of at least [`BLOCK`] bytes at an indexed position becomes a
/// copy; the rest is added. Memory: the index (at most half the base's size) and the
/// output.
pub fn encode(base_sha256: &[u8; 32], base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut ops = Ops {
        out: Vec::with_capacity(target.len() / 8 + 64),
        target,
        last_copy_end: 0,
    };
    ops.out.extend_from_slice(MAGIC);
    ops.out.extend_from_slice(base_sha256);
    ops.out
        .extend_from_slice(&(target.len() as u64).to_be_bytes());
    let blocks = base.len() / BLOCK;
    // Four ways a slot, a slot per two blocks: room for twice the blocks in half a
    // base's size of table at most.
    let slots = blocks.max(2).next_power_of_two() / 2;
    let mask = slots - 1;
    // Slot entries are block index + 1 (0: empty); the first occurrences are kept.
    let mut table = vec![0u32; slots * WAYS];
    for k in 0..blocks.min(u32::MAX as usize - 1) {
        let s = (block_hash(&base[k * BLOCK..]) as usize & mask) * WAYS;
        if let Some(e) = table[s..s + WAYS].iter_mut().find(|e| **e == 0) {
            *e = k as u32 + 1;
        }
    }
    let extend = |mut t: usize, mut b: usize| {
        let start = t;
        while t < target.len() && b < base.len() && target[t] == base[b] {
            t += 1;
            b += 1;
        }
        t - start
    };
    let (mut i, mut lit) = (0usize, 0usize);
    // Offset of the last copy (base minus target position): after a changed span of the
    // same length (a new hash in a line) the base usually goes on there.
    let mut shift: i64 = 0;
    while i + BLOCK <= target.len() {
        let mut best: Option<(usize, usize)> = None;
        let same = i as i64 + shift;
        if same >= 0 && (same as usize) + BLOCK <= base.len() {
            let n = extend(i, same as usize);
            if n >= BLOCK {
                best = Some((same as usize, n));
            }
        }
        if best.is_none() && blocks > 0 {
            let s = (block_hash(&target[i..]) as usize & mask) * WAYS;
            for &e in &table[s..s + WAYS] {
                if e == 0 {
                    break;
                }
                let b = (e as usize - 1) * BLOCK;
                let n = extend(i, b);
                if n >= BLOCK && best.is_none_or(|(_, m)| n > m) {
                    best = Some((b, n));
                }
            }
        }
        let Some((mut b, n)) = best else {
            i += 1;
            continue;
        };
        // Grow backwards over bytes not yet emitted.
        let mut s = i;
        while s > lit && b > 0 && target[s - 1] == base[b - 1] {
            s -= 1;
            b -= 1;
        }
        let end = i + n;
        ops.add(lit, s);
        ops.copy(b, end - s);
        shift = b as i64 - s as i64;
        i = end;
        lit = end;
    }
    ops.add(lit, target.len());
    ops.out.push(OP_END);
    ops.out
}

/// The header of a delta: the base it copies from and the length it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    /// Lowercase hex.
    pub base_sha256: String,
    pub target_len: u64,
}

fn read_u8(r: &mut dyn Read) -> Result<u8, DeltaError> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_varint(r: &mut dyn Read) -> Result<u64, DeltaError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = read_u8(r)?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DeltaError::Invalid("a varint runs past 64 bits".into()))
}

/// Reads a delta's header.
pub fn read_header(r: &mut dyn Read) -> Result<DeltaHeader, DeltaError> {
    let mut head = [0u8; 44];
    r.read_exact(&mut head)?;
    if &head[..4] != MAGIC {
        return Err(DeltaError::Invalid("it does not start with OFD1".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[36..44]);
    Ok(DeltaHeader {
        base_sha256: head[4..36].iter().map(|x| format!("{x:02x}")).collect(),
        target_len: u64::from_be_bytes(len),
    })
}

/// Applies the ops after [`read_header`]: writes exactly `target_len` bytes to `out`,
/// copying from `base`. Copies outside the base, output past `target_len`, a short
/// stream or bytes after the end are refused. The caller checks the result's SHA-256.
pub fn apply_ops(
    r: &mut dyn Read,
    base: &dyn Base,
    target_len: u64,
    out: &mut dyn Write,
) -> Result<(), DeltaError> {
    let mut written = 0u64;
    let mut last_copy_end = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match read_u8(r)? {
            OP_END => break,
            OP_COPY => {
                let z = read_varint(r)?;
                let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
                let len = read_varint(r)?;
                let off = last_copy_end
                    .checked_add_signed(d)
                    .filter(|o| o.checked_add(len).is_some_and(|e| e <= base.len()))
                    .ok_or_else(|| DeltaError::Invalid("a copy reaches outside the base".into()))?;
                if written + len > target_len {
                    return Err(DeltaError::Invalid(
                        "it writes past the target length".into(),
                    ));
                }
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(buf.len() as u64) as usize;
                    base.read_at(&mut buf[..n], off + done)?;
                    out.write_all(&buf[..n])?;
                    done += n as u64;
                }
                written += len;
                last_copy_end = off + len;
            }
            OP_ADD => {
                let len = read_varint(r)?;
                if written + len > target_len {
                    return Err(DeltaError::Invalid(
                        "it writes past the target length".into(),
                    ));
                }
                let n = io::copy(&mut r.take(len), out)?;
                if n != len {
                    return Err(DeltaError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                written += len;
            }
            op => return Err(DeltaError::Invalid(format!("unknown op {op}"))),
        }
    }
    if written != target_len {
        return Err(DeltaError::Invalid(format!(
            "it makes {written} bytes, its header says {target_len}"
        )));
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(DeltaError::Invalid("bytes follow its end".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(base: &[u8], target: &[u8]) -> usize {
        let d = encode(&[7; 32], base, target);
        let mut r = &d[..];
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.base_sha256, "07".repeat(32));
        assert_eq!(h.target_len, target.len() as u64);
        let mut out = Vec::new();
        apply_ops(&mut r, &base, h.target_len, &mut out).unwrap();
        assert_eq!(out, target);
        d.len()
    }

    fn lines(n: usize, salt: u64) -> Vec<u8> {
        let mut s = String::new();
        for i in 0..n {
            let v = if i % 97 == 3 { salt } else { 0 };
            s.push_str(&format!(
                "{:016x}{:016x}  nvt/2024/gb_script_{i}.nasl\n",
                (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v,
                (i as u64).wrapping_mul(31) ^ v
            ));
        }
        s.into_bytes()
    }

    #[test]
    fn small_changes_make_small_deltas() {
        let base = lines(5000, 0);
        let mut target = lines(5000, 0xabcdef);
        // An inserted and a removed line too.
        target.splice(
            1000..1000,
            b"0000000000000000ffffffffffffffff  nvt/new.nasl\n"
                .iter()
                .copied(),
        );
        let cut = target.len() - 500;
        target.drain(cut..cut + 50);
        let n = roundtrip(&base, &target);
        // 52 changed lines of 32 changed hex digits each, and the edits.
        assert!(
            n < 52 * 60 + 400,
            "delta of {n} bytes for {} bytes",
            target.len()
        );
    }

    #[test]
    fn edge_cases_round_trip() {
        roundtrip(b"", b"");
        roundtrip(b"", b"all new");
        roundtrip(b"old content that goes away entirely", b"");
        roundtrip(b"short", b"short");
        let big: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        assert!(roundtrip(&big, &big) < 64);
        let mut shifted = b"prefix".to_vec();
        shifted.extend_from_slice(&big);
        assert!(roundtrip(&big, &shifted) < 80);
        // Repetitive text: equal blocks everywhere.
        let rep = b"{\"oid\": \"1.3.6.1.4.1.25623.1.1\", \"x\": 1}\n".repeat(2000);
        let mut t = rep.clone();
        t[40_000] = b'Z';
        assert!(roundtrip(&rep, &t) < 100);
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let base = lines(100, 0);
        let target = lines(100, 5);
        let d = encode(&[1; 32], &base, &target);
        let apply = |d: &[u8], base: &[u8]| {
            let mut r = d;
            let h = read_header(&mut r)?;
            apply_ops(&mut r, &base, h.target_len, &mut Vec::new())
        };
        apply(&d, &base).unwrap();
        // Cut short, trailing bytes, a base too short for its copies, wrong length.
        assert!(apply(&d[..d.len() - 1], &base).is_err());
        let mut longer = d.clone();
        longer.push(0);
        assert!(apply(&longer, &base).is_err());
        assert!(apply(&d, &base[..base.len() / 2]).is_err());
        let mut wrong = d.clone();
        wrong[43] ^= 1;
        assert!(apply(&wrong, &base).is_err());
        assert!(apply(b"OFD0", &base).is_err());
    }
}
