//! ureq 3 adapter: dial through the device tunnel instead of the host's
//! TCP stack. Build an agent with
//!
//! ```text
//! use ureq::unversioned::{resolver::DefaultResolver, transport::{Connector, RustlsConnector}};
//! let connector = ().chain(TunnelConnector::new(tunnel)).chain(RustlsConnector::default());
//! let agent = ureq::Agent::with_parts(config, connector, DefaultResolver::default());
//! ```
//!
//! Use IP literals (the portal's tunnel address) in URLs, so no DNS lookup
//! happens outside the tunnel.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
};
use ureq::{Error, Timeout};

use crate::device::{DeviceTunnel, TunnelTcpStream};
use crate::error::TunnelError;

/// Used when ureq sets no connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A ureq [`Connector`] that opens connections through a [`DeviceTunnel`].
#[derive(Clone)]
pub struct TunnelConnector {
    tunnel: Arc<DeviceTunnel>,
}

impl TunnelConnector {
    pub fn new(tunnel: Arc<DeviceTunnel>) -> Self {
        Self { tunnel }
    }
}

impl fmt::Debug for TunnelConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelConnector").finish_non_exhaustive()
    }
}

impl<In: Transport> Connector<In> for TunnelConnector {
    type Out = Either<In, TunnelTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if let Some(t) = chained {
            return Ok(Some(Either::A(t)));
        }
        let addr = details
            .addrs
            .iter()
            .find_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4),
                SocketAddr::V6(_) => None,
            })
            .ok_or_else(|| {
                Error::Io(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "the tunnel carries IPv4 only and no IPv4 address was resolved",
                ))
            })?;
        let timeout = details
            .timeout
            .not_zero()
            .map(|d| *d)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let stream = self
            .tunnel
            .connect_timeout(addr, timeout)
            .map_err(|e| match e {
                TunnelError::ConnectTimeout { .. } => Error::Timeout(Timeout::Connect),
                other => Error::Io(other.into()),
            })?;
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TunnelTransport { stream, buffers })))
    }
}

/// One HTTP connection over the tunnel.
pub struct TunnelTransport {
    stream: TunnelTcpStream,
    buffers: LazyBuffers,
}

impl fmt::Debug for TunnelTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelTransport")
            .field("peer", &self.stream.peer_addr())
            .finish()
    }
}

fn io_error(e: io::Error, reason: Timeout) -> Error {
    if e.kind() == io::ErrorKind::TimedOut {
        Error::Timeout(reason)
    } else {
        Error::Io(e)
    }
}

/// ureq's own `check` is crate-private; same rule: no budget left is a timeout.
fn checked(timeout: NextTimeout) -> Result<NextTimeout, Error> {
    if timeout.after.is_zero() {
        Err(Error::Timeout(timeout.reason))
    } else {
        Ok(timeout)
    }
}

impl Transport for TunnelTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = checked(timeout.for_write())?;
        self.stream
            .set_write_timeout(timeout.not_zero().map(|d| *d));
        let output = &self.buffers.output()[..amount];
        (&self.stream)
            .write_all(output)
            .map_err(|e| io_error(e, timeout.reason))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = checked(timeout.for_read())?;
        self.stream.set_read_timeout(timeout.not_zero().map(|d| *d));
        let input = self.buffers.input_append_buf();
        let n = (&self.stream)
            .read(input)
            .map_err(|e| io_error(e, timeout.reason))?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.is_open()
    }
}
