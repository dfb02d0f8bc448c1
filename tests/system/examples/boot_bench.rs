//! `scripts/bench boot`: power-on to `wg_up` of the qemu-arm64 image against a portal on
//! this machine (2 vCPUs, software emulation). Prints `power_on_to_wg_up_s=`.

use std::time::{Duration, Instant};

use outpost_e2e_tests::Portal;
use outpost_system_tests::lab::{provisioned_copy, RelayThread, PORTAL_ARGS};
use outpost_system_tests::{build_image, Qemu, QemuOptions};
use outpost_wire::provision::FeedThresholds;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let built = build_image("qemu-arm64", "production")?;
    let portal = Portal::start_with(120, &PORTAL_ARGS);
    let relay = RelayThread::start(portal.wg_port);
    let dir = tempfile::tempdir()?;
    let token = portal.token("berlin", 1);
    let img = provisioned_copy(
        &built.image,
        dir.path(),
        &portal,
        "bench",
        &token,
        FeedThresholds::default(),
    );

    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    opts.portal_port = Some(portal.port);
    opts.udp_relay = Some((relay.qemu_port, relay.relay_port));
    let t0 = Instant::now();
    let mut vm = Qemu::start(&opts)?;
    vm.wait_for(
        r"outpost\[bench\]: phase wg_up done",
        Duration::from_secs(600),
    )?;
    let wg = t0.elapsed().as_secs_f64();
    vm.kill();
    println!("power_on_to_wg_up_s={wg:.1}");
    Ok(())
}
