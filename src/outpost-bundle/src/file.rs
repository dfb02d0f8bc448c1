//! Bundles that sit in a file (downloaded to the data partition first): everything can
//! be checked before the slot is touched, and an interrupted download can resume.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use tracing::{info, warn};

use crate::error::{InstallError, Refusal, SlotState};
use crate::format::{Header, HEADER_LEN, MAGIC};
use crate::install::{install, InstallReport, SlotTarget};
use crate::verify::{
    check_parts, expect_digest, hash_exact, Policy, RawBundleHead, VerifiedManifest, CHUNK,
};

/// Verifies a whole bundle file: head, policy, every part's hash, exact length.
pub fn check_bundle_file(path: &Path, policy: &Policy) -> Result<VerifiedManifest, Refusal> {
    let f = File::open(path).map_err(|source| Refusal::Read { source })?;
    let len = f
        .metadata()
        .map_err(|source| Refusal::Read { source })?
        .len();
    let mut r = BufReader::with_capacity(CHUNK, f);
    let m = policy.verify(&mut r)?;
    check_parts(&mut r, &m)?;
    check_length(len, &m)?;
    Ok(m)
}

fn check_length(len: u64, m: &VerifiedManifest) -> Result<(), Refusal> {
    if len > m.bundle_len() {
        return Err(Refusal::TrailingData {
            extra: len - m.bundle_len(),
        });
    }
    Ok(())
}

/// The device's install path: proves the whole file good (so a tampered or truncated
/// bundle leaves the slot exactly as it was), then streams it into `target`, hashing
/// again on the way in case the file changes underneath.
pub fn install_file(
    path: &Path,
    policy: &Policy,
    target: &SlotTarget,
) -> Result<(VerifiedManifest, InstallReport), InstallError> {
    let untouched = |refusal| InstallError::Refused {
        refusal,
        slot: SlotState::Untouched,
    };
    let m = check_bundle_file(path, policy).map_err(untouched)?;
    let mut f = File::open(path).map_err(|source| untouched(Refusal::Read { source }))?;
    f.seek(SeekFrom::Start(m.payload_offset()))
        .map_err(|source| untouched(Refusal::Read { source }))?;
    let mut r = BufReader::with_capacity(CHUNK, f);
    let report = install(&mut r, &m, target)?;
    Ok((m, report))
}

/// Where to continue an interrupted download.
#[derive(Debug, Clone)]
pub struct ResumePlan {
    /// Truncate the file to this length ([`ResumePlan::apply`]) and request
    /// `Range: bytes=<offset>-`.
    pub offset: u64,
    /// All `expected_total` bytes are present and every part checked out.
    pub complete: bool,
    /// Set once the head is on disk: signature and policy checked.
    pub manifest: Option<VerifiedManifest>,
    /// Why bytes already downloaded were given up, if any were.
    pub discarded: Option<String>,
}

impl ResumePlan {
    fn at(offset: u64) -> Self {
        ResumePlan {
            offset,
            complete: false,
            manifest: None,
            discarded: None,
        }
    }

    /// Cuts the file back to `offset` (creating it if missing) and syncs it.
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if f.metadata()?.len() != self.offset {
            f.set_len(self.offset)?;
            f.sync_all()?;
        }
        Ok(())
    }
}

/// Looks at a partial download of `expected_total` bytes (the size the server
/// announced) and decides where to resume. As soon as the head is complete it is
/// verified against `policy`: a bundle this device would refuse is not worth the rest
/// of the download, so that is an `Err`, and the caller deletes the file. Parts already
/// complete are hashed; the first bad one is downloaded again.
pub fn plan_resume(
    path: &Path,
    expected_total: u64,
    policy: &Policy,
) -> Result<ResumePlan, Refusal> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ResumePlan::at(0)),
        Err(source) => return Err(Refusal::Read { source }),
    };
    let len = f
        .metadata()
        .map_err(|source| Refusal::Read { source })?
        .len();
    if len > expected_total {
        let mut plan = ResumePlan::at(0);
        plan.discarded = Some(format!(
            "{len} bytes on disk, more than the {expected_total} announced"
        ));
        warn!(path = %path.display(), "partial bundle longer than expected; starting over");
        return Ok(plan);
    }
    let mut r = BufReader::with_capacity(CHUNK, f);

    if len < HEADER_LEN as u64 {
        // Too short to judge, except the magic: a different file starts over.
        let mut start = vec![0u8; (len as usize).min(MAGIC.len())];
        r.read_exact(&mut start)
            .map_err(|source| Refusal::Read { source })?;
        if start != MAGIC[..start.len()] {
            return Err(Refusal::NotABundle);
        }
        return Ok(ResumePlan::at(len));
    }
    let mut hb = [0u8; HEADER_LEN];
    r.read_exact(&mut hb)
        .map_err(|source| Refusal::Read { source })?;
    let header = Header::decode(&hb)?;
    if len < header.payload_offset() {
        return Ok(ResumePlan::at(len));
    }

    r.seek(SeekFrom::Start(0))
        .map_err(|source| Refusal::Read { source })?;
    let head = RawBundleHead::read(&mut r)?;
    let m = policy.verify_head(&head)?;
    if m.bundle_len() != expected_total {
        return Err(Refusal::SizeMismatch {
            manifest: m.bundle_len(),
            announced: expected_total,
        });
    }

    // Hash the parts that are complete on disk; a partial last part is kept as is.
    let mut at = m.payload_offset();
    let mut buf = vec![0u8; CHUNK];
    for part in &m.parts {
        if at + part.size > len {
            break;
        }
        let got = hash_exact(&mut r, part.size, &mut buf, at, &part.name, |_| {
            Ok::<(), std::convert::Infallible>(())
        })?;
        if let Err(refusal) = expect_digest(&part.name, &part.sha256, &got) {
            info!(path = %path.display(), %refusal, "downloading the part again");
            return Ok(ResumePlan {
                offset: at,
                complete: false,
                manifest: Some(m),
                discarded: Some(refusal.to_string()),
            });
        }
        at += part.size;
    }
    Ok(ResumePlan {
        offset: len,
        complete: len == expected_total,
        manifest: Some(m),
        discarded: None,
    })
}
