//! Where the slots are on the device: the disk that holds the mounted boot (FAT)
//! partition also holds both root filesystem partitions (`docs/disk-layout.md`), so the
//! inactive slot's partition is found from the boot partition's disk, with no guessing
//! between `/dev/mmcblk0` (Pi) and `/dev/vda` (QEMU).

use std::fs;
use std::path::{Path, PathBuf};

use outpost_bundle::SlotTarget;

use super::SlotTargets;

/// The slots of the disk holding `boot_mount` (or of `disk`, when given).
pub fn device_slots(boot_mount: &Path, disk: Option<PathBuf>) -> Result<SlotTargets, String> {
    let disk = match disk {
        Some(d) => d,
        None => boot_disk(
            boot_mount,
            Path::new("/proc/mounts"),
            Path::new("/sys/class/block"),
        )?,
    };
    let boot = boot_mount.to_path_buf();
    Ok(Box::new(move |slot| {
        SlotTarget::for_slot(slot, &disk, &boot)
    }))
}

/// `/dev/<disk>` of the partition mounted at `boot_mount`, from `mounts`
/// (`/proc/mounts`) and the sysfs block class (`/sys/class/block/<part>` links into its
/// disk's directory).
fn boot_disk(boot_mount: &Path, mounts: &Path, class_block: &Path) -> Result<PathBuf, String> {
    let text = fs::read_to_string(mounts).map_err(|e| format!("{}: {e}", mounts.display()))?;
    let device = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (dev, mount_point) = (fields.next()?, fields.next()?);
            (Path::new(mount_point) == boot_mount).then_some(dev)
        })
        // The last mount on a path is the one in effect.
        .next_back()
        .ok_or_else(|| format!("nothing is mounted at {}", boot_mount.display()))?;
    let name = Path::new(device)
        .file_name()
        .ok_or_else(|| format!("{device} is not a device path"))?;
    let part = fs::canonicalize(class_block.join(name))
        .map_err(|e| format!("{device} is not a block device partition: {e}"))?;
    if !part.join("partition").exists() {
        return Err(format!(
            "{device} (mounted at {}) is not a partition",
            boot_mount.display()
        ));
    }
    let disk = part
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(|| format!("no disk above {}", part.display()))?;
    Ok(Path::new("/dev").join(disk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_bootctl::Slot;

    #[test]
    fn finds_the_disk_of_the_boot_partition() {
        let t = tempfile::tempdir().unwrap();
        let devices = t
            .path()
            .join("devices/platform/mmc/block/mmcblk0/mmcblk0p1");
        fs::create_dir_all(&devices).unwrap();
        fs::write(devices.join("partition"), "1\n").unwrap();
        let class = t.path().join("class/block");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&devices, class.join("mmcblk0p1")).unwrap();
        let mounts = t.path().join("mounts");
        fs::write(
            &mounts,
            "/dev/mmcblk0p2 / squashfs ro 0 0\n/dev/mmcblk0p1 /boot vfat rw 0 0\n",
        )
        .unwrap();
        let disk = boot_disk(Path::new("/boot"), &mounts, &class).unwrap();
        assert_eq!(disk, PathBuf::from("/dev/mmcblk0"));
        let target = SlotTarget::for_slot(Slot::B, &disk, Path::new("/boot"));
        assert_eq!(target.rootfs, PathBuf::from("/dev/mmcblk0p3"));

        let e = boot_disk(Path::new("/data"), &mounts, &class).unwrap_err();
        assert!(e.contains("nothing is mounted at /data"), "{e}");
        fs::write(&mounts, "/dev/mmcblk0 /boot vfat rw 0 0\n").unwrap();
        assert!(boot_disk(Path::new("/boot"), &mounts, &class).is_err());
    }
}
