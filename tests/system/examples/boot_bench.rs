//! `scripts/bench boot`: power-on to `wg_up` of the qemu-arm64 image against a portal on
//! this machine (2 vCPUs, software emulation). Prints `power_on_to_wg_up_s=`.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_e2e_tests::Portal;
use outpost_netrelay::{EthernetAddress, Relay, RelayConfig};
use outpost_system_tests::{build_image, Qemu, QemuOptions};
use outpost_wire::provision::{FeedThresholds, Provision};
use outpost_wire::Secret;

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let built = build_image("qemu-arm64", "production")?;
    let portal = Portal::start_with(
        120,
        &["--san", "10.0.2.100", "--wg-endpoint", "10.0.3.1:51820"],
    );
    let (qemu_port, relay_port) = (free_udp(), free_udp());
    let mut relay = Relay::bind(RelayConfig {
        listen: format!("127.0.0.1:{relay_port}").parse()?,
        qemu: format!("127.0.0.1:{qemu_port}").parse()?,
        address: "10.0.3.1".parse()?,
        prefix: 24,
        mac: EthernetAddress([0x02, 0x00, 0x0a, 0x00, 0x03, 0x01]),
        port: 51820,
        target: format!("127.0.0.1:{}", portal.wg_port).parse()?,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || relay.run(|| s.load(Ordering::Relaxed)));

    let dir = tempfile::tempdir()?;
    let img = dir.path().join("sensor.img");
    if !Command::new("cp")
        .arg("--sparse=always")
        .arg(&built.image)
        .arg(&img)
        .status()?
        .success()
    {
        return Err("copying the image failed".into());
    }
    let p = Provision {
        portal_url: "https://10.0.2.100:443".into(),
        ca_cert_pem: portal.ca_pem(),
        name: "bench".into(),
        site: "bench".into(),
        token: Secret::new(portal.token("bench", 1)),
        scope: vec![],
        feed: FeedThresholds::default(),
    };
    outpost_imagetool::provision(&img, &p.render())?;
    outpost_imagetool::write_boot_file(&img, "network.conf", b"eth1 10.0.3.2/24\n")?;

    let mut opts = QemuOptions::new(&built);
    opts.image = img;
    opts.portal_port = Some(portal.port);
    opts.udp_relay = Some((qemu_port, relay_port));
    let t0 = Instant::now();
    let mut vm = Qemu::start(&opts)?;
    vm.wait_for(
        r"outpost\[bench\]: phase wg_up done",
        Duration::from_secs(600),
    )?;
    let wg = t0.elapsed().as_secs_f64();
    vm.kill();
    stop.store(true, Ordering::Relaxed);
    println!("power_on_to_wg_up_s={wg:.1}");
    Ok(())
}
