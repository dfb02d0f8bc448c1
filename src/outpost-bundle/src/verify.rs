//! Device side, step 1: read the header and manifest, check the signature and the
//! update policy. Nothing here writes anything; [`crate::install`] only accepts the
//! [`VerifiedManifest`] this module hands out.

use std::io::{self, Read};
use std::ops::Deref;

use ed25519_dalek::Signature;
use semver::Version;
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::error::Refusal;
use crate::format::{Header, HEADER_LEN};
use crate::keys::{KeyId, TrustedKeys};
use crate::manifest::{Manifest, Sha256Digest};

/// Read size for streaming parts: large enough for SD-card throughput, small enough
/// for a sensor's memory.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Header and manifest bytes as read, before any check beyond the header's syntax.
#[derive(Debug, Clone)]
pub struct RawBundleHead {
    pub header: Header,
    pub manifest_bytes: Vec<u8>,
}

impl RawBundleHead {
    /// Reads exactly the header and the manifest, leaving `r` at the first part.
    pub fn read<R: Read>(r: &mut R) -> Result<RawBundleHead, Refusal> {
        let mut hb = [0u8; HEADER_LEN];
        read_exact_at(r, &mut hb, 0, "the header")?;
        let header = Header::decode(&hb)?;
        let mut manifest_bytes = vec![0u8; header.manifest_len as usize];
        read_exact_at(r, &mut manifest_bytes, HEADER_LEN as u64, "the manifest")?;
        Ok(RawBundleHead {
            header,
            manifest_bytes,
        })
    }

    /// Checks the signature against `trusted`; returns the signer.
    pub fn check_signature(&self, trusted: &TrustedKeys) -> Result<KeyId, Refusal> {
        let seal = self.header.seal.as_ref().ok_or(Refusal::Unsigned)?;
        let id = KeyId(seal.signer);
        let key = trusted.find(&seal.signer).ok_or(Refusal::UntrustedKey {
            key: id.to_string(),
        })?;
        let sig = Signature::from_bytes(&seal.signature);
        // Strict: rejects non-canonical and small-order encodings, so one manifest
        // has exactly one valid signature per key.
        key.verify_strict(&self.manifest_bytes, &sig)
            .map_err(|_| Refusal::BadSignature {
                key: id.to_string(),
            })?;
        Ok(id)
    }

    /// Parses the manifest without trusting it (for display and for the signer).
    pub fn manifest_unverified(&self) -> Result<Manifest, Refusal> {
        Manifest::from_bytes(&self.manifest_bytes)
    }
}

/// A manifest whose signature checked out and whose policy allows installing it here.
/// Only [`verify_header`] (and [`Policy::verify`]) make one.
#[derive(Debug, Clone)]
pub struct VerifiedManifest {
    manifest: Manifest,
    signer: KeyId,
    manifest_len: u32,
}

impl VerifiedManifest {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn signer(&self) -> KeyId {
        self.signer
    }

    /// Byte offset of the first part in the bundle.
    pub fn payload_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.manifest_len)
    }

    /// Length of the complete bundle.
    pub fn bundle_len(&self) -> u64 {
        // validate() guarantees the sum fits; u64::MAX would only make checks fail.
        self.manifest
            .bundle_len(self.manifest_len)
            .unwrap_or(u64::MAX)
    }
}

impl Deref for VerifiedManifest {
    type Target = Manifest;

    fn deref(&self) -> &Manifest {
        &self.manifest
    }
}

/// What a device accepts.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub trusted: &'a TrustedKeys,
    /// This board's `compatible`, e.g. `outpost,rpi4`.
    pub board: &'a str,
    /// The running version.
    pub current: &'a Version,
    /// The device's persisted anti-rollback floor: the highest version it ever marked
    /// good. Survives falling back to an older slot, which `current` does not.
    pub floor: Option<&'a Version>,
}

impl Policy<'_> {
    /// Reads and checks the head of a bundle; `r` is left at the first part.
    pub fn verify<R: Read>(&self, r: &mut R) -> Result<VerifiedManifest, Refusal> {
        let head = RawBundleHead::read(r)?;
        self.verify_head(&head)
    }

    /// The checks, in order: signature (before the JSON parser sees a byte),
    /// manifest rules, board, floor, downgrade, update path.
    pub fn verify_head(&self, head: &RawBundleHead) -> Result<VerifiedManifest, Refusal> {
        let signer = head.check_signature(self.trusted)?;
        let manifest = Manifest::from_bytes(&head.manifest_bytes)?;
        self.check_manifest(&manifest)?;
        debug!(version = %manifest.version, %signer, "bundle header verified");
        Ok(VerifiedManifest {
            manifest,
            signer,
            manifest_len: head.header.manifest_len,
        })
    }

    pub fn check_manifest(&self, m: &Manifest) -> Result<(), Refusal> {
        if m.compatible != self.board {
            return Err(Refusal::WrongBoard {
                bundle: m.compatible.clone(),
                device: self.board.to_string(),
            });
        }
        if let Some(floor) = self.floor {
            if m.version < *floor {
                return Err(Refusal::BelowFloor {
                    bundle: m.version.clone(),
                    floor: floor.clone(),
                });
            }
        }
        if m.version <= *self.current {
            return Err(Refusal::NotNewer {
                bundle: m.version.clone(),
                current: self.current.clone(),
            });
        }
        if let Some(min) = &m.min_version {
            if self.current < min {
                return Err(Refusal::CurrentTooOld {
                    min_version: min.clone(),
                    current: self.current.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Reads the bundle head from `reader` and decides whether this device may install it.
/// On success `reader` is positioned at the first part, ready for [`crate::install`].
pub fn verify_header<R: Read>(
    reader: &mut R,
    trusted_keys: &TrustedKeys,
    board: &str,
    current_version: &Version,
    version_floor: Option<&Version>,
) -> Result<VerifiedManifest, Refusal> {
    Policy {
        trusted: trusted_keys,
        board,
        current: current_version,
        floor: version_floor,
    }
    .verify(reader)
}

/// Hashes every part from `r` (positioned at the first part) without writing anything.
/// For bundles already on disk: proves the whole file good before the slot is touched.
pub fn check_parts<R: Read>(r: &mut R, m: &VerifiedManifest) -> Result<(), Refusal> {
    let mut at = m.payload_offset();
    let mut buf = vec![0u8; CHUNK];
    for part in &m.parts {
        let got = hash_exact(r, part.size, &mut buf, at, &part.name, |_| {
            Ok::<(), std::convert::Infallible>(())
        })?;
        expect_digest(&part.name, &part.sha256, &got)?;
        at += part.size;
    }
    Ok(())
}

pub(crate) fn expect_digest(
    part: &str,
    want: &Sha256Digest,
    got: &Sha256Digest,
) -> Result<(), Refusal> {
    if want == got {
        Ok(())
    } else {
        Err(Refusal::PartMismatch {
            part: part.to_string(),
            expected: want.to_string(),
            actual: got.to_string(),
        })
    }
}

/// Reads exactly `len` bytes, hashing them and handing each chunk to `sink`.
/// `at` is the bundle offset of the first byte (for the truncation message).
pub(crate) fn hash_exact<R: Read, E>(
    r: &mut R,
    len: u64,
    buf: &mut [u8],
    at: u64,
    part: &str,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Sha256Digest, HashError<E>> {
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(HashError::Refused(Refusal::Truncated {
                    at: at + done,
                    what: format!("part {part:?} ({done} of {len} bytes)"),
                }))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(HashError::Refused(Refusal::Read { source })),
        };
        hasher.update(&buf[..n]);
        sink(&buf[..n]).map_err(HashError::Sink)?;
        done += n as u64;
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Either the bundle's fault or the sink's.
#[derive(Debug)]
pub(crate) enum HashError<E> {
    Refused(Refusal),
    Sink(E),
}

impl From<HashError<io::Error>> for Refusal {
    fn from(e: HashError<io::Error>) -> Refusal {
        match e {
            HashError::Refused(r) => r,
            HashError::Sink(source) => Refusal::Read { source },
        }
    }
}

impl From<HashError<std::convert::Infallible>> for Refusal {
    fn from(e: HashError<std::convert::Infallible>) -> Refusal {
        match e {
            HashError::Refused(r) => r,
            HashError::Sink(never) => match never {},
        }
    }
}

/// `read_exact` with a truncation refusal that says where and inside what.
fn read_exact_at<R: Read>(r: &mut R, buf: &mut [u8], at: u64, what: &str) -> Result<(), Refusal> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(Refusal::Truncated {
                    at: at + done as u64,
                    what: format!("{what} ({done} of {} bytes)", buf.len()),
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Refusal::Read { source }),
        }
    }
    Ok(())
}
