//! Binding, TLS and the serving loop. `Portal::start` is what the binary and the tests use.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::{router, AppState};
use crate::store::Store;
use crate::{auth, tls, Settings};

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const URL_FILE: &str = "portal.url";

/// A running portal.
pub struct Portal {
    pub addr: SocketAddr,
    pub url: String,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Portal {
    /// Opens the database (running migrations), prepares TLS and the admin token, binds and
    /// starts serving in the background.
    pub async fn start(settings: Settings) -> Result<Portal> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        let store = Store::open(&settings.database_url())
            .await
            .context("opening the database")?;
        // Replicas: the shared identity lands in the data directory before it is read.
        crate::shared::adopt(&store, &settings.data_dir).await?;
        crate::shared::check_storage(&store, settings.storage_dir()).await?;
        let mut settings = settings;
        if let Some(t) = &settings.tunnel {
            // Sensors reach the API at the portal's tunnel address: the certificate names it.
            settings.extra_sans.push(t.portal_address().to_string());
        }
        let tls_config = tls::server_config(&settings).context("preparing TLS")?;
        let gateway = match &settings.tunnel {
            Some(t) => Some(crate::gateway::start(t, &settings.data_dir, &store).await?),
            None => None,
        };
        if let (Some(gw), Some(t)) = (&gateway, settings.tunnel.as_mut()) {
            // With port 0 (tests) or no explicit endpoint, tell sensors the bound address.
            if t.endpoint.is_empty() || t.endpoint.ends_with(":0") {
                t.endpoint = gw.local_addr().to_string();
            }
            tracing::info!(listen = %gw.local_addr(), portal = %t.portal_address(), "WireGuard gateway up");
        }
        let admin_token = ensure_admin_token(&settings)?;
        let sealer = crate::sealed::Sealer::load_or_create(&settings.data_dir)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        std::fs::write(settings.data_dir.join(URL_FILE), format!("{url}\n"))?;
        tracing::info!(%addr, backend = store.backend(), "portal listening");

        let state = Arc::new(AppState {
            store,
            admin_hash: auth::hash(&admin_token),
            sealer,
            settings,
            gateway,
            peer_syncs: Arc::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(tls_config),
            state.clone(),
            rx,
        ));
        Ok(Portal {
            addr,
            url,
            state,
            shutdown,
            task,
        })
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

fn ensure_admin_token(settings: &Settings) -> Result<String> {
    let path = settings.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => {
            let token = auth::random_secret("oat_", 32);
            tls::write_private(&path, format!("{token}\n").as_bytes())?;
            Ok(token)
        }
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(state.clone());
    let reaper = tokio::spawn(reap(state.clone(), shutdown.clone()));
    let feed_sync = state.settings.feed_upstream.clone().map(|cfg| {
        let data = state.settings.data_dir.clone();
        tokio::spawn(crate::feeds::upstream::schedule(
            state.store.clone(),
            data.clone(),
            cfg,
            crate::feeds::ImportOptions {
                shared_dir: state.settings.shared_dir.clone(),
                ..crate::feeds::ImportOptions::in_data_dir(&data)
            },
            state.settings.feed_sync_every,
            shutdown.clone(),
        ))
    });
    // With or without a gateway: the identity cache follows the same notifications.
    let peer_sync = crate::peer_sync::spawn(
        state.gateway.clone(),
        state.store.clone(),
        state.peer_syncs.clone(),
        shutdown.clone(),
    );
    let tunnel = state
        .gateway
        .clone()
        .map(|gw| tokio::spawn(crate::gateway::serve(gw, acceptor.clone(), app.clone())));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_stream(tcp, peer.to_string(), acceptor.clone(), app.clone()));
            }
        }
    }
    reaper.abort();
    if let Some(t) = feed_sync {
        t.abort();
    }
    if let Some(t) = peer_sync {
        t.abort();
    }
    if let Some(t) = tunnel {
        t.abort();
    }
}

/// Serves HTTPS on any byte stream: a TCP connection, or a stream from the tunnel gateway.
pub async fn serve_stream<S>(stream: S, peer: String, acceptor: TlsAcceptor, app: axum::Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls =
        match tokio::time::timeout(std::time::Duration::from_secs(30), acceptor.accept(stream))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
    let service = TowerToHyperService::new(app);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Returns jobs whose sensor went silent to the queue, each exactly once.
async fn reap(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(state.settings.reap_every);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                match state.store.requeue_expired(outpost_wire::unix_now(), state.settings.loss_rules()).await {
                    Ok(lost) => {
                        for j in lost {
                            tracing::warn!(job = j.id, now = j.state.as_str(), "lease expired");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "lease reaper failed"),
                }
            }
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let portal = Portal::start(settings).await?;
    println!("outpost-portal listening on {}", portal.url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    portal.stop().await;
    Ok(())
}
