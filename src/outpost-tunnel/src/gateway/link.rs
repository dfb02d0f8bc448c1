//! Per-datagram work of the gateway: find the peer, decrypt, enforce its
//! source address, follow roaming, and create a listening socket exactly
//! when a SYN needs one.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
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
use crate::stream::Link;
use crate::MAX_DATAGRAM;

use super::PeerIdentity;

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

pub(crate) struct GatewayLink {
    pub(super) udp: Arc<UdpSocket>,
    pub(super) secret: x25519::StaticSecret,
    pub(super) public: x25519::PublicKey,
    pub(super) mac1_key: [u8; 32],
    pub(super) rate_limiter: Arc<RateLimiter>,
    /// Peers by their 24-bit session index prefix (receiver_idx >> 8).
    pub(super) peers: HashMap<u32, PeerSlot>,
    pub(super) by_key: HashMap<PublicKey, u32>,
    pub(super) by_ip: HashMap<Ipv4Addr, u32>,
    pub(super) address: Ipv4Addr,
    pub(super) ports: Vec<u16>,
    pub(super) buffers: BufferSizes,
    pub(super) buf: Vec<u8>,
    /// Drops not attributable to a configured peer.
    pub(super) dropped: DropCounters,
    pub(super) pending: Vec<(SocketHandle, PeerIdentity, Instant)>,
    pub(super) accepted: VecDeque<(SocketHandle, PeerIdentity)>,
    pub(super) accept_wakers: Vec<Waker>,
}

pub(super) fn mac1_key(public: &x25519::PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"mac1----");
    Digest::update(&mut h, public.as_bytes());
    h.finalize().into()
}

impl GatewayLink {
    /// Cheap check that a handshake initiation was made for our key, before
    /// spending a Diffie-Hellman on it (garbage floods stay cheap).
    fn mac1_ok(&self, msg: &[u8]) -> bool {
        if msg.len() < 32 {
            return false;
        }
        let (body, macs) = msg.split_at(msg.len() - 32);
        let Ok(mut mac) =
            <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&self.mac1_key)
        else {
            return false;
        };
        Update::update(&mut mac, body);
        let computed: [u8; 16] = mac.finalize_fixed().into();
        // Not secret-dependent for the sender: a plain compare is fine here;
        // boringtun re-verifies in constant time inside decapsulate.
        computed[..] == macs[..16]
    }

    fn send_to(udp: &UdpSocket, data: &[u8], to: SocketAddr, dropped: &mut DropCounters) {
        if let Err(e) = udp.send_to(data, to) {
            tracing::trace!(error = %e, %to, "gateway UDP send failed");
            dropped.record(DropReason::SendFailed);
        }
    }

    /// Which peer a datagram belongs to, or why it has none.
    fn route(&self, datagram: &[u8]) -> Result<u32, DropReason> {
        let packet = Tunn::parse_incoming_packet(datagram).map_err(|_| DropReason::Malformed)?;
        match packet {
            Packet::HandshakeInit(init) => {
                if !self.mac1_ok(datagram) {
                    return Err(DropReason::InvalidMac);
                }
                let half = parse_handshake_anon(&self.secret, &self.public, &init)
                    .map_err(|_| DropReason::AuthFailed)?;
                let key = PublicKey::from_bytes(half.peer_static_public);
                self.by_key
                    .get(&key)
                    .copied()
                    .ok_or(DropReason::UnknownPeer)
            }
            Packet::HandshakeResponse(p) => Ok(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => Ok(p.receiver_idx >> 8),
            Packet::PacketData(p) => Ok(p.receiver_idx >> 8),
        }
    }

    /// Handle one datagram. Returns true if waiters should be woken.
    pub(super) fn receive(&mut self, stack: &mut Stack, datagram: &[u8], from: SocketAddr) -> bool {
        if datagram.len() > MAX_DATAGRAM {
            self.dropped.record(DropReason::Oversized);
            return false;
        }
        let index = match self.route(datagram) {
            Ok(i) => i,
            Err(reason) => {
                tracing::trace!(?reason, %from, "dropped datagram");
                self.dropped.record(reason);
                return false;
            }
        };
        let Some(peer) = self.peers.get_mut(&index) else {
            self.dropped.record(DropReason::UnknownReceiver);
            return false;
        };
        // `route` parsed it, so it has at least the 4-byte header.
        let kind = datagram.first().copied().unwrap_or_default();
        let r = peer
            .tunn
            .decapsulate(Some(from.ip()), datagram, &mut self.buf);
        let mut notify = false;
        match r {
            TunnResult::WriteToNetwork(p) => {
                let is_cookie = p.first() == Some(&3);
                Self::send_to(&self.udp, p, from, &mut self.dropped);
                if is_cookie {
                    // Under load: the initiator must prove its address first.
                    peer.stats.dropped.record(DropReason::RateLimited);
                    return false;
                }
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
                if src != peer.identity.tunnel_addr {
                    tracing::debug!(peer = %peer.identity.public_key, %src, "spoofed inner source dropped");
                    peer.stats.dropped.record(DropReason::SpoofedSource);
                    return false;
                }
                match ipv4_addrs(packet) {
                    Some((_, dst)) if dst == self.address => {}
                    _ => {
                        peer.stats.dropped.record(DropReason::NotForUs);
                        return false;
                    }
                }
                peer.stats.rx_packets += 1;
                peer.stats.rx_bytes += packet.len() as u64;
                let identity = peer.identity;
                let packet = packet.to_vec();
                self.prepare_listener(stack, &packet, identity);
                stack.device.rx.push_back(packet);
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
        notify
    }

    /// A listening socket exists only for the instant a SYN needs one: this
    /// way a retransmitted SYN always reaches its existing connection, and
    /// there is no fixed backlog to exhaust.
    fn prepare_listener(&mut self, stack: &mut Stack, packet: &[u8], identity: PeerIdentity) {
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
        if pending_for_peer >= MAX_PENDING_PER_PEER || self.accepted.len() >= MAX_ACCEPT_QUEUE {
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
    pub(super) fn promote(&mut self, stack: &mut Stack) -> bool {
        let mut new = false;
        let mut i = 0;
        while i < self.pending.len() {
            let (handle, identity, since) = self.pending[i];
            let socket = stack.tcp(handle);
            let state = socket.state();
            let alive = self.by_ip.contains_key(&identity.tunnel_addr);
            match state {
                tcp::State::SynReceived if alive && since.elapsed() < PENDING_TIMEOUT => i += 1,
                tcp::State::Established | tcp::State::CloseWait if alive => {
                    self.pending.swap_remove(i);
                    self.accepted.push_back((handle, identity));
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
            for w in self.accept_wakers.drain(..) {
                w.wake();
            }
        }
        new
    }

    pub(super) fn on_timer(&mut self, reset_rate_limiter: bool) {
        if reset_rate_limiter {
            self.rate_limiter.reset_count();
        }
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

    #[test]
    fn mac1_check_accepts_real_initiation_and_rejects_garbage() {
        let gw_key = PrivateKey::generate();
        let dev_key = PrivateKey::generate();
        let mut dev = Tunn::new(
            dev_key.secret(),
            gw_key.public_key().x25519(),
            None,
            None,
            1,
            None,
        )
        .unwrap();
        let mut buf = vec![0u8; 2048];
        let init = match dev.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("no initiation: {other:?}"),
        };
        let secret = gw_key.secret();
        let public = x25519::PublicKey::from(&secret);
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let link = GatewayLink {
            udp,
            mac1_key: mac1_key(&public),
            rate_limiter: Arc::new(RateLimiter::new(&public, 10)),
            secret,
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            ports: vec![443],
            buffers: BufferSizes { rx: 1024, tx: 1024 },
            buf: vec![],
            dropped: DropCounters::default(),
            pending: vec![],
            accepted: VecDeque::new(),
            accept_wakers: vec![],
        };
        assert!(link.mac1_ok(&init));
        // Valid for us, but the key is not a configured peer.
        assert_eq!(link.route(&init), Err(DropReason::UnknownPeer));
        let mut bad = init.clone();
        bad[50] ^= 1;
        assert!(!link.mac1_ok(&bad));
        assert_eq!(link.route(&bad), Err(DropReason::InvalidMac));
        assert_eq!(link.route(&[1, 2, 3]), Err(DropReason::Malformed));
    }
}
