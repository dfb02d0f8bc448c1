//! The in-process TCP/IP stack: a smoltcp interface whose "wire" is two
//! packet queues. Decrypted packets from the tunnel go into `rx`; packets
//! smoltcp wants to send land in `tx` and are encrypted by the owner.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, AnySocket};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// Queue bound: beyond this smoltcp's packets are dropped and TCP retransmits,
/// which keeps memory bounded if the UDP side stalls.
const QUEUE_LIMIT: usize = 4096;

/// Upper bound of egress passes per poll, so one pump cannot run unbounded.
const EGRESS_PASSES: usize = 1024;

/// How long a closed-by-user socket may linger (FIN handshake) before it is
/// aborted and its slot freed.
const ORPHAN_LINGER: Duration = Duration::from_secs(30);

pub(crate) struct VirtualDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.0.len() < QUEUE_LIMIT {
            self.0.push_back(buf);
        }
        r
    }
}

impl phy::Device for VirtualDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // WireGuard authenticates every packet, so corruption cannot get
        // through; skip verifying checksums on receive (the kernel's
        // WireGuard does the same) but still compute them for the peer.
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = Checksum::Tx;
        cs.tcp = Checksum::Tx;
        caps.checksum = cs;
        caps
    }
}

/// Socket buffer sizes; large buffers give a large TCP window (smoltcp
/// negotiates window scaling when the buffer exceeds 64 KiB).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BufferSizes {
    pub rx: usize,
    pub tx: usize,
}

pub(crate) struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub device: VirtualDevice,
    /// Sockets whose user handle was dropped: closing gracefully, reaped later.
    orphans: Vec<(SocketHandle, Instant)>,
    epoch: Instant,
}

impl Stack {
    pub fn new(addr: Ipv4Addr, prefix: u8, mtu: usize) -> Self {
        let mut device = VirtualDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let mut iface = Interface::new(config, &mut device, SmolInstant::from_micros(0));
        let ip: Ipv4Address = addr;
        iface.update_ip_addrs(|addrs| {
            // Capacity is fixed by smoltcp; one address always fits.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
        });
        // Everything not on-link also goes out through the tunnel; with an
        // IP medium the next hop is never resolved, so any address works.
        let _ = iface.routes_mut().add_default_ipv4_route(ip);
        Self {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            orphans: Vec::new(),
            epoch,
        }
    }

    pub fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(
            i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX),
        )
    }

    /// Run smoltcp once; true when some socket may have changed state.
    pub fn poll(&mut self) -> bool {
        let now = self.now();
        let mut changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
            == PollResult::SocketStateChanged;
        // smoltcp emits at most one packet per socket per egress pass; keep
        // going so a whole window leaves in one pump, not one segment per event.
        for _ in 0..EGRESS_PASSES {
            if self.device.tx.len() >= QUEUE_LIMIT
                || self
                    .iface
                    .poll_egress(now, &mut self.device, &mut self.sockets)
                    == PollResult::None
            {
                break;
            }
            changed = true;
        }
        changed
    }

    /// When smoltcp next needs a poll (retransmit, delayed ACK, ...).
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    pub fn new_tcp_socket(sizes: BufferSizes) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; sizes.rx]),
            tcp::SocketBuffer::new(vec![0u8; sizes.tx]),
        );
        // Request/response traffic (TLS records, HTTP): Nagle only adds latency.
        s.set_nagle_enabled(false);
        // Real paths (branch LAN to portal) have bottlenecks; without
        // congestion control a full window would be blasted into them.
        s.set_congestion_control(tcp::CongestionControl::Reno);
        // Give up on a peer that stops acknowledging for this long; the
        // keep-alive probes make this also catch an idle connection whose
        // other end vanished (a restarted portal, a sensor gone offline).
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s
    }

    pub fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// The user dropped its handle: close gracefully, free the slot later.
    pub fn orphan(&mut self, handle: SocketHandle) {
        self.tcp(handle).close();
        self.orphans.push((handle, Instant::now()));
    }

    /// Free orphaned sockets that finished closing or lingered too long.
    pub fn reap_orphans(&mut self) {
        let mut i = 0;
        while i < self.orphans.len() {
            let (handle, since) = self.orphans[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || since.elapsed() > ORPHAN_LINGER {
                socket.abort();
                // Let the RST (if any) go out before the slot disappears.
                self.poll();
                self.sockets.remove(handle);
                self.orphans.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    pub fn has_orphans(&self) -> bool {
        !self.orphans.is_empty()
    }

    /// No socket at all (nor one closing).
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.sockets.iter().next().is_none()
    }

    /// Local ports in use, to pick a free ephemeral port.
    pub fn port_in_use(&self, port: u16) -> bool {
        self.sockets.iter().any(|(_, s)| {
            tcp::Socket::downcast(s)
                .is_some_and(|t| t.local_endpoint().is_some_and(|e| e.port == port))
        })
    }
}

/// Socket buffer asked for on the tunnel's UDP socket. A TCP window's worth
/// of datagrams arrives in one burst; the default ~200 KiB buffer would drop
/// most of it. The kernel caps this at net.core.rmem_max / wmem_max.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Best effort: a smaller buffer only costs throughput.
pub(crate) fn tune_udp(udp: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(udp);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge UDP receive buffer");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(error = %e, "could not enlarge UDP send buffer");
    }
}

/// Source and destination of an IPv4 packet, if it is one.
pub(crate) fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst))
}
