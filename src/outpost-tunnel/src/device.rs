//! Device side: one WireGuard peer (the portal), a private TCP/IP stack, and
//! blocking TCP streams for the agent's HTTP client. No TUN device and no
//! routes: only connections opened through [`DeviceTunnel::connect`] can
//! enter the tunnel.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use rand_core::{OsRng, RngCore};
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;

use crate::error::TunnelError;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::netstack::{ipv4_addrs, BufferSizes, Stack};
use crate::stats::{classify, DropReason, TunnelStats};
use crate::stream::{Core, Link, Shared, StreamCore};
use crate::{MAX_DATAGRAM, TIMER_TICK, WG_BUF};

/// First wait before re-initiating after boringtun gave up on a handshake
/// (it retries every 5 s for 90 s by itself); doubled up to the cap.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Device TCP buffers. The receive buffer is the window the portal may send in one
/// burst: it must fit the buffers on the way (the UDP socket here, a hypervisor's or a
/// slow link's queues), because a burst dropped there stalls TCP in retransmission
/// timeouts (seen under QEMU with 1 MiB: a 133 MB download stalled at 10 %).
/// 128 KiB still fills a 50 Mbit/s link at 20 ms RTT.
const DEVICE_BUFFERS: BufferSizes = BufferSizes {
    rx: 128 * 1024,
    tx: 256 * 1024,
};

/// Settings of the device tunnel.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub private_key: PrivateKey,
    pub peer_public_key: PublicKey,
    pub peer_endpoint: SocketAddr,
    /// Our address inside the tunnel (the gateway's AllowedIPs for us).
    pub address: Ipv4Addr,
    /// Seconds between keepalives so NAT mappings stay open (None: off).
    pub persistent_keepalive: Option<u16>,
    pub preshared_key: Option<PresharedKey>,
    /// Inner MTU; 1420 like wg-quick, so outer datagrams fit a 1500 path.
    pub mtu: u16,
    /// Default timeout of [`DeviceTunnel::connect`].
    pub connect_timeout: Duration,
    /// The endpoint as configured (`host:port`), resolved again when the tunnel
    /// rebinds, so a portal that moved to a new address is found. `None`: keep
    /// `peer_endpoint`.
    pub endpoint_name: Option<String>,
}

impl DeviceConfig {
    pub fn new(
        private_key: PrivateKey,
        peer_public_key: PublicKey,
        peer_endpoint: SocketAddr,
        address: Ipv4Addr,
    ) -> Self {
        Self {
            private_key,
            peer_public_key,
            peer_endpoint,
            address,
            persistent_keepalive: Some(25),
            preshared_key: None,
            mtu: 1420,
            connect_timeout: Duration::from_secs(30),
            endpoint_name: None,
        }
    }
}

pub(crate) struct DeviceLink {
    tunn: Tunn,
    /// Replaced when the tunnel rebinds; the driver takes the current one each round.
    udp: Arc<UdpSocket>,
    endpoint: SocketAddr,
    endpoint_name: Option<String>,
    /// Sends failed for a local reason (the address the socket was connected from is
    /// gone): rebind at the next timer tick.
    rebind_wanted: bool,
    last_rebind: Option<Instant>,
    address: Ipv4Addr,
    buf: Vec<u8>,
    stats: TunnelStats,
    backoff: Backoff,
}

/// When to start a new handshake attempt after boringtun gave up on one
/// (it retransmits every 5 s for 90 s, then declares the peer expired).
/// The pause between attempts doubles up to `RETRY_MAX`, so a portal that
/// is down for hours costs a few packets a minute and is found again.
#[derive(Debug)]
struct Backoff {
    wait: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            wait: RETRY_FIRST,
            retry_at: None,
        }
    }

    /// Called on every timer tick while the session is expired; true when
    /// a new attempt should start now.
    fn expired_tick(&mut self, now: Instant) -> bool {
        match self.retry_at {
            None => {
                self.retry_at = Some(now + self.wait);
                tracing::info!(retry_in = ?self.wait, "portal unreachable, will retry the WireGuard handshake");
                self.wait = (self.wait * 2).min(RETRY_MAX);
                false
            }
            Some(at) if now >= at => {
                self.retry_at = None;
                true
            }
            Some(_) => false,
        }
    }

    fn reset(&mut self) {
        *self = Self::new();
    }
}

/// A connected UDP socket for `endpoint`, from whatever local address routes there now.
fn connected_socket(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = UdpSocket::bind(bind)?;
    // A connected socket only accepts datagrams from the portal: the kernel filters
    // everything else before we spend any crypto on it. It also fixes the local
    // address, which is why a changed address needs a new socket.
    udp.connect(endpoint)?;
    crate::netstack::tune_udp(&udp);
    Ok(udp)
}

/// The first socket. With no route to the portal yet (no DHCP lease, cable out,
/// interface not up) the tunnel still starts: an unconnected placeholder whose sends
/// fail, so the driver keeps rebinding until a route appears. Any other error is real.
fn first_socket(endpoint: SocketAddr) -> io::Result<(UdpSocket, bool)> {
    match connected_socket(endpoint) {
        Ok(udp) => Ok((udp, false)),
        Err(e) if no_route_yet(&e) => {
            tracing::info!(%endpoint, error = %e, "no route to the portal yet; the tunnel waits for one");
            let bind: SocketAddr = match endpoint {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            Ok((UdpSocket::bind(bind)?, true))
        }
        Err(e) => Err(e),
    }
}

/// Errors that say "this host has no usable route or address yet", not "wrong setting".
fn no_route_yet(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::ENETUNREACH | libc_errno::EHOSTUNREACH | libc_errno::EADDRNOTAVAIL)
    )
}

/// Rebinds at most this often (a send that keeps failing must not spin).
const REBIND_MIN_GAP: Duration = Duration::from_secs(5);

impl DeviceLink {
    /// A new socket (and, for a named endpoint, a fresh lookup): the sensor's address
    /// changed (a new DHCP lease) or the portal's did. WireGuard itself needs nothing:
    /// the peer follows our new endpoint on the next authenticated packet.
    fn rebind(&mut self) {
        let now = Instant::now();
        if self
            .last_rebind
            .is_some_and(|at| now.duration_since(at) < REBIND_MIN_GAP)
        {
            return;
        }
        self.last_rebind = Some(now);
        self.rebind_wanted = false;
        if let Some(name) = &self.endpoint_name {
            match name.to_socket_addrs() {
                Ok(mut addrs) => {
                    if let Some(a) = addrs.find(|a| a.is_ipv4() == self.endpoint.is_ipv4()) {
                        if a != self.endpoint {
                            tracing::info!(endpoint = %name, old = %self.endpoint, new = %a, "the portal's address changed");
                            self.endpoint = a;
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(endpoint = %name, error = %e, "cannot resolve the portal's endpoint; keeping the last address")
                }
            }
        }
        match connected_socket(self.endpoint) {
            Ok(udp) => {
                let old = self.udp.local_addr().ok();
                tracing::info!(old = ?old, new = ?udp.local_addr().ok(), endpoint = %self.endpoint, "tunnel socket rebound");
                self.udp = Arc::new(udp);
                self.stats.rebinds += 1;
            }
            Err(e) => {
                tracing::info!(endpoint = %self.endpoint, error = %e, "cannot rebind the tunnel socket yet")
            }
        }
    }

    fn send(&mut self, len: usize) {
        self.rebind_wanted |= send(&self.udp, &mut self.stats, &self.buf[..len]);
    }

    /// After a handshake completes boringtun holds packets queued while
    /// there was no session; drain them.
    fn flush_queued(&mut self) {
        loop {
            let r = self.tunn.decapsulate(None, &[], &mut self.buf);
            let (sent, local_failure) = emit(&self.udp, &mut self.stats, r);
            self.rebind_wanted |= local_failure;
            if !sent {
                break;
            }
        }
    }

    fn handshake_completed(&mut self) {
        self.stats.handshake_done();
        self.backoff.reset();
        tracing::info!("WireGuard handshake with the portal completed");
    }

    /// Handle one datagram from the peer; decrypted packets go to the stack.
    /// Returns true when waiters should be woken (handshake state changed).
    fn receive(&mut self, datagram: &[u8], stack: &mut Stack, from: IpAddr) -> bool {
        if datagram.len() > MAX_DATAGRAM {
            self.stats.dropped.record(DropReason::Oversized);
            return false;
        }
        let kind = datagram.first().copied();
        let r = self.tunn.decapsulate(Some(from), datagram, &mut self.buf);
        match r {
            TunnResult::WriteToNetwork(p) => {
                let len = p.len();
                self.send(len);
                self.flush_queued();
                // A response (2) completes our initiation; answering an
                // initiation (1) from the portal completes its handshake.
                if matches!(kind, Some(1) | Some(2)) {
                    self.handshake_completed();
                    return true;
                }
                false
            }
            TunnResult::WriteToTunnelV4(packet, _src) => {
                match ipv4_addrs(packet) {
                    Some((_, dst)) if dst == self.address => {
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += packet.len() as u64;
                        stack.device.rx.push_back(packet.to_vec());
                    }
                    _ => self.stats.dropped.record(DropReason::NotForUs),
                }
                false
            }
            TunnResult::WriteToTunnelV6(..) => {
                self.stats.dropped.record(DropReason::NotForUs);
                false
            }
            TunnResult::Done => false,
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "dropped datagram");
                self.stats.dropped.record(classify(&e));
                false
            }
        }
    }

    /// WireGuard timers: retransmit handshakes, keepalives, rekeying, and
    /// our own backoff once boringtun gives up.
    fn on_timer(&mut self) {
        if self.rebind_wanted {
            self.rebind();
        }
        let r = self.tunn.update_timers(&mut self.buf);
        match r {
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                if self.backoff.expired_tick(Instant::now()) {
                    // Handshakes stopped succeeding: the portal may have moved, or the
                    // path from our address may be gone. Start over from a new socket.
                    self.rebind();
                    let r = self.tunn.format_handshake_initiation(&mut self.buf, false);
                    self.rebind_wanted |= emit(&self.udp, &mut self.stats, r).1;
                }
            }
            other => {
                self.rebind_wanted |= emit(&self.udp, &mut self.stats, other).1;
            }
        }
    }

    fn session_up(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }
}

/// Sends one datagram; true when it failed for a local reason that a new socket may
/// cure (the address the socket was connected from is gone, no route from it).
fn send(udp: &UdpSocket, stats: &mut TunnelStats, datagram: &[u8]) -> bool {
    let len = datagram.len();
    if datagram.first() == Some(&4) && len > 32 {
        stats.tx_packets += 1;
        stats.tx_bytes += (len - 32) as u64;
    }
    match udp.send(datagram) {
        Ok(_) => false,
        Err(e) => {
            // ECONNREFUSED (ICMP from a restarting portal) lands here too: not ours.
            tracing::trace!(error = %e, "tunnel UDP send failed");
            stats.dropped.record(DropReason::SendFailed);
            // EDESTADDRREQ: the unconnected placeholder of a tunnel started without a route.
            matches!(
                e.raw_os_error(),
                Some(
                    libc_errno::EINVAL
                        | libc_errno::EADDRNOTAVAIL
                        | libc_errno::ENETUNREACH
                        | libc_errno::EHOSTUNREACH
                        | libc_errno::EDESTADDRREQ
                )
            )
        }
    }
}

/// The errno values `send` on a connected socket gives when its local address went.
mod libc_errno {
    pub const EINVAL: i32 = 22;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
    pub const EDESTADDRREQ: i32 = 89;
}

/// Sends what boringtun produced: (something was sent, a local send failure).
fn emit(udp: &UdpSocket, stats: &mut TunnelStats, r: TunnResult<'_>) -> (bool, bool) {
    match r {
        TunnResult::WriteToNetwork(p) => (true, send(udp, stats, p)),
        TunnResult::Err(WireGuardError::ConnectionExpired) => (false, false),
        TunnResult::Err(e) => {
            tracing::debug!(error = ?e, "tunnel encapsulation error");
            (false, false)
        }
        _ => (false, false),
    }
}

impl Link for DeviceLink {
    fn transmit(&mut self, stack: &mut Stack) {
        while let Some(packet) = stack.device.tx.pop_front() {
            let r = self.tunn.encapsulate(&packet, &mut self.buf);
            self.rebind_wanted |= emit(&self.udp, &mut self.stats, r).1;
        }
    }
}

/// The device's stack and link behind their mutex.
type DeviceShared = Shared<Core<DeviceLink>>;

/// What runs the tunnel: its own thread, or (feature `tokio`) a task.
enum Driver {
    Thread(JoinHandle<()>),
    #[cfg(feature = "tokio")]
    Task(tokio::task::JoinHandle<()>),
}

/// A running device tunnel. Dropping it stops the driver.
pub struct DeviceTunnel {
    shared: Arc<DeviceShared>,
    driver: Option<Driver>,
    peer: PublicKey,
    local_udp: SocketAddr,
    connect_timeout: Duration,
}

impl fmt::Debug for DeviceTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTunnel")
            .field("peer", &self.peer)
            .field("local_udp", &self.local_udp)
            .finish_non_exhaustive()
    }
}

impl DeviceTunnel {
    /// Bind the UDP socket, start the driver thread and send the first
    /// handshake initiation.
    pub fn start(config: DeviceConfig) -> Result<Self, TunnelError> {
        let (shared, local_udp) = Self::prepare(&config)?;
        let driver = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("outpost-tunnel".into())
                .spawn(move || drive(shared))
                .map_err(TunnelError::Thread)?
        };
        Ok(Self::started(
            config,
            shared,
            local_udp,
            Driver::Thread(driver),
        ))
    }

    /// Like [`DeviceTunnel::start`], but driven by a task on the current tokio
    /// runtime instead of a thread: many tunnels in one process (the fleet
    /// simulator) then cost a few worker threads, not one thread each. Use
    /// [`DeviceTunnel::connect_async`] and the stream's `AsyncRead`/`AsyncWrite`.
    #[cfg(feature = "tokio")]
    pub fn start_async(config: DeviceConfig) -> Result<Self, TunnelError> {
        let (shared, local_udp) = Self::prepare(&config)?;
        let driver = tokio::spawn(drive_async(shared.clone()));
        Ok(Self::started(
            config,
            shared,
            local_udp,
            Driver::Task(driver),
        ))
    }

    fn started(
        config: DeviceConfig,
        shared: Arc<DeviceShared>,
        local_udp: SocketAddr,
        driver: Driver,
    ) -> Self {
        tracing::info!(peer = %config.peer_public_key, endpoint = %config.peer_endpoint, address = %config.address, "device tunnel started");
        Self {
            shared,
            driver: Some(driver),
            peer: config.peer_public_key,
            local_udp,
            connect_timeout: config.connect_timeout,
        }
    }

    /// Socket, Noise state and stack, with the first initiation sent.
    fn prepare(config: &DeviceConfig) -> Result<(Arc<DeviceShared>, SocketAddr), TunnelError> {
        let endpoint = config.peer_endpoint;
        let bind_err = |source| TunnelError::Bind { endpoint, source };
        let (udp, no_route) = first_socket(endpoint).map_err(bind_err)?;
        let local_udp = udp.local_addr().map_err(bind_err)?;
        let udp = Arc::new(udp);

        if !(576..=9000).contains(&config.mtu) {
            return Err(TunnelError::Config(format!(
                "MTU {} outside 576..=9000",
                config.mtu
            )));
        }
        // boringtun shifts the index left by 8 bits; keep it to 24 bits.
        let index = OsRng.next_u32() >> 8;
        let tunn = Tunn::new(
            config.private_key.secret(),
            config.peer_public_key.x25519(),
            config.preshared_key.as_ref().map(PresharedKey::bytes),
            config.persistent_keepalive.filter(|k| *k > 0),
            index,
            None,
        )
        .map_err(|e| TunnelError::Config(e.to_string()))?;

        let stack = Stack::new(config.address, 32, usize::from(config.mtu));
        let link = DeviceLink {
            tunn,
            udp,
            endpoint,
            endpoint_name: config.endpoint_name.clone(),
            rebind_wanted: no_route,
            last_rebind: None,
            address: config.address,
            buf: vec![0u8; WG_BUF],
            stats: TunnelStats::default(),
            backoff: Backoff::new(),
        };
        let shared = Shared::new(Core { stack, link });
        {
            let mut core = shared.lock();
            let link = &mut core.link;
            let r = link.tunn.format_handshake_initiation(&mut link.buf, false);
            link.rebind_wanted |= emit(&link.udp, &mut link.stats, r).1;
        }
        Ok((shared, local_udp))
    }

    /// The local UDP address the tunnel sends from.
    pub fn local_udp_addr(&self) -> SocketAddr {
        self.local_udp
    }

    pub fn stats(&self) -> TunnelStats {
        let core = self.shared.lock();
        let mut s = core.link.stats.clone();
        s.session_up = core.link.session_up();
        s
    }

    /// Block until a WireGuard session is up (handshake completed).
    ///
    /// "Up" means boringtun holds a current session key. A peer that
    /// restarted silently is noticed by WireGuard's own timers (about 15 s
    /// of unanswered traffic), which then re-handshake by themselves.
    pub fn wait_handshake(&self, timeout: Duration) -> Result<(), TunnelError> {
        let deadline = Instant::now() + timeout;
        let mut core = self.shared.lock();
        loop {
            if core.link.session_up() {
                return Ok(());
            }
            if self.shared.is_closed() {
                return Err(TunnelError::Closed);
            }
            if Instant::now() >= deadline {
                return Err(TunnelError::HandshakeTimeout {
                    peer: self.peer,
                    timeout,
                });
            }
            core = self.shared.wait(core, Some(deadline));
        }
    }

    /// [`DeviceTunnel::wait_handshake`] for async callers (polls the session state).
    #[cfg(feature = "tokio")]
    pub async fn wait_handshake_async(&self, timeout: Duration) -> Result<(), TunnelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.lock().link.session_up() {
                return Ok(());
            }
            if self.shared.is_closed() {
                return Err(TunnelError::Closed);
            }
            if Instant::now() >= deadline {
                return Err(TunnelError::HandshakeTimeout {
                    peer: self.peer,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`DeviceTunnel::connect`] for async callers; the stream implements tokio's
    /// `AsyncRead`/`AsyncWrite`.
    #[cfg(feature = "tokio")]
    pub async fn connect_async(&self, addr: SocketAddrV4) -> Result<TunnelTcpStream, TunnelError> {
        if self.shared.is_closed() {
            return Err(TunnelError::Closed);
        }
        let timeout = self.connect_timeout;
        let stream = {
            let mut core = self.shared.lock();
            let port = free_port(&core.stack)?;
            let mut socket = Stack::new_tcp_socket(DEVICE_BUFFERS);
            let remote = (IpAddress::from(*addr.ip()), addr.port());
            let cx = core.stack.iface.context();
            socket
                .connect(cx, remote, port)
                .map_err(|e| TunnelError::Config(format!("connect to {addr}: {e}")))?;
            let handle = core.stack.sockets.add(socket);
            core.pump();
            // From here on, dropping the stream (an error, a cancelled future) frees the socket.
            TunnelTcpStream {
                inner: StreamCore::new(self.shared.clone(), handle),
                addr,
            }
        };
        let handle = stream.inner.handle;
        let established = std::future::poll_fn(|cx| {
            let mut core = self.shared.lock();
            let socket = core.stack.tcp(handle);
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    if self.shared.is_closed() {
                        return std::task::Poll::Ready(Err(TunnelError::Closed));
                    }
                    // smoltcp wakes it on every state change.
                    socket.register_send_waker(cx.waker());
                    std::task::Poll::Pending
                }
                tcp::State::Closed => {
                    std::task::Poll::Ready(Err(TunnelError::ConnectRefused { addr }))
                }
                _ => std::task::Poll::Ready(Ok(())),
            }
        });
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                stream.abort();
                Err(TunnelError::ConnectTimeout {
                    addr,
                    timeout,
                    session_up: self.shared.lock().link.session_up(),
                })
            }
        }
    }

    /// Open a TCP connection through the tunnel (default timeout).
    pub fn connect(&self, addr: SocketAddrV4) -> Result<TunnelTcpStream, TunnelError> {
        self.connect_timeout(addr, self.connect_timeout)
    }

    pub fn connect_timeout(
        &self,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> Result<TunnelTcpStream, TunnelError> {
        if self.shared.is_closed() {
            return Err(TunnelError::Closed);
        }
        let deadline = Instant::now() + timeout;
        let mut core = self.shared.lock();
        let port = free_port(&core.stack)?;
        let mut socket = Stack::new_tcp_socket(DEVICE_BUFFERS);
        let remote = (IpAddress::from(*addr.ip()), addr.port());
        let cx = core.stack.iface.context();
        socket
            .connect(cx, remote, port)
            .map_err(|e| TunnelError::Config(format!("connect to {addr}: {e}")))?;
        let handle = core.stack.sockets.add(socket);
        core.pump();
        loop {
            match core.stack.tcp(handle).state() {
                tcp::State::SynSent | tcp::State::SynReceived => {}
                tcp::State::Closed => {
                    core.stack.sockets.remove(handle);
                    return Err(TunnelError::ConnectRefused { addr });
                }
                _ => break,
            }
            if self.shared.is_closed() {
                core.stack.sockets.remove(handle);
                return Err(TunnelError::Closed);
            }
            if Instant::now() >= deadline {
                core.stack.tcp(handle).abort();
                core.pump();
                core.stack.sockets.remove(handle);
                return Err(TunnelError::ConnectTimeout {
                    addr,
                    timeout,
                    session_up: core.link.session_up(),
                });
            }
            core = self.shared.wait(core, Some(deadline));
        }
        drop(core);
        Ok(TunnelTcpStream {
            inner: StreamCore::new(self.shared.clone(), handle),
            addr,
        })
    }
}

impl Drop for DeviceTunnel {
    fn drop(&mut self) {
        self.shared.close();
        match self.driver.take() {
            // The driver wakes at least every TIMER_TICK and sees the flag.
            Some(Driver::Thread(t)) => {
                let _ = t.join();
            }
            // Never block a runtime thread: the task just stops at its next await.
            #[cfg(feature = "tokio")]
            Some(Driver::Task(t)) => t.abort(),
            None => {}
        }
    }
}

fn free_port(stack: &Stack) -> Result<u16, TunnelError> {
    // Random ephemeral ports, so a restarted agent does not reuse the
    // 4-tuple of a connection the portal still remembers.
    for _ in 0..64 {
        let port = 49152 + (OsRng.next_u32() % 16384) as u16;
        if !stack.port_in_use(port) {
            return Ok(port);
        }
    }
    Err(TunnelError::NoFreePort)
}

/// The driver: receive datagrams, run smoltcp and WireGuard timers.
fn drive(shared: Arc<DeviceShared>) {
    let mut buf = vec![0u8; 65536];
    let mut last_tick = Instant::now();
    while !shared.is_closed() {
        let (wait, udp, peer_ip) = next_wait(&shared, last_tick, TIMER_TICK);
        // Only fails for a zero duration, which `max` rules out.
        let _ = udp.set_read_timeout(Some(wait));
        let received = match udp.recv(&mut buf) {
            Ok(n) => Some(n),
            Err(e) => {
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {}
                    // ICMP port unreachable while the portal restarts.
                    io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        tracing::warn!(error = %e, "tunnel UDP receive failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                None
            }
        };
        after_receive(
            &shared,
            received.map(|n| &buf[..n]),
            peer_ip,
            &mut last_tick,
            TIMER_TICK,
        );
    }
}

/// How long the driver may wait for a datagram, the current socket and the peer's IP.
fn next_wait(
    shared: &DeviceShared,
    last_tick: Instant,
    tick: Duration,
) -> (Duration, Arc<UdpSocket>, IpAddr) {
    let mut core = shared.lock();
    let delay = core.stack.poll_delay().unwrap_or(tick);
    let tick_left = tick.saturating_sub(last_tick.elapsed());
    (
        delay.min(tick_left).max(Duration::from_millis(1)),
        core.link.udp.clone(),
        core.link.endpoint.ip(),
    )
}

/// One driver round after waiting: the datagram (if any), timers, smoltcp.
fn after_receive(
    shared: &DeviceShared,
    datagram: Option<&[u8]>,
    peer_ip: IpAddr,
    last_tick: &mut Instant,
    tick: Duration,
) {
    let mut core = shared.lock();
    let core = &mut *core;
    let mut notify = false;
    if let Some(d) = datagram {
        notify |= core.link.receive(d, &mut core.stack, peer_ip);
    }
    if last_tick.elapsed() >= tick {
        *last_tick = Instant::now();
        core.link.on_timer();
        core.stack.reap_orphans();
        notify = true;
    }
    notify |= core.pump();
    if notify {
        shared.notify();
    }
}

/// WireGuard timer interval of task-driven tunnels: boringtun's own device runs its
/// timers every 250 ms. Thousands of tunnels in one process (the fleet simulator)
/// spend most of their time waking up for timers at the thread driver's 100 ms.
#[cfg(feature = "tokio")]
const ASYNC_TIMER_TICK: Duration = Duration::from_millis(250);

/// The driver as a tokio task: the same rounds as [`drive`], waiting on the socket's
/// readiness instead of a blocking receive.
#[cfg(feature = "tokio")]
async fn drive_async(shared: Arc<DeviceShared>) {
    use tokio::io::unix::AsyncFd;
    let mut buf = vec![0u8; 65536];
    let mut last_tick = Instant::now();
    // The tunnel's socket, registered with tokio's reactor; renewed when a rebind
    // replaces the socket. Not a duplicate descriptor: ten thousand tunnels in one
    // process must fit a 20,000 descriptor limit.
    let mut watched: Option<AsyncFd<Arc<UdpSocket>>> = None;
    while !shared.is_closed() {
        let (wait, udp, peer_ip) = next_wait(&shared, last_tick, ASYNC_TIMER_TICK);
        if !watched
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f.get_ref(), &udp))
        {
            watched = None;
            let registered = udp.set_nonblocking(true).and_then(|_| {
                // SAFETY: the AsyncFd holds a clone of the Arc, so the descriptor stays
                // open, and is the same one, for as long as the AsyncFd lives.
                unsafe { AsyncFd::register(udp.clone()) }.map_err(|e| e.into_parts().1)
            });
            match registered {
                Ok(f) => watched = Some(f),
                Err(e) => tracing::warn!(error = %e, "cannot watch the tunnel socket"),
            }
        }
        let received = match &watched {
            Some(f) => tokio::select! {
                r = f.readable() => match r {
                    Ok(mut ready) => match ready.try_io(|s| s.get_ref().recv(&mut buf)) {
                        Ok(Ok(n)) => Some(n),
                        Ok(Err(e)) => {
                            // ICMP port unreachable while the portal restarts.
                            if e.kind() != io::ErrorKind::ConnectionRefused {
                                tracing::debug!(error = %e, "tunnel UDP receive failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            None
                        }
                        // Nothing there after all: readiness is cleared, wait again.
                        Err(_) => None,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "tunnel socket readiness failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        None
                    }
                },
                _ = tokio::time::sleep(wait) => None,
            },
            None => {
                tokio::time::sleep(wait).await;
                None
            }
        };
        after_receive(
            &shared,
            received.map(|n| &buf[..n]),
            peer_ip,
            &mut last_tick,
            ASYNC_TIMER_TICK,
        );
    }
}

/// A TCP connection through the tunnel: blocking `Read`/`Write` with
/// optional timeouts, usable under TLS.
pub struct TunnelTcpStream {
    inner: StreamCore<Core<DeviceLink>>,
    addr: SocketAddrV4,
}

impl TunnelTcpStream {
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.read_timeout = timeout;
    }
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.write_timeout = timeout;
    }
    /// Send FIN; reading the reply still works.
    pub fn shutdown_write(&self) {
        self.inner.shutdown_write();
    }
    /// Reset the connection at once.
    pub fn abort(&self) {
        self.inner.abort();
    }
    /// Connected, and no unread data or FIN pending (a pooled connection
    /// that the server closed is not reusable).
    pub fn is_open(&self) -> bool {
        self.inner.is_open()
    }
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl fmt::Debug for TunnelTcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTcpStream")
            .field("peer", &self.addr)
            .finish()
    }
}

impl Read for TunnelTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for TunnelTcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Writes are handed to the stack (and sent) immediately.
        Ok(())
    }
}

impl Read for &TunnelTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for &TunnelTcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "tokio")]
crate::stream::impl_async_io!(TunnelTcpStream);

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<TunnelTcpStream>();
    check::<DeviceTunnel>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_pauses_grow_and_cap() {
        let mut b = Backoff::new();
        let mut now = Instant::now();
        let mut pauses = Vec::new();
        for _ in 0..10 {
            // First expired tick schedules; ticks before the deadline wait.
            assert!(!b.expired_tick(now));
            let at = b.retry_at.unwrap();
            pauses.push(at - now);
            assert!(!b.expired_tick(at - Duration::from_millis(1)));
            assert!(b.expired_tick(at));
            // The attempt runs (boringtun retries for 90 s) and expires again.
            now = at + Duration::from_secs(90);
        }
        assert_eq!(pauses[0], RETRY_FIRST);
        assert_eq!(pauses[1], RETRY_FIRST * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), RETRY_MAX);
        b.reset();
        assert!(!b.expired_tick(now));
        assert_eq!(b.retry_at.unwrap() - now, RETRY_FIRST);
    }
}
