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
use crate::watchdog::Liveness;

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

/// Why the gateway's endpoint gave no address.
#[derive(Debug)]
enum Lookup {
    /// The setting itself is unusable (no port, not a name): retrying cannot help.
    Bad(WgError),
    /// The name did not resolve now (no DNS server reachable yet, no uplink): retry.
    NotYet(String),
}

/// The gateway's UDP endpoint; a host name is resolved here (IPv4 only, like the tunnel).
fn resolve_endpoint(endpoint: &str) -> Result<SocketAddr, Lookup> {
    let addrs = endpoint.to_socket_addrs().map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            Lookup::Bad(bad("endpoint", format!("{endpoint:?}: {e}")))
        } else {
            Lookup::NotYet(format!("cannot resolve {endpoint:?} yet: {e}"))
        }
    })?;
    addrs
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| Lookup::NotYet(format!("{endpoint:?} has no IPv4 address yet")))
}

/// Resolves the endpoint, waiting out a branch uplink that is not up yet.
fn resolve_endpoint_patiently(
    endpoint: &str,
    reporter: &Reporter,
    alive: &Liveness,
) -> Result<SocketAddr, WgError> {
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(60));
    loop {
        match resolve_endpoint(endpoint) {
            Ok(a) => return Ok(a),
            Err(Lookup::Bad(e)) => return Err(e),
            Err(Lookup::NotYet(reason)) => {
                reporter.phase(
                    Phase::WgUp,
                    PhaseOutcome::Failed,
                    Some(&format!("{reason}; still trying")),
                );
                alive.pause(backoff.next_delay());
            }
        }
    }
}

fn device_config(
    key: &DeviceKey,
    t: &TunnelConfig,
    endpoint: SocketAddr,
) -> Result<DeviceConfig, WgError> {
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
    let mut cfg = DeviceConfig::new(private, peer, endpoint, address);
    // Looked up again whenever handshakes stop succeeding: the portal may move.
    cfg.endpoint_name = Some(t.endpoint.clone());
    cfg.persistent_keepalive = (t.persistent_keepalive_s > 0).then_some(t.persistent_keepalive_s);
    Ok(cfg)
}

/// What the sensor proves itself with inside the tunnel.
pub struct Credentials<'a> {
    pub key: &'a DeviceKey,
    pub ca_pem: &'a str,
    pub api_key: &'a Secret,
}

/// Brings the tunnel up and verifies it with one authenticated heartbeat. Retries for as
/// long as it takes (the portal may be down for hours), telling the console why it waits.
pub fn bring_up(
    creds: &Credentials<'_>,
    t: &TunnelConfig,
    reporter: &Reporter,
    running: &Running,
    metrics: &mut dyn FnMut() -> Metrics,
    alive: &Liveness,
) -> Result<Tunnel, WgError> {
    reporter.phase(Phase::WgUp, PhaseOutcome::Started, None);
    let started = Instant::now();
    let portal: SocketAddrV4 = SocketAddrV4::new(
        t.portal_address
            .parse()
            .map_err(|e| bad("portal_address", e))?,
        443,
    );
    let endpoint = resolve_endpoint_patiently(&t.endpoint, reporter, alive)?;
    // Without a route yet the tunnel still starts and waits for one (outpost-tunnel).
    let device = Arc::new(
        DeviceTunnel::start(device_config(creds.key, t, endpoint)?)
            .map_err(|e| WgError::Start(e.to_string()))?,
    );
    let connector =
        ().chain(TunnelConnector::new(device.clone()))
            .chain(RustlsConnector::default());
    let transport: Arc<dyn Transport> = Arc::new(
        UreqTransport::with_parts(
            &format!("https://{portal}"),
            creds.ca_pem,
            connector,
            DefaultResolver::default(),
        )
        .map_err(|e| WgError::Start(e.to_string()))?,
    );

    while let Err(e) = {
        alive.tick();
        device.wait_handshake(HANDSHAKE_WAIT)
    } {
        let reason = format!(
            "no WireGuard handshake with the portal gateway at {} yet ({e}); still trying",
            t.endpoint
        );
        reporter.phase(Phase::WgUp, PhaseOutcome::Failed, Some(&reason));
    }

    // The handshake alone proves little: one authenticated request must come back.
    let client = PortalClient::new(transport.clone(), creds.api_key.clone());
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
            // Not said: the claim loop has not looked at what a previous run left yet, and
            // "not said" keeps every lease of this sensor as it is.
            running_jobs: None,
            feed_release: None,
        };
        match client.heartbeat(&hb) {
            Ok(_) => break,
            Err(e) => {
                let reason = format!("the portal did not answer through the tunnel: {e}");
                reporter.phase(Phase::WgUp, PhaseOutcome::Failed, Some(&reason));
                alive.pause(backoff.next_delay());
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
        match resolve_endpoint("no-port-here") {
            Err(Lookup::Bad(e)) => assert!(e.to_string().contains("endpoint"), "{e}"),
            other => panic!("a missing port is a bad setting, got {other:?}"),
        }
    }
}
