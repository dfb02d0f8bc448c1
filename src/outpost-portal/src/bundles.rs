//! Published update bundles on disk: `<data-dir>/bundles/<sha256>.bundle`. An upload is
//! streamed to a temporary file in the same directory (never held in memory), hashed on
//! the way, checked with the `outpost-bundle` crate and only then renamed into place, so
//! a refused or interrupted upload leaves nothing behind.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;
use outpost_bundle::{Manifest, RawBundleHead, Refusal, TrustedKeys};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Largest bundle the portal accepts: a slot's root filesystem is a few hundred MB.
pub const MAX_BUNDLE_BODY: u64 = 2 * 1024 * 1024 * 1024;
/// Directory under the data directory that holds the bundle files.
pub const DIR: &str = "bundles";
/// When this file exists in the data directory, only bundles signed by one of its keys
/// are published (same format as a device's trusted keys).
pub const KEYS_FILE: &str = "bundle-keys.pub";

/// Why an upload was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The file is not a bundle the portal will hand out; the client's fault.
    #[error("bundle refused: {0}")]
    Refused(String),
    #[error("the upload is larger than {MAX_BUNDLE_BODY} bytes")]
    TooLarge,
    #[error("reading the upload: {0}")]
    Body(String),
    /// The portal's own disk or configuration.
    #[error("{0}")]
    Internal(String),
}

impl From<Refusal> for PublishError {
    fn from(r: Refusal) -> PublishError {
        PublishError::Refused(r.to_string())
    }
}

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// Where a published bundle's file lives (content-addressed: its sha256 names it).
pub fn path(data_dir: &Path, sha256: &str) -> PathBuf {
    dir(data_dir).join(format!("{sha256}.bundle"))
}

/// A temporary file that is removed when dropped, unless it was renamed into place.
pub struct TempUpload {
    path: PathBuf,
    keep: bool,
}

impl TempUpload {
    /// A file at `path` (not created here) that goes away with this value.
    pub fn new(path: PathBuf) -> TempUpload {
        TempUpload { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `to` (same directory, so atomic) and makes the rename durable.
    pub async fn persist(mut self, to: &Path) -> std::io::Result<()> {
        tokio::fs::rename(&self.path, to).await?;
        self.keep = true;
        if let Some(parent) = to.parent().map(Path::to_owned) {
            // A crash after the answer must not lose the file the database now names.
            tokio::task::spawn_blocking(move || std::fs::File::open(parent)?.sync_all())
                .await
                .map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

impl Drop for TempUpload {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The upload as written to disk.
pub struct Received {
    pub file: TempUpload,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Streams `body` into a temporary file under `dir`, hashing it; at most `limit` bytes.
pub async fn receive(body: Body, dir: &Path, limit: u64) -> Result<Received, PublishError> {
    let internal = |what: &str, e: std::io::Error| {
        PublishError::Internal(format!("{what} in {}: {e}", dir.display()))
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| internal("creating the bundle directory", e))?;
    let file = TempUpload {
        path: dir.join(format!(".upload-{}.tmp", crate::auth::random_secret("", 8))),
        keep: false,
    };
    let out = tokio::fs::File::create(file.path())
        .await
        .map_err(|e| internal("creating an upload file", e))?;
    // Frames are a few KB; writing them one by one would cost a blocking-pool hop each.
    let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, out);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| PublishError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(PublishError::TooLarge);
        }
        hasher.update(&data);
        out.write_all(&data)
            .await
            .map_err(|e| internal("writing the upload", e))?;
    }
    out.flush()
        .await
        .map_err(|e| internal("writing the upload", e))?;
    out.into_inner()
        .sync_all()
        .await
        .map_err(|e| internal("syncing the upload", e))?;
    Ok(Received {
        file,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Reads the bundle at `path` (`size` bytes) as a device would before installing it:
/// header, manifest, signature when `trusted` is given, exact length, every part's hash.
/// Blocking; run it off the async threads.
pub fn inspect(
    path: &Path,
    size: u64,
    trusted: Option<&TrustedKeys>,
) -> Result<(Manifest, Option<String>), PublishError> {
    if size == 0 {
        return Err(PublishError::Refused(
            "the body is empty; send the bundle file itself".into(),
        ));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| PublishError::Internal(format!("opening {}: {e}", path.display())))?;
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let head = RawBundleHead::read(&mut r)?;
    let signer = match trusted {
        Some(keys) => Some(head.check_signature(keys)?.to_string()),
        None => None,
    };
    let manifest = head.manifest_unverified()?;
    let total = manifest
        .bundle_len(head.header.manifest_len)
        .ok_or_else(|| PublishError::Refused("the manifest's part sizes overflow".into()))?;
    if size < total {
        return Err(Refusal::Truncated {
            at: size,
            what: format!("a bundle of {total} bytes by its manifest"),
        }
        .into());
    }
    if size > total {
        return Err(Refusal::TrailingData {
            extra: size - total,
        }
        .into());
    }
    // The device checks this too, but an operator learns of a corrupt file now, not
    // from a fleet of refusals.
    for part in &manifest.parts {
        let mut hasher = Sha256::new();
        let n = std::io::copy(&mut (&mut r).take(part.size), &mut hasher)
            .map_err(|e| PublishError::Internal(format!("reading {}: {e}", path.display())))?;
        let got = hex::encode(hasher.finalize());
        if n != part.size || got != part.sha256.to_string() {
            return Err(Refusal::PartMismatch {
                part: part.name.clone(),
                expected: part.sha256.to_string(),
                actual: got,
            }
            .into());
        }
    }
    Ok((manifest, signer))
}

/// The publish-time trust list, when the operator installed one.
pub fn trusted_keys(data_dir: &Path) -> Result<Option<TrustedKeys>, PublishError> {
    let path = data_dir.join(KEYS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    TrustedKeys::load(&path)
        .map(Some)
        .map_err(|e| PublishError::Internal(format!("{}: {e}", path.display())))
}

/// A single byte range of a file of `len` bytes, as `[start, end]` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) `Range` header: the whole file, 200.
    Full,
    Partial {
        start: u64,
        end: u64,
    },
    /// 416, with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses `Range: bytes=N-`, `bytes=N-M` and `bytes=-N` (the last N bytes). Other units and
/// multiple ranges are ignored (the whole file is sent), as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            let end = end.unwrap_or(u64::MAX);
            if start >= len || end < start {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=40-"), 100),
            Partial { start: 40, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=40-49"), 100),
            Partial { start: 40, end: 49 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-1000"), 100),
            Partial { start: 90, end: 99 },
            "an end past the file is cut to it"
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=50-40"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        // Not ours to interpret: the whole file.
        assert_eq!(parse_range(Some("items=1-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=1-2,5-6"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-"), 100), Full);
        assert_eq!(parse_range(Some("bytes=+1-"), 100), Full);
    }
}
