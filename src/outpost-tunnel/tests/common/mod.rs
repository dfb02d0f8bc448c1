//! Helpers shared by the integration tests: a tiny HTTP/1.1 server on the
//! gateway's inner listener and a matching client over tunnel streams.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use outpost_tunnel::{
    DeviceConfig, DeviceTunnel, Gateway, GatewayConfig, GatewayPeer, GatewayStream, PrivateKey,
};

pub const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PORT: u16 = 8080;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn device_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1 + (i / 200) as u8, 2 + (i % 200) as u8)
}

pub fn gateway(key: &PrivateKey, listen: SocketAddr) -> Arc<Gateway> {
    let cfg = GatewayConfig::new(key.clone(), listen, GW_ADDR, PORT);
    Arc::new(Gateway::bind(cfg).unwrap())
}

/// A device tunnel registered as a peer of `gw`, reaching it at `endpoint`.
pub fn device(gw: &Gateway, gw_key: &PrivateKey, endpoint: SocketAddr, i: usize) -> DeviceTunnel {
    let key = PrivateKey::generate();
    gw.add_peer(GatewayPeer {
        public_key: key.public_key(),
        allowed_ip: device_addr(i),
        preshared_key: None,
    })
    .unwrap();
    let cfg = DeviceConfig::new(key, gw_key.public_key(), endpoint, device_addr(i));
    DeviceTunnel::start(cfg).unwrap()
}

/// Run `f(i, device)` for every device at once, each on its own thread, and
/// wait for all (a panic in one fails the caller).
pub fn for_each_device<F>(devices: &[Arc<DeviceTunnel>], f: F)
where
    F: Fn(usize, &DeviceTunnel) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let workers: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, dev)| {
            let (dev, f) = (dev.clone(), f.clone());
            thread::spawn(move || f(i, &dev))
        })
        .collect();
    for w in workers {
        w.join().expect("device worker");
    }
}

/// Serve forever: `GET /bytes/N` answers N pattern bytes, `POST /echo`
/// answers the body; every answer names the peer in `X-Peer`.
pub fn serve(gw: Arc<Gateway>) {
    thread::spawn(move || loop {
        match gw.accept_timeout(Some(Duration::from_millis(500))) {
            Ok(s) => {
                thread::spawn(move || handle(s));
            }
            Err(outpost_tunnel::TunnelError::AcceptTimeout(_)) => {
                if Arc::strong_count(&gw) == 1 {
                    return; // the test dropped its handle
                }
            }
            Err(_) => return,
        }
    });
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn read_head(s: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            return Some((head, buf[pos + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn handle(mut s: GatewayStream) {
    let Some((head, mut body)) = read_head(&mut s) else {
        return;
    };
    let want = content_length(&head);
    let mut chunk = vec![0u8; 16384];
    while body.len() < want {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let reply = if let Some(n) = path.strip_prefix("/bytes/") {
        pattern(n.parse().unwrap_or(0))
    } else {
        body
    };
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Peer: {}\r\nConnection: close\r\n\r\n",
        reply.len(),
        s.peer().tunnel_addr
    );
    if s.write_all(header.as_bytes()).is_err() || s.write_all(&reply).is_err() {
        return;
    }
    s.shutdown_write();
    // Wait for the client's FIN so the data is delivered before the socket closes.
    let _ = s.read(&mut chunk);
}

/// One request over a fresh tunnel connection; returns (X-Peer, body).
pub fn request(dev: &DeviceTunnel, method: &str, path: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut s = dev
        .connect_timeout(SocketAddrV4::new(GW_ADDR, PORT), Duration::from_secs(60))
        .expect("connect through tunnel");
    s.set_read_timeout(Some(Duration::from_secs(60)));
    s.set_write_timeout(Some(Duration::from_secs(60)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: portal\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let (head, mut rest) = read_head(&mut s).expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let want = content_length(&head);
    let mut chunk = vec![0u8; 65536];
    while rest.len() < want {
        let n = s.read(&mut chunk).expect("response body");
        assert!(n > 0, "EOF after {} of {want} bytes", rest.len());
        rest.extend_from_slice(&chunk[..n]);
    }
    let peer = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Peer: "))
        .unwrap_or("")
        .to_string();
    (peer, rest)
}

/// A bare WireGuard peer driven by hand (boringtun directly), for sending
/// packets our device tunnel would never produce: spoofed sources, replays.
pub struct RawPeer {
    pub udp: std::net::UdpSocket,
    pub tunn: boringtun::noise::Tunn,
    pub key: PrivateKey,
}

impl RawPeer {
    pub fn new(gw_key: &PrivateKey, gw_addr: SocketAddr) -> Self {
        let bytes: [u8; 32] = rand::random();
        let key = PrivateKey::from_bytes(bytes);
        let secret = boringtun::x25519::StaticSecret::from(bytes);
        let peer = boringtun::x25519::PublicKey::from(*gw_key.public_key().as_bytes());
        let tunn = boringtun::noise::Tunn::new(secret, peer, None, None, 7, None).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(gw_addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self { udp, tunn, key }
    }

    /// Complete a handshake; panics if the gateway does not answer.
    pub fn handshake(&mut self) {
        use boringtun::noise::TunnResult;
        let mut buf = vec![0u8; 2048];
        match self.tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => {
                self.udp.send(p).unwrap();
            }
            _ => panic!("no initiation"),
        }
        let mut rx = vec![0u8; 2048];
        let n = self.udp.recv(&mut rx).expect("handshake response");
        let mut out = vec![0u8; 2048];
        match self.tunn.decapsulate(None, &rx[..n], &mut out) {
            TunnResult::WriteToNetwork(p) => {
                self.udp.send(p).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Encrypt one inner packet; returns the datagram (sent already).
    pub fn send_inner(&mut self, packet: &[u8]) -> Vec<u8> {
        use boringtun::noise::TunnResult;
        let mut buf = vec![0u8; 4096];
        match self.tunn.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(p) => {
                self.udp.send(p).unwrap();
                p.to_vec()
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// An IPv4 TCP SYN from `src:40000` to the gateway's listener.
pub fn tcp_syn(src: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&GW_ADDR.octets());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&PORT.to_be_bytes());
    p[24..28].copy_from_slice(&1234u32.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&8192u16.to_be_bytes());
    let mut sum = 0u32;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}
