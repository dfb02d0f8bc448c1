//! The update's files in the data directory (`<data-dir>/updates/`, on the data
//! partition that both slots share). Every record is written atomically
//! ([`crate::fsutil::atomic_write`]), so a power cut leaves the old or the new record.
//!
//! | file | what |
//! | --- | --- |
//! | `job.json` | the update job being worked on ([`ActiveJob`]): a restarted daemon resumes it |
//! | `<bundle>.bundle.part` | a download in progress (resumed with `Range`) |
//! | `<bundle>.bundle` | a complete download whose sha256 matched |
//! | `pending.json` | an installed update across its reboot ([`PendingUpdate`]) |
//! | `floor` | the highest version this device ever marked good (anti-downgrade) |

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use outpost_bootctl::Slot;
use outpost_bundle::Version;
use outpost_wire::sensor::{UpdateSpec, UpdateState};
use serde::{Deserialize, Serialize};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An update job claimed and not yet finished. Written at claim time, removed when the
/// job ends (refused, failed, or replaced by a [`PendingUpdate`]), so a daemon restarted
/// mid-download picks the job up again: the portal keeps a job leased to a sensor that
/// keeps sending heartbeats and would not hand it out again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveJob {
    pub job_id: i64,
    pub spec: UpdateSpec,
    /// Refused or failed: the verdict still to be delivered.
    #[serde(default)]
    pub verdict: Option<Outcome>,
}

/// An installed update across the reboot into it. Written before the new slot is made
/// active, so whatever the power does, the next boot finds it and can tell what became of
/// the update (see `update::boot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpdate {
    pub bundle_id: i64,
    /// The version from the bundle's signed manifest.
    pub version: String,
    pub job_id: Option<i64>,
    /// The slot that installed the update (and the one to fall back to).
    pub from: Slot,
    /// The slot the update was written to.
    pub to: Slot,
    /// The portal acknowledged the report that ends the job (`rebooting`, or `failed`).
    #[serde(default)]
    pub job_closed: bool,
    /// What became of the update, once decided; reported until the portal acknowledges.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// The kernel's boot id when the slot was made active. With the Pi firmware's
    /// tryboot the boot state looks the same before the restart and after a trial that
    /// fell back; this tells a daemon restarted before the reboot from a later boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub state: UpdateState,
    #[serde(default)]
    pub reason: String,
}

/// `<data-dir>/updates`.
#[derive(Debug, Clone)]
pub struct UpdateStore {
    dir: PathBuf,
}

impl UpdateStore {
    pub fn new(data_dir: &Path) -> UpdateStore {
        UpdateStore {
            dir: data_dir.join("updates"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ensure_dir(&self) -> Result<(), StoreError> {
        fsutil::ensure_private_dir(&self.dir).map_err(io_err(&self.dir))
    }

    pub fn part_path(&self, bundle_id: i64) -> PathBuf {
        self.dir.join(format!("{bundle_id}.bundle.part"))
    }

    pub fn bundle_path(&self, bundle_id: i64) -> PathBuf {
        self.dir.join(format!("{bundle_id}.bundle"))
    }

    fn pending_path(&self) -> PathBuf {
        self.dir.join("pending.json")
    }

    fn job_path(&self) -> PathBuf {
        self.dir.join("job.json")
    }

    fn floor_path(&self) -> PathBuf {
        self.dir.join("floor")
    }

    pub fn load_pending(&self) -> Result<Option<PendingUpdate>, StoreError> {
        load_json(&self.pending_path())
    }

    pub fn has_pending(&self) -> bool {
        self.pending_path().exists()
    }

    pub fn save_pending(&self, p: &PendingUpdate) -> Result<(), StoreError> {
        self.ensure_dir()?;
        save_json(&self.pending_path(), p)
    }

    pub fn remove_pending(&self) -> Result<(), StoreError> {
        remove(&self.pending_path())
    }

    pub fn load_job(&self) -> Result<Option<ActiveJob>, StoreError> {
        load_json(&self.job_path())
    }

    pub fn save_job(&self, j: &ActiveJob) -> Result<(), StoreError> {
        self.ensure_dir()?;
        save_json(&self.job_path(), j)
    }

    pub fn remove_job(&self) -> Result<(), StoreError> {
        remove(&self.job_path())
    }

    /// The persisted anti-downgrade floor; a corrupt file is an error rather than no
    /// floor, so a damaged file cannot open the door to a downgrade.
    pub fn floor(&self) -> Result<Option<Version>, StoreError> {
        let path = self.floor_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Version::parse(text.trim())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Raises the floor to `version` if that is higher; never lowers it.
    pub fn raise_floor(&self, version: &Version) -> Result<bool, StoreError> {
        // A corrupt floor is replaced by the version just proven good.
        let current = self.floor().unwrap_or(None);
        if current.as_ref().is_some_and(|f| f >= version) {
            return Ok(false);
        }
        self.ensure_dir()?;
        let path = self.floor_path();
        fsutil::atomic_write(&path, format!("{version}\n").as_bytes()).map_err(io_err(&path))?;
        Ok(true)
    }

    /// Deletes downloaded bundles (complete or partial) except `keep`'s: the data
    /// partition holds one bundle.
    pub fn remove_bundles_except(&self, keep: Option<i64>) -> Result<(), StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let keep_names = keep.map(|id| [format!("{id}.bundle"), format!("{id}.bundle.part")]);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_bundle = name.ends_with(".bundle") || name.ends_with(".bundle.part");
            let kept = keep_names.as_ref().is_some_and(|k| k.contains(&name));
            if is_bundle && !kept {
                remove(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    fsutil::atomic_write(path, &bytes).map_err(io_err(path))
}

/// Removes `path` (missing is fine) and makes the removal durable.
pub fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source,
            })
        }
    }
    if let Some(dir) = path.parent() {
        fsutil::sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> PendingUpdate {
        PendingUpdate {
            bundle_id: 7,
            version: "1.2.0".into(),
            job_id: Some(70),
            from: Slot::A,
            to: Slot::B,
            job_closed: false,
            outcome: None,
            boot_id: None,
        }
    }

    #[test]
    fn records_round_trip_and_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let s = UpdateStore::new(dir.path());
        assert_eq!(s.load_pending().unwrap(), None);
        s.save_pending(&pending()).unwrap();
        assert!(s.has_pending());
        assert_eq!(s.load_pending().unwrap(), Some(pending()));
        assert_eq!(crate::fsutil::mode_of(&s.pending_path()).unwrap(), 0o600);
        s.remove_pending().unwrap();
        s.remove_pending().unwrap();
        assert!(!s.has_pending());
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = UpdateStore::new(dir.path());
        s.ensure_dir().unwrap();
        fs::write(s.pending_path(), b"{\"bundle_id\":").unwrap();
        let e = s.load_pending().unwrap_err().to_string();
        assert!(e.contains("pending.json") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn floor_only_rises() {
        let dir = tempfile::tempdir().unwrap();
        let s = UpdateStore::new(dir.path());
        assert_eq!(s.floor().unwrap(), None);
        assert!(s.raise_floor(&Version::new(1, 2, 0)).unwrap());
        assert!(!s.raise_floor(&Version::new(1, 1, 0)).unwrap());
        assert!(!s.raise_floor(&Version::new(1, 2, 0)).unwrap());
        assert_eq!(s.floor().unwrap(), Some(Version::new(1, 2, 0)));
        fs::write(s.floor_path(), "garbage").unwrap();
        assert!(s.floor().is_err(), "a damaged floor must not read as none");
        assert!(s.raise_floor(&Version::new(1, 0, 0)).unwrap());
        assert_eq!(s.floor().unwrap(), Some(Version::new(1, 0, 0)));
    }

    #[test]
    fn only_one_bundle_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = UpdateStore::new(dir.path());
        s.ensure_dir().unwrap();
        for p in [s.part_path(1), s.bundle_path(2), s.part_path(3)] {
            fs::write(p, b"x").unwrap();
        }
        s.save_pending(&pending()).unwrap();
        s.remove_bundles_except(Some(3)).unwrap();
        assert!(!s.part_path(1).exists() && !s.bundle_path(2).exists());
        assert!(s.part_path(3).exists());
        assert!(s.has_pending(), "records are not bundles");
        s.remove_bundles_except(None).unwrap();
        assert!(!s.part_path(3).exists());
    }
}
