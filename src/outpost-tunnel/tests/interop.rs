//! Interoperability with standard WireGuard (wireguard-go + wg), each side
//! in turn. Needs root, wireguard-go, wireguard-tools, iproute2, python3:
//! the tests fail (never skip) when those are missing.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::*;
use netns::Netns;
use outpost_tunnel::{
    Cidr, DeviceConfig, DeviceTunnel, GatewayPeer, InterfaceSection, PeerSection, PresharedKey,
    PrivateKey, WgQuickConfig,
};

/// `wg setconf` text produced by our own renderer (no Address/MTU lines,
/// which are wg-quick only).
fn setconf(key: &PrivateKey, port: Option<u16>, peer: PeerSection) -> String {
    WgQuickConfig {
        interface: InterfaceSection {
            private_key: key.clone(),
            addresses: vec![],
            listen_port: port,
            mtu: None,
        },
        peers: vec![peer],
    }
    .render()
}

#[test]
fn device_tunnel_talks_to_wireguard_go_server() {
    init_logs();
    let mut ns = Netns::new();
    let wg_key = PrivateKey::generate();
    let dev_key = PrivateKey::generate();
    let psk = PresharedKey::generate();
    let wg_addr = Ipv4Addr::new(10, 99, 0, 1);
    let dev_addr = Ipv4Addr::new(10, 99, 0, 2);
    ns.wireguard_go(
        &setconf(
            &wg_key,
            Some(51820),
            PeerSection {
                public_key: dev_key.public_key(),
                preshared_key: Some(psk.clone()),
                endpoint: None,
                allowed_ips: vec![Cidr::v4(dev_addr, 32)],
                persistent_keepalive: None,
            },
        ),
        wg_addr,
        24,
    );
    // A file served by python's http.server bound to the tunnel address only.
    let content = pattern(150_000);
    std::fs::write(ns.tmp().join("feed.bin"), &content).unwrap();
    let dir = ns.tmp().to_string_lossy().to_string();
    ns.spawn(&[
        "python3",
        "-m",
        "http.server",
        "8000",
        "--bind",
        "10.99.0.1",
        "--directory",
        &dir,
    ]);
    ns.wait_listening(wg_addr, 8000);

    let mut cfg = DeviceConfig::new(
        dev_key,
        wg_key.public_key(),
        SocketAddr::new(ns.ns_ip.into(), 51820),
        dev_addr,
    );
    cfg.preshared_key = Some(psk);
    let dev = DeviceTunnel::start(cfg).unwrap();
    dev.wait_handshake(Duration::from_secs(15))
        .expect("handshake with wireguard-go");

    let mut s = dev
        .connect_timeout(SocketAddrV4::new(wg_addr, 8000), Duration::from_secs(20))
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20)));
    s.write_all(b"GET /feed.bin HTTP/1.0\r\nHost: 10.99.0.1\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(response[split + 4..] == content[..], "body differs");

    // wg on the other side saw our handshake and traffic.
    let ifname = format!("otw{}", &ns.name[5..]);
    let dump = ns.exec_ok(&["wg", "show", &ifname, "transfer"]);
    let rx: u64 = dump.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rx > 1000, "wireguard-go received {rx} bytes");
    assert_eq!(dev.stats().handshakes_completed, 1);
}

#[test]
fn wireguard_go_client_reaches_gateway_listener() {
    init_logs();
    let mut ns = Netns::new();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, SocketAddr::new(ns.host_ip.into(), 0));
    serve(gw.clone());
    let client_key = PrivateKey::generate();
    let client_addr = Ipv4Addr::new(10, 77, 0, 2);
    gw.add_peer(GatewayPeer {
        public_key: client_key.public_key(),
        allowed_ip: client_addr,
        preshared_key: None,
    })
    .unwrap();
    ns.wireguard_go(
        &setconf(
            &client_key,
            None,
            PeerSection {
                public_key: gw_key.public_key(),
                preshared_key: None,
                endpoint: Some(gw.local_addr()),
                allowed_ips: vec![Cidr::v4(GW_ADDR, 32)],
                persistent_keepalive: Some(25),
            },
        ),
        client_addr,
        16,
    );
    let script = format!(
        "import urllib.request\n\
         r = urllib.request.urlopen('http://{GW_ADDR}:{PORT}/bytes/123456', timeout=20)\n\
         body = r.read()\n\
         print(r.headers['X-Peer'], len(body), body == bytes(i % 251 for i in range(123456)))"
    );
    let out = ns.exec_ok(&["python3", "-c", &script]);
    assert_eq!(out.trim(), format!("{client_addr} 123456 True"));
    let status = gw.peer_status(&client_key.public_key()).unwrap();
    assert_eq!(status.stats.handshakes_completed, 1);
    assert_eq!(
        status.endpoint.map(|e| e.ip()),
        Some(std::net::IpAddr::V4(ns.ns_ip)),
        "endpoint learned from the handshake"
    );
    assert_eq!(gw.stats().dropped.total(), 0, "{:?}", gw.stats());
}
