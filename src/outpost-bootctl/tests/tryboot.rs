//! The Pi 5 firmware-tryboot backend over a fake `autoboot.txt` and a fake
//! `/proc/device-tree/chosen/bootloader`: commit, fallback, power cuts during the
//! rewrite, and clear errors for bad or missing files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outpost_bootctl::tryboot::{WriteStep, TRYBOOT_REBOOT_ARG};
use outpost_bootctl::{
    Autoboot, BootControl, RebootAction, RpiTryboot, Slot, SlotPartitions, UbootFileEnv,
};

struct Card {
    _dir: tempfile::TempDir,
    boot: PathBuf,
    dt: PathBuf,
}

impl Card {
    /// A fresh card (slot A the default, no trial armed) that the firmware booted from A.
    fn new() -> Card {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("boot");
        let dt = dir.path().join("device-tree/chosen/bootloader");
        fs::create_dir_all(&boot).unwrap();
        fs::create_dir_all(&dt).unwrap();
        fs::write(
            boot.join("autoboot.txt"),
            Autoboot::fresh(SlotPartitions::default()).render(),
        )
        .unwrap();
        let card = Card {
            _dir: dir,
            boot,
            dt,
        };
        card.firmware_starts(false);
        card
    }

    fn autoboot(&self) -> PathBuf {
        self.boot.join("autoboot.txt")
    }

    fn backend(&self) -> RpiTryboot {
        RpiTryboot::new(self.autoboot(), &self.dt)
    }

    fn text(&self) -> String {
        fs::read_to_string(self.autoboot()).unwrap()
    }

    /// What the Pi firmware does at a start: with the one-shot tryboot flag set it
    /// boots `[tryboot] boot_partition`, otherwise `[all] boot_partition`; then it
    /// reports the partition and the flag in the device tree (big-endian u32 cells).
    fn firmware_starts(&self, tryboot_flag: bool) -> u32 {
        let ab = Autoboot::parse(&self.text()).unwrap();
        let default = ab.default_partition().unwrap().unwrap();
        let partition = if tryboot_flag {
            ab.tryboot_partition().unwrap().unwrap_or(default)
        } else {
            default
        };
        fs::write(self.dt.join("partition"), partition.to_be_bytes()).unwrap();
        fs::write(
            self.dt.join("tryboot"),
            u32::from(tryboot_flag).to_be_bytes(),
        )
        .unwrap();
        partition
    }

    /// Restarts the way the backend says the device must.
    fn reboot_as_told(&self) -> u32 {
        let action = self.backend().reboot_action().unwrap();
        self.firmware_starts(action == RebootAction::WithArg(TRYBOOT_REBOOT_ARG))
    }
}

#[test]
fn trial_then_commit_makes_the_tried_slot_the_default() {
    let card = Card::new();
    let bc = card.backend();
    assert_eq!(bc.booted().unwrap(), Slot::A);
    assert_eq!(bc.primary().unwrap(), Slot::A);
    assert_eq!(bc.reboot_action().unwrap(), RebootAction::Plain);

    // an update wrote slot B: arm the trial; the device must reboot "0 tryboot"
    bc.mark_active(Slot::B).unwrap();
    assert_eq!(
        bc.reboot_action().unwrap(),
        RebootAction::WithArg("0 tryboot")
    );
    assert_eq!(
        bc.primary().unwrap(),
        Slot::A,
        "a trial is not the default yet"
    );
    let text = card.text();
    assert!(text.contains("[tryboot]\nboot_partition=3"), "{text}");
    assert!(
        text.contains("[all]\ntryboot_a_b=1\nboot_partition=2"),
        "{text}"
    );

    assert_eq!(card.reboot_as_told(), 3);
    assert_eq!(bc.booted().unwrap(), Slot::B);
    assert!(bc.firmware_boot().unwrap().tryboot);
    assert_eq!(bc.status().unwrap().state.trial, Some(Slot::B));

    // healthy: commit
    bc.mark_good().unwrap();
    assert_eq!(bc.primary().unwrap(), Slot::B);
    assert_eq!(bc.reboot_action().unwrap(), RebootAction::Plain);
    let ab = Autoboot::parse(&card.text()).unwrap();
    assert_eq!(ab.default_partition().unwrap(), Some(3));
    assert_eq!(ab.tryboot_partition().unwrap(), Some(3));

    // every later start, plain or not, boots B; mark_good has nothing to write
    for flag in [false, true] {
        assert_eq!(card.firmware_starts(flag), 3);
        let before = card.text();
        bc.mark_good().unwrap();
        assert_eq!(card.text(), before);
    }
    let status = bc.status().unwrap();
    assert_eq!(status.backend, "rpi-tryboot");
    assert_eq!(status.booted, Some(Slot::B));
    assert_eq!(status.state.trial, None);
}

#[test]
fn failed_trial_falls_back_to_the_default_and_is_disarmed() {
    let card = Card::new();
    let bc = card.backend();
    bc.mark_active(Slot::B).unwrap();
    assert_eq!(card.reboot_as_told(), 3);
    // slot B hangs; the watchdog resets the board: the flag is gone, the default boots
    assert_eq!(card.firmware_starts(false), 2);
    assert_eq!(bc.booted().unwrap(), Slot::A);
    assert_eq!(bc.primary().unwrap(), Slot::A);
    // still armed until the running slot is found healthy...
    assert_eq!(bc.armed_trial().unwrap(), Some(Slot::B));
    bc.mark_good().unwrap();
    // ...then disarmed, so the daemon's next reboot does not retry the bad slot
    assert_eq!(bc.armed_trial().unwrap(), None);
    assert_eq!(bc.reboot_action().unwrap(), RebootAction::Plain);
    assert_eq!(card.reboot_as_told(), 2);
    let ab = Autoboot::parse(&card.text()).unwrap();
    assert_eq!(ab.default_partition().unwrap(), Some(2));
    assert_eq!(ab.tryboot_partition().unwrap(), Some(2));
}

#[test]
fn update_back_to_a_after_b_was_committed() {
    let card = Card::new();
    let bc = card.backend();
    bc.mark_active(Slot::B).unwrap();
    card.reboot_as_told();
    bc.mark_good().unwrap();
    card.firmware_starts(false);
    // next update goes to A
    bc.mark_active(Slot::A).unwrap();
    assert_eq!(card.reboot_as_told(), 2);
    bc.mark_good().unwrap();
    assert_eq!(bc.primary().unwrap(), Slot::A);
    assert_eq!(card.firmware_starts(false), 2);
}

#[test]
fn rewrite_keeps_lines_it_does_not_own() {
    let card = Card::new();
    fs::write(
        card.autoboot(),
        "# written at the factory\n[all]\ntryboot_a_b=1\nboot_partition=2\nsome_other=7\n\n[tryboot]\nboot_partition=2\n",
    )
    .unwrap();
    let bc = card.backend();
    bc.mark_active(Slot::B).unwrap();
    assert_eq!(
        card.text(),
        "# written at the factory\n[all]\ntryboot_a_b=1\nboot_partition=2\nsome_other=7\n\n[tryboot]\nboot_partition=3\n"
    );
    // a file without a [tryboot] section gets one
    fs::write(card.autoboot(), "[all]\ntryboot_a_b=1\nboot_partition=2\n").unwrap();
    assert_eq!(bc.armed_trial().unwrap(), None);
    bc.mark_active(Slot::B).unwrap();
    assert_eq!(
        card.text(),
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    );
}

#[test]
fn power_cut_during_the_rewrite_leaves_the_old_or_the_new_file() {
    let steps = {
        let card = Card::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        card.backend()
            .with_write_hook(move |step| {
                s.lock().unwrap().push(step);
                Ok(())
            })
            .mark_active(Slot::B)
            .unwrap();
        let v = seen.lock().unwrap().clone();
        v
    };
    assert!(steps.len() > 4, "{steps:?}");
    assert!(steps.contains(&WriteStep::Rename));

    for cut in &steps {
        let card = Card::new();
        let old = card.text();
        let cut = *cut;
        let dead = Arc::new(AtomicBool::new(false));
        let d = dead.clone();
        let err = card
            .backend()
            .with_write_hook(move |step| {
                if step == cut || d.load(Ordering::SeqCst) {
                    d.store(true, Ordering::SeqCst);
                    return Err(io::Error::other("power cut"));
                }
                Ok(())
            })
            .mark_active(Slot::B)
            .unwrap_err();
        assert!(err.to_string().contains("power cut"), "{err}");

        // what the firmware reads after the power comes back
        let now = card.text();
        let ab = Autoboot::parse(&now)
            .unwrap_or_else(|e| panic!("cut at {cut:?}: torn file: {e}\n{now}"));
        let new_tryboot = ab.tryboot_partition().unwrap();
        match cut {
            WriteStep::Data(_) | WriteStep::Sync | WriteStep::Rename => {
                assert_eq!(now, old, "cut at {cut:?} changed the file")
            }
            WriteStep::SyncDir => assert_eq!(new_tryboot, Some(3), "cut at {cut:?}"),
        }
        assert_eq!(ab.default_partition().unwrap(), Some(2));

        // the next write goes through despite the leftover temporary file
        let bc = card.backend();
        bc.mark_active(Slot::B).unwrap();
        assert_eq!(bc.armed_trial().unwrap(), Some(Slot::B));
    }
}

fn err_of<T: std::fmt::Debug>(r: Result<T, outpost_bootctl::BootCtlError>) -> String {
    r.unwrap_err().to_string()
}

fn assert_names(msg: &str, path: &Path, what: &str) {
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(what),
        "{msg:?} should name {} and say {what:?}",
        path.display()
    );
}

#[test]
fn bad_or_missing_files_give_errors_naming_the_file() {
    let card = Card::new();
    let bc = card.backend();
    let ab = card.autoboot();

    fs::remove_file(&ab).unwrap();
    assert_names(&err_of(bc.primary()), &ab, "No such file");
    assert_names(&err_of(bc.mark_active(Slot::B)), &ab, "No such file");

    fs::write(&ab, "[all]\ntryboot_a_b=1\nthis is not a setting\n").unwrap();
    assert_names(&err_of(bc.primary()), &ab, "line 3");
    fs::write(&ab, "[all]\ntryboot_a_b=1\nboot_partition=two\n").unwrap();
    assert_names(&err_of(bc.primary()), &ab, "not a partition number");
    fs::write(&ab, "[all]\ntryboot_a_b=1\n[tryboot]\nboot_partition=3\n").unwrap();
    assert_names(
        &err_of(bc.primary()),
        &ab,
        "no boot_partition in the [all] section",
    );
    fs::write(&ab, "[all]\nboot_partition=2\n").unwrap();
    assert_names(&err_of(bc.primary()), &ab, "tryboot_a_b=1 is not set");
    fs::write(&ab, "[all]\ntryboot_a_b=1\nboot_partition=7\n").unwrap();
    assert_names(&err_of(bc.primary()), &ab, "partition 7");
    // a bad file is never "fixed" by a write
    assert!(bc.mark_active(Slot::B).is_err());
    assert_eq!(
        fs::read_to_string(&ab).unwrap(),
        "[all]\ntryboot_a_b=1\nboot_partition=7\n"
    );

    fs::write(&ab, Autoboot::fresh(SlotPartitions::default()).render()).unwrap();
    let part = card.dt.join("partition");
    fs::remove_file(&part).unwrap();
    assert_names(&err_of(bc.booted()), &part, "No such file");
    assert_names(&err_of(bc.mark_good()), &part, "No such file");
    fs::write(&part, [0, 0, 2]).unwrap();
    assert_names(&err_of(bc.booted()), &part, "found 3 bytes");
    fs::write(&part, 9u32.to_be_bytes()).unwrap();
    assert_names(&err_of(bc.booted()), &part, "partition 9");
    fs::write(&part, 2u32.to_be_bytes()).unwrap();
    let flag = card.dt.join("tryboot");
    fs::write(&flag, b"1").unwrap();
    assert_names(&err_of(bc.mark_good()), &flag, "found 1 bytes");
    // status still works without a firmware report (e.g. in a chroot)
    fs::remove_file(&part).unwrap();
    assert_eq!(bc.status().unwrap().booted, None);
}

#[test]
fn partition_map_is_configurable_and_uboot_reboots_plainly() {
    let card = Card::new();
    fs::write(
        card.autoboot(),
        "[all]\ntryboot_a_b=1\nboot_partition=5\n[tryboot]\nboot_partition=5\n",
    )
    .unwrap();
    let bc = card
        .backend()
        .with_partitions(SlotPartitions { a: 5, b: 6 });
    assert_eq!(bc.primary().unwrap(), Slot::A);
    bc.mark_active(Slot::B).unwrap();
    assert!(card.text().contains("[tryboot]\nboot_partition=6"));

    let uboot = UbootFileEnv::new(card.boot.clone());
    assert_eq!(uboot.reboot_action().unwrap(), RebootAction::Plain);
}
