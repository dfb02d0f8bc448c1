//! Which boot-control backend this board uses (`--boot-backend`, from `BOOT_BACKEND` in
//! the board's `board.conf`, which the image carries in `/usr/share/outpost/board.conf`),
//! and what the updater gets from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_bootctl::{BootControl, RpiTryboot, UbootFileEnv};

use super::SlotTargets;

/// The `chosen/bootloader` node where the Pi firmware reports the boot.
pub const BOOTLOADER_DT: &str = outpost_bootctl::tryboot::DEFAULT_BOOTLOADER_DT;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootBackend {
    /// The U-Boot script's state files `bootstate.0/1` on the boot FAT (QEMU, Pi 4).
    #[default]
    UbootFileEnv,
    /// The Pi 5 firmware's tryboot: `autoboot.txt` on the boot FAT, `reboot "0 tryboot"`.
    RpiTryboot,
}

impl BootBackend {
    pub const NAMES: &'static str = "uboot-file-env, rpi-tryboot";

    /// The names `board.conf` uses.
    pub fn parse(name: &str) -> Option<BootBackend> {
        match name {
            "uboot-file-env" => Some(BootBackend::UbootFileEnv),
            "rpi-tryboot" => Some(BootBackend::RpiTryboot),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BootBackend::UbootFileEnv => "uboot-file-env",
            BootBackend::RpiTryboot => "rpi-tryboot",
        }
    }
}

/// The boot control the updater uses, and what it knows about this boot.
pub struct DeviceBoot {
    pub control: Arc<dyn BootControl + Send + Sync>,
    /// The backend's state exists: booted from an Outpost card, with a boot to commit.
    pub on_device: bool,
    /// Whether this boot is a trial, when the backend knows it better than the kernel
    /// command line (the Pi firmware's `tryboot` flag; the U-Boot script says
    /// `outpost.trial=1` on the command line instead).
    pub trial: Option<bool>,
    /// Where each slot goes, or why updates cannot be installed.
    pub slots: Result<SlotTargets, String>,
}

/// The backend `kind` over the mounted boot FAT `boot_dir` (and, for tryboot, the
/// firmware's device-tree report in `bootloader_dt`).
pub fn device_boot(
    kind: BootBackend,
    boot_dir: &Path,
    boot_disk: Option<PathBuf>,
    bootloader_dt: &Path,
) -> DeviceBoot {
    match kind {
        BootBackend::UbootFileEnv => DeviceBoot {
            control: Arc::new(UbootFileEnv::new(boot_dir)),
            on_device: crate::health::on_device(boot_dir),
            trial: None,
            slots: super::device_slots(boot_dir, boot_disk),
        },
        BootBackend::RpiTryboot => {
            let tryboot = RpiTryboot::new(boot_dir.join("autoboot.txt"), bootloader_dt);
            let firmware = match tryboot.firmware_boot() {
                Ok(fw) => Some(fw),
                Err(e) => {
                    tracing::info!(error = %e, "no tryboot report from the firmware");
                    None
                }
            };
            DeviceBoot {
                on_device: tryboot.autoboot_path().exists() && firmware.is_some(),
                trial: firmware.map(|fw| fw.tryboot),
                control: Arc::new(tryboot),
                // The bundle installer writes the U-Boot layout (root partitions 2 and 3,
                // kernels in slot-x/ on the one FAT); the Pi 5 card has a FAT boot
                // partition per slot and the roots at 5 and 6 (docs/disk-layout.md), so
                // nothing is installed rather than written to the wrong partitions.
                // Committing a trial boot works regardless.
                slots: Err(
                    "the bundle installer does not write the Raspberry Pi 5 card layout (a boot partition per slot) yet: updates are not installed on this board"
                        .into(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_bootctl::{RebootAction, Slot};
    use std::fs;

    fn cell(v: u32) -> [u8; 4] {
        v.to_be_bytes()
    }

    #[test]
    fn names_as_in_board_conf() {
        for b in [BootBackend::UbootFileEnv, BootBackend::RpiTryboot] {
            assert_eq!(BootBackend::parse(b.as_str()), Some(b));
            assert!(BootBackend::NAMES.contains(b.as_str()));
        }
        assert_eq!(BootBackend::parse("grub"), None);
        assert_eq!(BootBackend::default(), BootBackend::UbootFileEnv);
    }

    #[test]
    fn uboot_is_the_script_state_files() {
        let t = tempfile::tempdir().unwrap();
        let d = device_boot(BootBackend::UbootFileEnv, t.path(), None, t.path());
        assert!(!d.on_device, "no bootstate files yet");
        fs::write(t.path().join("bootstate.0"), b"").unwrap();
        let d = device_boot(
            BootBackend::UbootFileEnv,
            t.path(),
            Some("/dev/mmcblk0".into()),
            t.path(),
        );
        assert!(d.on_device);
        assert_eq!(d.trial, None);
        assert_eq!(d.control.status().unwrap().backend, "uboot-file-env");
        assert_eq!(
            d.control.reboot_action().unwrap(),
            RebootAction::Plain,
            "U-Boot reads its state at every start"
        );
        assert!(d.slots.is_ok());
    }

    #[test]
    fn tryboot_is_autoboot_txt_and_the_firmware_report() {
        let t = tempfile::tempdir().unwrap();
        let (boot, dt) = (t.path().join("boot"), t.path().join("bootloader"));
        fs::create_dir_all(&boot).unwrap();
        fs::create_dir_all(&dt).unwrap();
        let d = device_boot(BootBackend::RpiTryboot, &boot, None, &dt);
        assert!(!d.on_device, "no autoboot.txt, no firmware report");

        fs::write(
            boot.join("autoboot.txt"),
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n",
        )
        .unwrap();
        fs::write(dt.join("partition"), cell(2)).unwrap();
        fs::write(dt.join("tryboot"), cell(0)).unwrap();
        let d = device_boot(BootBackend::RpiTryboot, &boot, None, &dt);
        assert!(d.on_device);
        assert_eq!(d.trial, Some(false));
        assert_eq!(d.control.status().unwrap().backend, "rpi-tryboot");
        assert_eq!(d.control.booted().unwrap(), Slot::A);
        let why = d.slots.err().unwrap();
        assert!(why.contains("does not write"), "{why}");

        // Activating slot B arms a trial; the restart must carry "0 tryboot".
        assert_eq!(d.control.reboot_action().unwrap(), RebootAction::Plain);
        d.control.mark_active(Slot::B).unwrap();
        assert_eq!(
            d.control.reboot_action().unwrap(),
            RebootAction::WithArg("0 tryboot")
        );

        // The firmware's trial flag is this boot's trial.
        fs::write(dt.join("partition"), cell(3)).unwrap();
        fs::write(dt.join("tryboot"), cell(1)).unwrap();
        let d = device_boot(BootBackend::RpiTryboot, &boot, None, &dt);
        assert_eq!(d.trial, Some(true));
        d.control.mark_good().unwrap();
        assert_eq!(d.control.primary().unwrap(), Slot::B, "committed");
        assert_eq!(d.control.reboot_action().unwrap(), RebootAction::Plain);
    }
}
