use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::keys::PublicKey;

/// Errors of the tunnel crate; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("binding the tunnel UDP socket for {endpoint}: {source}")]
    Bind {
        endpoint: SocketAddr,
        source: io::Error,
    },
    #[error("invalid tunnel settings: {0}")]
    Config(String),
    #[error("starting the tunnel driver thread: {0}")]
    Thread(io::Error),
    #[error("no WireGuard handshake with peer {peer} within {timeout:?}")]
    HandshakeTimeout { peer: PublicKey, timeout: Duration },
    #[error("connecting to {addr} through the tunnel timed out after {timeout:?} (WireGuard session up: {session_up})")]
    ConnectTimeout {
        addr: SocketAddrV4,
        timeout: Duration,
        session_up: bool,
    },
    #[error("connection to {addr} through the tunnel was refused or reset")]
    ConnectRefused { addr: SocketAddrV4 },
    #[error("no free local TCP port in the tunnel stack")]
    NoFreePort,
    #[error("the tunnel has been shut down")]
    Closed,
    #[error("peer {0} is already configured")]
    DuplicatePeer(PublicKey),
    #[error("tunnel address {0} already belongs to another peer")]
    AddressInUse(Ipv4Addr),
    #[error("no free listening slot for port {0}")]
    Listen(u16),
    #[error("no incoming tunnel connection within {0:?}")]
    AcceptTimeout(Duration),
}

impl From<TunnelError> for io::Error {
    fn from(e: TunnelError) -> io::Error {
        let kind = match &e {
            TunnelError::ConnectTimeout { .. }
            | TunnelError::HandshakeTimeout { .. }
            | TunnelError::AcceptTimeout(_) => io::ErrorKind::TimedOut,
            TunnelError::ConnectRefused { .. } => io::ErrorKind::ConnectionRefused,
            TunnelError::Closed => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
