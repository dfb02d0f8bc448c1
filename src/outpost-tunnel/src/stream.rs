//! Shared driver state and the blocking TCP stream both sides hand out.
//!
//! One mutex guards the network state (the device's one stack, or one gateway
//! shard's stacks). Whoever holds it may "pump": run smoltcp and encrypt
//! what it emitted straight onto the UDP socket. So an application write goes
//! out on the caller's thread without waking the driver; the driver threads
//! only receive datagrams and run timers, and signal the condvar when
//! sockets may have changed.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::netstack::Stack;

/// Encrypts and sends the packets smoltcp queued.
pub(crate) trait Link: Send + 'static {
    fn transmit(&mut self, stack: &mut Stack);
}

/// What streams need from the state behind the mutex: their socket, and a pump
/// of the stack that holds it.
pub(crate) trait Net: Send + 'static {
    /// Names one TCP socket.
    type Handle: Copy + Send + Sync + 'static;
    fn tcp(&mut self, handle: Self::Handle) -> &mut tcp::Socket<'static>;
    /// Run the stack holding `handle` and send what it emitted.
    fn pump_for(&mut self, handle: Self::Handle) -> bool;
    /// The user dropped its handle: close gracefully, free the socket later.
    fn orphan(&mut self, handle: Self::Handle);
}

/// One stack and its link (the device side).
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

impl<L: Link> Net for Core<L> {
    type Handle = SocketHandle;
    fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.stack.tcp(handle)
    }
    fn pump_for(&mut self, _: SocketHandle) -> bool {
        self.pump()
    }
    fn orphan(&mut self, handle: SocketHandle) {
        self.stack.orphan(handle)
    }
}

pub(crate) struct Shared<C> {
    core: Mutex<C>,
    cond: Condvar,
    /// Threads blocked in `wait`. Changed only under the lock, so a notifier holding
    /// it sees every waiter; with none (async users only: the portal), signalling
    /// the condvar would be a system call per datagram for nobody.
    waiters: AtomicUsize,
    pub closed: AtomicBool,
}

impl<C: Net> Shared<C> {
    pub fn new(core: C) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(core),
            cond: Condvar::new(),
            waiters: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Lock the core. A panic while holding the lock leaves smoltcp state
    /// that is still memory-safe, so recover the guard instead of spreading the panic.
    pub fn lock(&self) -> MutexGuard<'_, C> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.cond.notify_all();
    }

    /// Wake the threads blocked in `wait`. Call with the lock held.
    pub fn notify(&self) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.cond.notify_all();
        }
    }

    /// Wait on the condvar until `deadline` (None: at most a slice, the caller loops).
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, C>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, C> {
        // Wake up at least this often so a missed notify cannot hang a caller.
        const SLICE: Duration = Duration::from_millis(200);
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()).min(SLICE))
            .unwrap_or(SLICE);
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let guard = match self.cond.wait_timeout(guard, wait) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        guard
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "tunnel stream timed out")
}

fn tunnel_closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "tunnel was shut down")
}

/// Blocking stream over one smoltcp TCP socket.
pub(crate) struct StreamCore<C: Net> {
    pub shared: Arc<Shared<C>>,
    pub handle: C::Handle,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

impl<C: Net> StreamCore<C> {
    pub fn new(shared: Arc<Shared<C>>, handle: C::Handle) -> Self {
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
            match try_recv(&mut *core, self.handle, buf) {
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
            match try_send(&mut *core, self.handle, buf) {
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
        core.tcp(self.handle).close();
        core.pump_for(self.handle);
    }

    pub fn abort(&self) {
        let mut core = self.shared.lock();
        core.tcp(self.handle).abort();
        core.pump_for(self.handle);
    }

    pub fn is_open(&self) -> bool {
        let mut core = self.shared.lock();
        let s = core.tcp(self.handle);
        s.may_send() && s.may_recv() && !s.can_recv()
    }

    pub fn peer_addr(&self) -> Option<std::net::SocketAddrV4> {
        let mut core = self.shared.lock();
        endpoint_v4(core.tcp(self.handle).remote_endpoint())
    }
}

/// The async side of both ends' streams (`TunnelTcpStream`, `GatewayStream`).
#[cfg(feature = "tokio")]
impl<C: Net> StreamCore<C> {
    pub fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll as P;
        let mut core = self.shared.lock();
        match try_recv(&mut *core, self.handle, buf.initialize_unfilled()) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                P::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => P::Ready(Err(e)),
            Poll::Pending if self.shared.is_closed() => P::Ready(Err(tunnel_closed())),
            Poll::Pending => {
                // Registered under the lock, so no wake-up can slip by.
                core.tcp(self.handle).register_recv_waker(cx.waker());
                P::Pending
            }
        }
    }

    pub fn poll_write(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll as P;
        if buf.is_empty() {
            return P::Ready(Ok(0));
        }
        let mut core = self.shared.lock();
        match try_send(&mut *core, self.handle, buf) {
            Poll::Ready(r) => P::Ready(r),
            Poll::Pending if self.shared.is_closed() => P::Ready(Err(tunnel_closed())),
            Poll::Pending => {
                core.tcp(self.handle).register_send_waker(cx.waker());
                P::Pending
            }
        }
    }
}

/// `AsyncRead + AsyncWrite` for a stream type wrapping a `StreamCore` in `inner`.
#[cfg(feature = "tokio")]
macro_rules! impl_async_io {
    ($ty:ty) => {
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.inner.poll_read(cx, buf)
            }
        }

        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.inner.poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                // Writes are handed to the stack (and sent) at once.
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                self.inner.shutdown_write();
                std::task::Poll::Ready(Ok(()))
            }
        }
    };
}
#[cfg(feature = "tokio")]
pub(crate) use impl_async_io;

impl<C: Net> Drop for StreamCore<C> {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        core.orphan(self.handle);
        core.pump_for(self.handle);
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
pub(crate) fn try_recv<C: Net>(
    core: &mut C,
    handle: C::Handle,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let socket = core.tcp(handle);
    if socket.can_recv() {
        // Only announce the reopened window ourselves when the buffer was
        // more than half full; otherwise the next incoming segment's ACK will.
        let was_crowded = socket.recv_queue() * 2 > socket.recv_capacity();
        return match socket.recv_slice(buf) {
            Ok(n) => {
                if was_crowded {
                    core.pump_for(handle);
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
pub(crate) fn try_send<C: Net>(
    core: &mut C,
    handle: C::Handle,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let socket = core.tcp(handle);
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
            core.pump_for(handle);
            Poll::Ready(Ok(n))
        }
        Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
    }
}
