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
crate::stream::impl_async_io!(GatewayStream);
