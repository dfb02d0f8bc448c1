//! Key files. One line each, no ASN.1: the device parses them with a split and a
//! base64 decode.
//!
//! - secret key (mode 0600): `outpost-ed25519-secret <base64 of the 32-byte seed>`
//! - public key / trusted keys: `outpost-ed25519 <base64 of the 32-byte key> [comment]`,
//!   one per line; `#` comments and blank lines are ignored. A device trusts every key
//!   in its file, which is how keys are rotated (ship the new key next to the old one
//!   first, sign with the new one later, drop the old one last).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use tracing::warn;
use zeroize::Zeroizing;

use crate::error::KeyError;

pub const PUBLIC_TAG: &str = "outpost-ed25519";
pub const SECRET_TAG: &str = "outpost-ed25519-secret";

/// A public key, shown as `ed25519:<base64>` in messages and reports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", B64.encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The keys a device accepts bundles from.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Parses a trusted-keys (or `.pub`) file's text; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let perr = |reason: String| KeyError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some(PUBLIC_TAG) => {}
                Some(SECRET_TAG) => {
                    return Err(perr("this is a secret key; give the .pub file".into()))
                }
                _ => return Err(perr(format!("expected \"{PUBLIC_TAG} <base64>\""))),
            }
            let b64 = fields
                .next()
                .ok_or_else(|| perr("the key is missing".into()))?;
            let bytes = decode32(b64).map_err(perr)?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| perr(format!("not an ed25519 public key: {e}")))?;
            if key.is_weak() {
                // A small-order key would accept forged signatures on some messages.
                return Err(perr("weak (small-order) public key".into()));
            }
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(TrustedKeys { keys })
    }

    pub fn load(path: &Path) -> Result<TrustedKeys, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            step: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Loads and merges several files.
    pub fn load_all<P: AsRef<Path>>(paths: &[P]) -> Result<TrustedKeys, KeyError> {
        let mut all = TrustedKeys::default();
        for p in paths {
            for k in Self::load(p.as_ref())?.keys {
                if !all.keys.contains(&k) {
                    all.keys.push(k);
                }
            }
        }
        Ok(all)
    }

    pub fn find(&self, id: &[u8; 32]) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.as_bytes() == id)
    }

    /// Whether `signature` over `msg` is valid and by the trusted key `signer`. Strict, as
    /// for bundles: one message has one valid signature per key. Other signed formats
    /// (feed manifests) use this with their own key file and a context prefix in `msg`.
    pub fn verify(&self, signer: &[u8; 32], msg: &[u8], signature: &[u8; 64]) -> bool {
        self.find(signer).is_some_and(|k| {
            k.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(signature))
                .is_ok()
        })
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| KeyId(k.to_bytes()))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn decode32(b64: &str) -> Result<[u8; 32], String> {
    let v = Zeroizing::new(
        B64.decode(b64)
            .map_err(|e| format!("the key is not base64: {e}"))?,
    );
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| format!("the key is {} bytes, not 32", v.len()))
}

/// A bundle-signing key (host side).
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn id(&self) -> KeyId {
        KeyId(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// The `.pub` line for this key.
    pub fn public_line(&self, comment: &str) -> String {
        let key = B64.encode(self.0.verifying_key().as_bytes());
        let comment: String = comment.chars().filter(|c| !c.is_control()).collect();
        if comment.trim().is_empty() {
            format!("{PUBLIC_TAG} {key}\n")
        } else {
            format!("{PUBLIC_TAG} {key} {}\n", comment.trim())
        }
    }

    fn secret_line(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_TAG} {}\n", B64.encode(self.0.to_bytes())))
    }

    pub fn parse(text: &str, path: &Path) -> Result<SecretKey, KeyError> {
        let perr = |reason: String| KeyError::Parse {
            path: path.to_path_buf(),
            line: 1,
            reason,
        };
        let mut fields = text.split_whitespace();
        if fields.next() != Some(SECRET_TAG) {
            return Err(perr(format!("expected \"{SECRET_TAG} <base64>\"")));
        }
        let b64 = fields
            .next()
            .ok_or_else(|| perr("the key is missing".into()))?;
        let seed = Zeroizing::new(decode32(b64).map_err(perr)?);
        Ok(SecretKey::from_seed(&seed))
    }

    /// Reads a secret key file, warning when others can read it (as ssh does).
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let io = |step| {
            move |source| KeyError::Io {
                step,
                path: path.to_path_buf(),
                source,
            }
        };
        let mode = fs::metadata(path).map_err(io("stat"))?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "secret key is readable by others");
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io("read"))?);
        Self::parse(&text, path)
    }

    /// Writes `path` (0600, never overwriting) and `path.pub`. Returns the `.pub` path.
    pub fn write_new(&self, path: &Path, comment: &str) -> Result<PathBuf, KeyError> {
        let pub_path = pub_path(path);
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(KeyError::Io {
                    step: "create",
                    path: p.to_path_buf(),
                    source: std::io::ErrorKind::AlreadyExists.into(),
                });
            }
        }
        write_file(path, self.secret_line().as_bytes(), 0o600)?;
        write_file(&pub_path, self.public_line(comment).as_bytes(), 0o644)?;
        Ok(pub_path)
    }
}

/// `KEY` -> `KEY.pub`.
pub fn pub_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |step| {
        move |source| KeyError::Io {
            step,
            path: path.to_path_buf(),
            source,
        }
    };
    // The mode is set at creation, so the secret is never briefly world-readable.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create"))?;
    f.write_all(bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let key = SecretKey::generate().unwrap();
        let pub_file = key.write_new(&path, "release 2025").unwrap();
        assert_eq!(pub_file, dir.path().join("signing.key.pub"));

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = SecretKey::load(&path).unwrap();
        assert_eq!(again.id(), key.id());
        let trusted = TrustedKeys::load(&pub_file).unwrap();
        let vk = trusted.find(&key.id().0).unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&again.sign(b"manifest"));
        assert!(vk.verify_strict(b"manifest", &sig).is_ok());
        assert!(vk.verify_strict(b"manifesT", &sig).is_err());

        // never overwrites
        assert!(key.write_new(&path, "").is_err());
    }

    #[test]
    fn trusted_file_with_several_keys_and_comments() {
        let a = SecretKey::from_seed(&[1; 32]);
        let b = SecretKey::from_seed(&[2; 32]);
        let text = format!(
            "# rotation: old key first\n\n{}{}   {}",
            a.public_line("old"),
            b.public_line(""),
            a.public_line("dup")
        );
        let t = TrustedKeys::parse(&text, Path::new("t")).unwrap();
        assert_eq!(t.ids().count(), 2);
        assert!(t.find(&a.id().0).is_some());
        assert!(t.find(&b.id().0).is_some());
        assert!(t.find(&[3; 32]).is_none());
    }

    #[test]
    fn rejects_bad_key_lines() {
        let p = Path::new("keys");
        for text in [
            "",
            "# only a comment\n",
            "ssh-ed25519 AAAA\n",
            "outpost-ed25519\n",
            "outpost-ed25519 not-base64!\n",
            "outpost-ed25519 AAAA\n",
            // the identity point: small order, must not be trusted
            "outpost-ed25519 AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            assert!(TrustedKeys::parse(text, p).is_err(), "{text:?} accepted");
        }
        let secret = SecretKey::from_seed(&[5; 32]).secret_line().to_string();
        let err = TrustedKeys::parse(&secret, p).unwrap_err().to_string();
        assert!(err.contains("secret key"), "{err}");
        assert!(SecretKey::parse("outpost-ed25519 AAAA", p).is_err());
    }
}
