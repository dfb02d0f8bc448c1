//! A/B updates in QEMU, end to end, on one machine: bundles of the build's slot (the good
//! one's release file at 0.2.0, the bad one without outpostd), published and assigned at
//! the portal, downloaded through the tunnel, installed into
//! the inactive slot, tried by U-Boot and committed by the health check; bundles refused
//! before they touch anything; and a bad update rolled back.

use std::path::Path;
use std::time::Duration;

use outpost_e2e_tests::eventually;
use outpost_system_tests::build_image;
use outpost_system_tests::lab::{respun_slot_bundle, slot_bundle, Lab};

/// A download of ~130 MB through the tunnel, a slot write and a reboot to `ready`, in
/// software emulation.
const UPDATE: Duration = Duration::from_secs(1200);

fn publish(lab: &Lab, bundle: &Path) -> i64 {
    let b = lab
        .portal
        .ctl_json(&["bundle", "publish", &bundle.display().to_string()]);
    b["id"].as_i64().unwrap_or_else(|| panic!("published: {b}"))
}

fn assign(lab: &Lab, bundle: i64, sensor: &str) {
    lab.portal
        .ctl(&["bundle", "assign", &bundle.to_string(), "--sensor", sensor]);
}

/// Waits until the sensor's update state for `version` is final; returns `sensor show`.
fn wait_update_final(lab: &Lab, version: &str) -> serde_json::Value {
    eventually(&format!("update {version} to end"), UPDATE, || {
        let s = lab.sensor();
        let u = &s["update"];
        let done = u["version"] == version
            && matches!(
                u["state"].as_str(),
                Some("committed" | "rolled_back" | "refused" | "failed")
            );
        done.then_some(s)
    })
}

#[test]
fn a_good_update_commits_bad_bundles_are_refused_and_a_bad_update_rolls_back() {
    let a = build_image("qemu-arm64", "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The bundle scripts/build-image wrote beside the image is signed by the key the
    // image trusts.
    let key = outpost_system_tests::repo_root().join("build/keys/outpost-bundle.key.pub");
    let verified = std::process::Command::new(outpost_e2e_tests::bin("outpostctl"))
        .args(["bundle", "verify"])
        .arg(a.bundle().unwrap())
        .arg("--trusted")
        .arg(&key)
        .args([
            "--board",
            "outpost,qemu-arm64",
            "--current-version",
            "0.0.1",
        ])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "the build's bundle verifies: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let b = respun_slot_bundle(&a, "outpost,qemu-arm64", "0.2.0", true, dir.path());
    // A bundle whose slot never becomes healthy: the build's root without the daemon.
    let bad = respun_slot_bundle(&a, "outpost,qemu-arm64", "0.3.0", false, dir.path());
    let unsigned = slot_bundle(&a, "outpost,qemu-arm64", "0.5.0", false, dir.path());
    let wrong_board = slot_bundle(&a, "outpost,rpi4", "0.5.1", true, dir.path());
    let downgrade = slot_bundle(&a, "outpost,qemu-arm64", "0.0.9", true, dir.path());
    // Tampered: the signed manifest's version edited afterwards (same length).
    let tampered = slot_bundle(&a, "outpost,qemu-arm64", "0.5.2", true, dir.path());
    let mut bytes = std::fs::read(&tampered).unwrap();
    let head = bytes.len().min(1 << 20);
    let at = bytes[..head]
        .windows(5)
        .position(|w| w == b"0.5.2")
        .expect("the version in the manifest");
    bytes[at + 4] = b'9';
    std::fs::write(&tampered, bytes).unwrap();

    // Without the scanner a boot is healthy (ready, heartbeat answered) within seconds,
    // so trials get the shortest deadline and the bad update's three tries take ~4
    // minutes, not the ~10 that the OpenVAS stack's start would need each time. (The
    // same flow with the scanner on is what scripts/bench update measures.)
    let mut lab = Lab::boot_with(
        "upd",
        "[scanner]\nenabled = false\n\n[update]\nhealth_deadline_s = 60\n",
    );
    lab.wait_ready();
    let id = lab.sensor_id();
    let s = lab.sensor();
    assert_eq!(s["firmware_version"], "0.1.0", "{s}");
    assert_eq!(s["boot_slot"], "a", "{s}");

    // Good update: 0.2.0 goes to slot B, is tried, becomes healthy and is committed.
    let good = publish(&lab, &b);
    assign(&lab, good, &id);
    let s = wait_update_final(&lab, "0.2.0");
    assert_eq!(s["update"]["state"], "committed", "{s}");
    // (the phase comes with heartbeats, so it may trail the commit report a little)
    eventually("the sensor ready on 0.2.0 / slot b", UPDATE, || {
        let s = lab.sensor();
        (s["firmware_version"] == "0.2.0" && s["boot_slot"] == "b" && s["phase"] == "ready")
            .then_some(())
    });
    let state = lab.vm.run("cat /proc/cmdline").unwrap().stdout;
    assert!(state.contains("outpost.slot=B"), "booted slot B: {state}");

    // Refused bundles: each refused with its reason before anything is written; the
    // inactive slot (A, partition 2) and the boot state stay byte-identical.
    let fingerprint = "head -c 67108864 /dev/vda2 | sha256sum; cat /boot/bootstate.0 /boot/bootstate.1 | sha256sum";
    let before = lab.vm.run(fingerprint).unwrap().stdout;
    for (bundle, version, why) in [
        (&unsigned, "0.5.0", "sign"),
        (&wrong_board, "0.5.1", "board"),
        (&downgrade, "0.0.9", "downgrade"),
        (&tampered, "0.5.9", "signature"),
    ] {
        let published = publish(&lab, bundle);
        assign(&lab, published, &id);
        let s = wait_update_final(&lab, version);
        assert_eq!(s["update"]["state"], "refused", "{version}: {s}");
        let reason = s["update"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            reason.contains(why),
            "{version}: the reason says {why:?}: {reason}"
        );
    }
    let after = lab.vm.run(fingerprint).unwrap().stdout;
    assert_eq!(before, after, "slot A and the boot state are untouched");
    let s = lab.sensor();
    assert_eq!(s["boot_slot"], "b", "{s}");
    assert_eq!(s["firmware_version"], "0.2.0", "{s}");

    // Bad update: it goes to slot A (the other one again), never becomes healthy, U-Boot
    // runs out of tries and boots slot B, which reports the rollback.
    let broken = publish(&lab, &bad);
    assign(&lab, broken, &id);
    let s = wait_update_final(&lab, "0.3.0");
    assert_eq!(s["update"]["state"], "rolled_back", "{s}");
    let reason = s["update"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("slot a"),
        "names the failed slot: {reason}"
    );
    let s = eventually("the sensor back on 0.2.0 / slot b", UPDATE, || {
        let s = lab.sensor();
        (s["firmware_version"] == "0.2.0" && s["boot_slot"] == "b" && s["phase"] == "ready")
            .then_some(s)
    });
    let log = lab.portal.ctl_json(&["sensor", "log", &id]);
    assert!(
        log.to_string().contains("rolled_back"),
        "the rollback is in the log"
    );
    let _ = s;
    lab.vm.kill();
}
