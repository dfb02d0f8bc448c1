//! The `wg_up` phase: bring up the user-space WireGuard tunnel to the portal's gateway
//! and move every control request into it. Only connections this daemon opens through
//! the tunnel enter it (no TUN device, no routes), so scan traffic cannot.
//!
//! `wg_up` is reported done only after a completed handshake AND one authenticated
//! request answered through the tunnel.

use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_tunnel::ureq_transport::TunnelConnector;
use outpost_tunnel::{DeviceConfig, DeviceTunnel, PrivateKey, PublicKey};
use outpost_wire::log::{Phase, PhaseOutcome};
use outpost_wire::sensor::{Activity, HeartbeatRequest, Metrics, TunnelConfig};
use outpost_wire::Secret;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, RustlsConnector};

use crate::api::PortalClient;
use crate::backoff::Backoff;
use crate::heartbeat::Running;
use crate::identity::DeviceKey;
use crate::report::Reporter;
use crate::transport::{Transport, UreqTransport};

/// How long one wait for the handshake lasts before the console says so.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("the portal sent an unusable tunnel setting `{field}`: {reason}")]
    BadConfig { field: &'static str, reason: String },
    #[error("the device key is unusable: {0}")]
    BadKey(String),
    #[error("starting the tunnel: {0}")]
    Start(String),
}

/// The tunnel and the transport that dials through it.
pub struct Tunnel {
    pub device: Arc<DeviceTunnel>,
    pub transport: Arc<dyn Transport>,
}

fn bad(field: &'static str, reason: impl ToString) -> WgError {
    WgError::BadConfig {
        field,
        reason: reason.to_string(),
    }
}

/// The gateway's UDP endpoint; a host name is resolved here (IPv4 only, like the tunnel).
fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr, WgError> {
    endpoint
        .to_socket_addrs()
        .map_err(|e| bad("endpoint", format!("{endpoint:?}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| bad("endpoint", format!("{endpoint:?} has no IPv4 address")))
}

fn device_config(key: &DeviceKey, t: &TunnelConfig) -> Result<DeviceConfig, WgError> {
    let private: PrivateKey = key
        .private_b64()
        .expose()
        .parse()
        .map_err(|e| WgError::BadKey(format!("{e}")))?;
    let peer: PublicKey = t
        .portal_public_key
        .parse()
        .map_err(|e| bad("portal_public_key", e))?;
    let address = t
        .sensor_address
        .parse()
        .map_err(|e| bad("sensor_address", e))?;
    let mut cfg = DeviceConfig::new(private, peer, resolve_endpoint(&t.endpoint)?, address);
    cfg.persistent_keepalive = (t.persistent_keepalive_s > 0).then_some(t.persistent_keepalive_s);
    Ok(cfg)
}

/// Brings the tunnel up and verifies it with one authenticated heartbeat. Retries for as
/// long as it takes (the portal may be down for hours), telling the console why it waits.
pub fn bring_up(
    key: &DeviceKey,
    t: &TunnelConfig,
    ca_pem: &str,
    api_key: &Secret,
    reporter: &Reporter,
    running: &Running,
    metrics: &mut dyn FnMut() -> Metrics,
) -> Result<Tunnel, WgError> {
    reporter.phase(Phase::WgUp, PhaseOutcome::Started, None);
    let started = Instant::now();
    let portal: SocketAddrV4 = SocketAddrV4::new(
        t.portal_address
            .parse()
            .map_err(|e| bad("portal_address", e))?,
        443,
    );
    let device = Arc::new(
        DeviceTunnel::start(device_config(key, t)?).map_err(|e| WgError::Start(e.to_string()))?,
    );
    let connector =
        ().chain(TunnelConnector::new(device.clone()))
            .chain(RustlsConnector::default());
    let transport: Arc<dyn Transport> = Arc::new(
        UreqTransport::with_parts(
            &format!("https://{portal}"),
            ca_pem,
            connector,
            DefaultResolver::default(),
        )
        .map_err(|e| WgError::Start(e.to_string()))?,
    );

    while let Err(e) = device.wait_handshake(HANDSHAKE_WAIT) {
        let reason = format!(
            "no WireGuard handshake with the portal gateway at {} yet ({e}); still trying",
            t.endpoint
        );
        reporter.phase(Phase::WgUp, PhaseOutcome::Failed, Some(&reason));
    }

    // The handshake alone proves little: one authenticated request must come back.
    let client = PortalClient::new(transport.clone(), api_key.clone());
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let hb = HeartbeatRequest {
            activity: Activity::Idle,
            uptime_s: crate::metrics::uptime_s(),
            agent_version: crate::register::AGENT_VERSION.to_owned(),
            phase: Some(Phase::WgUp),
            firmware_version: running.firmware_version.clone(),
            boot_slot: running.boot_slot.clone(),
            metrics: metrics(),
        };
        match client.heartbeat(&hb) {
            Ok(_) => break,
            Err(e) => {
                let reason = format!("the portal did not answer through the tunnel: {e}");
                reporter.phase(Phase::WgUp, PhaseOutcome::Failed, Some(&reason));
                std::thread::sleep(backoff.next_delay());
            }
        }
    }
    let took = started.elapsed().as_millis();
    reporter.say(&format!(
        "tunnel {} -> {} verified in {took} ms",
        t.sensor_address, t.portal_address
    ));
    reporter.phase(Phase::WgUp, PhaseOutcome::Done, None);
    Ok(Tunnel { device, transport })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_or_say_why() {
        assert_eq!(
            resolve_endpoint("127.0.0.1:51820").unwrap(),
            "127.0.0.1:51820".parse::<SocketAddr>().unwrap()
        );
        let e = resolve_endpoint("no-port-here").unwrap_err();
        assert!(e.to_string().contains("endpoint"), "{e}");
    }
}
