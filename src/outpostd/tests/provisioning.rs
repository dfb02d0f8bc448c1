//! The real binary on a broken `outpost.toml`: one console line naming the field, a
//! non-zero exit, and no network I/O or data-dir writes before the file is valid.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn outpostd(config: &std::path::Path, data: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpostd"))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--config-error-delay", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Safety net, not a timing assertion: a daemon that got past provisioning would run
    // forever; stop it so the test fails instead of hanging.
    let give_up = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > give_up {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

const GOOD: &str = "[portal]\nurl = \"https://127.0.0.1:9\"\nca_cert = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\n\
[sensor]\nname = \"branch-1\"\nsite = \"berlin\"\ntoken = \"otk_0123456789abcdef\"\n";

#[test]
fn missing_field_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(&config, GOOD.replace("site = \"berlin\"\n", "")).unwrap();
    let data = dir.path().join("data");
    let out = outpostd(&config, &data);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        "outpost: phase provision failed: outpost.toml: missing field `sensor.site`\n"
    );
    assert!(
        !data.exists(),
        "nothing is written before the file is valid"
    );
}

#[test]
fn bad_token_is_named_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        GOOD.replace("otk_0123456789abcdef", "otk secret value"),
    )
    .unwrap();
    let out = outpostd(&config, &dir.path().join("data"));
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("`sensor.token`"), "{all}");
    assert!(!all.contains("secret value"), "{all}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = outpostd(&dir.path().join("outpost.toml"), &dir.path().join("data"));
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("outpost: phase provision failed: "),
        "{stdout}"
    );
    assert!(stdout.contains("outpost.toml: cannot read"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn unusable_ca_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    // Looks like PEM to the file parser, but is no certificate.
    std::fs::write(&config, GOOD).unwrap();
    let data = dir.path().join("data");
    let out = outpostd(&config, &data);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("phase provision failed"), "{stdout}");
    assert!(stdout.contains("`portal.ca_cert`"), "{stdout}");
    assert!(
        !data.exists(),
        "no key is generated for a sensor that cannot start"
    );
}
