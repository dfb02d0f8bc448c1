//! User-space WireGuard for Outpost: the sensor's control tunnel and the
//! portal's multi-peer gateway.
//!
//! Both sides run boringtun's sans-IO Noise core plus a smoltcp TCP/IP stack
//! inside the process. No TUN device, no routes, no NET_ADMIN: only
//! connections opened through this crate enter the tunnel, so a sensor's
//! scan traffic cannot leak into it.
//!
//! - Device: [`DeviceTunnel::start`] then [`DeviceTunnel::connect`] gives a
//!   blocking [`TunnelTcpStream`] (`Read + Write`) for TLS/HTTP. With the
//!   `tokio` feature, `DeviceTunnel::start_async` runs the tunnel as a task and
//!   `connect_async` gives the same stream as `AsyncRead + AsyncWrite` (many
//!   tunnels in one process: the fleet simulator).
//! - Gateway: [`Gateway::bind`], [`Gateway::add_peer`], then
//!   [`Gateway::accept`] (or `accept_async`) yields [`GatewayStream`]s that
//!   carry the peer's identity; with the `tokio` feature they implement
//!   `AsyncRead + AsyncWrite`.
//! - Keys: [`PrivateKey::generate`], base64 like `wg genkey`/`wg pubkey`.
//! - Config text: [`WgQuickConfig`] renders and parses wg-quick files.

mod config;
mod device;
mod error;
mod gateway;
mod keys;
mod netstack;
mod stats;
mod stream;
#[cfg(feature = "ureq")]
pub mod ureq_transport;

use std::time::Duration;

pub use config::{Cidr, ConfigError, InterfaceSection, PeerSection, WgQuickConfig};
pub use device::{DeviceConfig, DeviceTunnel, TunnelTcpStream};
pub use error::TunnelError;
pub use gateway::{
    Gateway, GatewayConfig, GatewayPeer, GatewayStats, GatewayStream, PeerIdentity, PeerStatus,
};
pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey, KEY_LEN};
pub use stats::{DropCounters, DropReason, TunnelStats};

/// Largest outer datagram accepted. Our stacks announce an MSS derived from
/// MTU 1420, so legitimate peers (wg-quick default MTU up to 1500) stay below.
pub(crate) const MAX_DATAGRAM: usize = 1500 + 32;

/// Scratch buffer for boringtun: the largest inner packet plus overhead.
pub(crate) const WG_BUF: usize = 65536 + 32;

/// How often WireGuard timers run (handshake retries, keepalives).
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(100);
