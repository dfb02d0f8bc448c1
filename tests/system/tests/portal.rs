//! The appliance against a portal on the host: the real qemu-arm64 image, provisioned by
//! token with `outpost.toml` on its boot partition, registers over HTTPS (QEMU guestfwd),
//! brings up its WireGuard tunnel to the portal's gateway (UDP through a second NIC and
//! `outpost-netrelay`, which forwards only that one port) and heartbeats. Nothing leaves
//! this machine: QEMU's user network runs with restrict=on.

use std::process::Command;
use std::time::Duration;

use outpost_e2e_tests::{eventually, Portal};
use outpost_system_tests::lab::{provisioned_copy, RelayThread, PORTAL_ARGS};
use outpost_system_tests::{build_image, Qemu, QemuOptions};
use outpost_wire::provision::FeedThresholds;

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn provisions_by_token_reaches_wg_up_heartbeats_and_keeps_its_identity() {
    let built = build_image("qemu-arm64", "test").unwrap();
    let portal = Portal::start_with(120, &PORTAL_ARGS);
    let relay = RelayThread::start(portal.wg_port);
    let token = portal.token("berlin", 1);
    let dir = tempfile::tempdir().unwrap();
    let img = provisioned_copy(
        &built.image,
        dir.path(),
        &portal,
        "qemu-sensor",
        &token,
        FeedThresholds::default(),
    );

    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    opts.portal_port = Some(portal.port);
    opts.udp_relay = Some((relay.qemu_port, relay.relay_port));
    let mut vm = Qemu::start(&opts).unwrap();

    // What a person sees on the serial console.
    let reg = vm
        .wait_for(r"outpost\[qemu-sensor\]: registered as sn_", BOOT)
        .unwrap();
    vm.wait_for(r"outpost\[qemu-sensor\]: phase wg_up done", BOOT)
        .unwrap();
    let id = reg
        .split("registered as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();

    // What the operator sees at the portal.
    let s = eventually("the sensor online at the portal", BOOT, || {
        let s = portal.ctl_json(&["sensor", "show", &id]);
        (s["status"] == "online").then_some(s)
    });
    assert_eq!(s["name"], "qemu-sensor");
    assert_eq!(s["site"], "berlin");
    assert!(
        s["metrics"]["mem_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    // The phase events arrive through the sensor's log queue.
    eventually("wg_up done in the portal's sensor log", BOOT, || {
        let log = portal.ctl_json(&["sensor", "log", &id]);
        log.as_array()?
            .iter()
            .any(|e| e["phase"] == "wg_up" && e["outcome"] == "done")
            .then_some(())
    });
    let first = s["last_heartbeat"].as_i64().unwrap();
    eventually("a later heartbeat", Duration::from_secs(120), || {
        let s = portal.ctl_json(&["sensor", "show", &id]);
        (s["last_heartbeat"].as_i64().unwrap_or(0) > first).then_some(())
    });

    // A reboot keeps the identity: no second registration (the token had one use).
    vm.reboot(BOOT).unwrap();
    vm.wait_for(r"registered as sn_\S+ \(stored identity reused\)", BOOT)
        .unwrap();
    vm.wait_for(r"outpost\[qemu-sensor\]: phase wg_up done", BOOT)
        .unwrap();
    let sensors = portal.ctl_json(&["sensor", "list"]);
    assert_eq!(sensors.as_array().unwrap().len(), 1, "{sensors}");
    vm.kill();
}

#[test]
fn a_wrong_token_is_named_on_the_console_and_changes_nothing_at_the_portal() {
    let built = build_image("qemu-arm64", "test").unwrap();
    let portal = Portal::start_with(120, &PORTAL_ARGS);
    let before = portal.dump();
    let dir = tempfile::tempdir().unwrap();
    let img = provisioned_copy(
        &built.image,
        dir.path(),
        &portal,
        "qemu-sensor",
        "otk_this_token_was_never_issued",
        FeedThresholds::default(),
    );
    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    opts.portal_port = Some(portal.port);
    let mut vm = Qemu::start(&opts).unwrap();
    vm.wait_for(
        r"phase provision failed: the portal refused the enrollment token: the enrollment token is not known to this portal",
        BOOT,
    )
    .unwrap();
    vm.kill();
    assert_eq!(
        before,
        portal.dump(),
        "the refused enrollment left the portal's database untouched"
    );
}

#[test]
fn an_unreachable_portal_is_named_and_retried() {
    let built = build_image("qemu-arm64", "test").unwrap();
    let portal = Portal::start_with(120, &["--san", "10.0.2.100"]);
    let token = portal.token("berlin", 1);
    let dir = tempfile::tempdir().unwrap();
    let img = provisioned_copy(
        &built.image,
        dir.path(),
        &portal,
        "qemu-sensor",
        &token,
        FeedThresholds::default(),
    );
    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    // No forward to the portal: 10.0.2.100:443 leads nowhere.
    opts.portal_port = None;
    let mut vm = Qemu::start(&opts).unwrap();
    let line = vm
        .wait_for(r"outpost\[qemu-sensor\]: .*(cannot reach|retrying)", BOOT)
        .unwrap();
    assert!(line.contains("portal"), "{line}");
    vm.kill();
}

#[test]
fn a_missing_or_malformed_provisioning_file_is_named_on_the_console() {
    let built = build_image("qemu-arm64", "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sensor.img");
    assert!(Command::new("cp")
        .arg("--sparse=always")
        .arg(&built.image)
        .arg(&img)
        .status()
        .unwrap()
        .success());
    // No outpost.toml at all (the built image carries none).
    let mut opts = QemuOptions::new(&built);
    opts.image = img.clone();
    let mut vm = Qemu::start(&opts).unwrap();
    vm.wait_for(
        r"phase provision failed: .*outpost\.toml.*(No such file|cannot read)",
        BOOT,
    )
    .unwrap();
    // One machine at a time: dropping the first frees its slot.
    drop(vm);
    // Malformed TOML.
    outpost_imagetool::write_boot_file(&img, "outpost.toml", b"[portal\nurl = ").unwrap();
    let mut vm = Qemu::start(&opts).unwrap();
    vm.wait_for(
        r"phase provision failed: outpost\.toml is not valid TOML",
        BOOT,
    )
    .unwrap();
    vm.kill();
}
