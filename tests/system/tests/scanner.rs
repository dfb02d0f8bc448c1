//! The scanner phases in the real image: with the shipped demo feed and its thresholds,
//! the sensor reports all six phases at the portal, in order, ending in `ready`; a
//! reboot with the feed unchanged finds the VT cache current and does not reload it.

use std::time::Duration;

use outpost_e2e_tests::{eventually, Portal};
use outpost_system_tests::lab::{provisioned_copy, RelayThread, PORTAL_ARGS};
use outpost_system_tests::{build_image, Qemu, QemuOptions};
use outpost_wire::provision::FeedThresholds;

const READY: Duration = Duration::from_secs(900);

#[test]
fn reaches_ready_with_all_six_phases_in_order_and_keeps_the_vt_cache() {
    let built = build_image("qemu-arm64", "test").unwrap();
    let portal = Portal::start_with(120, &PORTAL_ARGS);
    let relay = RelayThread::start(portal.wg_port);
    let token = portal.token("berlin", 1);
    let dir = tempfile::tempdir().unwrap();
    let demo = FeedThresholds {
        min_nasl: 5,
        min_notus: 3,
        max_age_hours: 876_000,
    };
    let img = provisioned_copy(&built.image, dir.path(), &portal, "scanner", &token, demo);
    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    opts.portal_port = Some(portal.port);
    opts.udp_relay = Some((relay.qemu_port, relay.relay_port));
    let mut vm = Qemu::start(&opts).unwrap();
    vm.wait_for(r"outpost\[scanner\]: phase ready done", READY)
        .unwrap();
    let id = portal.ctl_json(&["sensor", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = eventually("the ready event at the portal", READY, || {
        let log = portal.ctl_json(&["sensor", "log", &id]);
        let done: Vec<String> = log
            .as_array()?
            .iter()
            .filter(|e| {
                e["event"] == "phase" && (e["outcome"] == "done" || e["outcome"] == "skipped")
            })
            .map(|e| e["phase"].as_str().unwrap_or("").to_owned())
            .collect();
        done.contains(&"ready".to_string()).then_some(done)
    });
    let expected = [
        "provision",
        "wg_up",
        "feed_sync",
        "feed_ready",
        "scanner_boot",
        "ready",
    ];
    let firsts: Vec<&str> = expected
        .iter()
        .filter_map(|p| order.iter().position(|o| o == p).map(|_| *p))
        .collect();
    assert_eq!(firsts, expected, "all six phases reported: {order:?}");
    let positions: Vec<usize> = expected
        .iter()
        .map(|p| order.iter().position(|o| o == p).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {order:?}"
    );

    // The cold boot loaded the VTs into redis (ospd-openvas logs the cache update).
    let log = "/var/log/gvm/ospd-openvas.log";
    let cold = vm.run(&format!("cat {log}")).unwrap().stdout;
    assert!(
        cold.contains("The VT cache has been updated"),
        "first boot loads the VTs: {cold}"
    );
    // Warm boot, feed unchanged: redis brings its dump back from /data, so ospd-openvas
    // finds the cache at the feed's version.
    vm.run(&format!(": > {log}")).unwrap();
    vm.reboot(READY).unwrap();
    vm.wait_for(r"outpost\[scanner\]: phase ready done", READY)
        .unwrap();
    let warm = vm.run(&format!("cat {log}")).unwrap().stdout;
    assert!(
        warm.contains("VTs were up to date"),
        "a warm boot finds the VT cache current: {warm}"
    );
    assert!(
        !warm.contains("The VT cache has been updated"),
        "and does not reload it: {warm}"
    );
    vm.kill();
}
