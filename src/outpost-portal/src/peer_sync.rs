//! Replicas: every portal process's gateway holds the peers the database holds. Each
//! change to a sensor's WireGuard keys (registration, deletion, either phase of a
//! rotation) sends a NOTIFY on PostgreSQL in the transaction that makes it; every
//! process LISTENs on a dedicated connection and, on each notification, brings its
//! gateway in step with the `sensors` table. After a (re)connect it re-reads the whole
//! table first, since notifications sent while it was away are lost.
//!
//! SQLite serves one process only: the process that changes a key changes its own
//! gateway, and nothing listens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost_tunnel::{Gateway, GatewayPeer, PublicKey};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::{Store, StoreError, PEERS_CHANNEL};

/// How often the LISTEN connection is checked: a silently dead one would miss changes.
const PING_EVERY: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the LISTEN connection: {0}")]
    Listen(#[from] tokio_postgres::Error),
    #[error("the LISTEN connection closed")]
    Closed,
    #[error("the LISTEN connection did not answer a ping")]
    Timeout,
}

/// Makes the gateway's peers those of the `sensors` table: keys gone or moved are
/// removed, missing ones added (a pending rotation key beside its sensor's current one).
/// A bad row costs that sensor its tunnel, never the others theirs. A registration in
/// this process adds its peer before committing; a re-read in between drops it for the
/// moment until the registration's own notification adds it back (the sensor's
/// handshake retry covers that gap).
pub async fn sync_peers(gw: &Gateway, store: &Store) -> Result<(), StoreError> {
    let rows = store.tunnel_peers().await?;
    let mut wanted: HashMap<PublicKey, (std::net::Ipv4Addr, bool, String)> = HashMap::new();
    for row in rows {
        let keys =
            std::iter::once((row.wg_public_key, false)).chain(row.pending_key.map(|k| (k, true)));
        for (key, pending) in keys {
            match key.parse::<PublicKey>() {
                Ok(k) => {
                    wanted.insert(k, (row.tunnel_address, pending, row.sensor_id.clone()));
                }
                Err(e) => {
                    tracing::error!(sensor = %row.sensor_id, pending, error = %e, "skipping an unreadable WireGuard key")
                }
            }
        }
    }
    for p in gw.peers() {
        let k = p.identity.public_key;
        if wanted
            .get(&k)
            .is_none_or(|(addr, _, _)| *addr != p.identity.tunnel_addr)
        {
            gw.remove_peer(&k);
        }
    }
    // Current keys first: a pending key shares its sensor's address.
    let mut missing: Vec<_> = wanted
        .into_iter()
        .filter(|(k, _)| gw.peer_status(k).is_none())
        .collect();
    missing.sort_by_key(|(_, (_, pending, _))| *pending);
    for (public_key, (allowed_ip, pending, sensor)) in missing {
        let peer = GatewayPeer {
            public_key,
            allowed_ip,
            preshared_key: None,
        };
        let added = if pending {
            gw.add_peer_sharing_address(peer)
        } else {
            gw.add_peer(peer)
        };
        if let Err(e) = added {
            tracing::error!(%sensor, pending, error = %e, "skipping a tunnel key that cannot be added");
        }
    }
    Ok(())
}

/// On PostgreSQL, follows the database's peers until shutdown, reconnecting with backoff.
pub fn spawn(
    gw: Arc<Gateway>,
    store: Store,
    syncs: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Store::Postgres(pg) = &store else {
        return None;
    };
    let mut config = (*pg.config()).clone();
    // Names it in pg_stat_activity (operators, and the replicas test, find it there).
    config.application_name("outpost-portal peer sync");
    Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let run = follow(&gw, &store, &config, &syncs, &mut backoff);
            tokio::select! {
                _ = shutdown.changed() => return,
                r = run => if let Err(e) = r {
                    tracing::warn!(error = %e, retry_in = ?backoff, "gateway peer sync lost the database; reconnecting");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }))
}

async fn follow(
    gw: &Gateway,
    store: &Store,
    config: &tokio_postgres::Config,
    syncs: &AtomicU64,
    backoff: &mut Duration,
) -> Result<(), SyncError> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // The connection delivers notifications only to whoever polls it.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "LISTEN connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {PEERS_CHANNEL}"))
        .await?;
    // Listening before reading: a change between the two is read, or heard, or both.
    sync_peers(gw, store).await?;
    syncs.fetch_add(1, Ordering::Relaxed);
    *backoff = Duration::from_millis(500);
    tracing::info!("gateway peers follow the database");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => {
                n.ok_or(SyncError::Closed)?;
                // One re-read covers every change announced meanwhile.
                while rx.try_recv().is_ok() {}
                sync_peers(gw, store).await?;
            }
            _ = ping.tick() => {
                tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1"))
                    .await
                    .map_err(|_| SyncError::Timeout)??;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
