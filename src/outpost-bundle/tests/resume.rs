//! Resuming interrupted downloads.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use common::*;
use outpost_bundle::{check_bundle_file, install_file, plan_resume, Refusal};

#[test]
fn offsets_for_partial_files() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let l = layout(&good);
    let total = good.len() as u64;
    let part = f.dir.path().join("download.part");
    let (t, cur) = (trusted(), v("1.1.0"));
    let p = policy(&t, &cur);

    // Nothing yet.
    let plan = plan_resume(&part, total, &p).unwrap();
    assert_eq!(plan.offset, 0);
    assert!(plan.manifest.is_none() && !plan.complete);

    // Inside the header or the manifest: too early to verify, resume where it stopped.
    for len in [5, 128, l.payload_start - 1] {
        fs::write(&part, &good[..len]).unwrap();
        let plan = plan_resume(&part, total, &p).unwrap();
        assert_eq!(plan.offset, len as u64);
        assert!(plan.manifest.is_none());
    }

    // Head complete: verified; complete parts hashed; resume at the end.
    for len in [l.payload_start, l.kernel.end + 10, l.rootfs.start + 1234] {
        fs::write(&part, &good[..len]).unwrap();
        let plan = plan_resume(&part, total, &p).unwrap();
        assert_eq!(plan.offset, len as u64);
        let m = plan.manifest.expect("head verified");
        assert_eq!(m.version, v("1.2.0"));
        assert!(!plan.complete && plan.discarded.is_none());
    }

    // All there.
    fs::write(&part, &good).unwrap();
    let plan = plan_resume(&part, total, &p).unwrap();
    assert!(plan.complete);
    assert_eq!(plan.offset, total);
}

#[test]
fn a_corrupt_complete_part_is_fetched_again() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let l = layout(&good);
    let part = f.dir.path().join("download.part");
    let (t, cur) = (trusted(), v("1.1.0"));
    let p = policy(&t, &cur);

    let mut bytes = good[..l.rootfs.start + 100].to_vec();
    bytes[l.kernel.start + 3] ^= 0xff;
    fs::write(&part, &bytes).unwrap();
    let plan = plan_resume(&part, good.len() as u64, &p).unwrap();
    assert_eq!(plan.offset, l.kernel.start as u64);
    assert!(plan.discarded.as_deref().unwrap().contains("Image"));

    plan.apply(&part).unwrap();
    assert_eq!(fs::metadata(&part).unwrap().len(), l.kernel.start as u64);
    let mut w = OpenOptions::new().append(true).open(&part).unwrap();
    w.write_all(&good[l.kernel.start..]).unwrap();
    drop(w);
    assert!(check_bundle_file(&part, &p).is_ok());
}

#[test]
fn files_that_cannot_be_continued() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let total = good.len() as u64;
    let part = f.dir.path().join("download.part");
    let (t, cur) = (trusted(), v("1.1.0"));
    let p = policy(&t, &cur);

    // Longer than announced: start over.
    let mut long = good.clone();
    long.push(0);
    fs::write(&part, &long).unwrap();
    let plan = plan_resume(&part, total, &p).unwrap();
    assert_eq!(plan.offset, 0);
    assert!(plan.discarded.is_some());
    plan.apply(&part).unwrap();
    assert_eq!(fs::metadata(&part).unwrap().len(), 0);

    // Some other file.
    fs::write(&part, b"<html>").unwrap();
    assert!(matches!(
        plan_resume(&part, total, &p),
        Err(Refusal::NotABundle)
    ));

    // The server announced a different size than the signed manifest implies.
    fs::write(&part, &good[..good.len() - 10]).unwrap();
    assert!(matches!(
        plan_resume(&part, total + 1, &p),
        Err(Refusal::SizeMismatch { .. })
    ));

    // A bundle this device would refuse is not worth downloading further.
    fs::write(&part, &good[..good.len() / 2]).unwrap();
    let newer = v("1.4.0");
    assert!(matches!(
        plan_resume(&part, total, &policy(&t, &newer)),
        Err(Refusal::NotNewer { .. })
    ));
    let untrusting =
        outpost_bundle::TrustedKeys::parse(&other_key().public_line(""), std::path::Path::new("k"))
            .unwrap();
    assert!(matches!(
        plan_resume(&part, total, &policy(&untrusting, &cur)),
        Err(Refusal::UntrustedKey { .. })
    ));
}

/// A download cut several times, resumed each time from the planned offset, then
/// installed.
#[test]
fn interrupted_download_resumes_to_a_good_install() {
    let f = Fixture::new();
    let good = fs::read(f.good_bundle()).unwrap();
    let total = good.len() as u64;
    let part = f.dir.path().join("download.part");
    let (t, cur) = (trusted(), v("1.1.0"));
    let p = policy(&t, &cur);

    let mut cuts = vec![3usize, 200, 1000, 170_000, 400_000, 900_000];
    cuts.retain(|&c| c < good.len());
    for cut in cuts.into_iter().chain([good.len()]) {
        let plan = plan_resume(&part, total, &p).unwrap();
        plan.apply(&part).unwrap();
        // "Range: bytes=offset-": the server sends from there; the link drops at `cut`.
        let mut w = OpenOptions::new().append(true).open(&part).unwrap();
        w.write_all(&good[plan.offset as usize..cut]).unwrap();
    }
    let plan = plan_resume(&part, total, &p).unwrap();
    assert!(plan.complete);
    install_file(&part, &p, &f.target).unwrap();
    assert_eq!(
        fs::read(f.target.boot_dir.join("initrd.img")).unwrap(),
        f.initrd
    );
}
