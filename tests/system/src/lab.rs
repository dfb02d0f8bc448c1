//! What the portal-facing system tests and the boot benchmark share: the UDP relay for
//! the guest's second NIC and a provisioned copy of the built image.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outpost_e2e_tests::Portal;
use outpost_netrelay::{EthernetAddress, Relay, RelayConfig};
use outpost_wire::provision::{FeedThresholds, Provision};
use outpost_wire::Secret;

/// The portal arguments that match this setup: the guest reaches the API as
/// 10.0.2.100 (guestfwd) and the gateway as 10.0.3.1:51820 (relay).
pub const PORTAL_ARGS: [&str; 4] = ["--san", "10.0.2.100", "--wg-endpoint", "10.0.3.1:51820"];

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// The relay that gives the guest's eth1 (10.0.3.2) a way to 10.0.3.1:51820 only.
pub struct RelayThread {
    stop: Arc<AtomicBool>,
    pub qemu_port: u16,
    pub relay_port: u16,
}

impl RelayThread {
    pub fn start(gateway_port: u16) -> RelayThread {
        let (qemu_port, relay_port) = (free_udp(), free_udp());
        let mut relay = Relay::bind(RelayConfig {
            listen: ([127, 0, 0, 1], relay_port).into(),
            qemu: ([127, 0, 0, 1], qemu_port).into(),
            address: [10, 0, 3, 1].into(),
            prefix: 24,
            mac: EthernetAddress([0x02, 0x00, 0x0a, 0x00, 0x03, 0x01]),
            port: 51820,
            target: ([127, 0, 0, 1], gateway_port).into(),
        })
        .expect("relay binds on loopback");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || relay.run(|| s.load(Ordering::Relaxed)));
        RelayThread {
            stop,
            qemu_port,
            relay_port,
        }
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A private copy of the built image (sparse: fast) with `outpost.toml` for `portal`
/// and a static address for eth1 on its boot partition.
pub fn provisioned_copy(
    src: &Path,
    dir: &Path,
    portal: &Portal,
    name: &str,
    token: &str,
    feed: FeedThresholds,
) -> PathBuf {
    let img = dir.join("sensor.img");
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(&img)
        .status()
        .expect("cp");
    assert!(ok.success(), "copying the image failed");
    let p = Provision {
        portal_url: "https://10.0.2.100:443".into(),
        ca_cert_pem: portal.ca_pem(),
        name: name.into(),
        site: "berlin".into(),
        token: Secret::new(token),
        scope: vec!["10.9.0.0/24".into()],
        feed,
    };
    outpost_imagetool::provision(&img, &p.render()).expect("provision the image");
    outpost_imagetool::write_boot_file(&img, "network.conf", b"eth1 10.0.3.2/24\n")
        .expect("network.conf");
    img
}
