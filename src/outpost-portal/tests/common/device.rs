//! The device end of a tunnel to a portal, as the sensor sets it up from its
//! registration answer: the WireGuard tunnel (outpost-tunnel's DeviceTunnel, on a
//! thread or a tokio task) and an HTTPS client pinned to the portal's CA whose
//! connections go through it. Shared by the tunnel and replica tests (`common::device`)
//! and the fleet benchmark (`examples/fleet_bench.rs`, by path).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_tunnel::ureq_transport::TunnelConnector;
use outpost_tunnel::{DeviceConfig, DeviceTunnel, PrivateKey};
use outpost_wire::sensor::TunnelConfig;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, RustlsConnector};

/// The tunnel a registration answered with, from `key`; `endpoint` replaces the
/// gateway address it names (a replica's own port).
pub fn device_config(
    key: &PrivateKey,
    t: &TunnelConfig,
    endpoint: Option<SocketAddr>,
) -> anyhow::Result<DeviceConfig> {
    let endpoint = match endpoint {
        Some(e) => e,
        None => t.endpoint.parse().context("gateway endpoint")?,
    };
    Ok(DeviceConfig::new(
        key.clone(),
        t.portal_public_key.parse().context("portal key")?,
        endpoint,
        t.sensor_address.parse().context("sensor address")?,
    ))
}

/// A device tunnel on its own thread, once its handshake completed within `wait`.
pub fn start_device(
    key: &PrivateKey,
    t: &TunnelConfig,
    endpoint: Option<SocketAddr>,
    wait: Duration,
) -> anyhow::Result<Arc<DeviceTunnel>> {
    let dev = DeviceTunnel::start(device_config(key, t, endpoint)?)?;
    dev.wait_handshake(wait)?;
    Ok(Arc::new(dev))
}

/// The same driven by a task on the current tokio runtime.
pub async fn start_device_async(
    key: &PrivateKey,
    t: &TunnelConfig,
    endpoint: Option<SocketAddr>,
    wait: Duration,
) -> anyhow::Result<Arc<DeviceTunnel>> {
    let dev = DeviceTunnel::start_async(device_config(key, t, endpoint)?)?;
    dev.wait_handshake_async(wait).await?;
    Ok(Arc::new(dev))
}

/// ureq settings trusting only the portal's CA; statuses are never errors.
pub fn tls_config(ca_pem: &[u8], timeout: Duration) -> anyhow::Result<ureq::config::Config> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let cert = Certificate::from_pem(ca_pem).context("portal CA")?;
    Ok(ureq::Agent::config_builder()
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build())
}

/// A blocking HTTPS client whose every connection goes through the device tunnel.
pub fn tunnel_agent(
    tunnel: Arc<DeviceTunnel>,
    ca_pem: &[u8],
    timeout: Duration,
) -> anyhow::Result<ureq::Agent> {
    let connector = ().chain(TunnelConnector::new(tunnel)).chain(RustlsConnector::default());
    Ok(ureq::Agent::with_parts(
        tls_config(ca_pem, timeout)?,
        connector,
        DefaultResolver::default(),
    ))
}

/// rustls client settings trusting only the portal's CA, for async clients.
pub fn rustls_client(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.context("portal CA")?).context("portal CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}
