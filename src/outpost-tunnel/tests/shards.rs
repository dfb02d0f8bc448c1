//! The gateway's shards: peers on different shards at once, a peer removed
//! while its shard carries traffic, handshakes while other peers are busy.
//!
//! Shards are picked by tunnel address modulo the shard count, so
//! `device_addr(i)` for consecutive `i` lands on consecutive shards.

mod common;

use std::io::Read;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use outpost_tunnel::{DeviceTunnel, Gateway, GatewayConfig, PrivateKey};

fn sharded_gateway(key: &PrivateKey, shards: usize) -> Arc<Gateway> {
    let mut cfg = GatewayConfig::new(key.clone(), "127.0.0.1:0".parse().unwrap(), GW_ADDR, PORT);
    cfg.shards = shards;
    Arc::new(Gateway::bind(cfg).unwrap())
}

/// Requests on `dev` until `stop`, counting the completed ones.
fn keep_busy(
    dev: Arc<DeviceTunnel>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (_, body) = request(&dev, "GET", "/bytes/100000", b"");
            assert_eq!(body, pattern(100_000));
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn peers_on_every_shard_exchange_at_once() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = sharded_gateway(&gw_key, 4);
    serve(gw.clone());
    let devices: Vec<_> = (0..16)
        .map(|i| Arc::new(device(&gw, &gw_key, gw.local_addr(), i)))
        .collect();
    for_each_device(&devices, |i, dev| {
        for round in 0..3 {
            // Sizes differ per device and round, so answers cannot be mixed up.
            let n = 5_000 + i * 1_013 + round * 7;
            let (peer, bytes) = request(dev, "GET", &format!("/bytes/{n}"), b"");
            assert_eq!(peer, device_addr(i).to_string(), "device {i}");
            assert_eq!(bytes, pattern(n), "device {i}");
        }
    });
    let stats = gw.stats();
    assert_eq!(stats.peers, 16);
    assert_eq!(stats.handshakes_completed, 16, "{stats:?}");
    assert_eq!(stats.dropped.spoofed_source, 0);
    assert_eq!(stats.dropped.unknown_receiver, 0, "{stats:?}");
    for p in gw.peers() {
        assert!(p.stats.session_up, "{p:?}");
        assert!(p.stats.rx_bytes > 0 && p.stats.tx_bytes > 0, "{p:?}");
    }
}

#[test]
fn peer_removed_while_its_shard_is_busy() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = sharded_gateway(&gw_key, 2);
    serve(gw.clone());
    // Devices 0 and 2 share a shard, device 1 is on the other.
    let victim = device(&gw, &gw_key, gw.local_addr(), 0);
    let others: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| Arc::new(device(&gw, &gw_key, gw.local_addr(), i)))
        .collect();
    let victim_key = gw
        .peers()
        .into_iter()
        .find(|p| p.identity.tunnel_addr == device_addr(0))
        .expect("victim is a peer")
        .identity
        .public_key;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let busy: Vec<_> = others
        .iter()
        .map(|d| keep_busy(d.clone(), stop.clone(), done.clone()))
        .collect();

    // A download far larger than what passes before the removal.
    const BIG: usize = 50_000_000;
    let mut s = victim
        .connect_timeout(SocketAddrV4::new(GW_ADDR, PORT), Duration::from_secs(30))
        .expect("connect through tunnel");
    s.set_read_timeout(Some(Duration::from_secs(3)));
    s.set_write_timeout(Some(Duration::from_secs(30)));
    std::io::Write::write_all(
        &mut s,
        format!("GET /bytes/{BIG} HTTP/1.1\r\nHost: portal\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut got = 0usize;
    let mut chunk = vec![0u8; 65536];
    while got < 200_000 {
        let n = s.read(&mut chunk).expect("download starts");
        assert!(n > 0, "EOF after {got} bytes");
        got += n;
    }
    assert!(gw.remove_peer(&victim_key));
    // The rest never arrives: reads end in a timeout, a reset or EOF.
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < BIG, "the removed peer kept receiving");

    // Its shard and the other one keep serving while and after it goes.
    let before = done.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < before + 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other peers stalled"
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().expect("busy device");
    }
    for (i, d) in [1, 2].into_iter().zip(&others) {
        let (peer, _) = request(d, "GET", "/bytes/10", b"");
        assert_eq!(peer, device_addr(i).to_string());
    }
    assert_eq!(gw.stats().peers, 2);
    assert!(gw.peer_status(&victim_key).is_none());
}

#[test]
fn handshakes_complete_while_other_peers_carry_traffic() {
    init_logs();
    let gw_key = PrivateKey::generate();
    let gw = sharded_gateway(&gw_key, 2);
    serve(gw.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let d = Arc::new(device(&gw, &gw_key, gw.local_addr(), i));
            keep_busy(d, stop.clone(), done.clone())
        })
        .collect();
    // New peers on both shards, all handshaking at once while the others load them.
    let joiners: Vec<_> = (4..24)
        .map(|i| {
            let dev = device(&gw, &gw_key, gw.local_addr(), i);
            thread::spawn(move || {
                dev.wait_handshake(Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("device {i}: {e}"));
                let (peer, body) = request(&dev, "GET", &format!("/bytes/{}", 100 + i), b"");
                assert_eq!(peer, device_addr(i).to_string());
                assert_eq!(body, pattern(100 + i));
            })
        })
        .collect();
    for j in joiners {
        j.join().expect("joining device");
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().expect("busy device");
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    let stats = gw.stats();
    assert_eq!(stats.peers, 24);
    assert_eq!(stats.handshakes_completed, 24, "{stats:?}");
}
