//! The rpi4 image, built by the same pipeline, has what the Pi firmware and
//! U-Boot need where they look for it. (No Pi 4 emulation exists in QEMU 7.2,
//! so this checks the structure with the host's partition and FAT tools.)

use std::process::Command;

use outpost_system_tests::build_image;

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // lossy: boot.scr starts with a binary mkimage header
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rpi4_image_has_partitions_firmware_uboot_and_both_slots() {
    let built = build_image("rpi4", "production").unwrap();
    let img = built.image.to_str().unwrap().to_owned();

    // MBR: boot FAT32 (LBA, bootable) + two slots + data, in that order
    let table = tool(Command::new("sfdisk").args(["--dump", &img]));
    assert!(table.contains("label: dos"), "{table}");
    let parts: Vec<&str> = table.lines().filter(|l| l.contains(" : start=")).collect();
    assert_eq!(parts.len(), 4, "{table}");
    assert!(
        parts[0].contains("type=c") && parts[0].contains("bootable"),
        "{}",
        parts[0]
    );
    for p in &parts[1..] {
        assert!(p.contains("type=83"), "{p}");
    }
    let start = |line: &str| -> u64 {
        let s = line.split("start=").nth(1).unwrap();
        s.split(',').next().unwrap().trim().parse::<u64>().unwrap()
    };
    let fat = format!("{img}@@{}", start(parts[0]) * 512);

    // firmware, U-Boot, its script, device tree and config on the FAT root
    let root = tool(Command::new("mdir").args(["-b", "-i", &fat, "::/"]));
    for f in [
        "start4.elf",
        "fixup4.dat",
        "config.txt",
        "u-boot.bin",
        "boot.scr",
        "bcm2711-rpi-4-b.dtb",
        "bootstate.0",
        "bootstate.1",
    ] {
        assert!(
            root.lines().any(|l| l.ends_with(&format!("/{f}"))),
            "{f} missing on FAT:\n{root}"
        );
    }
    let config = tool(Command::new("mtype").args(["-i", &fat, "::/config.txt"]));
    for line in ["arm_64bit=1", "kernel=u-boot.bin", "enable_uart=1"] {
        assert!(
            config.lines().any(|l| l.trim() == line),
            "config.txt lacks {line}"
        );
    }
    let script = tool(Command::new("mtype").args(["-i", &fat, "::/boot.scr"]));
    assert!(
        script.contains("setenv console ttyS1,115200"),
        "boot.scr has no Pi console"
    );
    assert!(
        script.contains("BOOT_ORDER"),
        "boot.scr is not the A/B script"
    );

    // each slot directory has kernel, initramfs and the Pi 4 device tree
    for slot in ["slot-a", "slot-b"] {
        let files =
            tool(Command::new("mdir").args(["-/", "-b", "-i", &fat, &format!("::/{slot}")]));
        for f in ["Image", "initrd.img", "dtbs/broadcom/bcm2711-rpi-4-b.dtb"] {
            assert!(
                files.lines().any(|l| l.ends_with(&format!("/{slot}/{f}"))),
                "{slot}/{f} missing:\n{files}"
            );
        }
    }

    // a production image has no shell on any console (test images add hvc0)
    let inittab = tool(Command::new("unsquashfs").args([
        "-o",
        &(start(parts[1]) * 512).to_string(),
        "-cat",
        &img,
        "etc/inittab",
    ]));
    assert!(inittab.contains("run-outpostd"), "{inittab}");
    assert!(
        !inittab.contains("hvc0") && !inittab.contains("/bin/sh"),
        "{inittab}"
    );

    // a fresh image carries the same root file system in both slots
    let sq = built.dir.join("..").join("rpi4-check.squashfs");
    let dd = |skip: u64, out: &std::path::Path| {
        tool(Command::new("dd").args([
            format!("if={img}"),
            format!("of={}", out.display()),
            "bs=512".into(),
            format!("skip={skip}"),
            "count=8192".into(),
            "status=none".into(),
        ]))
    };
    let sq_b = built.dir.join("..").join("rpi4-check-b.squashfs");
    dd(start(parts[1]), &sq);
    dd(start(parts[2]), &sq_b);
    let a = std::fs::read(&sq).unwrap();
    let b = std::fs::read(&sq_b).unwrap();
    assert_eq!(&a[..4], b"hsqs", "slot A holds no squashfs");
    assert!(a == b, "slot A and slot B differ on a fresh image");
    let _ = std::fs::remove_file(&sq);
    let _ = std::fs::remove_file(&sq_b);
}
