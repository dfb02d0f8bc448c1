//! The rpi4 image, built by the same pipeline: what the Pi firmware and U-Boot need
//! is where they look for it (checked with the host's partition and FAT tools), and
//! the image boots in QEMU 10's `raspi4b` machine, switches slots and falls back.

use std::process::Command;
use std::time::{Duration, Instant};

use outpost_bootctl::{BootControl, Slot};
use outpost_system_tests::build_image;
use outpost_system_tests::lab::outpostctl;
use outpost_system_tests::rpi4::Rpi4Qemu;

/// One emulated boot step: the SD card reads at under 1 MiB/s in `raspi4b`.
const STEP: Duration = Duration::from_secs(240);

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
        script.contains("setenv console dt"),
        "boot.scr does not take the console from the firmware's device tree"
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

/// A self-signed CA certificate, as an operator's portal would have.
fn ca_pem(dir: &std::path::Path) -> std::path::PathBuf {
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.pem"));
    tool(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=outpost test portal CA",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    cert
}

/// The kernel command line U-Boot handed over, from the console.
fn cmdline(pi: &mut Rpi4Qemu) -> String {
    pi.wait_for(r"Kernel command line:", STEP)
        .expect("the kernel starts")
}

#[test]
fn rpi4_boots_in_qemu_raspi4b_switches_slots_and_falls_back() {
    let built = build_image("rpi4", "production").unwrap();
    let mut pi = Rpi4Qemu::new(&built).expect("an SD card from the image");
    let tmp = tempfile::tempdir().unwrap();
    let ca = ca_pem(tmp.path());
    let card = pi.card().display().to_string();
    outpostctl(&[
        "image",
        "provision",
        &card,
        "--portal",
        "https://10.0.2.100:443",
        "--token",
        "otk_0123456789abcdef0123",
        "--ca",
        &ca.display().to_string(),
        "--name",
        "pi4",
        "--site",
        "berlin",
    ]);

    // --- power on: slot A, from U-Boot to outpostd --------------------------------------
    let t0 = Instant::now();
    pi.power_on().unwrap();
    pi.wait_for(r"outpost-boot: booting slot A ", STEP)
        .expect("U-Boot runs the boot script and picks slot A");
    let line = cmdline(&mut pi);
    assert!(
        line.contains("outpost.slot=A") && line.contains("root=PARTUUID="),
        "{line}"
    );
    assert!(
        !line.contains("console="),
        "the console comes from the device tree, not the command line: {line}"
    );
    // The card is on QEMU's SDHCI: its driver and supplies came by modalias.
    let disk = pi
        .wait_for(r"outpost-initramfs: disk mmcblk", STEP)
        .expect("the initramfs finds the card by PARTUUID");
    println!("{disk}");
    pi.wait_for(r"outpost-initramfs: switching to slot A root", STEP)
        .expect("the read-only root of slot A");
    pi.wait_for(r"outpost: starting outpostd", STEP)
        .expect("outpostd starts on the Pi image");
    println!(
        "rpi4_qemu_power_on_to_outpostd_s={:.1}",
        t0.elapsed().as_secs_f64()
    );
    let phase = pi
        .wait_for(r"outpost\[pi4\]: phase provision (started|failed)", STEP)
        .expect("outpostd prints its phase on the console");
    println!("{phase}");

    // --- a forced switch to slot B, on trial with its last try -------------------------
    // The state after two failed trial boots of B, made by the product's model of the
    // boot script; the real U-Boot spends the last try.
    pi.change_boot_state(|env| {
        env.mark_active(Slot::B).map_err(|e| e.to_string())?;
        for _ in 0..2 {
            env.simulate_boot().map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .unwrap();
    pi.power_on().unwrap();
    let booting = pi
        .wait_for(r"outpost-boot: booting slot ", STEP)
        .expect("U-Boot boots a slot");
    assert!(
        booting.contains("booting slot B (BOOT_A_LEFT=3 BOOT_B_LEFT=0)"),
        "the last try of B is spent: {booting}"
    );
    pi.wait_for(r"outpost-boot: slot B is on trial", STEP)
        .expect("slot B is booted on trial");
    let line = cmdline(&mut pi);
    assert!(
        line.contains("outpost.slot=B") && line.contains("outpost.trial=1"),
        "{line}"
    );
    pi.wait_for(r"outpost-initramfs: switching to slot B root", STEP)
        .expect("the read-only root of slot B");
    pi.wait_for(r"outpost: starting outpostd", STEP)
        .expect("outpostd starts from slot B");

    // --- power cut before B was marked good: B has no tries left, A boots -------------
    pi.power_on().unwrap();
    pi.wait_for(r"outpost-boot: slot B has no tries left, skipped", STEP)
        .expect("U-Boot skips the slot whose tries ran out");
    pi.wait_for(r"outpost-boot: booting slot A ", STEP)
        .expect("and falls back to slot A");
    let line = cmdline(&mut pi);
    assert!(line.contains("outpost.slot=A"), "{line}");
    assert!(!line.contains("outpost.trial=1"), "{line}");
    pi.wait_for(r"outpost-initramfs: switching to slot A root", STEP)
        .expect("slot A's root again");
}
