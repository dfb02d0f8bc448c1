//! Scan credentials at rest: the passwords and private keys of a scan job are sealed
//! (ChaCha20-Poly1305, a random nonce each) with the portal's credential key before the
//! job reaches the database, opened only to hand the job to the sensor that claims it,
//! and shown to nobody through the admin API after entry. A database dump or backup
//! therefore holds no usable login. The key is `credentials.key` in the data directory
//! (32 random bytes, mode 0600), made at first start; replicas must share it (copied by the operator: the database
//! keeps only its SHA-256, `shared.rs`).

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use outpost_wire::sensor::{Credential, JobSpec};
use outpost_wire::Secret;
use rand::RngCore;

/// The key file in the portal's data directory.
pub const KEY_FILE: &str = "credentials.key";
/// What a sealed value starts with; anything else is a value from before sealing.
const PREFIX: &str = "sealed:v1:";
/// What the admin API shows instead of a secret.
pub const REDACTED: &str = "(stored encrypted; not shown)";
/// Binds the ciphertexts to their use.
const AAD: &[u8] = b"outpost scan credential v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the credential key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("a stored credential cannot be opened (wrong credentials.key, or damaged)")]
    Open,
}

/// The portal's credential key.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn from_key(key: [u8; 32]) -> Self {
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// Reads `credentials.key` from the data directory, making it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SealError> {
        let path = data_dir.join(KEY_FILE);
        let bad = |reason: String| SealError::Key {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(format!("{} bytes, expected 32", bytes.len())))?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                crate::tls::write_private(&path, &key).map_err(|e| bad(e.to_string()))?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    fn seal_value(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a fresh nonce and a valid key cannot fail.
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: AAD,
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{PREFIX}{}", B64.encode(blob))
    }

    fn open_value(&self, stored: &str) -> Result<String, SealError> {
        let Some(b64) = stored.strip_prefix(PREFIX) else {
            // Stored before sealing existed: hand it on as it is.
            return Ok(stored.to_owned());
        };
        let blob = B64.decode(b64).map_err(|_| SealError::Open)?;
        if blob.len() < 12 + 16 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = blob.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }

    /// The spec as the database keeps it: every password and private key sealed.
    pub fn seal(&self, spec: &JobSpec) -> JobSpec {
        let mut spec = spec.clone();
        for_each_secret(&mut spec, |s| {
            if !s.expose().starts_with(PREFIX) {
                *s = Secret::new(self.seal_value(s.expose()));
            }
            Ok(())
        })
        .unwrap_or(());
        spec
    }

    /// The spec as the claiming sensor needs it.
    pub fn open(&self, spec: &mut JobSpec) -> Result<(), SealError> {
        for_each_secret(spec, |s| {
            *s = Secret::new(self.open_value(s.expose())?);
            Ok(())
        })
    }
}

/// The spec as the admin API shows it: secrets replaced by [`REDACTED`].
pub fn redact(spec: &mut JobSpec) {
    let _ = for_each_secret(spec, |s| {
        *s = Secret::new(REDACTED.to_owned());
        Ok(())
    });
}

fn for_each_secret(
    spec: &mut JobSpec,
    mut f: impl FnMut(&mut Secret) -> Result<(), SealError>,
) -> Result<(), SealError> {
    if let JobSpec::Scan(scan) = spec {
        for Credential {
            password,
            private_key,
            ..
        } in &mut scan.credentials
        {
            for s in [password, private_key].into_iter().flatten() {
                f(s)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(password: &str) -> JobSpec {
        let json = format!(
            r#"{{"kind":"scan","targets":["10.9.0.10"],"ports":"T:22","families":["General"],
               "credentials":[{{"service":"ssh","username":"audit","password":"{password}"}}]}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn password(spec: &JobSpec) -> String {
        match spec {
            JobSpec::Scan(s) => s.credentials[0]
                .password
                .as_ref()
                .unwrap()
                .expose()
                .to_owned(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn sealed_specs_hold_no_secret_and_open_back() {
        let sealer = Sealer::from_key([7; 32]);
        let spec = spec_with("hunter2-branch");
        let sealed = sealer.seal(&spec);
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("hunter2"), "{stored}");
        assert!(stored.contains(PREFIX));
        // Sealing twice gives different ciphertexts (fresh nonces) and is idempotent.
        assert_ne!(password(&sealer.seal(&spec)), password(&sealed));
        assert_eq!(password(&sealer.seal(&sealed)), password(&sealed));
        let mut opened = sealed.clone();
        sealer.open(&mut opened).unwrap();
        assert_eq!(password(&opened), "hunter2-branch");
    }

    #[test]
    fn another_key_or_a_damaged_value_does_not_open() {
        let sealed = Sealer::from_key([7; 32]).seal(&spec_with("pw"));
        let mut other = sealed.clone();
        assert!(Sealer::from_key([8; 32]).open(&mut other).is_err());
        let mut damaged = spec_with(&format!("{PREFIX}AAAA"));
        assert!(Sealer::from_key([7; 32]).open(&mut damaged).is_err());
    }

    #[test]
    fn the_admin_view_shows_no_secret() {
        let mut spec = Sealer::from_key([1; 32]).seal(&spec_with("pw-secret"));
        redact(&mut spec);
        assert_eq!(password(&spec), REDACTED);
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load_or_create(dir.path()).unwrap();
        let meta = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = Sealer::load_or_create(dir.path()).unwrap();
        let mut spec = a.seal(&spec_with("pw"));
        b.open(&mut spec).unwrap();
        assert_eq!(password(&spec), "pw");
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let e = Sealer::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("expected 32"), "{e}");
    }
}
