//! A published feed release: the manifest the portal signs at import and a sensor checks
//! before it takes anything from it (docs/feeds.md).
//!
//! The manifest is JSON naming every file of the tree by path, size and SHA-256, plus what
//! the sensor must see once the release is loaded (PLUGIN_SET, the Notus version, the VT
//! count). It is signed with an ed25519 key in the same one-line key format as update
//! bundles (`outpost_bundle::keys`), but a key of its own role (`feed-signing.key`), and
//! the signed message starts with [`SIGNING_CONTEXT`], so a feed signature can never pass
//! for a bundle signature or the other way round.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use outpost_bundle::{KeyId, SecretKey, TrustedKeys};
use serde::{Deserialize, Serialize};

/// Version of the manifest's JSON layout.
pub const MANIFEST_FORMAT: u32 = 1;
/// Prepended to the manifest bytes before signing (domain separation, see the module).
pub const SIGNING_CONTEXT: &[u8] = b"outpost-feed-manifest-v1\n";
/// First word of a signature line.
pub const SIGNATURE_TAG: &str = "outpost-feed-signature";

/// One file of the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedFile {
    /// Relative to the feed tree, `/`-separated: `nvt/2023/debian/x.nasl`.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedManifest {
    pub format: u32,
    /// `PLUGIN_SET` of `nvt/plugin_feed_info.inc`.
    pub plugin_set: String,
    /// The `version` of the Notus advisory files; `None` for a feed without Notus.
    pub notus_version: Option<String>,
    /// VTs the scanner lists once the release is loaded: distinct OIDs across NASL scripts
    /// and Notus advisories (what ospd-openvas counts).
    pub vt_count: u64,
    pub nasl_scripts: u64,
    /// Distinct OIDs among the NASL scripts (a few scripts share one).
    pub nasl_oids: u64,
    pub notus_advisories: u64,
    /// Fingerprints of the OpenPGP keys whose signatures on the upstream `sha256sums`
    /// files were verified at import.
    pub upstream_signers: Vec<String>,
    /// Sorted by path, each path once.
    pub files: Vec<FeedFile>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("the feed manifest signature line is malformed: {0}")]
    MalformedSignature(String),
    #[error("the feed manifest is signed by {0}, which is not a trusted feed key")]
    UntrustedKey(String),
    #[error("the feed manifest signature by {0} does not verify")]
    BadSignature(String),
    #[error("the feed manifest is not valid: {0}")]
    Invalid(String),
}

/// A signature over a manifest: who signed and the ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSignature {
    pub signer: [u8; 32],
    pub signature: [u8; 64],
}

impl ManifestSignature {
    /// `outpost-feed-signature <signer base64> <signature base64>`.
    pub fn to_line(&self) -> String {
        format!(
            "{SIGNATURE_TAG} {} {}\n",
            B64.encode(self.signer),
            B64.encode(self.signature)
        )
    }

    pub fn parse(line: &str) -> Result<ManifestSignature, ReleaseError> {
        let bad = |why: &str| ReleaseError::MalformedSignature(why.to_owned());
        let mut f = line.split_whitespace();
        if f.next() != Some(SIGNATURE_TAG) {
            return Err(bad("it does not start with outpost-feed-signature"));
        }
        let signer = f.next().ok_or_else(|| bad("the signer is missing"))?;
        let sig = f.next().ok_or_else(|| bad("the signature is missing"))?;
        if f.next().is_some() {
            return Err(bad("trailing fields"));
        }
        let signer: [u8; 32] = B64
            .decode(signer)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the signer is not 32 bytes of base64"))?;
        let signature: [u8; 64] = B64
            .decode(sig)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the signature is not 64 bytes of base64"))?;
        Ok(ManifestSignature { signer, signature })
    }

    pub fn signer_id(&self) -> KeyId {
        KeyId(self.signer)
    }
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest);
    m
}

impl FeedManifest {
    /// The canonical bytes: what is signed, stored and hashed to name the release.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Compact: the full feed's manifest lists 137k files (about 18 MB this way, a
        // third more pretty-printed), and a sensor fetches it for every release.
        // Serialising plain structs of strings and integers cannot fail.
        let mut b = serde_json::to_vec(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    /// Checks what a consumer relies on: a known format, sorted unique paths that stay
    /// inside the tree, hex digests.
    pub fn check(&self) -> Result<(), ReleaseError> {
        let bad = |s: String| ReleaseError::Invalid(s);
        if self.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {MANIFEST_FORMAT})",
                self.format
            )));
        }
        let mut prev: Option<&str> = None;
        for f in &self.files {
            // Split by hand rather than with Path::components, which skips `.` parts.
            let normal = !f.path.contains('\\')
                && !f.path.contains('\0')
                && f.path
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !normal {
                return Err(bad(format!("file path {:?} leaves the tree", f.path)));
            }
            if prev.is_some_and(|p| p >= f.path.as_str()) {
                return Err(bad(format!(
                    "file {:?} is out of order or listed twice",
                    f.path
                )));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(bad(format!("file {:?} has no valid sha256", f.path)));
            }
            prev = Some(&f.path);
        }
        Ok(())
    }

    /// The distinct content digests of the release.
    pub fn blobs(&self) -> BTreeSet<&str> {
        self.files.iter().map(|f| f.sha256.as_str()).collect()
    }
}

/// Signs manifest bytes with the feed key.
pub fn sign_manifest(manifest: &[u8], key: &SecretKey) -> ManifestSignature {
    ManifestSignature {
        signer: key.id().0,
        signature: key.sign(&signed_message(manifest)),
    }
}

/// Verifies the signature over `manifest` and parses and checks it.
pub fn verify_manifest(
    manifest: &[u8],
    sig: &ManifestSignature,
    trusted: &TrustedKeys,
) -> Result<FeedManifest, ReleaseError> {
    let id = sig.signer_id().to_string();
    if trusted.find(&sig.signer).is_none() {
        return Err(ReleaseError::UntrustedKey(id));
    }
    if !trusted.verify(&sig.signer, &signed_message(manifest), &sig.signature) {
        return Err(ReleaseError::BadSignature(id));
    }
    let m: FeedManifest = serde_json::from_slice(manifest)
        .map_err(|e| ReleaseError::Invalid(format!("not a feed manifest: {e}")))?;
    m.check()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest() -> FeedManifest {
        FeedManifest {
            format: MANIFEST_FORMAT,
            plugin_set: "202509150400".into(),
            notus_version: Some("1.2".into()),
            vt_count: 2,
            nasl_scripts: 2,
            nasl_oids: 2,
            notus_advisories: 1,
            upstream_signers: vec!["AB".into()],
            files: vec![
                FeedFile {
                    path: "nvt/a.nasl".into(),
                    size: 1,
                    sha256: "0".repeat(64),
                },
                FeedFile {
                    path: "nvt/b.nasl".into(),
                    size: 1,
                    sha256: "1".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn signs_verifies_and_refuses() {
        let key = SecretKey::from_seed(&[4; 32]);
        let other = SecretKey::from_seed(&[5; 32]);
        let trusted = TrustedKeys::parse(&key.public_line(""), Path::new("k")).unwrap();
        let bytes = manifest().to_bytes();
        let sig = sign_manifest(&bytes, &key);
        let line = sig.to_line();
        let parsed = ManifestSignature::parse(&line).unwrap();
        assert_eq!(
            verify_manifest(&bytes, &parsed, &trusted).unwrap(),
            manifest()
        );

        let mut altered = bytes.clone();
        altered[20] ^= 1;
        assert!(matches!(
            verify_manifest(&altered, &sig, &trusted),
            Err(ReleaseError::BadSignature(_))
        ));
        assert!(matches!(
            verify_manifest(&bytes, &sign_manifest(&bytes, &other), &trusted),
            Err(ReleaseError::UntrustedKey(_))
        ));
        // A plain ed25519 signature over the bytes (what a bundle signature is) does not
        // pass for a feed signature.
        let plain = ManifestSignature {
            signer: key.id().0,
            signature: key.sign(&bytes),
        };
        assert!(verify_manifest(&bytes, &plain, &trusted).is_err());
        assert!(ManifestSignature::parse("outpost-feed-signature AAAA").is_err());
    }

    #[test]
    fn check_refuses_escaping_and_unsorted_paths() {
        for path in ["../etc/passwd", "/abs", "nvt/../x", "", "nvt/./x", "nvt//x"] {
            let mut m = manifest();
            m.files[0].path = path.into();
            assert!(m.check().is_err(), "{path:?} accepted");
        }
        let mut m = manifest();
        m.files.swap(0, 1);
        assert!(m.check().is_err());
        let mut m = manifest();
        m.files[1].sha256 = "G".repeat(64);
        assert!(m.check().is_err());
        assert!(manifest().check().is_ok());
    }
}
