//! The relay as QEMU and the gateway see it: Ethernet frames in UDP datagrams on one
//! side, plain UDP to one loopback port on the other. Frames are built here as a guest
//! NIC would send them.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_netrelay::{Relay, RelayConfig};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Address = Ipv4Address::new(10, 0, 3, 2);
const RELAY_IP: Ipv4Address = Ipv4Address::new(10, 0, 3, 1);

fn arp_request() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: RELAY_IP,
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

fn arp_reply_to(relay_mac: EthernetAddress) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: relay_mac,
        target_protocol_addr: RELAY_IP,
    };
    let mut buf = vec![0u8; 14 + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: relay_mac,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

fn udp_frame(dst_mac: EthernetAddress, dst: Ipv4Address, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame_from(40000, dst_mac, dst, dport, payload)
}

fn udp_frame_from(
    sport: u16,
    dst_mac: EthernetAddress,
    dst: Ipv4Address,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    udp_frame_src(GUEST_IP, sport, dst_mac, dst, dport, payload)
}

fn udp_frame_src(
    src: Ipv4Address,
    sport: u16,
    dst_mac: EthernetAddress,
    dst: Ipv4Address,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + udp.header_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut frame);
    let mut ipp = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut ipp, &caps);
    let mut up = UdpPacket::new_unchecked(ipp.payload_mut());
    udp.emit(
        &mut up,
        &src.into(),
        &dst.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// What the guest receives: ARP answers are handled, UDP payloads returned.
enum Got {
    ArpReply(EthernetAddress),
    ArpRequest,
    Udp(u16, Vec<u8>),
}

fn parse(frame: &[u8]) -> Option<Got> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()?;
            match arp {
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr,
                    ..
                } => Some(Got::ArpReply(source_hardware_addr)),
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    ..
                } => Some(Got::ArpRequest),
                _ => None,
            }
        }
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            Some(Got::Udp(udp.dst_port(), udp.payload().to_vec()))
        }
        _ => None,
    }
}

#[test]
fn forwards_one_udp_port_both_ways_and_nothing_else() {
    let Running {
        qemu,
        gateway,
        relay_addr,
        stop,
        handle,
    } = Running::start();
    // short: this test also waits for datagrams that must not come
    gateway
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let recv = |deadline: Duration| -> Vec<Got> {
        let end = Instant::now() + deadline;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((n, _)) = qemu.recv_from(&mut buf) {
                if let Some(g) = parse(&buf[..n]) {
                    got.push(g);
                }
            }
        }
        got
    };

    // ARP: the relay answers for its address.
    qemu.send_to(&arp_request(), relay_addr).unwrap();
    let relay_mac = recv(Duration::from_millis(500))
        .into_iter()
        .find_map(|g| match g {
            Got::ArpReply(mac) => Some(mac),
            _ => None,
        })
        .expect("ARP reply from the relay");

    // A datagram to the forwarded port reaches the gateway...
    qemu.send_to(
        &udp_frame(relay_mac, RELAY_IP, 51820, b"handshake"),
        relay_addr,
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = gateway.recv_from(&mut buf).expect("payload at the gateway");
    assert_eq!(&buf[..n], b"handshake");

    // ...and the gateway's answer comes back to the guest's port as a frame.
    gateway.send_to(b"response", from).unwrap();
    let mut answer = None;
    let end = Instant::now() + Duration::from_secs(3);
    while answer.is_none() && Instant::now() < end {
        for g in recv(Duration::from_millis(200)) {
            match g {
                Got::ArpRequest => {
                    qemu.send_to(&arp_reply_to(relay_mac), relay_addr).unwrap();
                }
                Got::Udp(port, data) => answer = Some((port, data)),
                Got::ArpReply(_) => {}
            }
        }
    }
    assert_eq!(answer, Some((40000, b"response".to_vec())));

    // Other ports and other addresses lead nowhere.
    qemu.send_to(&udp_frame(relay_mac, RELAY_IP, 53, b"dns?"), relay_addr)
        .unwrap();
    qemu.send_to(
        &udp_frame(
            relay_mac,
            Ipv4Address::new(10, 0, 3, 9),
            51820,
            b"elsewhere",
        ),
        relay_addr,
    )
    .unwrap();
    assert!(
        gateway.recv_from(&mut buf).is_err(),
        "nothing else reached the gateway"
    );

    // Frames from anyone but QEMU's socket are ignored.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .send_to(&udp_frame(relay_mac, RELAY_IP, 51820, b"spoof"), relay_addr)
        .unwrap();
    assert!(
        gateway.recv_from(&mut buf).is_err(),
        "a stranger's frame was not forwarded"
    );

    stop.store(true, Ordering::Relaxed);
    let stats = handle.join().unwrap();
    assert_eq!(stats.to_target, 1);
    assert_eq!(stats.from_target, 1);
}

/// A relay running on its own thread between a fake QEMU socket and a fake gateway.
struct Running {
    qemu: UdpSocket,
    gateway: UdpSocket,
    relay_addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<outpost_netrelay::RelayStats>,
}

impl Running {
    fn start() -> Running {
        let qemu = UdpSocket::bind("127.0.0.1:0").unwrap();
        qemu.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let gateway = UdpSocket::bind("127.0.0.1:0").unwrap();
        gateway
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut relay = Relay::bind(RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            qemu: qemu.local_addr().unwrap(),
            address: RELAY_IP,
            prefix: 24,
            mac: EthernetAddress([0x02, 0, 10, 0, 3, 1]),
            port: 51820,
            target: gateway.local_addr().unwrap(),
        })
        .unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::spawn(move || {
            relay.run(|| s2.load(Ordering::Relaxed)).unwrap();
            relay.stats
        });
        Running {
            qemu,
            gateway,
            relay_addr,
            stop,
            handle,
        }
    }
}

/// The guest asks for the relay's MAC, as its kernel would before the first datagram.
fn arp_for_relay(qemu: &UdpSocket, relay_addr: std::net::SocketAddr) -> EthernetAddress {
    qemu.send_to(&arp_request(), relay_addr).unwrap();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok((n, _)) = qemu.recv_from(&mut buf) {
            if let Some(Got::ArpReply(mac)) = parse(&buf[..n]) {
                return mac;
            }
        }
    }
    panic!("no ARP reply from the relay");
}

#[test]
fn a_restarted_guest_socket_is_forwarded_even_after_many_restarts() {
    // Every daemon restart in the guest sends from a new source port; the relay must
    // keep forwarding (the least recently used flow gives way), not refuse new ones.
    let Running {
        qemu,
        gateway,
        relay_addr,
        stop,
        handle,
    } = Running::start();
    let relay_mac = arp_for_relay(&qemu, relay_addr);
    let mut buf = [0u8; 2048];
    for i in 0..40u16 {
        let payload = format!("boot {i}");
        qemu.send_to(
            &udp_frame_from(41000 + i, relay_mac, RELAY_IP, 51820, payload.as_bytes()),
            relay_addr,
        )
        .unwrap();
        let (n, _) = gateway
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("restart {i} not forwarded: {e}"));
        assert_eq!(&buf[..n], payload.as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    let stats = handle.join().unwrap();
    assert_eq!(stats.to_target, 40);
    assert_eq!(stats.flows_evicted, 40 - 16);
}

#[test]
fn refuses_a_target_off_loopback() {
    let r = Relay::bind(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        qemu: "127.0.0.1:9".parse().unwrap(),
        address: RELAY_IP,
        prefix: 24,
        mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        port: 51820,
        target: "192.0.2.1:51820".parse().unwrap(),
    });
    assert!(r.is_err());
}

#[test]
fn a_reply_to_a_vanished_guest_address_does_not_block_the_others() {
    // The guest changed its address (or rebooted): the gateway still answers the old
    // one, which no longer answers ARP. Datagrams for the current address must get
    // through all the same.
    let Running {
        qemu,
        gateway,
        relay_addr,
        stop,
        handle,
    } = Running::start();
    // The current address ARPs for the relay (so the relay knows it).
    let relay_mac = arp_for_relay(&qemu, relay_addr);
    let mut buf = [0u8; 2048];
    // A datagram from the old address, whose MAC the relay never learned; the answer
    // to it waits for an ARP reply that never comes.
    let old = Ipv4Address::new(10, 0, 3, 9);
    qemu.send_to(
        &udp_frame_src(old, 50000, relay_mac, RELAY_IP, 51820, b"old"),
        relay_addr,
    )
    .unwrap();
    let (_, old_flow) = gateway
        .recv_from(&mut buf)
        .expect("the old address forwarded");
    gateway.send_to(b"to the old address", old_flow).unwrap();
    // Then the current address speaks, and the gateway answers it.
    qemu.send_to(
        &udp_frame_from(41000, relay_mac, RELAY_IP, 51820, b"new"),
        relay_addr,
    )
    .unwrap();
    let (n, new_flow) = gateway
        .recv_from(&mut buf)
        .expect("the current address forwarded");
    assert_eq!(&buf[..n], b"new");
    gateway
        .send_to(b"to the current address", new_flow)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut delivered = false;
    while !delivered && Instant::now() < end {
        if let Ok((n, _)) = qemu.recv_from(&mut buf) {
            if let Some(Got::Udp(41000, payload)) = parse(&buf[..n]) {
                delivered = payload == b"to the current address";
            }
        }
    }
    // The answer to the old address is given up once ARP has had its chance.
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let stats = handle.join().unwrap();
    assert!(
        delivered,
        "the answer to the current address was held back: {stats:?}"
    );
    assert!(stats.undeliverable_dropped >= 1, "{stats:?}");
}
