//! `outpostctl image provision` on a real MBR+FAT image, read back with mtools and parsed
//! the way the sensor parses it at boot.

use std::path::Path;
use std::process::Command;

use outpost_wire::provision::Provision;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n";

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("run tool (scripts/setup installs fdisk, dosfstools, mtools)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 40 MiB disk: MBR, partition 1 FAT at 1 MiB.
fn make_image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let part = dir.join("p1.img");
    sh(Command::new("truncate").args(["-s", "40M"]).arg(&img));
    sh(Command::new("sh").arg("-c").arg(format!(
        "echo 'start=2048, size=61440, type=c' | sfdisk -q {}",
        img.display()
    )));
    sh(Command::new("truncate").args(["-s", "30M"]).arg(&part));
    sh(Command::new("mkfs.vfat")
        .args(["-n", "OUTPOSTBOOT"])
        .arg(&part));
    sh(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=512", "seek=2048", "conv=notrunc", "status=none"]));
    img
}

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpostctl"))
}

#[test]
fn provision_writes_a_file_the_sensor_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, PEM).unwrap();
    let out = ctl()
        .arg("image")
        .arg("provision")
        .arg(&img)
        .args([
            "--portal",
            "https://10.0.2.100:443",
            "--token",
            "otk_0123456789abcdef0123",
        ])
        .arg("--ca")
        .arg(&ca)
        .args([
            "--name",
            "branch-9",
            "--site",
            "berlin",
            "--scope",
            "10.9.0.0/24",
            "--feed-min-nasl",
            "5",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = sh(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@1M", img.display()))
        .arg("::outpost.toml"));
    let p = Provision::parse(&text, |_| Err("none".into())).expect("the sensor accepts the file");
    assert_eq!(p.name, "branch-9");
    assert_eq!(p.site, "berlin");
    assert_eq!(p.scope, vec!["10.9.0.0/24".to_string()]);
    assert_eq!(p.feed.min_nasl, 5);
    assert_eq!(p.token.expose(), "otk_0123456789abcdef0123");
}

#[test]
fn invalid_settings_are_named_and_the_image_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path());
    let before = std::fs::read(&img).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, PEM).unwrap();
    let out = ctl()
        .arg("image")
        .arg("provision")
        .arg(&img)
        .args([
            "--portal",
            "http://plain.example",
            "--token",
            "otk_0123456789abcdef0123",
        ])
        .arg("--ca")
        .arg(&ca)
        .args(["--site", "berlin"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("portal.url"));
    assert_eq!(before, std::fs::read(&img).unwrap());
}
