//! Host tooling: building and signing.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use outpost_bundle::{
    build_bundle, check_bundle_file, parse_dtb_arg, sign_bundle, BuildError, Manifest,
    RawBundleHead, Refusal,
};

#[test]
fn built_bundle_has_the_documented_layout() {
    let f = Fixture::new();
    let b = f.bundle("b.bundle", &f.spec("1.2.0", Some("1.0.0")), None);
    let bytes = fs::read(&b).unwrap();
    assert_eq!(&bytes[..8], b"OUTPOSTB");
    let head = RawBundleHead::read(&mut &bytes[..]).unwrap();
    assert!(head.header.seal.is_none());
    let m = Manifest::from_bytes(&head.manifest_bytes).unwrap();
    assert_eq!(m.compatible, BOARD);
    assert_eq!(m.min_version, Some(v("1.0.0")));
    let names: Vec<_> = m.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["Image", "initrd.img", DTB_NAME, "rootfs"]);
    assert_eq!(m.parts[3].sha256.to_string(), sha256_hex(&f.rootfs));

    // header, manifest, then the parts back to back
    let l = layout(&bytes);
    let mut payload = Vec::new();
    for p in [&f.kernel, &f.initrd, &f.dtb, &f.rootfs] {
        payload.extend_from_slice(p);
    }
    assert_eq!(&bytes[l.payload_start..], &payload[..]);
    assert!(!f.dir.path().join("b.bundle.tmp").exists());
}

#[test]
fn signing_is_in_place_and_can_be_redone() {
    let f = Fixture::new();
    let b = f.bundle("b.bundle", &f.spec("1.2.0", None), None);
    let unsigned = fs::read(&b).unwrap();

    let first = sign_bundle(&b, &other_key()).unwrap();
    assert!(first.replaced.is_none());
    let second = sign_bundle(&b, &release_key()).unwrap();
    assert_eq!(second.replaced, Some(other_key().id()));
    assert_eq!(second.signer, release_key().id());

    let signed = fs::read(&b).unwrap();
    assert_eq!(signed.len(), unsigned.len());
    // only the flags, signer and signature changed
    assert_eq!(&signed[..10], &unsigned[..10]);
    assert_eq!(&signed[112..], &unsigned[112..]);

    let (t, cur) = (trusted(), v("1.0.0"));
    let m = check_bundle_file(&b, &policy(&t, &cur)).unwrap();
    assert_eq!(m.signer(), release_key().id());
}

#[test]
fn refuses_to_sign_a_broken_bundle() {
    let f = Fixture::new();
    let b = f.bundle("b.bundle", &f.spec("1.2.0", None), None);
    let good = fs::read(&b).unwrap();

    fs::write(&b, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        sign_bundle(&b, &release_key()),
        Err(BuildError::NotSignable {
            refusal: Refusal::Truncated { .. },
            ..
        })
    ));

    let mut tampered = good.clone();
    let l = layout(&tampered);
    tampered[l.kernel.start] ^= 1;
    fs::write(&b, &tampered).unwrap();
    assert!(matches!(
        sign_bundle(&b, &release_key()),
        Err(BuildError::NotSignable {
            refusal: Refusal::PartMismatch { .. },
            ..
        })
    ));
    // and nothing was written into it
    assert_eq!(fs::read(&b).unwrap(), tampered);
}

#[test]
fn build_refuses_bad_input() {
    let f = Fixture::new();
    let mut spec = f.spec("1.2.0", None);
    spec.kernel = f.dir.path().join("missing");
    assert!(matches!(
        build_bundle(&spec, &f.dir.path().join("x.bundle")),
        Err(BuildError::Io { .. })
    ));

    let mut spec = f.spec("1.2.0", Some("2.0.0"));
    assert!(matches!(
        build_bundle(&spec, &f.dir.path().join("x.bundle")),
        Err(BuildError::Invalid(_))
    ));
    spec.min_version = None;
    spec.board = "Outpost RPi 4".into();
    assert!(matches!(
        build_bundle(&spec, &f.dir.path().join("x.bundle")),
        Err(BuildError::Invalid(_))
    ));
    let empty = f.dir.path().join("empty");
    fs::write(&empty, b"").unwrap();
    let mut spec = f.spec("1.2.0", None);
    spec.initrd = empty;
    assert!(build_bundle(&spec, &f.dir.path().join("x.bundle")).is_err());
    assert!(!f.dir.path().join("x.bundle").exists());
    assert!(!f.dir.path().join("x.bundle.tmp").exists());
}

#[test]
fn dtb_arguments() {
    assert_eq!(
        parse_dtb_arg("broadcom/bcm2711-rpi-4-b.dtb=/k/dtbs/broadcom/bcm2711-rpi-4-b.dtb").unwrap(),
        (
            "broadcom/bcm2711-rpi-4-b.dtb".to_string(),
            PathBuf::from("/k/dtbs/broadcom/bcm2711-rpi-4-b.dtb")
        )
    );
    assert_eq!(
        parse_dtb_arg("/k/bcm2711-rpi-4-b.dtb").unwrap().0,
        "bcm2711-rpi-4-b.dtb"
    );
    assert!(parse_dtb_arg("../x.dtb=/k/x.dtb").is_err());
    assert!(parse_dtb_arg("/k/config.txt").is_err());
}
