//! Flashing to a regular file standing in for a card, and every refusal. The real
//! root device is only ever passed to `check_target`, which writes nothing.

use std::fs;
use std::path::Path;

use outpost_imagetool::{
    check_target, flash_with, FlashError, FlashOptions, FlashPhase, FlashProgress,
};

const MIB: usize = 1024 * 1024;

fn image(dir: &Path, len: usize) -> std::path::PathBuf {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let p = dir.join("outpost.img");
    fs::write(&p, bytes).unwrap();
    p
}

/// Options with the real /proc and /sys, and a small block size so progress has
/// several steps.
fn opts() -> FlashOptions {
    FlashOptions {
        block_size: MIB,
        ..FlashOptions::default()
    }
}

#[test]
fn flashes_to_a_presized_file_and_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), 5 * MIB + 123);
    let card = tmp.path().join("card.bin");
    fs::write(&card, vec![0xEEu8; 8 * MIB]).unwrap();

    let mut seen: Vec<FlashProgress> = Vec::new();
    let report = flash_with(&opts(), &img, &card, |p| seen.push(p)).unwrap();

    let total = (5 * MIB + 123) as u64;
    assert_eq!(report.bytes, total);
    assert_eq!(report.device, fs::canonicalize(&card).unwrap());
    let written = fs::read(&card).unwrap();
    assert_eq!(written.len(), 8 * MIB, "the card changed size");
    assert!(written[..total as usize] == fs::read(&img).unwrap()[..]);
    assert!(written[total as usize..].iter().all(|&b| b == 0xEE));

    for phase in [FlashPhase::Write, FlashPhase::Verify] {
        let steps: Vec<u64> = seen
            .iter()
            .filter(|p| p.phase == phase)
            .map(|p| p.done)
            .collect();
        assert_eq!(steps.first(), Some(&0));
        assert_eq!(steps.last(), Some(&total));
        assert!(
            steps.windows(2).all(|w| w[0] < w[1]),
            "{phase:?}: {steps:?}"
        );
        assert_eq!(steps.len(), 7, "0, five full blocks, one partial");
        assert!(seen.iter().all(|p| p.total == total));
    }
    // Write comes entirely before verify.
    let first_verify = seen
        .iter()
        .position(|p| p.phase == FlashPhase::Verify)
        .unwrap();
    assert!(seen[first_verify..]
        .iter()
        .all(|p| p.phase == FlashPhase::Verify));
}

#[test]
fn refuses_missing_small_same_and_odd_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), 2 * MIB);

    let missing = tmp.path().join("sdz");
    let err = flash_with(&opts(), &img, &missing, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::NoDevice { .. }), "{err}");
    assert!(!missing.exists(), "a missing target was created");

    let small = tmp.path().join("small.bin");
    fs::write(&small, vec![0u8; MIB]).unwrap();
    let err = flash_with(&opts(), &img, &small, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::TooSmall { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("small.bin") && msg.contains("smaller than the image"),
        "{msg}"
    );
    assert!(
        fs::read(&small).unwrap().iter().all(|&b| b == 0),
        "small target was written"
    );

    let err = flash_with(&opts(), &img, &img, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::SameAsImage { .. }), "{err}");
    // Through a symlink too.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let err = flash_with(&opts(), &img, &link, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::SameAsImage { .. }), "{err}");

    let err = flash_with(&opts(), &img, tmp.path(), |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::NotADevice { .. }), "{err}");
    let err = flash_with(&opts(), &img, Path::new("/dev/null"), |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::NotADevice { .. }), "{err}");

    let empty = tmp.path().join("empty.img");
    fs::write(&empty, b"").unwrap();
    let err = flash_with(&opts(), &empty, &small, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::BadImage { .. }), "{err}");
}

#[test]
fn refuses_a_target_listed_in_mountinfo_or_swaps() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), MIB);
    let card = tmp.path().join("card.bin");
    fs::write(&card, vec![0u8; 2 * MIB]).unwrap();

    // A mount table where our "card" is the source of a mount (as a file system image
    // mounted directly would be).
    let mountinfo = tmp.path().join("mountinfo");
    fs::write(
        &mountinfo,
        format!(
            "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
             61 27 7:3 / /media/card rw - vfat {} rw\n",
            card.display()
        ),
    )
    .unwrap();
    let o = FlashOptions {
        mountinfo: mountinfo.clone(),
        ..opts()
    };
    let err = flash_with(&o, &img, &card, |_| {}).unwrap_err();
    match &err {
        FlashError::Mounted { mount_point, .. } => {
            assert_eq!(mount_point, Path::new("/media/card"))
        }
        other => panic!("expected Mounted, got {other}"),
    }
    assert!(err.to_string().contains("unmount it first"));
    assert!(fs::read(&card).unwrap().iter().all(|&b| b == 0));

    let swaps = tmp.path().join("swaps");
    fs::write(
        &swaps,
        format!(
            "Filename Type Size Used Priority\n{} file 2048 0 -2\n",
            card.display()
        ),
    )
    .unwrap();
    let o = FlashOptions { swaps, ..opts() };
    let err = flash_with(&o, &img, &card, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::Swap { .. }), "{err}");
}

#[test]
fn refuses_the_device_holding_the_running_root() {
    // Only check_target here: it never opens the target for writing.
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), MIB);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_source = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == "/")
        .and_then(|f| {
            let dash = f.iter().position(|x| *x == "-")?;
            f.get(dash + 2).map(|s| s.to_string())
        })
        .expect("a root mount in /proc/self/mountinfo");
    assert!(
        root_source.starts_with("/dev/") && Path::new(&root_source).exists(),
        "this test needs / mounted from a device node, got {root_source:?}"
    );
    let err = check_target(&opts(), &img, Path::new(&root_source)).unwrap_err();
    assert!(matches!(err, FlashError::HoldsRoot { .. }), "{err}");
    assert!(err.to_string().contains("running system's root"));
}

/// A loop device over a file, detached on drop (also when the test fails).
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("losetup (util-linux); this test needs root for loop devices");
        assert!(
            out.status.success(),
            "losetup failed (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn flashes_a_real_block_device_and_refuses_its_backing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), 3 * MIB + 512);
    let backing = tmp.path().join("card.bin");
    fs::write(&backing, vec![0x11u8; 4 * MIB]).unwrap();
    let dev = Loop::attach(&backing);

    // The file behind an attached loop device is in use.
    let err = flash_with(&opts(), &img, &backing, |_| {}).unwrap_err();
    assert!(matches!(err, FlashError::LoopBacked { .. }), "{err}");

    let target = check_target(&opts(), &img, Path::new(&dev.0)).unwrap();
    assert!(target.block_device);
    assert_eq!(target.size, (4 * MIB) as u64);

    let report = flash_with(&opts(), &img, Path::new(&dev.0), |_| {}).unwrap();
    assert_eq!(report.bytes, (3 * MIB + 512) as u64);
    drop(dev);
    let on_card = fs::read(&backing).unwrap();
    assert!(on_card[..3 * MIB + 512] == fs::read(&img).unwrap()[..]);
    assert!(on_card[3 * MIB + 512..].iter().all(|&b| b == 0x11));
}

#[test]
fn refuses_a_block_device_smaller_than_the_image() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), 2 * MIB);
    let backing = tmp.path().join("small.bin");
    fs::write(&backing, vec![0u8; MIB]).unwrap();
    let dev = Loop::attach(&backing);
    let err = flash_with(&opts(), &img, Path::new(&dev.0), |_| {}).unwrap_err();
    match err {
        FlashError::TooSmall {
            device_size,
            image_size,
            ..
        } => assert_eq!((device_size, image_size), (MIB as u64, 2 * MIB as u64)),
        other => panic!("expected TooSmall, got {other}"),
    }
}

/// A mount, unmounted on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn refuses_a_mounted_block_device() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path(), MIB);
    let backing = tmp.path().join("fs.bin");
    fs::File::create(&backing)
        .unwrap()
        .set_len(16 * MIB as u64)
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&backing)
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.success());
    let dev = Loop::attach(&backing);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // Read-only, so the kernel never writes the backing file behind our back.
    let status = std::process::Command::new("mount")
        .args(["-o", "ro"])
        .arg(&dev.0)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount {} failed (needs root)", dev.0);
    let _mounted = Mounted(mnt.clone());

    let before = fs::read(&backing).unwrap();
    let err = flash_with(&opts(), &img, Path::new(&dev.0), |_| {}).unwrap_err();
    match &err {
        FlashError::Mounted { mount_point, .. } => {
            assert_eq!(mount_point, &fs::canonicalize(&mnt).unwrap())
        }
        other => panic!("expected Mounted, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&dev.0) && msg.contains("is mounted"), "{msg}");
    assert!(
        fs::read(&backing).unwrap() == before,
        "a mounted device was written"
    );
}
