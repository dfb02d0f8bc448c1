//! Backend for the U-Boot script: two state files in the mounted FAT partition.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::cmdline;
use crate::control::{BootControl, BootStatus};
use crate::envblob::ENV_SIZE;
use crate::error::BootCtlError;
use crate::slot::Slot;
use crate::state::{BootDecision, BootState, StateError};
use crate::store::{Copy, Loaded, COPY_NAMES};

/// Where the FAT partition is mounted on the device.
pub const DEFAULT_BOOT_DIR: &str = "/boot";
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";

/// `bootstate.0` / `bootstate.1` in `dir`. Only one writer may use a directory at a
/// time (the daemon); the file pair itself makes each write power-cut safe.
#[derive(Debug, Clone)]
pub struct UbootFileEnv {
    dir: PathBuf,
    cmdline: PathBuf,
}

impl UbootFileEnv {
    /// The device layout: `/boot` and `/proc/cmdline`.
    pub fn system() -> Self {
        Self::new(DEFAULT_BOOT_DIR)
    }

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        UbootFileEnv {
            dir: dir.into(),
            cmdline: PathBuf::from(DEFAULT_CMDLINE),
        }
    }

    /// Reads the running slot from another file than `/proc/cmdline` (tests, chroots).
    pub fn with_cmdline(mut self, path: impl Into<PathBuf>) -> Self {
        self.cmdline = path.into();
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn copy_path(&self, index: usize) -> PathBuf {
        self.dir.join(COPY_NAMES[index])
    }

    /// Reads both copies and applies the reader rule.
    pub fn load(&self) -> Result<Loaded, BootCtlError> {
        let raw = [self.read_copy(0)?, self.read_copy(1)?];
        let loaded = Loaded::from_raw([raw[0].as_deref(), raw[1].as_deref()]);
        for (i, copy) in loaded.copies.iter().enumerate() {
            if let Copy::Invalid(problem) = copy {
                // A missing copy is normal on a fresh card; anything else is worth a look.
                if raw[i].is_some() {
                    warn!(file = %self.copy_path(i).display(), %problem, "boot state copy ignored");
                }
            }
        }
        Ok(loaded)
    }

    /// `None` for a missing file. Reads at most one byte past the expected size: a
    /// larger file is invalid anyway and must not be slurped whole.
    fn read_copy(&self, index: usize) -> Result<Option<Vec<u8>>, BootCtlError> {
        let path = self.copy_path(index);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BootCtlError::Read { path, source }),
        };
        let mut buf = Vec::with_capacity(ENV_SIZE + 1);
        file.take(ENV_SIZE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|source| BootCtlError::Read { path, source })?;
        Ok(Some(buf))
    }

    /// Applies `transition` to the state in force and stores the result by the writer
    /// rule: into the copy that is not in force, in place, then fsync.
    fn update<T>(
        &self,
        what: &str,
        skip_if_unchanged: bool,
        transition: impl FnOnce(&BootState) -> Result<(BootState, T), StateError>,
    ) -> Result<T, BootCtlError> {
        let loaded = self.load()?;
        let (next, outcome) = transition(&loaded.state).map_err(|source| BootCtlError::State {
            dir: self.dir.clone(),
            source,
        })?;
        if skip_if_unchanged && loaded.winner.is_some() && same_but_seq(&loaded.state, &next) {
            // Nothing to record: spare the card a write (mark_good runs every boot).
            debug!(dir = %self.dir.display(), "{what}: boot state already says so");
            return Ok(outcome);
        }
        let planned = loaded
            .plan_write(&next)
            .map_err(|source| BootCtlError::Plan {
                path: self.copy_path(loaded.write_target()),
                source,
            })?;
        let path = self.copy_path(planned.target);
        write_in_place(&path, &planned.bytes)?;
        info!(
            file = %path.display(),
            seq = next.seq,
            order = ?next.order,
            tries_a = next.tries_a,
            tries_b = next.tries_b,
            trial = ?next.trial,
            "{what}"
        );
        Ok(outcome)
    }

    /// Does on these files what the boot script does at power-on (decide; on a trial
    /// boot decrement and write back; write the defaults when no copy is valid). For
    /// tests and image tooling; the device itself never calls it.
    pub fn simulate_boot(&self) -> Result<BootDecision, BootCtlError> {
        self.update("simulated boot", true, |s| {
            s.simulate_boot().map(|(decision, next)| {
                // Nothing to write: unchanged, which `update` skips unless no copy is
                // valid (then the script writes the defaults, and so does this).
                let next = next.unwrap_or_else(|| BootState {
                    seq: s.seq.saturating_add(1),
                    ..s.clone()
                });
                (next, decision)
            })
        })
    }
}

fn same_but_seq(a: &BootState, b: &BootState) -> bool {
    a.order == b.order && a.tries_a == b.tries_a && a.tries_b == b.tries_b && a.trial == b.trial
}

/// Overwrites `path` from offset 0 without truncating first, so the file keeps its
/// size and clusters; a new file is created and its directory synced.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), BootCtlError> {
    let write_err = |source| BootCtlError::Write {
        path: path.to_path_buf(),
        source,
    };
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    // Only shrinks a file that was too long; a correct one keeps its size.
    file.set_len(bytes.len() as u64).map_err(write_err)?;
    file.sync_all().map_err(|source| BootCtlError::Sync {
        path: path.to_path_buf(),
        source,
    })?;
    if !existed {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    debug!(file = %path.display(), "boot state written and synced");
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), BootCtlError> {
    let sync_err = |source| BootCtlError::Sync {
        path: dir.to_path_buf(),
        source,
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(sync_err)
}

impl BootControl for UbootFileEnv {
    fn primary(&self) -> Result<Slot, BootCtlError> {
        let loaded = self.load()?;
        // `from_vars` never yields an empty order, and the defaults list both slots.
        Ok(loaded.state.primary().unwrap_or(Slot::A))
    }

    fn booted(&self) -> Result<Slot, BootCtlError> {
        let text = std::fs::read_to_string(&self.cmdline).map_err(|source| BootCtlError::Read {
            path: self.cmdline.clone(),
            source,
        })?;
        cmdline::booted_slot(&text).map_err(|source| BootCtlError::BootedSlot {
            path: self.cmdline.clone(),
            source,
        })
    }

    fn mark_good(&self) -> Result<(), BootCtlError> {
        let booted = self.booted()?;
        self.update(&format!("slot {booted} marked good"), true, |s| {
            s.mark_good(booted).map(|n| (n, ()))
        })?;
        Ok(())
    }

    fn mark_active(&self, slot: Slot) -> Result<(), BootCtlError> {
        self.update(&format!("slot {slot} marked active"), true, |s| {
            s.mark_active(slot).map(|n| (n, ()))
        })?;
        Ok(())
    }

    fn status(&self) -> Result<BootStatus, BootCtlError> {
        let loaded = self.load()?;
        let booted = match self.booted() {
            Ok(slot) => Some(slot),
            Err(BootCtlError::BootedSlot { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(BootStatus {
            backend: "uboot-file-env",
            booted,
            primary: loaded.state.primary(),
            copies: loaded.report().to_vec(),
            state: loaded.state,
        })
    }
}
