//! The WireGuard gateway: terminates every sensor's tunnel on one UDP port (user space,
//! no root) and serves the same HTTPS API on the portal's tunnel address. Each stream
//! carries the peer's identity, so a request is tied to the tunnel it came through.

use std::sync::Arc;

use anyhow::{Context, Result};
use outpost_tunnel::{Gateway, GatewayConfig, PeerIdentity, PrivateKey};
use tokio_rustls::TlsAcceptor;

use crate::settings::TunnelSettings;
use crate::store::{Store, TunnelPool};
use crate::tls::write_private;

pub const KEY_FILE: &str = "wg.key";
/// The API's port inside the tunnel.
pub const API_PORT: u16 = 443;

/// Loads the gateway's private key from the data directory, or makes one.
pub fn load_or_create_key(dir: &std::path::Path) -> Result<PrivateKey> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            write_private(&path, format!("{}\n", key.to_base64()).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn pool(t: &TunnelSettings) -> TunnelPool {
    TunnelPool {
        network: t.network,
        prefix: t.prefix,
        portal: t.portal_address(),
    }
}

/// Binds the gateway and loads every registered sensor as a peer.
pub async fn start(
    t: &TunnelSettings,
    dir: &std::path::Path,
    store: &Store,
) -> Result<Arc<Gateway>> {
    let key = load_or_create_key(dir)?;
    let mut cfg = GatewayConfig::new(key, t.listen, t.portal_address(), API_PORT);
    cfg.prefix = t.prefix;
    let gw = Gateway::bind(cfg)
        .with_context(|| format!("binding the WireGuard gateway on {}", t.listen))?;
    // A bad row costs that sensor its tunnel, never the portal its start.
    crate::peer_sync::sync_peers(&gw, store).await?;
    Ok(Arc::new(gw))
}

/// Accepts tunnel streams and serves the API on them until the task is dropped.
pub async fn serve(gw: Arc<Gateway>, acceptor: TlsAcceptor, app: axum::Router) {
    loop {
        match gw.accept_async().await {
            Ok(stream) => {
                let peer: PeerIdentity = stream.peer();
                let app = app.clone().layer(axum::Extension(peer));
                let label = format!("tunnel:{}", peer.tunnel_addr);
                tokio::spawn(crate::server::serve_stream(
                    stream,
                    label,
                    acceptor.clone(),
                    app,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
