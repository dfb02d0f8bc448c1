//! The layer's crate list (outpost-crates.inc) is what yocto/scripts/update-crates
//! makes from Cargo.lock, and the check notices a lock that changed without it.

use std::fs;
use std::process::Command;

use outpost_yocto_tests::{layer_dir, repo_root};

const INC: &str = "recipes-outpost/outpostd/outpost-crates.inc";

fn update_crates(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg(repo_root().join("yocto/scripts/update-crates"))
        .args(args)
        .output()
        .expect("running yocto/scripts/update-crates (python3 >= 3.11)")
}

#[test]
fn committed_crate_list_matches_cargo_lock() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("crates.inc");
    let lock = repo_root().join("Cargo.lock");
    let run = update_crates(&[
        "--lock",
        lock.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(run.status.success(), "update-crates failed: {run:?}");
    let generated = fs::read_to_string(&out).expect("generated list");
    let committed = fs::read_to_string(layer_dir().join(INC)).expect("committed list");
    assert!(
        generated == committed,
        "{INC} is stale: run yocto/scripts/update-crates after changing Cargo.lock"
    );
    let check = update_crates(&["--check"]);
    assert!(check.status.success(), "update-crates --check: {check:?}");
    // Every crates.io package of the lock, each with its checksum.
    let lock_text = fs::read_to_string(&lock).expect("Cargo.lock");
    let registry = lock_text.matches("source = \"registry+").count();
    assert_eq!(
        generated.matches("    crate://crates.io/").count(),
        registry
    );
    assert_eq!(generated.matches(".sha256sum] = \"").count(), registry);
}

#[test]
fn check_fails_when_a_crate_is_added_to_the_lock() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let lock = tmp.path().join("Cargo.lock");
    let mut text = fs::read_to_string(repo_root().join("Cargo.lock")).expect("Cargo.lock");
    text.push_str(
        "\n[[package]]\nname = \"zz-added-crate\"\nversion = \"1.0.0\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\
         checksum = \"0000000000000000000000000000000000000000000000000000000000000001\"\n",
    );
    fs::write(&lock, text).expect("writing the changed lock");
    let inc = layer_dir().join(INC);
    let run = update_crates(&[
        "--lock",
        lock.to_str().expect("utf-8 path"),
        "--out",
        inc.to_str().expect("utf-8 path"),
        "--check",
    ]);
    assert_eq!(
        run.status.code(),
        Some(1),
        "a changed lock must fail the check: {run:?}"
    );
    assert!(String::from_utf8_lossy(&run.stderr).contains("update-crates"));
    // And regenerating picks the new crate up.
    let out = tmp.path().join("crates.inc");
    let regen = update_crates(&[
        "--lock",
        lock.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(regen.status.success(), "{regen:?}");
    let generated = fs::read_to_string(&out).expect("generated list");
    assert!(generated.contains("crate://crates.io/zz-added-crate/1.0.0"));
    assert!(generated.contains("SRC_URI[zz-added-crate-1.0.0.sha256sum]"));
}
