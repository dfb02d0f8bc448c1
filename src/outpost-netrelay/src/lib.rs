//! QEMU user networking carries TCP to the host through `guestfwd`, but no UDP, and the
//! WireGuard gateway speaks UDP. This relay is the guest's second NIC: QEMU's `dgram`
//! netdev sends the NIC's Ethernet frames as UDP datagrams to the relay on loopback; the
//! relay answers ARP for its own address, accepts UDP to one port on that address, and
//! forwards the payloads to one loopback service (the gateway), and the answers back.
//! Anything else the guest sends is dropped: it can reach nothing but that one port.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::udp;
use smoltcp::time::Instant as SmolInstant;
pub use smoltcp::wire::{EthernetAddress, Ipv4Address};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// Most guest endpoints tracked at once; the guest has one WireGuard socket, but each
/// restart of the daemon (or of the guest) brings a new source port, so the flow used
/// least recently gives way to a new one.
const MAX_FLOWS: usize = 16;
const FRAME_MAX: usize = 1600;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where QEMU sends the NIC's frames (QEMU's `remote.*`).
    pub listen: SocketAddr,
    /// QEMU's own socket (QEMU's `local.*`), where frames for the guest go.
    pub qemu: SocketAddr,
    /// The relay's address on the guest's link, e.g. 10.0.3.1/24.
    pub address: Ipv4Address,
    pub prefix: u8,
    pub mac: EthernetAddress,
    /// The UDP port the guest sends to on `address`.
    pub port: u16,
    /// The loopback service that port leads to.
    pub target: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("the relay forwards only to loopback, not {0}")]
    NotLoopback(SocketAddr),
    #[error("network I/O: {0}")]
    Io(#[from] std::io::Error),
}

struct Frames {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for Frames {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// Counters for tests and the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub to_target: u64,
    pub from_target: u64,
    /// Flows dropped to make room for a new one (the least recently used).
    pub flows_evicted: u64,
    /// Bytes for the guest dropped because their address stopped answering ARP.
    pub undeliverable_dropped: u64,
}

pub struct Relay {
    cfg: RelayConfig,
    qemu_sock: UdpSocket,
    dev: Frames,
    iface: Interface,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    /// Guest endpoint -> (socket toward the target, when the flow last carried a packet).
    flows: HashMap<IpEndpoint, (UdpSocket, std::time::Instant)>,
    /// Datagrams toward the guest leave through one socket per guest address (all
    /// bound to the relay's port; the first socket receives): smoltcp holds a socket's
    /// whole queue while its first datagram waits for ARP, so an address the guest gave
    /// up must not hold back the one it uses now. With, per socket, since when its queue
    /// has not shrunk and its length then.
    to_guest: HashMap<IpAddress, (SocketHandle, Option<(std::time::Instant, usize)>)>,
    started: Instant,
    pub stats: RelayStats,
}

impl Relay {
    pub fn bind(cfg: RelayConfig) -> Result<Relay, RelayError> {
        if !cfg.target.ip().is_loopback() {
            return Err(RelayError::NotLoopback(cfg.target));
        }
        let qemu_sock = UdpSocket::bind(cfg.listen).map_err(|e| RelayError::Bind(cfg.listen, e))?;
        qemu_sock.set_nonblocking(true)?;
        let mut dev = Frames {
            rx: VecDeque::new(),
            tx: Vec::new(),
        };
        let started = Instant::now();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(cfg.mac)),
            &mut dev,
            SmolInstant::from_millis(0),
        );
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(cfg.address.into(), cfg.prefix));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let buf = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; 256],
                vec![0u8; 256 * FRAME_MAX],
            )
        };
        let mut sock = udp::Socket::new(buf(), buf());
        sock.bind(IpEndpoint::new(cfg.address.into(), cfg.port))
            .map_err(|e| RelayError::Io(std::io::Error::other(e.to_string())))?;
        let udp = sockets.add(sock);
        Ok(Relay {
            cfg,
            qemu_sock,
            dev,
            iface,
            sockets,
            udp,
            flows: HashMap::new(),
            to_guest: HashMap::new(),
            started,
            stats: RelayStats::default(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, RelayError> {
        Ok(self.qemu_sock.local_addr()?)
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_millis(self.started.elapsed().as_millis() as i64)
    }

    /// One pass: frames in, UDP forwarded both ways, frames out. True if anything moved.
    pub fn step(&mut self) -> Result<bool, RelayError> {
        let mut moved = false;
        let mut frame = [0u8; FRAME_MAX];
        loop {
            match self.qemu_sock.recv_from(&mut frame) {
                // Only QEMU's own socket may inject frames.
                Ok((n, from)) if from == self.cfg.qemu => {
                    self.stats.frames_in += 1;
                    self.dev.rx.push_back(frame[..n].to_vec());
                    moved = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e.into()),
            }
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);

        let mut out: Vec<(Vec<u8>, IpEndpoint)> = Vec::new();
        {
            let sock = self.sockets.get_mut::<udp::Socket>(self.udp);
            while let Ok((data, meta)) = sock.recv() {
                out.push((data.to_vec(), meta.endpoint));
            }
        }
        for (data, from) in out {
            if !self.flows.contains_key(&from) {
                if self.flows.len() >= MAX_FLOWS {
                    let oldest = self
                        .flows
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(ep, _)| *ep);
                    if let Some(ep) = oldest {
                        self.flows.remove(&ep);
                        self.stats.flows_evicted += 1;
                        tracing::info!(guest = %ep, "flow evicted (least recently used)");
                    }
                }
                let s = UdpSocket::bind("127.0.0.1:0")?;
                s.connect(self.cfg.target)?;
                s.set_nonblocking(true)?;
                tracing::info!(guest = %from, target = %self.cfg.target, "new flow");
                self.flows.insert(from, (s, std::time::Instant::now()));
            }
            if let Some((s, used)) = self.flows.get_mut(&from) {
                *used = std::time::Instant::now();
                if s.send(&data).is_ok() {
                    self.stats.to_target += 1;
                }
                moved = true;
            }
        }
        let mut back: Vec<(Vec<u8>, IpEndpoint)> = Vec::new();
        for (ep, (s, _)) in &self.flows {
            while let Ok(n) = s.recv(&mut frame) {
                back.push((frame[..n].to_vec(), *ep));
            }
        }
        for (data, ep) in back {
            let handle = self.socket_toward(ep.addr);
            let sock = self.sockets.get_mut::<udp::Socket>(handle);
            if sock.send_slice(&data, ep).is_ok() {
                self.stats.from_target += 1;
                moved = true;
            }
        }
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for f in self.dev.tx.drain(..) {
            if self.qemu_sock.send_to(&f, self.cfg.qemu).is_ok() {
                self.stats.frames_out += 1;
                moved = true;
            }
        }
        self.drop_undeliverable();
        Ok(moved)
    }

    /// The socket datagrams to `guest` leave through (made on first use).
    fn socket_toward(&mut self, guest: IpAddress) -> SocketHandle {
        if let Some((h, _)) = self.to_guest.get(&guest) {
            return *h;
        }
        let mut sock = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 1]),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; 256],
                vec![0u8; 256 * FRAME_MAX],
            ),
        );
        if let Err(e) = sock.bind(IpEndpoint::new(self.cfg.address.into(), self.cfg.port)) {
            tracing::warn!(error = %e, "relay: cannot bind a socket toward the guest");
        }
        let h = self.sockets.add(sock);
        self.to_guest.insert(guest, (h, None));
        h
    }

    /// A LAN drops a packet whose destination stops answering ARP; so does this: a
    /// guest address whose queue has not shrunk for a while loses its socket and what
    /// waited in it (a changed address, a rebooted guest).
    fn drop_undeliverable(&mut self) {
        const GIVE_UP: Duration = Duration::from_secs(3);
        let now = std::time::Instant::now();
        let mut gone = Vec::new();
        for (guest, (h, stuck)) in self.to_guest.iter_mut() {
            let queued = self.sockets.get::<udp::Socket>(*h).send_queue();
            match *stuck {
                _ if queued == 0 => *stuck = None,
                Some((since, was)) if queued >= was => {
                    if now.duration_since(since) >= GIVE_UP {
                        gone.push((*guest, *h));
                    }
                }
                // new, or draining: start watching again
                _ => *stuck = Some((now, queued)),
            }
        }
        for (guest, h) in gone {
            self.to_guest.remove(&guest);
            let queued = self.sockets.get::<udp::Socket>(h).send_queue();
            self.sockets.remove(h);
            self.stats.undeliverable_dropped += queued as u64;
            tracing::info!(%guest, "dropped datagrams for a guest address that no longer answers ARP");
        }
    }

    /// Runs until `stop` returns true.
    pub fn run(&mut self, stop: impl Fn() -> bool) -> Result<(), RelayError> {
        while !stop() {
            if !self.step()? {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }
}
