//! Every refusal leaves the target slot byte for byte as it was.

mod common;

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use common::*;
use outpost_bundle::{
    install, install_file, verify_header, InstallError, Policy, Refusal, SlotState, Version,
};

/// Installs `bundle` with `policy` and asserts: refused, slot unchanged, reported as
/// untouched. Returns the refusal for the caller to check the reason.
fn refused(f: &Fixture, bundle: &Path, policy: &Policy) -> Refusal {
    let before = f.snapshot();
    let err = install_file(bundle, policy, &f.target).expect_err("bundle was accepted");
    assert_eq!(err.slot_state(), SlotState::Untouched, "{err}");
    assert!(
        f.snapshot() == before,
        "slot changed although the bundle was refused: {err}"
    );
    match err {
        InstallError::Refused { refusal, .. } => refusal,
        other => panic!("expected a refusal, got {other}"),
    }
}

fn write_variant(f: &Fixture, name: &str, bytes: &[u8]) -> PathBuf {
    let p = f.dir.path().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn unsigned() {
    let f = Fixture::new();
    let b = f.bundle("u.bundle", &f.spec("1.2.0", None), None);
    let (t, cur) = (trusted(), v("1.1.0"));
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::Unsigned
    ));
}

#[test]
fn signed_by_an_untrusted_key() {
    let f = Fixture::new();
    let b = f.bundle("o.bundle", &f.spec("1.2.0", None), Some(&other_key()));
    let (t, cur) = (trusted(), v("1.1.0"));
    match refused(&f, &b, &policy(&t, &cur)) {
        Refusal::UntrustedKey { key } => assert_eq!(key, other_key().id().to_string()),
        r => panic!("{r}"),
    }
}

#[test]
fn tampered_manifest() {
    let f = Fixture::new();
    let mut bytes = fs::read(f.good_bundle()).unwrap();
    let l = layout(&bytes);
    let manifest = &mut bytes[l.manifest_start..l.payload_start];
    let text = String::from_utf8(manifest.to_vec()).unwrap();
    // Same length, so only the signature can tell: raise the version.
    let at = text.find("\"1.2.0\"").unwrap() + 1;
    manifest[at] = b'9';
    let b = write_variant(&f, "t.bundle", &bytes);
    let (t, cur) = (trusted(), v("1.1.0"));
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::BadSignature { .. }
    ));
}

#[test]
fn tampered_signature_or_signer() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let (t, cur) = (trusted(), v("1.1.0"));

    let mut sig = good.clone();
    sig[80] ^= 0x01;
    let b = write_variant(&f, "s.bundle", &sig);
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::BadSignature { .. }
    ));

    // An untrusted key's signature presented under the trusted key's name.
    let other = f.bundle("o.bundle", &f.spec("1.2.0", None), Some(&other_key()));
    let mut forged = fs::read(other).unwrap();
    forged[16..48].copy_from_slice(&release_key().id().0);
    let b = write_variant(&f, "f.bundle", &forged);
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::BadSignature { .. }
    ));

    // Clearing the signed flag does not make an acceptable unsigned bundle either.
    let mut flag = good;
    flag[11] = 0;
    let b = write_variant(&f, "g.bundle", &flag);
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::MalformedHeader { .. }
    ));
}

#[test]
fn tampered_parts() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let l = layout(&good);
    let (t, cur) = (trusted(), v("1.1.0"));
    for (at, part) in [
        (l.kernel.start + 77_777, "Image"),
        (l.rootfs.start + 5, "rootfs"),
        (l.rootfs.end - 1, "rootfs"),
    ] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x40;
        let b = write_variant(&f, "p.bundle", &bytes);
        match refused(&f, &b, &policy(&t, &cur)) {
            Refusal::PartMismatch { part: p, .. } => assert_eq!(p, part),
            r => panic!("byte {at}: {r}"),
        }
    }
}

#[test]
fn wrong_board() {
    let f = Fixture::new();
    let mut spec = f.spec("1.2.0", None);
    spec.board = "outpost,qemu-arm64".into();
    let b = f.bundle("q.bundle", &spec, Some(&release_key()));
    let (t, cur) = (trusted(), v("1.1.0"));
    match refused(&f, &b, &policy(&t, &cur)) {
        Refusal::WrongBoard { bundle, device } => {
            assert_eq!(bundle, "outpost,qemu-arm64");
            assert_eq!(device, BOARD);
        }
        r => panic!("{r}"),
    }
}

#[test]
fn downgrades_and_update_paths() {
    let f = Fixture::new();
    let b = f.good_bundle(); // 1.2.0, min_version 1.0.0
    let t = trusted();

    for current in ["1.2.0", "1.3.0", "2.0.0"] {
        let cur = v(current);
        assert!(
            matches!(refused(&f, &b, &policy(&t, &cur)), Refusal::NotNewer { .. }),
            "current {current}"
        );
    }
    // A pre-release of the same version is older, so the release is an upgrade...
    let cur = v("1.2.0-rc.1");
    let tr = trusted();
    assert!(install_file(&b, &policy(&tr, &cur), &f.target).is_ok());
    f.make_old_slot(PARTITION_LEN);

    // ...but not below the device's floor, even when the running slot is older
    // (it fell back to an old slot after the newer one died).
    let cur = v("1.0.0");
    let floor = v("1.5.0");
    let p = Policy {
        floor: Some(&floor),
        ..policy(&t, &cur)
    };
    assert!(matches!(refused(&f, &b, &p), Refusal::BelowFloor { .. }));

    // The bundle may only replace 1.0.0 or later.
    let cur = v("0.9.3");
    match refused(&f, &b, &policy(&t, &cur)) {
        Refusal::CurrentTooOld { min_version, .. } => assert_eq!(min_version, v("1.0.0")),
        r => panic!("{r}"),
    }
}

#[test]
fn truncated_at_many_offsets() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let l = layout(&good);
    let (t, cur) = (trusted(), v("1.1.0"));
    for len in [
        0,
        1,
        7,
        64,
        127,
        128,
        129,
        l.payload_start - 1,
        l.payload_start,
        l.kernel.start + 1000,
        l.kernel.end,
        l.rootfs.start,
        l.rootfs.start + 4095,
        l.rootfs.start + 300_000,
        good.len() - 1,
    ] {
        let b = write_variant(&f, "cut.bundle", &good[..len]);
        match refused(&f, &b, &policy(&t, &cur)) {
            Refusal::Truncated { at, .. } => assert_eq!(at, len as u64, "cut at {len}"),
            r => panic!("cut at {len}: {r}"),
        }
    }
}

#[test]
fn trailing_bytes() {
    let f = Fixture::new();
    let mut bytes = fs::read(f.good_bundle()).unwrap();
    bytes.extend_from_slice(b"junk");
    let b = write_variant(&f, "j.bundle", &bytes);
    let (t, cur) = (trusted(), v("1.1.0"));
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::TrailingData { extra: 4 }
    ));
}

#[test]
fn rootfs_larger_than_the_partition() {
    let f = Fixture::new();
    f.make_old_slot(ROOTFS_LEN - 1);
    let b = f.good_bundle();
    let (t, cur) = (trusted(), v("1.1.0"));
    match refused(&f, &b, &policy(&t, &cur)) {
        Refusal::TooLarge { size, capacity, .. } => {
            assert_eq!(size, ROOTFS_LEN as u64);
            assert_eq!(capacity, ROOTFS_LEN as u64 - 1);
        }
        r => panic!("{r}"),
    }
}

#[test]
fn not_a_bundle() {
    let f = Fixture::new();
    let b = write_variant(&f, "x.bundle", &pattern(9, 4096));
    let (t, cur) = (trusted(), v("1.1.0"));
    assert!(matches!(
        refused(&f, &b, &policy(&t, &cur)),
        Refusal::NotABundle
    ));
}

// --- streaming without the whole file at hand ------------------------------------

/// Streams `bytes` through verify_header + install, as a device installing straight
/// from the network would.
fn stream(f: &Fixture, bytes: Vec<u8>) -> InstallError {
    let trusted = trusted();
    let mut r = Cursor::new(bytes);
    let m = verify_header(&mut r, &trusted, BOARD, &Version::new(1, 1, 0), None).unwrap();
    install(&mut r, &m, &f.target).expect_err("install succeeded")
}

#[test]
fn streaming_a_bad_boot_file_leaves_the_slot_untouched() {
    let f = Fixture::new();
    let mut bytes = fs::read(f.good_bundle()).unwrap();
    let l = layout(&bytes);
    bytes[l.kernel.end - 1] ^= 1;
    let before = f.snapshot();
    let err = stream(&f, bytes.clone());
    assert_eq!(err.slot_state(), SlotState::Untouched);
    assert!(matches!(
        err.refusal(),
        Some(Refusal::PartMismatch { part, .. }) if part == "Image"
    ));
    assert!(f.snapshot() == before);

    let err = stream(&f, bytes[..l.kernel.start + 10].to_vec());
    assert!(matches!(err.refusal(), Some(Refusal::Truncated { .. })));
    assert!(f.snapshot() == before);
}

#[test]
fn streaming_a_bad_rootfs_invalidates_the_slot() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let l = layout(&good);
    let boot_before: Vec<_> = f
        .snapshot()
        .into_iter()
        .filter(|(p, _)| *p != f.target.rootfs)
        .collect();

    let mut tampered = good.clone();
    tampered[l.rootfs.end - 10] ^= 1;
    let truncated = good[..l.rootfs.start + 500_000].to_vec();
    for bytes in [tampered, truncated] {
        let err = stream(&f, bytes);
        assert_eq!(err.slot_state(), SlotState::Invalidated, "{err}");
        let part = fs::read(&f.target.rootfs).unwrap();
        // No superblock: the initramfs cannot mount this, so the slot cannot boot.
        assert!(part[..4096].iter().all(|&b| b == 0));
        let boot_after: Vec<_> = f
            .snapshot()
            .into_iter()
            .filter(|(p, _)| *p != f.target.rootfs)
            .collect();
        assert!(boot_after == boot_before, "boot files changed: {err}");
        f.make_old_slot(PARTITION_LEN);
    }
}
