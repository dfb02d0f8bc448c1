//! Accepted inner TCP connections, blocking and (feature `tokio`) async.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::stream::{endpoint_v4, Net, StreamCore};

use super::link::GatewayCore;
use super::PeerIdentity;

/// An inner TCP connection accepted by the gateway, with the peer's identity.
pub struct GatewayStream {
    pub(super) inner: StreamCore<GatewayCore>,
    pub(super) peer: PeerIdentity,
}

impl GatewayStream {
    pub fn peer(&self) -> PeerIdentity {
        self.peer
    }
    /// The remote (sensor-side) TCP address inside the tunnel.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddrV4> {
        self.inner.peer_addr()
    }
    pub fn local_addr(&self) -> Option<std::net::SocketAddrV4> {
        let mut core = self.inner.shared.lock();
        endpoint_v4(core.tcp(self.inner.handle).local_endpoint())
    }
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.read_timeout = timeout;
    }
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.write_timeout = timeout;
    }
    pub fn shutdown_write(&self) {
        self.inner.shutdown_write();
    }
}

impl fmt::Debug for GatewayStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayStream")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Read for GatewayStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for GatewayStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(feature = "tokio")]
mod async_io {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::GatewayStream;
    use crate::stream::{try_recv, try_send, Net, Poll as P};

    fn closed() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "gateway was shut down")
    }

    impl AsyncRead for GatewayStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let mut core = this.inner.shared.lock();
            match try_recv(&mut *core, this.inner.handle, buf.initialize_unfilled()) {
                P::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                P::Ready(Err(e)) => Poll::Ready(Err(e)),
                P::Pending if this.inner.shared.is_closed() => Poll::Ready(Err(closed())),
                P::Pending => {
                    // Registered under the lock, so no wake-up can slip by.
                    core.tcp(this.inner.handle).register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        }
    }

    impl AsyncWrite for GatewayStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let mut core = this.inner.shared.lock();
            match try_send(&mut *core, this.inner.handle, buf) {
                P::Ready(r) => Poll::Ready(r),
                P::Pending if this.inner.shared.is_closed() => Poll::Ready(Err(closed())),
                P::Pending => {
                    core.tcp(this.inner.handle).register_send_waker(cx.waker());
                    Poll::Pending
                }
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.inner.shutdown_write();
            Poll::Ready(Ok(()))
        }
    }
}
