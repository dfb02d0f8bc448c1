//! Per-datagram work of the gateway: find the peer (and its shard), decrypt,
//! enforce its source address, follow roaming, and create a listening socket
//! exactly when a SYN needs one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, AnySocket};
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use crate::keys::PublicKey;
use crate::netstack::{ipv4_addrs, BufferSizes, Stack};
use crate::stats::{classify, DropCounters, DropReason, TunnelStats};
use crate::stream::{Link, Net};
use crate::MAX_DATAGRAM;

use super::PeerIdentity;

/// A stack's next poll is never sooner than this after the last (no spinning).
const MIN_POLL_DELAY: Duration = Duration::from_millis(1);

/// The TCP/IP stack of one sensor's tunnel address: its connections to the
/// portal, and when smoltcp next needs it (retransmit, delayed ACK, keep-alive).
pub(super) struct PeerNet {
    pub(super) stack: Stack,
    pub(super) next_poll: Option<Instant>,
}

/// Everything behind one shard's mutex. One small stack per tunnel address,
/// not one stack for all: smoltcp walks every socket of a stack on each poll,
/// so with one shared stack every packet cost time in proportion to the fleet
/// (at 2,500 sensors three quarters of the portal's CPU went there).
pub(crate) struct GatewayCore {
    pub(super) link: GatewayLink,
    pub(super) stacks: HashMap<Ipv4Addr, PeerNet>,
    /// Stacks' next polls, soonest first; an entry whose stack has moved its
    /// `next_poll` (or gone) is stale and skipped.
    pub(super) timers: BTreeSet<(Instant, Ipv4Addr)>,
}

impl GatewayCore {
    pub(super) fn new(link: GatewayLink) -> Self {
        Self {
            link,
            stacks: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Run the stack of `addr`, send its output and schedule its next poll.
    pub(super) fn pump_addr(&mut self, addr: Ipv4Addr) -> bool {
        let Some(net) = self.stacks.get_mut(&addr) else {
            return false;
        };
        let changed = net.stack.poll();
        self.link.transmit(&mut net.stack);
        if let Some(delay) = net.stack.poll_delay() {
            let at = Instant::now() + delay.max(MIN_POLL_DELAY);
            if net.next_poll.is_none_or(|n| at < n) {
                net.next_poll = Some(at);
                self.timers.insert((at, addr));
            }
        }
        changed
    }

    /// How long until a stack needs a poll.
    pub(super) fn next_timer(&self, now: Instant) -> Option<Duration> {
        self.timers
            .first()
            .map(|(at, _)| at.saturating_duration_since(now))
    }

    /// Poll the stacks whose time has come.
    pub(super) fn run_due(&mut self, now: Instant) -> bool {
        let mut due = Vec::new();
        while let Some(&(at, addr)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(net) = self.stacks.get_mut(&addr) {
                if net.next_poll == Some(at) {
                    net.next_poll = None;
                    due.push(addr);
                }
            }
        }
        let mut changed = false;
        for addr in due {
            changed |= self.pump_addr(addr);
        }
        changed
    }

    /// One datagram from the UDP socket, already routed to this shard's peer `index`.
    pub(super) fn receive(&mut self, index: u32, datagram: &[u8], from: SocketAddr) -> bool {
        let (mut notify, inner) = self.link.receive(index, datagram, from);
        if let Some((packet, identity)) = inner {
            let addr = identity.tunnel_addr;
            let (gw, prefix, mtu) = (self.link.address, self.link.prefix, self.link.mtu);
            let net = self.stacks.entry(addr).or_insert_with(|| PeerNet {
                stack: Stack::new(gw, prefix, mtu),
                next_poll: None,
            });
            self.link
                .prepare_listener(&mut net.stack, &packet, identity);
            net.stack.device.rx.push_back(packet);
            notify |= self.pump_addr(addr);
        }
        notify
    }

    /// Free closed connections; drop the stacks left without any.
    pub(super) fn reap(&mut self) {
        let link = &mut self.link;
        let mut flush = Vec::new();
        self.stacks.retain(|addr, net| {
            if net.stack.has_orphans() {
                net.stack.reap_orphans();
                // The resets go out now: the stack itself may be dropped here.
                link.transmit(&mut net.stack);
                flush.push(*addr);
            }
            !net.stack.is_empty()
        });
        for addr in flush {
            self.pump_addr(addr);
        }
    }

    /// Move established connections to the accept queue; drop dead ones.
    pub(super) fn promote(&mut self) -> bool {
        self.link.promote(&mut self.stacks)
    }

    /// Reset every connection of a tunnel address.
    pub(super) fn abort_all(&mut self, addr: Ipv4Addr) {
        if let Some(net) = self.stacks.get_mut(&addr) {
            for (_, s) in net.stack.sockets.iter_mut() {
                if let Some(t) = tcp::Socket::downcast_mut(s) {
                    t.abort();
                }
            }
            self.pump_addr(addr);
        }
    }
}

impl Net for GatewayCore {
    /// The socket's stack (its tunnel address) and its handle there.
    type Handle = (Ipv4Addr, SocketHandle);

    fn tcp(&mut self, (addr, handle): Self::Handle) -> &mut tcp::Socket<'static> {
        // A stack is dropped only once it holds no socket, and a stream's socket
        // stays in it until the stream is gone (`orphan`, then `reap`).
        self.stacks
            .get_mut(&addr)
            .expect("a stream's stack lives as long as its socket")
            .stack
            .tcp(handle)
    }

    fn pump_for(&mut self, (addr, _): Self::Handle) -> bool {
        self.pump_addr(addr)
    }

    fn orphan(&mut self, (addr, handle): Self::Handle) {
        if let Some(net) = self.stacks.get_mut(&addr) {
            net.stack.orphan(handle);
        }
    }
}

/// Half-open connections one peer may hold, to bound memory.
const MAX_PENDING_PER_PEER: usize = 64;
/// Accepted connections waiting for the application.
const MAX_ACCEPT_QUEUE: usize = 1024;
/// A connection not established within this time is dropped.
const PENDING_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct PeerSlot {
    pub(super) identity: PeerIdentity,
    pub(super) tunn: Tunn,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) stats: TunnelStats,
}

/// What every shard and receiving thread shares, outside the shards' locks:
/// the socket, the handshake gate and the key directory. Routing a datagram
/// (and the X25519 an initiation needs to name its sender) happens here,
/// before any shard is locked.
pub(crate) struct Router {
    pub(super) udp: Arc<UdpSocket>,
    pub(super) secret: x25519::StaticSecret,
    pub(super) public: x25519::PublicKey,
    /// The load gate for handshakes of all peers (see `route`).
    pub(super) rate_limiter: Arc<RateLimiter>,
    /// Given to every peer's `Tunn`, which re-checks mac1 with it; its limit
    /// is never reached, so the one load decision is `rate_limiter`'s, taken
    /// once per handshake and before any public-key work.
    pub(super) tunn_limiter: Arc<RateLimiter>,
    /// Every peer's session index prefix by key, over all shards. Lock order:
    /// this, then a shard, then the accept queue.
    pub(super) by_key: RwLock<HashMap<PublicKey, u32>>,
    /// Drops before a peer (and so a shard) is known.
    pub(super) dropped: Mutex<DropCounters>,
    pub(super) shards: usize,
}

impl Router {
    /// The shard holding the peer with this session index prefix: indexes
    /// are chosen so that this is the shard of the peer's address.
    pub(super) fn shard_of_index(&self, index: u32) -> usize {
        index as usize % self.shards
    }

    /// The shard of a tunnel address. All keys of one address (a rotation)
    /// land in the same shard, as its one stack must.
    pub(super) fn shard_of_addr(&self, addr: Ipv4Addr) -> usize {
        u32::from(addr) as usize % self.shards
    }

    pub(super) fn keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PublicKey, u32>> {
        self.by_key.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PublicKey, u32>> {
        self.by_key.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn drops(&self) -> MutexGuard<'_, DropCounters> {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer (session index prefix) a datagram is for; None when it was
    /// dropped or answered with a cookie here.
    pub(super) fn dispatch(&self, datagram: &[u8], from: SocketAddr) -> Option<u32> {
        if datagram.len() > MAX_DATAGRAM {
            self.drops().record(DropReason::Oversized);
            return None;
        }
        match self.route(datagram, from) {
            Ok(Route::Peer(i)) => Some(i),
            Ok(Route::Cookie(reply)) => {
                tracing::trace!(%from, "under load: cookie reply instead of a handshake");
                let mut dropped = self.drops();
                dropped.record(DropReason::RateLimited);
                GatewayLink::send_to(&self.udp, &reply, from, &mut dropped);
                None
            }
            Err(reason) => {
                tracing::trace!(?reason, %from, "dropped datagram");
                self.drops().record(reason);
                None
            }
        }
    }
}

impl Router {
    /// Which peer a datagram belongs to, or why it has none.
    ///
    /// Handshake messages pass the gateway-wide rate limiter first: mac1
    /// (a keyed hash, cheap) must be valid, and over the limit the sender
    /// must also carry a valid mac2, i.e. prove it receives at its source
    /// address, else it gets a cookie reply. Only then do we spend the
    /// Diffie-Hellman that tells which peer sent an initiation, so a flood of
    /// initiations costs hashes, not X25519 (WireGuard paper, section 5.3).
    fn route(&self, datagram: &[u8], from: SocketAddr) -> Result<Route, DropReason> {
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        let packet = match self
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, &mut cookie)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                // Always 64 bytes; copy out so the buffer borrow ends here.
                let mut out = [0u8; COOKIE_REPLY_LEN];
                let n = reply.len().min(COOKIE_REPLY_LEN);
                out[..n].copy_from_slice(&reply[..n]);
                return Ok(Route::Cookie(out));
            }
            Err(TunnResult::Err(e)) => return Err(classify(&e)),
            Err(_) => return Err(DropReason::Malformed),
        };
        match packet {
            Packet::HandshakeInit(init) => {
                let half = parse_handshake_anon(&self.secret, &self.public, &init)
                    .map_err(|_| DropReason::AuthFailed)?;
                let key = PublicKey::from_bytes(half.peer_static_public);
                self.keys()
                    .get(&key)
                    .copied()
                    .map(Route::Peer)
                    .ok_or(DropReason::UnknownPeer)
            }
            Packet::HandshakeResponse(p) => Ok(Route::Peer(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => Ok(Route::Peer(p.receiver_idx >> 8)),
            Packet::PacketData(p) => Ok(Route::Peer(p.receiver_idx >> 8)),
        }
    }
}

/// Established connections of all shards, waiting for the application.
pub(crate) struct AcceptQueue {
    pub(super) state: Mutex<AcceptState>,
    /// Signalled on each new connection and on close, for blocking `accept`.
    pub(super) cond: Condvar,
    pub(super) closed: AtomicBool,
}

#[derive(Default)]
pub(crate) struct AcceptState {
    /// (shard, socket, peer).
    pub(super) queue: VecDeque<(usize, SocketHandle, PeerIdentity)>,
    pub(super) wakers: Vec<Waker>,
}

impl AcceptQueue {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(AcceptState::default()),
            cond: Condvar::new(),
            closed: AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, AcceptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One shard's peers: their sessions, their addresses and the connections
/// they are opening.
pub(crate) struct GatewayLink {
    pub(super) udp: Arc<UdpSocket>,
    /// This shard's number.
    pub(super) shard: usize,
    /// Peers by their 24-bit session index prefix (receiver_idx >> 8).
    pub(super) peers: HashMap<u32, PeerSlot>,
    pub(super) by_ip: HashMap<Ipv4Addr, u32>,
    pub(super) address: Ipv4Addr,
    /// The tunnel network's prefix and the inner MTU, for new stacks.
    pub(super) prefix: u8,
    pub(super) mtu: usize,
    pub(super) ports: Vec<u16>,
    pub(super) buffers: BufferSizes,
    pub(super) buf: Vec<u8>,
    /// Drops in this shard not attributable to a configured peer.
    pub(super) dropped: DropCounters,
    pub(super) pending: Vec<(SocketHandle, PeerIdentity, Instant)>,
    pub(super) accept: Arc<AcceptQueue>,
}

/// Where `route` sends a datagram.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// To the peer with this session index prefix.
    Peer(u32),
    /// Nowhere: we are under load and answered with this cookie reply.
    Cookie([u8; COOKIE_REPLY_LEN]),
}

/// Size of a WireGuard cookie reply message (type 3).
const COOKIE_REPLY_LEN: usize = 64;

impl GatewayLink {
    pub(super) fn send_to(
        udp: &UdpSocket,
        data: &[u8],
        to: SocketAddr,
        dropped: &mut DropCounters,
    ) {
        if let Err(e) = udp.send_to(data, to) {
            tracing::trace!(error = %e, %to, "gateway UDP send failed");
            dropped.record(DropReason::SendFailed);
        }
    }

    /// Handle one datagram: whether waiters should be woken, and the inner packet
    /// for the stack of the peer's address, if it carried one.
    pub(super) fn receive(
        &mut self,
        index: u32,
        datagram: &[u8],
        from: SocketAddr,
    ) -> (bool, Option<(Vec<u8>, PeerIdentity)>) {
        // Removed between routing and this shard's lock, or never there.
        let Some(peer) = self.peers.get_mut(&index) else {
            self.dropped.record(DropReason::UnknownReceiver);
            return (false, None);
        };
        // `route` parsed it, so it has at least the 4-byte header.
        let kind = datagram.first().copied().unwrap_or_default();
        let r = peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.buf);
        let mut notify = false;
        match r {
            TunnResult::WriteToNetwork(p) => {
                // Never a cookie reply: `route` took the load decision.
                Self::send_to(&self.udp, p, from, &mut self.dropped);
                peer.endpoint = Some(from);
                if kind == 1 {
                    peer.stats.handshake_done();
                    tracing::debug!(peer = %peer.identity.public_key, %from, "handshake completed");
                    notify = true;
                }
                // Packets queued while there was no session.
                while let TunnResult::WriteToNetwork(p) =
                    peer.tunn.decapsulate(None, &[], &mut self.buf)
                {
                    Self::send_to(&self.udp, p, from, &mut self.dropped)
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                // Authenticated: follow the peer if its address changed (roaming).
                peer.endpoint = Some(from);
                // Two keys may share an address mid-rotation: answers go to
                // the one the sensor is using now.
                let addr = peer.identity.tunnel_addr;
                if let Some(active) = self.by_ip.get_mut(&addr) {
                    if *active != index {
                        tracing::debug!(peer = %peer.identity.public_key, %addr, "address now served by this key");
                        *active = index;
                    }
                }
                if src != peer.identity.tunnel_addr {
                    tracing::debug!(peer = %peer.identity.public_key, %src, "spoofed inner source dropped");
                    peer.stats.dropped.record(DropReason::SpoofedSource);
                    return (false, None);
                }
                match ipv4_addrs(packet) {
                    Some((_, dst)) if dst == self.address => {}
                    _ => {
                        peer.stats.dropped.record(DropReason::NotForUs);
                        return (false, None);
                    }
                }
                peer.stats.rx_packets += 1;
                peer.stats.rx_bytes += packet.len() as u64;
                return (notify, Some((packet.to_vec(), peer.identity)));
            }
            TunnResult::WriteToTunnelV6(..) => {
                peer.endpoint = Some(from);
                peer.stats.dropped.record(DropReason::NotForUs);
            }
            TunnResult::Done => {
                if kind == 4 {
                    // An authenticated keepalive.
                    peer.endpoint = Some(from);
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, %from, "dropped datagram");
                peer.stats.dropped.record(classify(&e));
            }
        }
        (notify, None)
    }

    /// A listening socket exists only for the instant a SYN needs one: this
    /// way a retransmitted SYN always reaches its existing connection, and
    /// there is no fixed backlog to exhaust.
    pub(super) fn prepare_listener(
        &mut self,
        stack: &mut Stack,
        packet: &[u8],
        identity: PeerIdentity,
    ) {
        let Some(syn) = parse_syn(packet) else {
            return;
        };
        if !self.ports.contains(&syn.dst_port) {
            return;
        }
        let duplicate = stack.sockets.iter().any(|(_, s)| {
            tcp::Socket::downcast(s).is_some_and(|t| {
                t.remote_endpoint()
                    .is_some_and(|r| r.addr == IpAddress::Ipv4(syn.src) && r.port == syn.src_port)
                    && t.local_endpoint().is_some_and(|l| l.port == syn.dst_port)
            })
        });
        if duplicate {
            return;
        }
        let pending_for_peer = self
            .pending
            .iter()
            .filter(|(_, id, _)| id.tunnel_addr == identity.tunnel_addr)
            .count();
        if pending_for_peer >= MAX_PENDING_PER_PEER
            || self.accept.lock().queue.len() >= MAX_ACCEPT_QUEUE
        {
            // smoltcp answers the SYN with RST: the client sees "refused".
            return;
        }
        let mut socket = Stack::new_tcp_socket(self.buffers);
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.address)),
            port: syn.dst_port,
        };
        if socket.listen(endpoint).is_ok() {
            let handle = stack.sockets.add(socket);
            self.pending.push((handle, identity, Instant::now()));
        }
    }

    /// Move established connections to the accept queue; drop dead ones.
    pub(super) fn promote(&mut self, stacks: &mut HashMap<Ipv4Addr, PeerNet>) -> bool {
        let mut new = false;
        let mut i = 0;
        while i < self.pending.len() {
            let (handle, identity, since) = self.pending[i];
            let Some(net) = stacks.get_mut(&identity.tunnel_addr) else {
                self.pending.swap_remove(i);
                continue;
            };
            let stack = &mut net.stack;
            let socket = stack.tcp(handle);
            let state = socket.state();
            let alive = self.by_ip.contains_key(&identity.tunnel_addr);
            match state {
                tcp::State::SynReceived if alive && since.elapsed() < PENDING_TIMEOUT => i += 1,
                tcp::State::Established | tcp::State::CloseWait if alive => {
                    self.pending.swap_remove(i);
                    self.accept
                        .lock()
                        .queue
                        .push_back((self.shard, handle, identity));
                    new = true;
                }
                _ => {
                    // Listen (SYN not taken), closed, timed out or peer removed.
                    socket.abort();
                    stack.sockets.remove(handle);
                    self.pending.swap_remove(i);
                }
            }
        }
        if new {
            let wakers = std::mem::take(&mut self.accept.lock().wakers);
            for w in wakers {
                w.wake();
            }
            self.accept.cond.notify_all();
        }
        new
    }

    pub(super) fn on_timer(&mut self) {
        for peer in self.peers.values_mut() {
            // Errors (expired sessions) need nothing: responders wait for
            // the sensor to initiate again.
            if let TunnResult::WriteToNetwork(p) = peer.tunn.update_timers(&mut self.buf) {
                match peer.endpoint {
                    Some(to) => Self::send_to(&self.udp, p, to, &mut self.dropped),
                    None => peer.stats.dropped.record(DropReason::NoEndpoint),
                }
            }
        }
    }
}

impl Link for GatewayLink {
    fn transmit(&mut self, stack: &mut Stack) {
        while let Some(packet) = stack.device.tx.pop_front() {
            let peer = ipv4_addrs(&packet)
                .and_then(|(_, dst)| self.by_ip.get(&dst))
                .and_then(|i| self.peers.get_mut(i));
            let Some(peer) = peer else {
                // The peer was removed while its connection still had output.
                self.dropped.record(DropReason::NoEndpoint);
                continue;
            };
            match peer.tunn.encapsulate(&packet, &mut self.buf) {
                TunnResult::WriteToNetwork(p) => {
                    if p.first() == Some(&4) {
                        peer.stats.tx_packets += 1;
                        peer.stats.tx_bytes += packet.len() as u64;
                    }
                    match peer.endpoint {
                        Some(to) => Self::send_to(&self.udp, p, to, &mut peer.stats.dropped),
                        None => peer.stats.dropped.record(DropReason::NoEndpoint),
                    }
                }
                TunnResult::Err(e) => peer.stats.dropped.record(classify(&e)),
                _ => {}
            }
        }
    }
}

struct Syn {
    src: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
}

/// A TCP SYN without ACK (a new connection attempt), if `packet` is one.
fn parse_syn(packet: &[u8]) -> Option<Syn> {
    let (src, _) = ipv4_addrs(packet)?;
    if packet.get(9) != Some(&6) {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let tcp = packet.get(ihl..)?;
    let flags = *tcp.get(13)?;
    if flags & 0x12 != 0x02 {
        return None;
    }
    Some(Syn {
        src,
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn syn_detection() {
        // Minimal IPv4 + TCP header: 10.0.0.2:40000 -> 10.0.0.1:443, SYN.
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&443u16.to_be_bytes());
        p[33] = 0x02;
        let syn = parse_syn(&p).unwrap();
        assert_eq!((syn.src_port, syn.dst_port), (40000, 443));
        p[33] = 0x12; // SYN+ACK is not a new connection
        assert!(parse_syn(&p).is_none());
        p[33] = 0x02;
        p[9] = 17; // UDP
        assert!(parse_syn(&p).is_none());
        assert!(parse_syn(&p[..30]).is_none());
    }

    fn link(gw_key: &PrivateKey, limit: u64) -> Router {
        let secret = gw_key.secret();
        let public = x25519::PublicKey::from(&secret);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        Router {
            udp,
            rate_limiter: Arc::new(RateLimiter::new(&public, limit)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            secret,
            public,
            by_key: RwLock::new(HashMap::new()),
            dropped: Mutex::new(DropCounters::default()),
            shards: 4,
        }
    }

    #[test]
    fn shards_follow_the_index_and_the_address() {
        let router = link(&PrivateKey::generate(), 10);
        // Consecutive addresses spread over every shard.
        let shards: BTreeSet<usize> = (2..6)
            .map(|i| router.shard_of_addr(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        assert_eq!(shards.len(), 4);
        assert_eq!(router.shard_of_index(4 * 1000 + 3), 3);
    }

    fn initiation(dev: &mut Tunn) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        match dev.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no initiation: {other:?}"),
        }
    }

    fn device(gw_key: &PrivateKey) -> Tunn {
        let dev_key = PrivateKey::generate();
        Tunn::new(
            dev_key.secret(),
            gw_key.public_key().x25519(),
            None,
            None,
            1,
            None,
        )
        .unwrap()
    }

    const FROM: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 51820);

    #[test]
    fn route_checks_mac1_before_public_key_work() {
        let gw_key = PrivateKey::generate();
        let link = link(&gw_key, 10);
        let init = initiation(&mut device(&gw_key));
        // Valid for us, but the key is not a configured peer.
        assert_eq!(link.route(&init, FROM), Err(DropReason::UnknownPeer));
        let mut bad = init.clone();
        bad[50] ^= 1;
        assert_eq!(link.route(&bad, FROM), Err(DropReason::InvalidMac));
        assert_eq!(link.route(&[1, 2, 3], FROM), Err(DropReason::Malformed));
    }

    #[test]
    fn over_the_limit_initiations_get_a_cookie_and_pass_with_mac2() {
        let gw_key = PrivateKey::generate();
        let link = link(&gw_key, 0);
        let mut dev = device(&gw_key);
        let init = initiation(&mut dev);
        let Ok(Route::Cookie(reply)) = link.route(&init, FROM) else {
            panic!("no cookie reply under load");
        };
        assert_eq!(reply[0], 3, "message type: cookie reply");
        // The device takes the cookie; its next initiation carries mac2 and
        // gets through to the (failed) peer lookup, i.e. past the gate.
        let mut buf = vec![0u8; 2048];
        assert!(matches!(
            dev.decapsulate(Some(FROM.ip()), &reply, &mut buf),
            TunnResult::Done
        ));
        let retry = initiation(&mut dev);
        assert_eq!(link.route(&retry, FROM), Err(DropReason::UnknownPeer));
        // The cookie is bound to the address it was sent to.
        let elsewhere: SocketAddr = "192.0.2.8:51820".parse().unwrap();
        assert!(matches!(
            link.route(&retry, elsewhere),
            Ok(Route::Cookie(_))
        ));
    }
}
