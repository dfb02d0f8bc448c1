//! Installing good bundles into a file-backed partition and a boot directory.

mod common;

use std::fs;
use std::io::Cursor;

use common::*;
use outpost_bootctl::{BootControl, Slot, UbootFileEnv};
use outpost_bundle::{install, install_file, verify_header, PartKind};

fn assert_slot_holds_new_contents(f: &Fixture) {
    let part = fs::read(&f.target.rootfs).unwrap();
    assert_eq!(part.len(), PARTITION_LEN, "partition size must not change");
    assert_eq!(&part[..ROOTFS_LEN], &f.rootfs[..], "rootfs image");
    // Beyond the image the partition keeps whatever it had (squashfs ignores it).
    assert_eq!(
        &part[ROOTFS_LEN..],
        &pattern(100, PARTITION_LEN)[ROOTFS_LEN..]
    );

    let b = &f.target.boot_dir;
    assert_eq!(fs::read(b.join("Image")).unwrap(), f.kernel);
    assert_eq!(fs::read(b.join("initrd.img")).unwrap(), f.initrd);
    assert_eq!(fs::read(b.join("dtbs").join(DTB_NAME)).unwrap(), f.dtb);
    // The old Pi 400 tree is not in the bundle: it must not linger next to a new kernel.
    assert!(!b.join("dtbs/broadcom/bcm2711-rpi-400.dtb").exists());
    let leftovers: Vec<_> = walk(b)
        .into_iter()
        .filter(|p| p.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "staged files left: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn install_file_writes_and_verifies_every_part() {
    let f = Fixture::new();
    let bundle = f.good_bundle();
    let (trusted, current) = (trusted(), v("1.1.0"));
    let (m, report) = install_file(&bundle, &policy(&trusted, &current), &f.target).unwrap();

    assert_eq!(m.version, v("1.2.0"));
    assert_eq!(m.signer(), release_key().id());
    assert_slot_holds_new_contents(&f);

    let kinds: Vec<_> = report.parts.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            PartKind::Kernel,
            PartKind::Initrd,
            PartKind::Dtb,
            PartKind::Rootfs
        ]
    );
    let rootfs = &report.parts[3];
    assert_eq!(rootfs.destination, f.target.rootfs);
    assert_eq!(rootfs.sha256.to_string(), sha256_hex(&f.rootfs));
    assert_eq!(report.parts[0].sha256.to_string(), sha256_hex(&f.kernel));
    assert_eq!(
        report.removed,
        vec![f.target.boot_dir.join("dtbs/broadcom/bcm2711-rpi-400.dtb")]
    );
}

#[test]
fn streaming_install_from_a_slow_reader() {
    let f = Fixture::new();
    let bytes = fs::read(f.good_bundle()).unwrap();
    // 1000-byte reads: nothing may assume a read fills its buffer.
    let mut r = Trickle {
        inner: Cursor::new(bytes),
        n: 1000,
    };
    let trusted = trusted();
    let m = verify_header(&mut r, &trusted, BOARD, &v("1.0.0"), None).unwrap();
    let report = install(&mut r, &m, &f.target).unwrap();
    assert_eq!(report.version, v("1.2.0"));
    assert_slot_holds_new_contents(&f);
}

#[test]
fn install_into_a_slot_without_dtbs_creates_the_directories() {
    let f = Fixture::new();
    fs::remove_dir_all(f.target.boot_dir.join("dtbs")).unwrap();
    let bundle = f.good_bundle();
    let (trusted, current) = (trusted(), v("1.1.0"));
    install_file(&bundle, &policy(&trusted, &current), &f.target).unwrap();
    assert_eq!(
        fs::read(f.target.boot_dir.join("dtbs").join(DTB_NAME)).unwrap(),
        f.dtb
    );
}

#[test]
fn a_rootfs_that_exactly_fills_the_partition_fits() {
    let f = Fixture::new();
    f.make_old_slot(ROOTFS_LEN);
    let bundle = f.good_bundle();
    let (trusted, current) = (trusted(), v("1.1.0"));
    install_file(&bundle, &policy(&trusted, &current), &f.target).unwrap();
    assert_eq!(fs::read(&f.target.rootfs).unwrap(), f.rootfs);
}

/// The whole device flow against the real boot-state files: install into B while A
/// runs, `mark_active(B)`, and the boot script's logic now boots B.
#[test]
fn install_then_mark_active_boots_the_new_slot() {
    let f = Fixture::new();
    let boot = f.dir.path().join("boot");
    let cmdline = f.dir.path().join("cmdline");
    fs::write(
        &cmdline,
        "console=ttyAMA0 root=PARTUUID=x-02 ro outpost.slot=A\n",
    )
    .unwrap();
    let bootctl = UbootFileEnv::new(&boot).with_cmdline(&cmdline);
    bootctl.mark_good().unwrap();
    let target_slot = bootctl.booted().unwrap().other();
    assert_eq!(target_slot, Slot::B);
    assert_eq!(f.target.boot_dir, boot.join(target_slot.boot_dir()));

    let bundle = f.good_bundle();
    let (trusted, current) = (trusted(), v("1.1.0"));
    install_file(&bundle, &policy(&trusted, &current), &f.target).unwrap();
    assert_eq!(
        bootctl.primary().unwrap(),
        Slot::A,
        "install alone switches nothing"
    );

    bootctl.mark_active(target_slot).unwrap();
    assert_eq!(bootctl.primary().unwrap(), Slot::B);
    assert_eq!(
        bootctl.simulate_boot().unwrap(),
        outpost_bootctl::BootDecision::Boot(Slot::B)
    );
}

#[test]
fn a_second_install_over_the_first_works() {
    let f = Fixture::new();
    let (trusted, current) = (trusted(), v("1.1.0"));
    install_file(&f.good_bundle(), &policy(&trusted, &current), &f.target).unwrap();
    let newer = f.bundle("newer.bundle", &f.spec("1.3.0", None), Some(&release_key()));
    let (m, _) = install_file(&newer, &policy(&trusted, &v("1.2.0")), &f.target).unwrap();
    assert_eq!(m.version, v("1.3.0"));
    assert_slot_holds_new_contents(&f);
}
