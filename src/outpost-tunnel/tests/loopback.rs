//! Device tunnel and gateway over loopback UDP.

mod common;

use std::time::Duration;

use common::*;
use outpost_tunnel::PrivateKey;

#[test]
fn handshake_and_http_exchange() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let dev = device(&gw, &gw_key, gw.local_addr(), 0);
    dev.wait_handshake(Duration::from_secs(10)).unwrap();
    let stats = dev.stats();
    assert_eq!(stats.handshakes_completed, 1);
    assert!(stats.session_up);
    assert!(stats.last_handshake.is_some());

    let body = pattern(20_000);
    let (peer, echoed) = request(&dev, "POST", "/echo", &body);
    assert_eq!(peer, device_addr(0).to_string());
    assert_eq!(echoed, body);
    let (_, big) = request(&dev, "GET", "/bytes/300000", b"");
    assert_eq!(big, pattern(300_000));

    let stats = dev.stats();
    assert!(
        stats.tx_bytes > 20_000 && stats.rx_bytes > 300_000,
        "{stats:?}"
    );
    let status = gw.peer_status(&gw.peers()[0].identity.public_key).unwrap();
    assert_eq!(
        status.endpoint,
        Some(dev.local_udp_addr())
            .map(|a| { std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), a.port()) })
    );
    assert_eq!(gw.stats().dropped.total(), 0, "{:?}", gw.stats());
}

#[test]
fn fifty_devices_through_one_gateway_and_spoofing_is_dropped() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let devices: Vec<_> = (0..50)
        .map(|i| std::sync::Arc::new(device(&gw, &gw_key, gw.local_addr(), i)))
        .collect();

    for_each_device(&devices, |i, dev| {
        // Each device asks for a different size, so answers cannot be mixed up.
        let n = 1000 + i * 97;
        let body = format!("device-{i}").into_bytes();
        let (peer, echoed) = request(dev, "POST", "/echo", &body);
        assert_eq!(peer, device_addr(i).to_string(), "device {i}");
        assert_eq!(echoed, body, "device {i}");
        let (_, bytes) = request(dev, "GET", &format!("/bytes/{n}"), b"");
        assert_eq!(bytes, pattern(n), "device {i}");
    });
    let stats = gw.stats();
    assert_eq!(stats.peers, 50);
    assert_eq!(stats.handshakes_completed, 50, "{stats:?}");
    assert_eq!(stats.dropped.spoofed_source, 0);

    // A registered peer (address .250) claims device 3's address.
    let mut rogue = RawPeer::new(&gw_key, gw.local_addr());
    gw.add_peer(outpost_tunnel::GatewayPeer {
        public_key: rogue.key.public_key(),
        allowed_ip: "10.77.9.250".parse().unwrap(),
        preshared_key: None,
    })
    .unwrap();
    rogue.handshake();
    for _ in 0..3 {
        rogue.send_inner(&tcp_syn(device_addr(3)));
    }
    // Its own address is accepted (the SYN reaches the stack: no spoof count).
    rogue.send_inner(&tcp_syn("10.77.9.250".parse().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let rogue_status = loop {
        let s = gw.peer_status(&rogue.key.public_key()).unwrap();
        if s.stats.dropped.spoofed_source >= 3 && s.stats.rx_packets >= 1 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spoofing not counted: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(rogue_status.stats.dropped.spoofed_source, 3);
    assert_eq!(gw.stats().dropped.spoofed_source, 3);
    // The victim is unaffected.
    let (peer, _) = request(&devices[3], "GET", "/bytes/10", b"");
    assert_eq!(peer, device_addr(3).to_string());
}

#[test]
fn removed_peer_is_refused_and_readded_peer_works() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let dev = device(&gw, &gw_key, gw.local_addr(), 0);
    request(&dev, "GET", "/bytes/10", b"");
    let key = gw.peers()[0].identity.public_key;
    assert!(gw.remove_peer(&key));
    assert!(!gw.remove_peer(&key));
    assert_eq!(gw.stats().peers, 0);
    let err = dev
        .connect_timeout(
            std::net::SocketAddrV4::new(GW_ADDR, PORT),
            Duration::from_secs(2),
        )
        .unwrap_err();
    assert!(
        matches!(err, outpost_tunnel::TunnelError::ConnectTimeout { .. }),
        "{err}"
    );
    assert!(gw.stats().dropped.unknown_receiver > 0);
    // Duplicate keys and addresses are refused.
    gw.add_peer(outpost_tunnel::GatewayPeer {
        public_key: key,
        allowed_ip: device_addr(0),
        preshared_key: None,
    })
    .unwrap();
    let dup = gw
        .add_peer(outpost_tunnel::GatewayPeer {
            public_key: key,
            allowed_ip: device_addr(1),
            preshared_key: None,
        })
        .unwrap_err();
    assert!(matches!(dup, outpost_tunnel::TunnelError::DuplicatePeer(_)));
    let clash = gw
        .add_peer(outpost_tunnel::GatewayPeer {
            public_key: PrivateKey::generate().public_key(),
            allowed_ip: device_addr(0),
            preshared_key: None,
        })
        .unwrap_err();
    assert!(matches!(
        clash,
        outpost_tunnel::TunnelError::AddressInUse(_)
    ));
}

#[test]
fn preshared_key_must_match() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let psk = outpost_tunnel::PresharedKey::generate();
    let dev_key = PrivateKey::generate();
    gw.add_peer(outpost_tunnel::GatewayPeer {
        public_key: dev_key.public_key(),
        allowed_ip: device_addr(0),
        preshared_key: Some(psk.clone()),
    })
    .unwrap();
    let mut cfg = outpost_tunnel::DeviceConfig::new(
        dev_key.clone(),
        gw_key.public_key(),
        gw.local_addr(),
        device_addr(0),
    );
    cfg.preshared_key = Some(outpost_tunnel::PresharedKey::generate());
    let wrong = outpost_tunnel::DeviceTunnel::start(cfg.clone()).unwrap();
    assert!(wrong.wait_handshake(Duration::from_secs(2)).is_err());
    drop(wrong);
    cfg.preshared_key = Some(psk);
    let right = outpost_tunnel::DeviceTunnel::start(cfg).unwrap();
    right.wait_handshake(Duration::from_secs(10)).unwrap();
    let (peer, _) = request(&right, "GET", "/bytes/5", b"");
    assert_eq!(peer, device_addr(0).to_string());
}

#[test]
fn ureq_request_over_the_tunnel() {
    use outpost_tunnel::ureq_transport::TunnelConnector;
    use ureq::unversioned::resolver::DefaultResolver;
    use ureq::unversioned::transport::Connector;

    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let dev = std::sync::Arc::new(device(&gw, &gw_key, gw.local_addr(), 0));
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ().chain(TunnelConnector::new(dev.clone())),
        DefaultResolver::default(),
    );
    let url = format!("http://{GW_ADDR}:{PORT}/bytes/100000");
    let mut resp = agent.get(&url).call().expect("ureq GET through tunnel");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-peer").unwrap().to_str().unwrap(),
        device_addr(0).to_string()
    );
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(body, pattern(100_000));

    let url = format!("http://{GW_ADDR}:{PORT}/echo");
    let mut resp = agent.post(&url).send("ping through wireguard").unwrap();
    assert_eq!(
        resp.body_mut().read_to_string().unwrap(),
        "ping through wireguard"
    );
}

#[test]
fn tokio_server_on_gateway_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    let dev = device(&gw, &gw_key, gw.local_addr(), 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server_gw = gw.clone();
    let server = rt.spawn(async move {
        // Echo server: upper-cases what it reads until EOF, tagged with the peer.
        let mut s = server_gw.accept_async().await.unwrap();
        let mut data = Vec::new();
        s.read_to_end(&mut data).await.unwrap();
        let reply = format!("{}:{}", s.peer().tunnel_addr, data.len());
        s.write_all(reply.as_bytes()).await.unwrap();
        s.write_all(&data.to_ascii_uppercase()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let mut s = dev
        .connect(std::net::SocketAddrV4::new(GW_ADDR, PORT))
        .unwrap();
    let payload = b"abc".repeat(50_000);
    std::io::Write::write_all(&mut s, &payload).unwrap();
    s.shutdown_write();
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(30)));
    std::io::Read::read_to_end(&mut s, &mut got).unwrap();
    let prefix = format!("{}:{}", device_addr(0), payload.len());
    assert!(got.starts_with(prefix.as_bytes()));
    assert_eq!(&got[prefix.len()..], &payload.to_ascii_uppercase()[..]);
    rt.block_on(server).unwrap();
}

#[test]
fn two_keys_share_an_address_during_a_rotation() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = gateway(&gw_key, "127.0.0.1:0".parse().unwrap());
    serve(gw.clone());
    let endpoint = gw.local_addr();
    let old = PrivateKey::generate();
    let new = PrivateKey::generate();
    let addr = device_addr(0);
    let peer = |key: &PrivateKey| outpost_tunnel::GatewayPeer {
        public_key: key.public_key(),
        allowed_ip: addr,
        preshared_key: None,
    };
    gw.add_peer(peer(&old)).unwrap();
    // A plain add refuses the address; the rotation's add shares it.
    assert!(gw.add_peer(peer(&new)).is_err());
    gw.add_peer_sharing_address(peer(&new)).unwrap();
    let start = |key: &PrivateKey| {
        outpost_tunnel::DeviceTunnel::start(outpost_tunnel::DeviceConfig::new(
            key.clone(),
            gw_key.public_key(),
            endpoint,
            addr,
        ))
        .unwrap()
    };
    // Either key reaches the portal as the same address, alternately.
    let dev_old = start(&old);
    assert_eq!(
        request(&dev_old, "GET", "/bytes/10", b"").0,
        addr.to_string()
    );
    let dev_new = start(&new);
    assert_eq!(
        request(&dev_new, "GET", "/bytes/10", b"").0,
        addr.to_string()
    );
    assert_eq!(
        request(&dev_old, "GET", "/bytes/10", b"").0,
        addr.to_string()
    );
    drop(dev_old);
    // The rotation completes: the old key goes, the new one keeps working.
    assert!(gw.remove_peer(&old.public_key()));
    let (_, body) = request(&dev_new, "GET", "/bytes/5000", b"");
    assert_eq!(body, pattern(5000));
    assert!(gw.peer_status(&old.public_key()).is_none());
    assert_eq!(gw.stats().peers, 1);
}
