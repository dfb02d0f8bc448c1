//! Shared driver state and the blocking TCP stream both sides hand out.
//!
//! One mutex guards the whole stack. Whoever holds it may "pump": run
//! smoltcp and encrypt what it emitted straight onto the UDP socket. So an
//! application write goes out on the caller's thread without waking the
//! driver; the driver thread only receives datagrams and runs timers, and
//! signals the condvar when sockets may have changed.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::netstack::Stack;

/// Encrypts and sends the packets smoltcp queued.
pub(crate) trait Link: Send + 'static {
    fn transmit(&mut self, stack: &mut Stack);
}

pub(crate) struct Core<L> {
    pub stack: Stack,
    pub link: L,
}

impl<L: Link> Core<L> {
    /// Run smoltcp and flush its output through the tunnel.
    pub fn pump(&mut self) -> bool {
        let changed = self.stack.poll();
        self.link.transmit(&mut self.stack);
        changed
    }
}

pub(crate) struct Shared<L> {
    core: Mutex<Core<L>>,
    pub cond: Condvar,
    pub closed: AtomicBool,
}

impl<L: Link> Shared<L> {
    pub fn new(core: Core<L>) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(core),
            cond: Condvar::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Lock the core. A panic while holding the lock leaves smoltcp state
    /// that is still memory-safe, so recover the guard instead of spreading the panic.
    pub fn lock(&self) -> MutexGuard<'_, Core<L>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    /// Wait on the condvar until `deadline` (None: at most a slice, the caller loops).
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Core<L>>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, Core<L>> {
        // Wake up at least this often so a missed notify cannot hang a caller.
        const SLICE: Duration = Duration::from_millis(200);
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()).min(SLICE))
            .unwrap_or(SLICE);
        match self.cond.wait_timeout(guard, wait) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "tunnel stream timed out")
}

fn tunnel_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "tunnel was shut down")
}

/// Blocking stream over one smoltcp TCP socket.
pub(crate) struct StreamCore<L: Link> {
    pub shared: Arc<Shared<L>>,
    pub handle: SocketHandle,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

impl<L: Link> StreamCore<L> {
    pub fn new(shared: Arc<Shared<L>>, handle: SocketHandle) -> Self {
        Self {
            shared,
            handle,
            read_timeout: None,
            write_timeout: None,
        }
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        let mut core = self.shared.lock();
        loop {
            match try_recv(&mut core, self.handle, buf) {
                Poll::Ready(r) => return r,
                Poll::Pending => {}
            }
            if self.shared.is_closed() {
                return Err(tunnel_closed());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            core = self.shared.wait(core, deadline);
        }
    }

    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.write_timeout.map(|t| Instant::now() + t);
        let mut core = self.shared.lock();
        loop {
            match try_send(&mut core, self.handle, buf) {
                Poll::Ready(r) => return r,
                Poll::Pending => {}
            }
            if self.shared.is_closed() {
                return Err(tunnel_closed());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out());
            }
            core = self.shared.wait(core, deadline);
        }
    }

    /// Send FIN: the peer reads EOF, we can still read its reply.
    pub fn shutdown_write(&self) {
        let mut core = self.shared.lock();
        core.stack.tcp(self.handle).close();
        core.pump();
    }

    pub fn abort(&self) {
        let mut core = self.shared.lock();
        core.stack.tcp(self.handle).abort();
        core.pump();
    }

    pub fn is_open(&self) -> bool {
        let mut core = self.shared.lock();
        let s = core.stack.tcp(self.handle);
        s.may_send() && s.may_recv() && !s.can_recv()
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddrV4> {
        let mut core = self.shared.lock();
        endpoint_v4(core.stack.tcp(self.handle).remote_endpoint())
    }
}

impl<L: Link> Drop for StreamCore<L> {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        core.stack.orphan(self.handle);
        core.pump();
    }
}

pub(crate) fn endpoint_v4(ep: Option<smoltcp::wire::IpEndpoint>) -> Option<std::net::SocketAddrV4> {
    let ep = ep?;
    match ep.addr {
        smoltcp::wire::IpAddress::Ipv4(a) => Some(std::net::SocketAddrV4::new(a, ep.port)),
        // Only reachable if another crate turns on smoltcp's IPv6 support.
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub(crate) enum Poll<T> {
    Ready(T),
    Pending,
}

/// One non-blocking receive attempt (shared by the blocking and async paths).
pub(crate) fn try_recv<L: Link>(
    core: &mut Core<L>,
    handle: SocketHandle,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let socket = core.stack.tcp(handle);
    if socket.can_recv() {
        // Only announce the reopened window ourselves when the buffer was
        // more than half full; otherwise the next incoming segment's ACK will.
        let was_crowded = socket.recv_queue() * 2 > socket.recv_capacity();
        return match socket.recv_slice(buf) {
            Ok(n) => {
                if was_crowded {
                    core.pump();
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e))),
        };
    }
    match socket.state() {
        // Peer sent FIN and everything was read: clean EOF.
        tcp::State::CloseWait
        | tcp::State::LastAck
        | tcp::State::TimeWait
        | tcp::State::Closing => Poll::Ready(Ok(0)),
        tcp::State::Closed => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "tunnel TCP connection reset or timed out",
        ))),
        tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived => Poll::Pending,
        _ if !socket.may_recv() => Poll::Ready(Ok(0)),
        _ => Poll::Pending,
    }
}

/// One non-blocking send attempt.
pub(crate) fn try_send<L: Link>(
    core: &mut Core<L>,
    handle: SocketHandle,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let socket = core.stack.tcp(handle);
    if !socket.may_send() {
        return match socket.state() {
            tcp::State::SynSent | tcp::State::SynReceived => Poll::Pending,
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel TCP connection is closed for writing",
            ))),
        };
    }
    if !socket.can_send() {
        return Poll::Pending;
    }
    match socket.send_slice(buf) {
        Ok(n) => {
            core.pump();
            Poll::Ready(Ok(n))
        }
        Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
    }
}
