//! The device's identity, kept in the data directory (`--data-dir`, on the device
//! `/data/outpost`, on the ext4 `data` partition that survives updates).
//!
//! Layout (every file mode 0600, every directory 0700, every write atomic):
//!
//! | path | what |
//! | --- | --- |
//! | `wg.key` | the device's X25519 WireGuard private key, base64 plus newline as `wg genkey` prints it; generated on first start, never leaves the device |
//! | `identity.json` | the registration the portal answered: sensor id, API key, site, portal URL, tunnel config, intervals (a [`Registration`]) |
//! | `spool/<job-id>.json` | finished reports (`ReportUpload`) waiting for the portal's acknowledgement |
//! | `spool/rejected/<job-id>.json` | reports the portal refused (job no longer ours), kept for diagnosis |
//! | `spool/inflight/<job-id>.jsonl` | results of the running scan, appended as they arrive; removed once its report is spooled, turned into a partial report after a crash |
//!
//! On restart the daemon reuses `wg.key` and `identity.json`, so a reboot never enrolls
//! the sensor a second time.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use outpost_wire::sensor::TunnelConfig;
use outpost_wire::Secret;
use rand_core::RngCore as _;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid WireGuard private key; remove the data directory to enroll this sensor again")]
    BadKey { path: PathBuf },
    #[error("{path} is corrupt ({reason}); remove it to enroll this sensor again")]
    BadIdentity { path: PathBuf, reason: String },
    #[error("cannot get randomness from the operating system: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory (0700) if needed.
    pub fn open(root: &Path) -> Result<DataDir, IdentityError> {
        fsutil::ensure_private_dir(root).map_err(io(root))?;
        Ok(DataDir {
            root: root.to_owned(),
        })
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn key_path(&self) -> PathBuf {
        self.root.join("wg.key")
    }
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    /// A rotated key between "portal accepted it" and "it replaced `wg.key`".
    pub fn next_key_path(&self) -> PathBuf {
        self.root.join("wg.key.next")
    }
    /// A key made for a rotation and sent (or about to be sent) to the portal, kept
    /// until the portal's answer is in: a lost answer is retried with the same key.
    pub fn pending_key_path(&self) -> PathBuf {
        self.root.join("wg.key.pending")
    }
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }
}

/// The device's WireGuard key pair.
pub struct DeviceKey {
    secret: StaticSecret,
}

impl DeviceKey {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<DeviceKey, IdentityError> {
        let mut bytes = [0u8; 32];
        rand_core::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| IdentityError::Random(e.to_string()))?;
        // StaticSecret clamps the scalar, as `wg genkey` does.
        Ok(DeviceKey {
            secret: StaticSecret::from(bytes),
        })
    }
    /// Public key, base64 as `wg pubkey` prints it.
    pub fn public_b64(&self) -> String {
        B64.encode(PublicKey::from(&self.secret).as_bytes())
    }
    /// Private key, base64 as `wg genkey` prints it (for the tunnel crate).
    pub fn private_b64(&self) -> Secret {
        Secret::new(B64.encode(self.secret.to_bytes()))
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(public {})", self.public_b64())
    }
}

/// Loads `wg.key`, or generates and stores a fresh key pair on first start.
/// Returns the key and whether it was just created.
pub fn load_or_create_key(dir: &DataDir) -> Result<(DeviceKey, bool), IdentityError> {
    recover_rotation(dir)?;
    let path = dir.key_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = parse_key(text.trim()).ok_or(IdentityError::BadKey { path: path.clone() })?;
            // Someone may have copied the file with a loose mode; the key is a credential.
            if fsutil::mode_of(&path).map_err(io(&path))? != fsutil::PRIVATE_FILE {
                tracing::warn!(path = %path.display(), "tightening key file mode to 0600");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(fsutil::PRIVATE_FILE),
                )
                .map_err(io(&path))?;
            }
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = DeviceKey::generate()?;
            let text = format!("{}\n", key.private_b64().expose());
            fsutil::atomic_write(&path, text.as_bytes()).map_err(io(&path))?;
            Ok((key, true))
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// Stores a rotated key the portal has accepted, together with the registration that now
/// names its public key. Two files cannot be replaced in one step, so the key goes to
/// `wg.key.next` first, then `identity.json`, then the rename over `wg.key`; after a
/// crash anywhere, [`recover_rotation`] finds a matching pair and no re-enrollment follows.
pub fn commit_rotation(
    dir: &DataDir,
    key: &DeviceKey,
    reg: &Registration,
) -> Result<(), IdentityError> {
    let next = dir.next_key_path();
    let text = format!("{}\n", key.private_b64().expose());
    fsutil::atomic_write(&next, text.as_bytes()).map_err(io(&next))?;
    save_registration(dir, reg)?;
    promote_next_key(dir)
}

/// The key to announce in a rotation: the one stored by an earlier attempt whose answer
/// never came (the portal may already accept it), else a fresh one, stored (synced)
/// before it leaves the device. A stored key equal to `current` is a leftover of a
/// finished rotation and is replaced.
pub fn pending_rotation_key(dir: &DataDir, current: &str) -> Result<DeviceKey, IdentityError> {
    let path = dir.pending_key_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => match parse_key(text.trim()) {
            Some(key) if key.public_b64() != current => return Ok(key),
            Some(_) => {}
            None => tracing::warn!(path = %path.display(), "replacing an unreadable pending key"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    let key = DeviceKey::generate()?;
    let text = format!("{}\n", key.private_b64().expose());
    fsutil::atomic_write(&path, text.as_bytes()).map_err(io(&path))?;
    Ok(key)
}

/// Forgets the pending key once its rotation is committed (or refused for good).
pub fn discard_pending_key(dir: &DataDir) -> Result<(), IdentityError> {
    let path = dir.pending_key_path();
    match std::fs::remove_file(&path) {
        Ok(()) => fsutil::sync_dir(dir.root()).map_err(io(dir.root())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

fn promote_next_key(dir: &DataDir) -> Result<(), IdentityError> {
    let (next, path) = (dir.next_key_path(), dir.key_path());
    std::fs::rename(&next, &path).map_err(io(&path))?;
    fsutil::sync_dir(dir.root()).map_err(io(dir.root()))
}

/// Finishes a rotation a crash interrupted: `wg.key.next` becomes `wg.key` when the stored
/// registration already names its public key; otherwise the rotation never committed and
/// the old key stays.
fn recover_rotation(dir: &DataDir) -> Result<(), IdentityError> {
    let next = dir.next_key_path();
    let text = match std::fs::read_to_string(&next) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&next)(e)),
    };
    let committed = match (parse_key(text.trim()), load_registration(dir)?) {
        (Some(key), Some(reg)) => reg.wg_public_key == key.public_b64(),
        _ => false,
    };
    if committed {
        tracing::warn!("finishing a WireGuard key rotation interrupted by a restart");
        promote_next_key(dir)
    } else {
        tracing::warn!("discarding a WireGuard key rotation that never completed");
        std::fs::remove_file(&next).map_err(io(&next))?;
        fsutil::sync_dir(dir.root()).map_err(io(dir.root()))
    }
}

fn parse_key(b64: &str) -> Option<DeviceKey> {
    let bytes: [u8; 32] = B64.decode(b64).ok()?.try_into().ok()?;
    Some(DeviceKey {
        secret: StaticSecret::from(bytes),
    })
}

/// What the portal gave this sensor at registration, kept in `identity.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub sensor_id: String,
    pub api_key: Secret,
    pub site: String,
    /// The sensor name from `outpost.toml` at registration time.
    pub name: String,
    /// The portal it registered with; a card re-provisioned for another portal enrolls again.
    pub portal_url: String,
    /// The public key the portal knows this sensor by.
    pub wg_public_key: String,
    #[serde(default)]
    pub tunnel: Option<TunnelConfig>,
    pub heartbeat_interval_s: u32,
    pub claim_interval_s: u32,
    pub registered_at: i64,
}

/// Reads `identity.json`; `None` when the sensor never registered.
pub fn load_registration(dir: &DataDir) -> Result<Option<Registration>, IdentityError> {
    let path = dir.identity_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::BadIdentity {
            path,
            reason: e.to_string(),
        })
}

/// Writes `identity.json` atomically (0600).
pub fn save_registration(dir: &DataDir, reg: &Registration) -> Result<(), IdentityError> {
    let path = dir.identity_path();
    let json = serde_json::to_vec_pretty(reg).map_err(|e| IdentityError::BadIdentity {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fsutil::atomic_write(&path, &json).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registration {
        Registration {
            sensor_id: "sen_1".into(),
            api_key: Secret::new("osk_abc"),
            site: "berlin".into(),
            name: "branch-1".into(),
            portal_url: "https://127.0.0.1:8443".into(),
            wg_public_key: "pub".into(),
            tunnel: None,
            heartbeat_interval_s: 30,
            claim_interval_s: 5,
            registered_at: 1,
        }
    }

    #[test]
    fn key_is_generated_once_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("data")).unwrap();
        assert_eq!(fsutil::mode_of(dir.root()).unwrap(), 0o700);
        let (k1, created) = load_or_create_key(&dir).unwrap();
        assert!(created);
        assert_eq!(fsutil::mode_of(&dir.key_path()).unwrap(), 0o600);
        let (k2, created) = load_or_create_key(&dir).unwrap();
        assert!(!created);
        assert_eq!(k1.public_b64(), k2.public_b64());
        // Stored as `wg genkey` prints it: 44 base64 characters and a newline.
        let text = std::fs::read_to_string(dir.key_path()).unwrap();
        assert_eq!(text.len(), 45);
        assert_eq!(text.trim(), k1.private_b64().expose());
        assert!(!format!("{k1:?}").contains(k1.private_b64().expose()));
    }

    #[test]
    fn public_key_matches_wireguard_derivation() {
        // Expected value computed with `echo PRIVATE | wg pubkey` (wireguard-tools).
        let private = "dwdtCnMRpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        let public = "tiuE6oAoY5+agfrACQcWzMwU0dwJiluAKLwxqXtZOlo=";
        assert_eq!(parse_key(private).unwrap().public_b64(), public);
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        std::fs::write(dir.key_path(), "not a key\n").unwrap();
        assert!(matches!(
            load_or_create_key(&dir),
            Err(IdentityError::BadKey { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.key_path()).unwrap(),
            "not a key\n"
        );
    }

    #[test]
    fn loose_key_mode_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        load_or_create_key(&dir).unwrap();
        std::fs::set_permissions(dir.key_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create_key(&dir).unwrap();
        assert_eq!(fsutil::mode_of(&dir.key_path()).unwrap(), 0o600);
    }

    #[test]
    fn registration_round_trips_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        assert_eq!(load_registration(&dir).unwrap(), None);
        save_registration(&dir, &reg()).unwrap();
        assert_eq!(fsutil::mode_of(&dir.identity_path()).unwrap(), 0o600);
        assert_eq!(load_registration(&dir).unwrap(), Some(reg()));
    }

    #[test]
    fn committed_rotation_survives_a_crash_before_the_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (old, _) = load_or_create_key(&dir).unwrap();
        let new = DeviceKey::generate().unwrap();
        let mut r = reg();
        r.wg_public_key = new.public_b64();
        // The state a power cut after `identity.json` but before the rename leaves.
        let text = format!("{}\n", new.private_b64().expose());
        fsutil::atomic_write(&dir.next_key_path(), text.as_bytes()).unwrap();
        save_registration(&dir, &r).unwrap();
        let (loaded, created) = load_or_create_key(&dir).unwrap();
        assert!(!created);
        assert_eq!(loaded.public_b64(), new.public_b64());
        assert_ne!(loaded.public_b64(), old.public_b64());
        assert!(!dir.next_key_path().exists());
    }

    #[test]
    fn uncommitted_rotation_keeps_the_old_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let (old, _) = load_or_create_key(&dir).unwrap();
        let mut r = reg();
        r.wg_public_key = old.public_b64();
        save_registration(&dir, &r).unwrap();
        let new = DeviceKey::generate().unwrap();
        let text = format!("{}\n", new.private_b64().expose());
        fsutil::atomic_write(&dir.next_key_path(), text.as_bytes()).unwrap();
        let (loaded, _) = load_or_create_key(&dir).unwrap();
        assert_eq!(loaded.public_b64(), old.public_b64());
        assert!(!dir.next_key_path().exists());
    }

    #[test]
    fn commit_rotation_replaces_key_and_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        load_or_create_key(&dir).unwrap();
        let new = DeviceKey::generate().unwrap();
        let mut r = reg();
        r.wg_public_key = new.public_b64();
        commit_rotation(&dir, &new, &r).unwrap();
        let (loaded, _) = load_or_create_key(&dir).unwrap();
        assert_eq!(loaded.public_b64(), new.public_b64());
        assert_eq!(load_registration(&dir).unwrap(), Some(r));
        assert_eq!(fsutil::mode_of(&dir.key_path()).unwrap(), 0o600);
    }

    #[test]
    fn corrupt_identity_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        std::fs::write(dir.identity_path(), "{").unwrap();
        let err = load_registration(&dir).unwrap_err();
        assert!(err.to_string().contains("identity.json"), "{err}");
    }
}
