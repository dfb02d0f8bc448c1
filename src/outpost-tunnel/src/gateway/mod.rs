//! Gateway side (portal): one UDP socket terminating many sensors' tunnels,
//! an in-process TCP/IP stack per sensor's tunnel address (each answering as
//! the portal's tunnel address), and accepted TCP connections handed to the
//! application with the identity of the peer that opened them.
//!
//! Peers can only reach the gateway's own address (no forwarding between
//! peers), and only from their own tunnel address.
//!
//! The peers are split into shards by tunnel address, each shard with its own
//! lock, sessions and stacks, and one receiving thread per shard. Any of these
//! threads takes the next datagram from the shared socket, routes it (session
//! index, or for an initiation the rate limiter and X25519, outside any shard
//! lock) and handles it under the lock of the peer's shard; a thread runs the
//! timers of its own shard. So decryption, TCP and encryption for different
//! shards proceed on different cores.

mod link;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
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

use link::{AcceptQueue, GatewayCore, GatewayLink, PeerSlot, Router};
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
    /// Shards, each with its own lock and receiving thread (0: one per CPU, at
    /// most 16; at most 256 in any case).
    pub shards: usize,
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
            shards: 0,
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

/// Most shards the default (one per CPU) makes.
const MAX_DEFAULT_SHARDS: usize = 16;
/// Most shards at all: each is a thread, and session indexes (24 bits) carry
/// the shard number.
const MAX_SHARDS: usize = 256;

/// The gateway. Share it with `Arc`; dropping the last handle stops it.
pub struct Gateway {
    shards: Vec<Arc<Shared<GatewayCore>>>,
    router: Arc<Router>,
    accept: Arc<AcceptQueue>,
    drivers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    public_key: PublicKey,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("public_key", &self.public_key)
            .field("shards", &self.shards.len())
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
        let count = match config.shards {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_DEFAULT_SHARDS),
            n => n.min(MAX_SHARDS),
        };
        let secret = config.private_key.secret();
        let public = x25519::PublicKey::from(&secret);
        let router = Arc::new(Router {
            udp: udp.clone(),
            rate_limiter: Arc::new(RateLimiter::new(&public, config.handshakes_per_second)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
            by_key: RwLock::new(HashMap::new()),
            dropped: Mutex::new(DropCounters::default()),
            shards: count,
        });
        let accept = Arc::new(AcceptQueue::new());
        let shards: Vec<_> = (0..count)
            .map(|shard| {
                Shared::new(GatewayCore::new(GatewayLink {
                    udp: udp.clone(),
                    shard,
                    peers: HashMap::new(),
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
                    accept: accept.clone(),
                }))
            })
            .collect();
        let mut gateway = Self {
            shards,
            router,
            accept,
            drivers: Vec::with_capacity(count),
            local_addr,
            public_key: config.private_key.public_key(),
        };
        for own in 0..count {
            let shards = gateway.shards.clone();
            let router = gateway.router.clone();
            // On failure, dropping `gateway` stops the threads already started.
            let driver = std::thread::Builder::new()
                .name(format!("outpost-gw-{own}"))
                .spawn(move || drive(own, shards, router))
                .map_err(TunnelError::Thread)?;
            gateway.drivers.push(driver);
        }
        tracing::info!(%local_addr, public_key = %gateway.public_key, address = %config.address, shards = count, "gateway listening");
        Ok(gateway)
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
        let mut keys = self.router.keys_mut();
        if keys.contains_key(&peer.public_key) {
            return Err(TunnelError::DuplicatePeer(peer.public_key));
        }
        let shard = self.router.shard_of_addr(peer.allowed_ip);
        let mut core = self.shards[shard].lock();
        let link = &mut core.link;
        if (!share && link.by_ip.contains_key(&peer.allowed_ip)) || peer.allowed_ip == link.address
        {
            return Err(TunnelError::AddressInUse(peer.allowed_ip));
        }
        // A 24-bit index whose remainder names the shard, so that a data
        // packet's receiver index alone finds it.
        let n = self.router.shards as u32;
        let index = loop {
            let i = OsRng.next_u32() >> 8;
            let i = i - i % n + shard as u32;
            if i < 1 << 24 && !link.peers.contains_key(&i) {
                break i;
            }
        };
        let tunn = Tunn::new(
            self.router.secret.clone(),
            peer.public_key.x25519(),
            peer.preshared_key.as_ref().map(PresharedKey::bytes),
            None,
            index,
            Some(self.router.tunn_limiter.clone()),
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
        keys.insert(peer.public_key, index);
        // A shared address keeps routing to the key in use until the new one
        // proves itself (see `GatewayLink::receive`).
        link.by_ip.entry(peer.allowed_ip).or_insert(index);
        tracing::info!(peer = %peer.public_key, addr = %peer.allowed_ip, shared = share, shard, "peer added");
        Ok(())
    }

    /// Remove a peer and reset its open connections, unless another key
    /// still holds its address. False if unknown.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        let mut keys = self.router.keys_mut();
        let Some(index) = keys.remove(key) else {
            return false;
        };
        let shared = &self.shards[self.router.shard_of_index(index)];
        let mut core = shared.lock();
        let core = &mut *core;
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
        shared.notify();
        tracing::info!(peer = %key, "peer removed");
        true
    }

    pub fn peer_status(&self, key: &PublicKey) -> Option<PeerStatus> {
        let index = *self.router.keys().get(key)?;
        let core = self.shards[self.router.shard_of_index(index)].lock();
        core.link.peers.get(&index).map(status)
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut all = Vec::new();
        for shard in &self.shards {
            all.extend(shard.lock().link.peers.values().map(status));
        }
        all
    }

    pub fn stats(&self) -> GatewayStats {
        let mut s = GatewayStats {
            dropped: self.router.drops().clone(),
            ..GatewayStats::default()
        };
        for shard in &self.shards {
            let core = shard.lock();
            s.peers += core.link.peers.len();
            s.dropped.add(&core.link.dropped);
            for p in core.link.peers.values() {
                s.handshakes_completed += p.stats.handshakes_completed;
                s.rx_bytes += p.stats.rx_bytes;
                s.tx_bytes += p.stats.tx_bytes;
                s.dropped.add(&p.stats.dropped);
            }
        }
        s
    }

    /// Wait for the next inner TCP connection (None: wait forever).
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<GatewayStream, TunnelError> {
        // Wake up at least this often so a missed signal cannot hang us.
        const SLICE: Duration = Duration::from_millis(200);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.accept.lock();
        loop {
            if let Some((shard, handle, peer)) = state.queue.pop_front() {
                drop(state);
                return Ok(self.stream(shard, handle, peer));
            }
            if self.accept.closed.load(Ordering::Acquire) {
                return Err(TunnelError::Closed);
            }
            let wait = match (deadline, timeout) {
                (Some(d), Some(t)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(TunnelError::AcceptTimeout(t));
                    }
                    left.min(SLICE)
                }
                _ => SLICE,
            };
            state = match self.accept.cond.wait_timeout(state, wait) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
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
        let mut state = self.accept.lock();
        if let Some((shard, handle, peer)) = state.queue.pop_front() {
            drop(state);
            return std::task::Poll::Ready(Ok(self.stream(shard, handle, peer)));
        }
        if self.accept.closed.load(Ordering::Acquire) {
            return std::task::Poll::Ready(Err(TunnelError::Closed));
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }

    /// Accept for async servers (runtime independent).
    pub async fn accept_async(&self) -> Result<GatewayStream, TunnelError> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn stream(&self, shard: usize, handle: SocketHandle, peer: PeerIdentity) -> GatewayStream {
        GatewayStream {
            inner: StreamCore::new(self.shards[shard].clone(), (peer.tunnel_addr, handle)),
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
        for shard in &self.shards {
            let mut core = shard.lock();
            // Reset every connection so async readers wake up and see the end.
            let addrs: Vec<Ipv4Addr> = core.stacks.keys().copied().collect();
            for addr in addrs {
                core.abort_all(addr);
            }
        }
        {
            let mut state = self.accept.lock();
            self.accept.closed.store(true, Ordering::Release);
            for w in state.wakers.drain(..) {
                w.wake();
            }
        }
        self.accept.cond.notify_all();
        for shard in &self.shards {
            shard.close();
        }
        for t in self.drivers.drain(..) {
            let _ = t.join();
        }
    }
}

/// One receiving thread: takes datagrams for any shard from the shared
/// socket, and runs the timers of shard `own`.
fn drive(own: usize, shards: Vec<Arc<Shared<GatewayCore>>>, router: Arc<Router>) {
    let mine = &shards[own];
    let udp = router.udp.clone();
    let mut buf = vec![0u8; 65536];
    let mut last_tick = Instant::now();
    let mut last_rate_reset = Instant::now();
    let mut wait = Duration::from_millis(1);
    while !mine.is_closed() {
        // The timeout is the socket's, shared by all threads: another thread setting
        // its own between these two calls can delay this shard's timers once, by at
        // most a tick (timers only retransmit, ACK late or keep alive).
        let _ = udp.set_read_timeout(Some(wait));
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(index) = router.dispatch(&buf[..n], from) {
                    let shared = &shards[router.shard_of_index(index)];
                    let mut core = shared.lock();
                    let mut notify = core.receive(index, &buf[..n], from);
                    notify |= core.promote();
                    if notify {
                        shared.notify();
                    }
                }
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                // ICMP errors for earlier sends to a vanished peer.
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset => {}
                _ => {
                    tracing::warn!(error = %e, "gateway UDP receive failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            },
        }
        let mut core = mine.lock();
        let core = &mut *core;
        let mut notify = core.run_due(Instant::now());
        if last_tick.elapsed() >= TIMER_TICK {
            last_tick = Instant::now();
            // One thread resets the gateway-wide handshake budget.
            if own == 0 && last_rate_reset.elapsed() >= Duration::from_secs(1) {
                last_rate_reset = Instant::now();
                router.rate_limiter.reset_count();
                router.tunn_limiter.reset_count();
            }
            core.link.on_timer();
            core.reap();
            notify = true;
        }
        notify |= core.promote();
        if notify {
            mine.notify();
        }
        let now = Instant::now();
        wait = core
            .next_timer(now)
            .unwrap_or(TIMER_TICK)
            .min(TIMER_TICK.saturating_sub(last_tick.elapsed()))
            .max(Duration::from_millis(1));
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Gateway>();
    check::<GatewayStream>();
}
