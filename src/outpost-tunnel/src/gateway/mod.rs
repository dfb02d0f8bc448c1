//! Gateway side (portal): one UDP socket terminating many sensors' tunnels,
//! an in-process TCP/IP stack per sensor's tunnel address (each answering as
//! the portal's tunnel address), and accepted TCP connections handed to the
//! application with the identity of the peer that opened them.
//!
//! Peers can only reach the gateway's own address (no forwarding between
//! peers), and only from their own tunnel address.

mod link;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::task::Context;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519;
use rand_core::{OsRng, RngCore};
use smoltcp::iface::SocketHandle;

use crate::error::TunnelError;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::netstack::BufferSizes;
use crate::stats::{DropCounters, TunnelStats};
use crate::stream::{Shared, StreamCore};
use crate::{TIMER_TICK, WG_BUF};

use link::{GatewayCore, GatewayLink, PeerSlot};
pub use stream::GatewayStream;

/// Handshake messages per second (all peers together) before cookies are
/// demanded. A cookie costs a legitimate sensor one retry (5 s), so this only
/// needs to cover the ordinary rekeys of a large fleet (10,000 sensors rekey
/// about 85 times a second) plus some slack; past it, a portal restart's
/// reconnect storm is paced by the cookies instead of by X25519 work.
pub const DEFAULT_HANDSHAKE_RATE_LIMIT: u64 = 200;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub private_key: PrivateKey,
    /// UDP address to listen on, e.g. 0.0.0.0:51820.
    pub listen: SocketAddr,
    /// The portal's address inside the tunnel network.
    pub address: Ipv4Addr,
    /// Prefix length of the tunnel network (peers' addresses).
    pub prefix: u8,
    /// Inner TCP ports accepted on `address` (e.g. 443).
    pub tcp_ports: Vec<u16>,
    pub mtu: u16,
    /// Per-connection receive / send buffers: memory per connection vs. window size.
    pub tcp_rx_buffer: usize,
    pub tcp_tx_buffer: usize,
    /// Handshake messages per second, over all peers, answered without a
    /// cookie; over it, only initiators proving their source address (mac2)
    /// get public-key work.
    pub handshakes_per_second: u64,
}

impl GatewayConfig {
    pub fn new(
        private_key: PrivateKey,
        listen: SocketAddr,
        address: Ipv4Addr,
        tcp_port: u16,
    ) -> Self {
        Self {
            private_key,
            listen,
            address,
            prefix: 16,
            tcp_ports: vec![tcp_port],
            mtu: 1420,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 512 * 1024,
            handshakes_per_second: DEFAULT_HANDSHAKE_RATE_LIMIT,
        }
    }
}

/// A sensor allowed to connect.
#[derive(Debug, Clone)]
pub struct GatewayPeer {
    pub public_key: PublicKey,
    /// The one tunnel address (/32) this peer may use as source.
    pub allowed_ip: Ipv4Addr,
    pub preshared_key: Option<PresharedKey>,
}

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    pub public_key: PublicKey,
    pub tunnel_addr: Ipv4Addr,
}

/// Status of one configured peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub identity: PeerIdentity,
    /// Where its packets last came from (roaming updates it).
    pub endpoint: Option<SocketAddr>,
    pub stats: TunnelStats,
}

/// Totals over the gateway: drops not attributable to a peer plus all peers'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStats {
    pub peers: usize,
    pub handshakes_completed: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub dropped: DropCounters,
}

/// The gateway. Share it with `Arc`; dropping the last handle stops it.
pub struct Gateway {
    shared: Arc<Shared<GatewayCore>>,
    driver: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
    public_key: PublicKey,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn bind(config: GatewayConfig) -> Result<Self, TunnelError> {
        let endpoint = config.listen;
        let bind_err = |source| TunnelError::Bind { endpoint, source };
        let udp = UdpSocket::bind(endpoint).map_err(bind_err)?;
        let local_addr = udp.local_addr().map_err(bind_err)?;
        crate::netstack::tune_udp(&udp);
        let udp = Arc::new(udp);
        if config.tcp_ports.is_empty() {
            return Err(TunnelError::Config("no inner TCP port to listen on".into()));
        }
        let handshake_rate_limit = config.handshakes_per_second;
        let secret = config.private_key.secret();
        let public = x25519::PublicKey::from(&secret);
        let link = GatewayLink {
            udp: udp.clone(),
            rate_limiter: Arc::new(RateLimiter::new(&public, handshake_rate_limit)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            address: config.address,
            prefix: config.prefix,
            mtu: usize::from(config.mtu),
            ports: config.tcp_ports.clone(),
            buffers: BufferSizes {
                rx: config.tcp_rx_buffer,
                tx: config.tcp_tx_buffer,
            },
            buf: vec![0u8; WG_BUF],
            dropped: DropCounters::default(),
            pending: Vec::new(),
            accepted: VecDeque::new(),
            accept_wakers: Vec::new(),
        };
        let shared = Shared::new(GatewayCore::new(link));
        let driver = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("outpost-gateway".into())
                .spawn(move || drive(shared, udp))
                .map_err(TunnelError::Thread)?
        };
        let public_key = config.private_key.public_key();
        tracing::info!(%local_addr, %public_key, address = %config.address, "gateway listening");
        Ok(Self {
            shared,
            driver: Some(driver),
            local_addr,
            public_key,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Allow a peer. Its key and tunnel address must both be new.
    pub fn add_peer(&self, peer: GatewayPeer) -> Result<(), TunnelError> {
        self.insert_peer(peer, false)
    }

    /// Allow a second key for a tunnel address a peer already holds (or a new
    /// one): two-phase key rotation, where the sensor may come back with
    /// either key. Traffic for the address goes to whichever of its keys last
    /// sent authenticated data; removing one key keeps the address's
    /// connections while another key still holds it. Meant for one device
    /// moving from one key to the other: two devices using both keys at
    /// once would receive each other's packets.
    pub fn add_peer_sharing_address(&self, peer: GatewayPeer) -> Result<(), TunnelError> {
        self.insert_peer(peer, true)
    }

    fn insert_peer(&self, peer: GatewayPeer, share: bool) -> Result<(), TunnelError> {
        let mut core = self.shared.lock();
        let link = &mut core.link;
        if link.by_key.contains_key(&peer.public_key) {
            return Err(TunnelError::DuplicatePeer(peer.public_key));
        }
        if (!share && link.by_ip.contains_key(&peer.allowed_ip)) || peer.allowed_ip == link.address
        {
            return Err(TunnelError::AddressInUse(peer.allowed_ip));
        }
        let index = loop {
            let i = OsRng.next_u32() >> 8;
            if !link.peers.contains_key(&i) {
                break i;
            }
        };
        let tunn = Tunn::new(
            link.secret.clone(),
            peer.public_key.x25519(),
            peer.preshared_key.as_ref().map(PresharedKey::bytes),
            None,
            index,
            Some(link.tunn_limiter.clone()),
        )
        .map_err(|e| TunnelError::Config(e.to_string()))?;
        let identity = PeerIdentity {
            public_key: peer.public_key,
            tunnel_addr: peer.allowed_ip,
        };
        link.peers.insert(
            index,
            PeerSlot {
                identity,
                tunn,
                endpoint: None,
                stats: TunnelStats::default(),
            },
        );
        link.by_key.insert(peer.public_key, index);
        // A shared address keeps routing to the key in use until the new one
        // proves itself (see `GatewayLink::receive`).
        link.by_ip.entry(peer.allowed_ip).or_insert(index);
        tracing::info!(peer = %peer.public_key, addr = %peer.allowed_ip, shared = share, "peer added");
        Ok(())
    }

    /// Remove a peer and reset its open connections, unless another key
    /// still holds its address. False if unknown.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        let mut core = self.shared.lock();
        let core = &mut *core;
        let Some(index) = core.link.by_key.remove(key) else {
            return false;
        };
        if let Some(slot) = core.link.peers.remove(&index) {
            let ip = slot.identity.tunnel_addr;
            let other = core
                .link
                .peers
                .iter()
                .find(|(_, p)| p.identity.tunnel_addr == ip)
                .map(|(i, _)| *i);
            match other {
                Some(other) => {
                    if core.link.by_ip.get(&ip) == Some(&index) {
                        core.link.by_ip.insert(ip, other);
                    }
                }
                None => {
                    core.link.by_ip.remove(&ip);
                    core.abort_all(ip);
                }
            }
        }
        core.promote();
        self.shared.notify();
        tracing::info!(peer = %key, "peer removed");
        true
    }

    pub fn peer_status(&self, key: &PublicKey) -> Option<PeerStatus> {
        let core = self.shared.lock();
        let index = core.link.by_key.get(key)?;
        core.link.peers.get(index).map(status)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let core = self.shared.lock();
        core.link.peers.values().map(status).collect()
    }

    pub fn stats(&self) -> GatewayStats {
        let core = self.shared.lock();
        let mut s = GatewayStats {
            peers: core.link.peers.len(),
            dropped: core.link.dropped.clone(),
            ..GatewayStats::default()
        };
        for p in core.link.peers.values() {
            s.handshakes_completed += p.stats.handshakes_completed;
            s.rx_bytes += p.stats.rx_bytes;
            s.tx_bytes += p.stats.tx_bytes;
            let d = &p.stats.dropped;
            let t = &mut s.dropped;
            t.oversized += d.oversized;
            t.malformed += d.malformed;
            t.invalid_mac += d.invalid_mac;
            t.unknown_peer += d.unknown_peer;
            t.unknown_receiver += d.unknown_receiver;
            t.auth_failed += d.auth_failed;
            t.replay += d.replay;
            t.spoofed_source += d.spoofed_source;
            t.not_for_us += d.not_for_us;
            t.rate_limited += d.rate_limited;
            t.no_endpoint += d.no_endpoint;
            t.send_failed += d.send_failed;
        }
        s
    }

    /// Wait for the next inner TCP connection (None: wait forever).
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<GatewayStream, TunnelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut core = self.shared.lock();
        loop {
            if let Some((handle, peer)) = core.link.accepted.pop_front() {
                drop(core);
                return Ok(self.stream(handle, peer));
            }
            if self.shared.is_closed() {
                return Err(TunnelError::Closed);
            }
            if let (Some(d), Some(t)) = (deadline, timeout) {
                if Instant::now() >= d {
                    return Err(TunnelError::AcceptTimeout(t));
                }
            }
            core = self.shared.wait(core, deadline);
        }
    }

    pub fn accept(&self) -> Result<GatewayStream, TunnelError> {
        self.accept_timeout(None)
    }

    /// Poll form of accept for async servers.
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<Result<GatewayStream, TunnelError>> {
        let mut core = self.shared.lock();
        if let Some((handle, peer)) = core.link.accepted.pop_front() {
            drop(core);
            return std::task::Poll::Ready(Ok(self.stream(handle, peer)));
        }
        if self.shared.is_closed() {
            return std::task::Poll::Ready(Err(TunnelError::Closed));
        }
        if !core
            .link
            .accept_wakers
            .iter()
            .any(|w| w.will_wake(cx.waker()))
        {
            core.link.accept_wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }

    /// Accept for async servers (runtime independent).
    pub async fn accept_async(&self) -> Result<GatewayStream, TunnelError> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn stream(&self, handle: SocketHandle, peer: PeerIdentity) -> GatewayStream {
        GatewayStream {
            inner: StreamCore::new(self.shared.clone(), (peer.tunnel_addr, handle)),
            peer,
        }
    }
}

fn status(p: &PeerSlot) -> PeerStatus {
    let mut stats = p.stats.clone();
    stats.session_up = p.tunn.time_since_last_handshake().is_some();
    PeerStatus {
        identity: p.identity,
        endpoint: p.endpoint,
        stats,
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        {
            let mut core = self.shared.lock();
            // Reset every connection so async readers wake up and see the end.
            let addrs: Vec<Ipv4Addr> = core.stacks.keys().copied().collect();
            for addr in addrs {
                core.abort_all(addr);
            }
            for w in core.link.accept_wakers.drain(..) {
                w.wake();
            }
        }
        self.shared.close();
        if let Some(t) = self.driver.take() {
            let _ = t.join();
        }
    }
}

fn drive(shared: Arc<Shared<GatewayCore>>, udp: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut last_tick = Instant::now();
    let mut last_rate_reset = Instant::now();
    while !shared.is_closed() {
        let wait = {
            let core = shared.lock();
            let now = Instant::now();
            core.next_timer(now)
                .unwrap_or(TIMER_TICK)
                .min(TIMER_TICK.saturating_sub(last_tick.elapsed()))
                .max(Duration::from_millis(1))
        };
        let _ = udp.set_read_timeout(Some(wait));
        let received = match udp.recv_from(&mut buf) {
            Ok(r) => Some(r),
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    // ICMP errors for earlier sends to a vanished peer.
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset => {}
                    _ => {
                        tracing::warn!(error = %e, "gateway UDP receive failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                None
            }
        };
        let mut core = shared.lock();
        let core = &mut *core;
        let mut notify = false;
        if let Some((n, from)) = received {
            notify |= core.receive(&buf[..n], from);
        }
        notify |= core.run_due(Instant::now());
        if last_tick.elapsed() >= TIMER_TICK {
            last_tick = Instant::now();
            let reset = last_rate_reset.elapsed() >= Duration::from_secs(1);
            if reset {
                last_rate_reset = Instant::now();
            }
            core.link.on_timer(reset);
            core.reap();
            notify = true;
        }
        notify |= core.promote();
        if notify {
            shared.notify();
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Gateway>();
    check::<GatewayStream>();
}
