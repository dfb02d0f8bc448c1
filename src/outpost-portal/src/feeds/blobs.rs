//! The content-addressed store of feed files: `<data-dir>/feeds/blobs/<aa>/<sha256>`, one
//! file per distinct content, shared by every release that holds it. A blob is written to
//! a temporary file on the same filesystem and renamed into place, so a blob's name always
//! matches its bytes.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
}

/// What [`BlobStore::collect`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: u64,
    pub bytes: u64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_digest(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// The store under `feeds_dir`; creates its directories.
    pub fn open(feeds_dir: &Path) -> io::Result<BlobStore> {
        let s = BlobStore {
            blobs: feeds_dir.join("blobs"),
            tmp: feeds_dir.join("tmp"),
        };
        fs::create_dir_all(&s.blobs)?;
        fs::create_dir_all(&s.tmp)?;
        Ok(s)
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.blobs.join(&sha256[..2.min(sha256.len())]).join(sha256)
    }

    /// Stores `bytes` under `sha256` (the caller computed it from these bytes). `true` when
    /// the blob is new.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> io::Result<bool> {
        if !is_digest(sha256) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{sha256:?} is not a sha256 digest"),
            ));
        }
        let dest = self.path(sha256);
        if dest.exists() {
            return Ok(false);
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(&self.tmp)?;
        tmp.write_all(bytes)?;
        // No fsync per blob (a full import writes 136k of them): [`BlobStore::sync`] makes
        // them durable together before the release that names them is recorded.
        tmp.persist(&dest).map_err(|e| e.error)?;
        Ok(true)
    }

    pub fn get(&self, sha256: &str) -> io::Result<Vec<u8>> {
        if !is_digest(sha256) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{sha256:?} is not a sha256 digest"),
            ));
        }
        fs::read(self.path(sha256))
    }

    /// Removes a blob (one this import added before it was refused).
    pub fn remove(&self, sha256: &str) -> io::Result<()> {
        match fs::remove_file(self.path(sha256)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Flushes the whole filesystem the store is on (`syncfs`): every blob written so far
    /// reaches the disk before the database names it.
    pub fn sync(&self) -> io::Result<()> {
        let dir = fs::File::open(&self.blobs)?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every stored blob and its size.
    pub fn list(&self) -> io::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for fan in fs::read_dir(&self.blobs)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(fan.path())? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if is_digest(&name) {
                    out.push((name, e.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Total bytes stored.
    pub fn bytes(&self) -> io::Result<u64> {
        Ok(self.list()?.iter().map(|(_, n)| n).sum())
    }

    /// Removes every blob not in `keep`.
    pub fn collect(&self, keep: &BTreeSet<String>) -> io::Result<Collected> {
        let mut c = Collected::default();
        for (sha, size) in self.list()? {
            if !keep.contains(&sha) {
                self.remove(&sha)?;
                c.blobs += 1;
                c.bytes += size;
            }
        }
        Ok(c)
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Removes what an import that crashed left in the temporary directory. Imports hold
    /// the feed lock, so the caller (holding it) is the only writer there.
    pub fn clean_tmp(&self) -> io::Result<()> {
        for e in fs::read_dir(&self.tmp)? {
            let e = e?;
            let p = e.path();
            let r = if e.file_type()?.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(err) = r {
                tracing::warn!(path = %p.display(), error = %err, "could not remove a leftover temporary file");
            }
        }
        Ok(())
    }
}
