//! Backend for the Raspberry Pi 5 firmware's own A/B: `autoboot.txt` with
//! `tryboot_a_b=1` on the first FAT partition, and the one-shot `tryboot` flag.
//!
//! - `[all] boot_partition=N` is the default: what the firmware boots on every normal
//!   start (power-on, watchdog, plain reboot).
//! - `[tryboot] boot_partition=M` is what it boots once after `reboot "0 tryboot"`.
//!   The flag is cleared before the OS starts, so any reset after a failed trial
//!   boots the default again: that is the fallback, with no counter to keep.
//! - The firmware reports what it did in the device tree:
//!   `/proc/device-tree/chosen/bootloader/tryboot` (1 on a trial) and `partition`
//!   (the partition it booted), each one big-endian u32 cell.
//!
//! Mapping onto [`BootControl`]: `mark_active(slot)` arms a trial by pointing
//! `[tryboot]` at the slot's partition; [`BootControl::reboot_action`] then says the
//! device must restart with `reboot "0 tryboot"`. `mark_good` on a trial commits it
//! (the tried partition becomes the default). Outside a trial, `[tryboot]` equals the
//! default partition (so a stray tryboot restarts the same slot); `mark_good` on a
//! normal boot disarms a trial that failed, so later reboots do not retry it.
//! Every change rewrites `autoboot.txt` whole (temporary file, fsync, rename, fsync
//! of the directory): a power cut leaves the old or the new file, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tracing::{debug, info, warn};

use crate::control::{BootControl, BootStatus, RebootAction};
use crate::error::BootCtlError;
use crate::slot::Slot;
use crate::state::BootState;

/// Where the firmware reads `autoboot.txt` from (the first FAT partition, mounted).
pub const DEFAULT_AUTOBOOT: &str = "/boot/autoboot.txt";
/// Where the firmware's boot report appears in Linux.
pub const DEFAULT_BOOTLOADER_DT: &str = "/proc/device-tree/chosen/bootloader";
/// The `reboot(2)` restart argument that sets the firmware's one-shot tryboot flag:
/// "0" keeps the default partition numbering, `tryboot` selects `[tryboot]`.
pub const TRYBOOT_REBOOT_ARG: &str = "0 tryboot";

/// The partitions holding each slot's firmware boot files (config.txt, kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotPartitions {
    pub a: u32,
    pub b: u32,
}

impl Default for SlotPartitions {
    /// The layout in board/rpi5/autoboot.txt.
    fn default() -> Self {
        SlotPartitions { a: 2, b: 3 }
    }
}

impl SlotPartitions {
    pub fn partition(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub fn slot(&self, partition: u32) -> Option<Slot> {
        if partition == self.a {
            Some(Slot::A)
        } else if partition == self.b {
            Some(Slot::B)
        } else {
            None
        }
    }
}

/// What is wrong with an `autoboot.txt` or a device-tree cell (the caller adds the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrybootError {
    #[error("line {line}: {text:?} is neither a [section], a comment nor name=value")]
    Syntax { line: usize, text: String },
    #[error("line {line}: {key}={value:?} is not a partition number")]
    BadNumber {
        line: usize,
        key: String,
        value: String,
    },
    #[error("no boot_partition in the [all] section")]
    NoDefault,
    #[error("tryboot_a_b=1 is not set in [all]: the firmware would not switch partitions")]
    NotAb,
    #[error("partition {0} is not one of the slots' boot partitions")]
    UnknownPartition(u32),
    #[error("expected one big-endian u32 cell (4 bytes), found {0} bytes")]
    Cell(usize),
}

/// One line of `autoboot.txt` as parsed: kept so a rewrite preserves what we do not own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Section(String),
    Setting { key: String, value: String },
    Other(String),
}

/// A parsed `autoboot.txt`. Only `boot_partition` in `[all]` and `[tryboot]` and
/// `tryboot_a_b` are interpreted; other lines, comments and sections are kept as they
/// are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoboot {
    lines: Vec<Line>,
}

impl Autoboot {
    /// The file the image ships, for a fresh card: slot A by default, no trial armed.
    pub fn fresh(parts: SlotPartitions) -> Self {
        let text = format!(
            "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            parts.a, parts.a
        );
        // The literal above always parses.
        Self::parse(&text).unwrap_or(Autoboot { lines: Vec::new() })
    }

    pub fn parse(text: &str) -> Result<Self, TrybootError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            let line = if t.is_empty() || t.starts_with('#') {
                Line::Other(raw.to_string())
            } else if t.starts_with('[') && t.ends_with(']') {
                Line::Section(t[1..t.len() - 1].trim().to_string())
            } else if let Some((k, v)) = t.split_once('=') {
                Line::Setting {
                    key: k.trim().to_string(),
                    value: v.trim().to_string(),
                }
            } else {
                return Err(TrybootError::Syntax {
                    line: i + 1,
                    text: raw.to_string(),
                });
            };
            lines.push(line);
        }
        let parsed = Autoboot { lines };
        // Both partition numbers must be numbers; [all] must have one and enable A/B.
        parsed.number("all", "boot_partition")?;
        parsed.number("tryboot", "boot_partition")?;
        if parsed.default_partition()?.is_none() {
            return Err(TrybootError::NoDefault);
        }
        if parsed.value("all", "tryboot_a_b").map(|(_, v)| v) != Some("1") {
            return Err(TrybootError::NotAb);
        }
        Ok(parsed)
    }

    /// The last `key` in `section` (the firmware, like config.txt, lets a later line win).
    fn value(&self, section: &str, key: &str) -> Option<(usize, &str)> {
        let mut current = "all";
        let mut found = None;
        for (i, line) in self.lines.iter().enumerate() {
            match line {
                Line::Section(s) => current = s,
                Line::Setting { key: k, value } if current == section && k == key => {
                    found = Some((i, value.as_str()));
                }
                _ => {}
            }
        }
        found
    }

    fn number(&self, section: &str, key: &str) -> Result<Option<u32>, TrybootError> {
        match self.value(section, key) {
            None => Ok(None),
            Some((i, v)) => v.parse().map(Some).map_err(|_| TrybootError::BadNumber {
                line: i + 1,
                key: key.to_string(),
                value: v.to_string(),
            }),
        }
    }

    /// `[all] boot_partition`: what a normal start boots.
    pub fn default_partition(&self) -> Result<Option<u32>, TrybootError> {
        self.number("all", "boot_partition")
    }

    /// `[tryboot] boot_partition`: what `reboot "0 tryboot"` boots once. The firmware
    /// uses the default when `[tryboot]` names none.
    pub fn tryboot_partition(&self) -> Result<Option<u32>, TrybootError> {
        self.number("tryboot", "boot_partition")
    }

    /// Sets `key` in `section`, replacing the line that counts, or appending the
    /// setting (and the section if need be).
    fn set(&mut self, section: &str, key: &str, value: String) {
        if let Some((i, _)) = self.value(section, key) {
            self.lines[i] = Line::Setting {
                key: key.to_string(),
                value,
            };
            return;
        }
        let setting = Line::Setting {
            key: key.to_string(),
            value,
        };
        // After the last line of the section's last occurrence.
        let mut current = "all".to_string();
        let mut insert_at = None;
        for (i, line) in self.lines.iter().enumerate() {
            if let Line::Section(s) = line {
                current = s.clone();
            }
            if current == section {
                insert_at = Some(i + 1);
            }
        }
        match insert_at {
            Some(i) => self.lines.insert(i, setting),
            None => {
                self.lines.push(Line::Section(section.to_string()));
                self.lines.push(setting);
            }
        }
    }

    pub fn set_default(&mut self, partition: u32) {
        self.set("all", "boot_partition", partition.to_string());
    }

    pub fn set_tryboot(&mut self, partition: u32) {
        self.set("tryboot", "boot_partition", partition.to_string());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Section(s) => out.push_str(&format!("[{s}]")),
                Line::Setting { key, value } => out.push_str(&format!("{key}={value}")),
                Line::Other(text) => out.push_str(text),
            }
            out.push('\n');
        }
        out
    }
}

/// What the firmware says about the running boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FirmwareBoot {
    /// The partition the firmware booted.
    pub partition: u32,
    /// This boot was started by `reboot "0 tryboot"`.
    pub tryboot: bool,
}

/// Decodes a device-tree property holding one big-endian u32 cell.
pub fn dt_u32(bytes: &[u8]) -> Result<u32, TrybootError> {
    let cell: [u8; 4] = bytes
        .try_into()
        .map_err(|_| TrybootError::Cell(bytes.len()))?;
    Ok(u32::from_be_bytes(cell))
}

/// Where a write may be cut short, for the power-cut tests: the hook is called before
/// each step, and an error from it stops the write there, as a power cut would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// About to write the temporary file's bytes from this offset on.
    Data(usize),
    /// About to fsync the temporary file.
    Sync,
    /// About to rename it over `autoboot.txt`.
    Rename,
    /// About to fsync the directory.
    SyncDir,
}

type StepHook = dyn Fn(WriteStep) -> io::Result<()> + Send + Sync;

/// The firmware tryboot backend.
pub struct RpiTryboot {
    autoboot: PathBuf,
    dt: PathBuf,
    parts: SlotPartitions,
    hook: Option<Box<StepHook>>,
}

impl std::fmt::Debug for RpiTryboot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpiTryboot")
            .field("autoboot", &self.autoboot)
            .field("dt", &self.dt)
            .field("parts", &self.parts)
            .finish()
    }
}

const CHUNK: usize = 16;

impl RpiTryboot {
    /// The device layout: `/boot/autoboot.txt`, `/proc/device-tree/chosen/bootloader`.
    pub fn system() -> Self {
        Self::new(DEFAULT_AUTOBOOT, DEFAULT_BOOTLOADER_DT)
    }

    /// `autoboot` is the file; `bootloader_dt` the `chosen/bootloader` directory.
    pub fn new(autoboot: impl Into<PathBuf>, bootloader_dt: impl Into<PathBuf>) -> Self {
        RpiTryboot {
            autoboot: autoboot.into(),
            dt: bootloader_dt.into(),
            parts: SlotPartitions::default(),
            hook: None,
        }
    }

    pub fn with_partitions(mut self, parts: SlotPartitions) -> Self {
        self.parts = parts;
        self
    }

    /// Interrupts writes where the hook says (power-cut tests).
    pub fn with_write_hook(
        mut self,
        hook: impl Fn(WriteStep) -> io::Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    pub fn autoboot_path(&self) -> &Path {
        &self.autoboot
    }

    fn invalid(&self, path: &Path, source: TrybootError) -> BootCtlError {
        BootCtlError::Tryboot {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn load(&self) -> Result<Autoboot, BootCtlError> {
        let text = fs::read_to_string(&self.autoboot).map_err(|source| BootCtlError::Read {
            path: self.autoboot.clone(),
            source,
        })?;
        Autoboot::parse(&text).map_err(|e| self.invalid(&self.autoboot, e))
    }

    fn dt_cell(&self, name: &str) -> Result<u32, BootCtlError> {
        let path = self.dt.join(name);
        let bytes = fs::read(&path).map_err(|source| BootCtlError::Read {
            path: path.clone(),
            source,
        })?;
        dt_u32(&bytes).map_err(|e| self.invalid(&path, e))
    }

    /// The firmware's report on this boot.
    pub fn firmware_boot(&self) -> Result<FirmwareBoot, BootCtlError> {
        Ok(FirmwareBoot {
            partition: self.dt_cell("partition")?,
            tryboot: self.dt_cell("tryboot")? != 0,
        })
    }

    fn slot_of(&self, partition: u32, path: &Path) -> Result<Slot, BootCtlError> {
        self.parts
            .slot(partition)
            .ok_or_else(|| self.invalid(path, TrybootError::UnknownPartition(partition)))
    }

    fn default_slot(&self, ab: &Autoboot) -> Result<Slot, BootCtlError> {
        let p = ab
            .default_partition()
            .map_err(|e| self.invalid(&self.autoboot, e))?
            .ok_or_else(|| self.invalid(&self.autoboot, TrybootError::NoDefault))?;
        self.slot_of(p, &self.autoboot)
    }

    /// The slot a trial would start (`[tryboot]`, else the default).
    fn tryboot_slot(&self, ab: &Autoboot) -> Result<Slot, BootCtlError> {
        match ab
            .tryboot_partition()
            .map_err(|e| self.invalid(&self.autoboot, e))?
        {
            Some(p) => self.slot_of(p, &self.autoboot),
            None => self.default_slot(ab),
        }
    }

    /// The slot armed for a trial, if `[tryboot]` names another slot than the default.
    pub fn armed_trial(&self) -> Result<Option<Slot>, BootCtlError> {
        let ab = self.load()?;
        let (default, tryboot) = (self.default_slot(&ab)?, self.tryboot_slot(&ab)?);
        Ok((tryboot != default).then_some(tryboot))
    }

    fn store(&self, ab: &Autoboot, what: &str) -> Result<(), BootCtlError> {
        replace_file(&self.autoboot, ab.render().as_bytes(), self.hook.as_deref())?;
        info!(file = %self.autoboot.display(), "{what}");
        Ok(())
    }
}

/// Writes `bytes` to `path` by replacing it whole: a temporary file next to it,
/// fsync, rename over `path`, fsync of the directory. The rename is the commit point,
/// so a reader (the firmware) sees the old file or the new one.
fn replace_file(path: &Path, bytes: &[u8], hook: Option<&StepHook>) -> Result<(), BootCtlError> {
    let step = |s: WriteStep| hook.map_or(Ok(()), |h| h(s));
    let tmp = path.with_extension("txt.new");
    let write_err = |source| BootCtlError::Write {
        path: tmp.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(write_err)?;
    for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
        step(WriteStep::Data(n * CHUNK)).map_err(write_err)?;
        file.write_all(chunk).map_err(write_err)?;
    }
    step(WriteStep::Sync).map_err(write_err)?;
    file.sync_all().map_err(|source| BootCtlError::Sync {
        path: tmp.clone(),
        source,
    })?;
    drop(file);
    step(WriteStep::Rename).map_err(write_err)?;
    fs::rename(&tmp, path).map_err(|source| BootCtlError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    step(WriteStep::SyncDir).map_err(|source| BootCtlError::Sync {
        path: dir.to_path_buf(),
        source,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| BootCtlError::Sync {
            path: dir.to_path_buf(),
            source,
        })?;
    debug!(file = %path.display(), "replaced and synced");
    Ok(())
}

impl BootControl for RpiTryboot {
    fn primary(&self) -> Result<Slot, BootCtlError> {
        let ab = self.load()?;
        self.default_slot(&ab)
    }

    fn booted(&self) -> Result<Slot, BootCtlError> {
        let fw = self.firmware_boot()?;
        self.slot_of(fw.partition, &self.dt.join("partition"))
    }

    fn mark_good(&self) -> Result<(), BootCtlError> {
        let fw = self.firmware_boot()?;
        let booted = self.slot_of(fw.partition, &self.dt.join("partition"))?;
        let mut ab = self.load()?;
        let default = self.default_slot(&ab)?;
        let tryboot = self.tryboot_slot(&ab)?;
        let p = self.parts.partition(booted);
        if fw.tryboot {
            if booted == default && tryboot == default {
                debug!(slot = %booted, "tryboot of the default slot: nothing to commit");
                return Ok(());
            }
            // Commit: the tried partition becomes the default, and no trial stays armed.
            ab.set_default(p);
            ab.set_tryboot(p);
            return self.store(&ab, &format!("slot {booted} committed: now the default"));
        }
        if booted != default {
            // Only a trial boots a non-default partition; do not guess, say so.
            warn!(slot = %booted, default = %default, "booted a non-default slot without tryboot; autoboot.txt left as is");
            return Ok(());
        }
        if tryboot != default {
            // A normal boot of the default while a trial is armed: that trial failed (or
            // never ran); disarm it so later reboots do not try it again.
            warn!(slot = %tryboot, "trial of slot {tryboot} did not commit: the firmware fell back to slot {booted}; trial disarmed");
            ab.set_tryboot(p);
            return self.store(&ab, &format!("trial of slot {tryboot} disarmed"));
        }
        Ok(())
    }

    fn mark_active(&self, slot: Slot) -> Result<(), BootCtlError> {
        let mut ab = self.load()?;
        if self.tryboot_slot(&ab)? == slot && self.default_slot(&ab)? != slot {
            return Ok(());
        }
        ab.set_tryboot(self.parts.partition(slot));
        self.store(
            &ab,
            &format!("slot {slot} armed for a trial (reboot \"{TRYBOOT_REBOOT_ARG}\")"),
        )
    }

    fn reboot_action(&self) -> Result<RebootAction, BootCtlError> {
        Ok(match self.armed_trial()? {
            Some(_) => RebootAction::WithArg(TRYBOOT_REBOOT_ARG),
            None => RebootAction::Plain,
        })
    }

    fn status(&self) -> Result<BootStatus, BootCtlError> {
        let ab = self.load()?;
        let primary = self.default_slot(&ab)?;
        let trial = self.armed_trial()?;
        let booted = match self.booted() {
            Ok(slot) => Some(slot),
            Err(e) => {
                debug!(error = %e, "no firmware boot report");
                None
            }
        };
        let mut order = vec![primary, primary.other()];
        order.dedup();
        Ok(BootStatus {
            backend: "rpi-tryboot",
            booted,
            primary: Some(primary),
            // The U-Boot model's fields, filled in from autoboot.txt: one try for a
            // trial (the firmware's flag is one-shot), none counted otherwise.
            state: BootState {
                order,
                tries_a: u32::from(trial == Some(Slot::A)),
                tries_b: u32::from(trial == Some(Slot::B)),
                seq: 0,
                trial,
            },
            copies: Vec::new(),
        })
    }
}
