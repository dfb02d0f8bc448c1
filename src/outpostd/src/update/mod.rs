//! The device side of A/B updates (`docs/updates.md`, "Device flow").
//!
//! An update arrives as a job ([`outpost_wire::sensor::UpdateSpec`]). [`job`] downloads
//! the bundle through the portal client (so inside the tunnel), checks it, installs it
//! into the slot that is not running, records the update ([`store::PendingUpdate`]),
//! makes the slot active and asks for a reboot. [`boot`] picks up after the reboot: the
//! new slot commits itself once healthy, or the old slot, back after the new one used
//! up its tries, reports the rollback.

mod backend;
mod boot;
mod download;
mod job;
mod layout;
mod states;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_bootctl::{BootControl, RebootAction, Slot};
use outpost_bundle::{SlotTarget, TrustedKeys, Version};

pub use backend::{device_boot, BootBackend, BOOTLOADER_DT};
pub use boot::BootRole;
pub use job::{JobCtx, JobEnd};
pub use layout::device_slots;

use crate::release::{BootInfo, Release};
use store::UpdateStore;

/// Trusted bundle keys in the read-only root filesystem.
pub const DEFAULT_KEYS: &str = "/usr/share/outpost/bundle-keys.pub";
/// Written once this boot is marked good; the trial watchdog
/// (`/usr/libexec/outpost/trial-watchdog`) stands down when it appears.
pub const HEALTHY_FLAG: &str = "/run/outpost/healthy";

/// Restarts the machine the way the boot backend asks ([`crate::reboot::Rebooter`] on
/// the device; a recorder in tests).
pub type RebootFn = Box<dyn Fn(RebootAction) -> std::io::Result<()> + Send + Sync>;
/// Where each slot's root filesystem and boot files live.
pub type SlotTargets = Box<dyn Fn(Slot) -> SlotTarget + Send + Sync>;

pub struct UpdaterConfig {
    /// `--data-dir`; the update's files go to `updates/` below it.
    pub data_dir: PathBuf,
    pub keys_file: PathBuf,
    pub release: Release,
    pub boot_info: BootInfo,
    pub boot: Arc<dyn BootControl + Send + Sync>,
    /// The A/B boot state exists (booted from an Outpost disk).
    pub on_device: bool,
    /// `Err(reason)` when the slots' devices are unknown.
    pub slots: Result<SlotTargets, String>,
    pub healthy_flag: PathBuf,
    pub reboot: RebootFn,
    /// Least time between two progress reports.
    pub progress_interval: Duration,
    /// Retry delay when the portal refuses our credentials.
    pub slow_retry: Duration,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`), kept with an activated update.
    pub boot_id: Option<String>,
}

/// Where the kernel keeps this boot's random id.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id, if the kernel offers one.
pub fn boot_id(path: &std::path::Path) -> Option<String> {
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// Everything an install needs, found at start-up.
struct Ready {
    keys: TrustedKeys,
    board: String,
    current: Version,
    booted: Slot,
    slots: SlotTargets,
}

pub struct Updater {
    store: UpdateStore,
    boot: Arc<dyn BootControl + Send + Sync>,
    info: BootInfo,
    release: Release,
    on_device: bool,
    ready: Result<Ready, String>,
    healthy_flag: PathBuf,
    reboot: RebootFn,
    progress_interval: Duration,
    slow_retry: Duration,
    boot_id: Option<String>,
    /// This boot was marked good.
    committed: AtomicBool,
    role: Mutex<BootRole>,
    /// Serialises "record + mark_active" (the job) with "check + mark_good" (the health
    /// thread): marking the running slot good after the new one was made active would
    /// put the running slot first again and silently cancel the update.
    boot_lock: Mutex<()>,
}

impl Updater {
    pub fn new(cfg: UpdaterConfig) -> Updater {
        let UpdaterConfig {
            data_dir,
            keys_file,
            release,
            boot_info,
            boot,
            on_device,
            slots,
            healthy_flag,
            reboot,
            progress_interval,
            slow_retry,
            boot_id,
        } = cfg;
        let ready = prepare(on_device, &boot_info, &release, &keys_file, slots);
        Updater {
            store: UpdateStore::new(&data_dir),
            boot,
            info: boot_info,
            release,
            on_device,
            ready,
            healthy_flag,
            reboot,
            progress_interval,
            slow_retry,
            boot_id,
            committed: AtomicBool::new(false),
            role: Mutex::new(BootRole::Normal),
            boot_lock: Mutex::new(()),
        }
    }

    /// Update jobs a previous run left on disk that the portal may still count as running
    /// here: one being downloaded or installed (`job.json`), or one whose end (`rebooting`)
    /// the portal has not acknowledged yet. The heartbeat lists them so they are not
    /// taken back while the restarted daemon resumes them.
    pub fn held_jobs(&self) -> Vec<i64> {
        let mut ids = Vec::new();
        if let Ok(Some(job)) = self.store.load_job() {
            ids.push(job.job_id);
        }
        if let Ok(Some(p)) = self.store.load_pending() {
            ids.extend(p.job_id.filter(|_| !p.job_closed));
        }
        ids
    }

    /// Booted by the Outpost boot script, with an A/B boot state to commit.
    pub fn on_device(&self) -> bool {
        self.on_device
    }

    /// Whether an update job may be claimed now; `Err` says why not.
    pub fn availability(&self) -> Result<(), String> {
        self.ready.as_ref().map_err(Clone::clone)?;
        if self.store.has_pending() {
            return Err("an installed update is still waiting for its outcome".into());
        }
        if self.role() == BootRole::AwaitingReboot {
            return Err("an activated update is waiting for its reboot".into());
        }
        if self.info.trial && !self.committed.load(Ordering::SeqCst) {
            return Err("this slot is on trial and not marked good yet".into());
        }
        Ok(())
    }

    /// One line for the console at start-up.
    pub fn describe(&self) -> String {
        match &self.ready {
            Ok(r) => format!(
                "updates: slot {} runs {} for {}; {} trusted key(s)",
                r.booted,
                r.current,
                r.board,
                r.keys.ids().count()
            ),
            Err(why) => format!("updates: not available: {why}"),
        }
    }

    pub fn role(&self) -> BootRole {
        *crate::report::lock(&self.role)
    }

    /// Reboots into the activated slot, the way the boot backend needs: a plain reboot
    /// for U-Boot (it reads its state at every start), `reboot "0 tryboot"` for the Pi
    /// firmware's one-shot trial.
    pub fn reboot(&self) -> std::io::Result<()> {
        let action = self.boot.reboot_action().map_err(std::io::Error::other)?;
        tracing::info!(?action, "rebooting into the activated slot");
        (self.reboot)(action)
    }
}

fn prepare(
    on_device: bool,
    info: &BootInfo,
    release: &Release,
    keys_file: &std::path::Path,
    slots: Result<SlotTargets, String>,
) -> Result<Ready, String> {
    if !on_device {
        return Err("no A/B boot state (not booted from an Outpost disk)".into());
    }
    let booted = info
        .slot
        .ok_or("the kernel command line names no outpost.slot")?;
    let current = release.semver()?;
    let board = release
        .board
        .clone()
        .ok_or("the release file names no BOARD")?;
    let keys = TrustedKeys::load(keys_file).map_err(|e| format!("no trusted keys: {e}"))?;
    Ok(Ready {
        keys,
        board,
        current,
        booted,
        slots: slots?,
    })
}
