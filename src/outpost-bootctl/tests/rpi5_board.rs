//! board/rpi5 is consistent with the tryboot backend: its autoboot.txt parses with the
//! backend's parser and maps onto the partitions board.conf declares, board.conf names
//! the backend and a DTB, config.txt loads what each slot partition carries. The image
//! scripts/build-image makes from them is checked in tests/system/tests/rpi5.rs.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use outpost_bootctl::{Autoboot, BootControl, RebootAction, RpiTryboot, Slot, SlotPartitions};

fn board_dir(board: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../board")
        .join(board)
}

/// board.conf as the build reads it: bash `source`, then the variables we care about.
fn board_conf(board: &str) -> HashMap<String, String> {
    let vars = [
        "BOOT_BACKEND",
        "DTBS",
        "TRYBOOT_PARTITIONS",
        "BOARD_FAT_FILES",
        "SLOT_FAT_FILES",
        "KERNEL_PACKAGE",
        "KERNEL_LAYOUT",
        "DISK_LAYOUT",
        "DRIVER_CHECK_NODES",
        "CONSOLE",
        "COMPATIBLE",
    ];
    let script = format!(
        "set -eu; source '{}'; {}",
        board_dir(board).join("board.conf").display(),
        vars.iter()
            .map(|v| format!("printf '%s=%s\\n' {v} \"${{{v}:-}}\";"))
            .collect::<String>()
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn partitions(conf: &HashMap<String, String>) -> SlotPartitions {
    let mut a = None;
    let mut b = None;
    for item in conf["TRYBOOT_PARTITIONS"].split_whitespace() {
        match item.split_once('=') {
            Some(("A", n)) => a = n.parse().ok(),
            Some(("B", n)) => b = n.parse().ok(),
            _ => panic!("TRYBOOT_PARTITIONS item {item:?}"),
        }
    }
    SlotPartitions {
        a: a.expect("TRYBOOT_PARTITIONS names A"),
        b: b.expect("TRYBOOT_PARTITIONS names B"),
    }
}

#[test]
fn rpi5_board_files_fit_the_tryboot_backend() {
    let conf = board_conf("rpi5");
    assert_eq!(conf["BOOT_BACKEND"], "rpi-tryboot");
    assert_eq!(conf["COMPATIBLE"], "outpost,rpi5");
    // sid's 7.x kernel (the suites of image/apt/suites), in its /usr/lib/modules packaging
    assert_eq!(conf["KERNEL_PACKAGE"], "linux-image-arm64/sid", "{conf:?}");
    assert_eq!(conf["KERNEL_LAYOUT"], "usr-lib-modules");
    assert_eq!(conf["DISK_LAYOUT"], "tryboot");
    let dtbs: Vec<&str> = conf["DTBS"].split_whitespace().collect();
    assert_eq!(dtbs, ["broadcom/bcm2712-rpi-5-b.dtb"]);
    assert!(!conf["DRIVER_CHECK_NODES"].trim().is_empty());
    let parts = partitions(&conf);
    assert_ne!(parts.a, parts.b);
    assert!(parts.a > 1 && parts.b > 1, "partition 1 holds autoboot.txt");

    // the shipped autoboot.txt: parsed by the backend, slot A the default, no trial
    assert!(conf["BOARD_FAT_FILES"]
        .split_whitespace()
        .any(|f| f == "autoboot.txt"));
    let text = fs::read_to_string(board_dir("rpi5").join("autoboot.txt")).unwrap();
    // the firmware reads at most 512 bytes of it; leave room for the rewrites
    assert!(text.len() <= 400, "autoboot.txt is {} bytes", text.len());
    let ab = Autoboot::parse(&text).unwrap_or_else(|e| panic!("board/rpi5/autoboot.txt: {e}"));
    assert_eq!(ab.default_partition().unwrap(), Some(parts.a));
    assert_eq!(ab.tryboot_partition().unwrap(), Some(parts.a));

    // ...and the backend runs on it: a trial of B needs `reboot "0 tryboot"`
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("autoboot.txt");
    fs::write(&file, &text).unwrap();
    let bc = RpiTryboot::new(&file, dir.path().join("dt")).with_partitions(parts);
    assert_eq!(bc.primary().unwrap(), Slot::A);
    assert_eq!(bc.reboot_action().unwrap(), RebootAction::Plain);
    bc.mark_active(Slot::B).unwrap();
    assert_eq!(
        bc.reboot_action().unwrap(),
        RebootAction::WithArg("0 tryboot")
    );

    // config.txt: 64-bit, the slot's kernel, initramfs and the board's DTB
    assert!(conf["SLOT_FAT_FILES"]
        .split_whitespace()
        .any(|f| f == "config.txt"));
    let config = fs::read_to_string(board_dir("rpi5").join("config.txt")).unwrap();
    let settings: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for want in [
        "arm_64bit=1",
        "kernel=Image",
        "initramfs initrd.img followkernel",
        "enable_uart=1",
    ] {
        assert!(settings.contains(&want), "config.txt lacks {want}");
    }
    let dtb_name = dtbs[0].rsplit('/').next().unwrap();
    assert!(
        settings.contains(&format!("device_tree={dtb_name}").as_str()),
        "config.txt does not load {dtb_name}"
    );
    assert!(conf["CONSOLE"].starts_with("ttyAMA10,"));
    let readme = fs::read_to_string(board_dir("rpi5").join("README.md")).unwrap();
    assert!(readme.contains("not verified on hardware"));
}

#[test]
fn uboot_boards_name_their_backend() {
    for board in ["qemu-arm64", "rpi4"] {
        assert_eq!(
            board_conf(board)["BOOT_BACKEND"],
            "uboot-file-env",
            "{board}"
        );
    }
}
