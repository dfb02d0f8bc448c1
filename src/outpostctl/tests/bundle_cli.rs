//! `outpostctl bundle keygen/build/sign/verify`, run as processes like a release
//! engineer would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn outpostctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .args(args)
        // No portal configured: bundle commands must not need one.
        .env_remove("OUTPOST_PORTAL_DIR")
        .env_remove("OUTPOST_PORTAL")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = outpostctl(args);
    assert!(
        out.status.success(),
        "outpostctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns stdout + stderr.
fn fails(args: &[&str]) -> String {
    let out = outpostctl(args);
    assert!(!out.status.success(), "outpostctl {args:?} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Inputs {
    rootfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    dtb: PathBuf,
}

fn inputs(dir: &Path) -> Inputs {
    let i = Inputs {
        rootfs: dir.join("rootfs.squashfs"),
        kernel: dir.join("Image"),
        initrd: dir.join("initrd.img"),
        dtb: dir.join("bcm2711-rpi-4-b.dtb"),
    };
    fs::write(&i.rootfs, vec![0x5a; 300_000]).unwrap();
    fs::write(&i.kernel, vec![0x4b; 70_000]).unwrap();
    fs::write(&i.initrd, vec![0x49; 30_000]).unwrap();
    fs::write(&i.dtb, vec![0xd0; 2_000]).unwrap();
    i
}

fn build(i: &Inputs, board: &str, version: &str, out: &Path) -> String {
    let dtb = format!("broadcom/bcm2711-rpi-4-b.dtb={}", p(&i.dtb));
    ok(&[
        "bundle",
        "build",
        "--board",
        board,
        "--version",
        version,
        "--min-version",
        "1.0.0",
        "--rootfs",
        p(&i.rootfs),
        "--kernel",
        p(&i.kernel),
        "--initrd",
        p(&i.initrd),
        "--dtb",
        &dtb,
        "--out",
        p(out),
    ])
}

fn verify_args<'a>(bundle: &'a str, trusted: &'a str, current: &'a str) -> Vec<&'a str> {
    vec![
        "bundle",
        "verify",
        bundle,
        "--trusted",
        trusted,
        "--board",
        "outpost,rpi4",
        "--current-version",
        current,
    ]
}

#[test]
fn keygen_build_sign_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("release.key");
    let keygen = ok(&["bundle", "keygen", "--out", p(&key), "--comment", "release"]);
    let pub_key = d.join("release.key.pub");
    let pub_text = fs::read_to_string(&pub_key).unwrap();
    assert!(pub_text.starts_with("outpost-ed25519 "), "{pub_text}");
    assert!(keygen.contains(pub_text.trim()), "{keygen}");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second keygen must not overwrite the key.
    assert!(fails(&["bundle", "keygen", "--out", p(&key)]).contains("release.key"));

    let i = inputs(d);
    let bundle = d.join("outpost-rpi4-1.2.0.bundle");
    let built = build(&i, "outpost,rpi4", "1.2.0", &bundle);
    assert!(built.contains("unsigned"), "{built}");
    assert!(built.contains("broadcom/bcm2711-rpi-4-b.dtb"), "{built}");

    // Unsigned: refused, exit status non-zero, manifest still shown.
    let out = fails(&verify_args(p(&bundle), p(&pub_key), "1.1.0"));
    assert!(out.contains("REFUSED: unsigned bundle"), "{out}");
    assert!(out.contains("1.2.0"), "{out}");

    let signed = ok(&["bundle", "sign", p(&bundle), "--key", p(&key)]);
    assert!(signed.contains("signed"), "{signed}");

    let out = ok(&verify_args(p(&bundle), p(&pub_key), "1.1.0"));
    assert!(out.contains("verdict:   OK"), "{out}");
    assert!(out.contains("rootfs"), "{out}");
    assert!(out.contains("board:     outpost,rpi4"), "{out}");

    // JSON for scripts.
    let mut args = verify_args(p(&bundle), p(&pub_key), "1.1.0");
    args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["manifest"]["version"], "1.2.0");
    assert_eq!(v["manifest"]["parts"].as_array().unwrap().len(), 4);

    // Policy refusals.
    let out = fails(&verify_args(p(&bundle), p(&pub_key), "1.2.0"));
    assert!(out.contains("downgrade refused"), "{out}");
    let mut args = verify_args(p(&bundle), p(&pub_key), "1.1.0");
    args[6] = "outpost,qemu-arm64";
    let out = fails(&args);
    assert!(out.contains("is for board"), "{out}");

    // Tampering with a part after signing.
    let mut bytes = fs::read(&bundle).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = d.join("tampered.bundle");
    fs::write(&tampered, &bytes).unwrap();
    let out = fails(&verify_args(p(&tampered), p(&pub_key), "1.1.0"));
    assert!(out.contains("part \"rootfs\" is tampered"), "{out}");

    // A key the device does not trust.
    let other = d.join("other.key");
    ok(&["bundle", "keygen", "--out", p(&other)]);
    let out = fails(&verify_args(
        p(&bundle),
        p(&d.join("other.key.pub")),
        "1.1.0",
    ));
    assert!(out.contains("not a trusted key"), "{out}");
}

#[test]
fn key_rotation_with_several_trusted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (d.join("old.key"), d.join("new.key"));
    ok(&["bundle", "keygen", "--out", p(&old)]);
    ok(&["bundle", "keygen", "--out", p(&new)]);
    let trusted = d.join("trusted.pub");
    let both = fs::read_to_string(d.join("old.key.pub")).unwrap()
        + &fs::read_to_string(d.join("new.key.pub")).unwrap();
    fs::write(&trusted, format!("# during rotation\n{both}")).unwrap();

    let i = inputs(d);
    let bundle = d.join("b.bundle");
    build(&i, "outpost,rpi4", "2.0.0", &bundle);
    for key in [&old, &new] {
        ok(&["bundle", "sign", p(&bundle), "--key", p(key)]);
        ok(&verify_args(p(&bundle), p(&trusted), "1.5.0"));
    }
}

#[test]
fn build_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let i = inputs(d);
    let out = d.join("x.bundle");
    let base = [
        "bundle",
        "build",
        "--board",
        "outpost,rpi4",
        "--rootfs",
        p(&i.rootfs),
        "--kernel",
        p(&i.kernel),
        "--initrd",
        p(&i.initrd),
        "--out",
        p(&out),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        fails(&a)
    };
    assert!(with(&["--version", "1.2"]).contains("1.2"));
    assert!(with(&["--version", "1.2.0", "--min-version", "2.0.0"]).contains("min_version"));
    assert!(
        with(&["--version", "1.2.0", "--dtb", "../../x.dtb=/etc/passwd"]).contains("device tree")
    );
    assert!(!out.exists());
}
