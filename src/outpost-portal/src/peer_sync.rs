//! Replicas: every portal process's gateway holds the peers the database holds. Each
//! change to a sensor's WireGuard keys (registration, deletion, either phase of a
//! rotation) sends a NOTIFY on PostgreSQL in the transaction that makes it; every
//! process LISTENs on a dedicated connection and, on each notification, brings its
//! gateway in step with the `sensors` table. After a (re)connect it re-reads the whole
//! table first, since notifications sent while it was away are lost.
//!
//! The same notifications keep the store's cache of sensor identities
//! (`store/auth_cache.rs`) in step, with or without a gateway: a notified sensor's entry
//! is dropped as the notification arrives, before the gateway is touched, and the cache
//! is in use only while the LISTEN connection is up.
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

use crate::store::{Store, StoreError, TunnelPeerRow, PEERS_CHANNEL};

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

/// The keys the gateway should hold: key -> (tunnel address, pending, sensor).
type Wanted = HashMap<PublicKey, (std::net::Ipv4Addr, bool, String)>;

fn wanted(rows: Vec<TunnelPeerRow>) -> Wanted {
    let mut wanted = Wanted::new();
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
    wanted
}

/// Adds the wanted keys the gateway lacks (or holds with another address).
fn install(gw: &Gateway, wanted: &Wanted) {
    let mut missing: Vec<_> = wanted
        .iter()
        .filter(|(k, (addr, _, _))| match gw.peer_status(k) {
            Some(p) if p.identity.tunnel_addr == *addr => false,
            Some(_) => {
                gw.remove_peer(k);
                true
            }
            None => true,
        })
        .collect();
    // Current keys first: a pending key shares its sensor's address.
    missing.sort_by_key(|(_, (_, pending, _))| *pending);
    for (public_key, (allowed_ip, pending, sensor)) in missing {
        let peer = GatewayPeer {
            public_key: *public_key,
            allowed_ip: *allowed_ip,
            preshared_key: None,
        };
        let added = if *pending {
            gw.add_peer_sharing_address(peer)
        } else {
            gw.add_peer(peer)
        };
        if let Err(e) = added {
            tracing::error!(%sensor, pending, error = %e, "skipping a tunnel key that cannot be added");
        }
    }
}

/// Which sensor each key in the gateway came from, so a notification about one
/// sensor is applied from that sensor's row alone.
#[derive(Default)]
struct Installed {
    by_sensor: HashMap<String, Vec<PublicKey>>,
    owner: HashMap<PublicKey, String>,
}

impl Installed {
    fn record(&mut self, wanted: &Wanted) {
        for (k, (_, _, sensor)) in wanted {
            self.by_sensor.entry(sensor.clone()).or_default().push(*k);
            if let Some(before) = self.owner.insert(*k, sensor.clone()) {
                if &before != sensor {
                    // The key moved to another sensor: the old one no longer holds it.
                    if let Some(keys) = self.by_sensor.get_mut(&before) {
                        keys.retain(|x| x != k);
                    }
                }
            }
        }
    }
}

/// Makes the gateway's peers those of the `sensors` table: keys gone or moved are
/// removed, missing ones added (a pending rotation key beside its sensor's current one).
/// A bad row costs that sensor its tunnel, never the others theirs. A registration in
/// this process adds its peer before committing; a re-read in between drops it for the
/// moment until the registration's own notification adds it back (the sensor's
/// handshake retry covers that gap). Only at start and after a lost LISTEN connection:
/// notifications are applied per sensor ([`sync_sensors`]).
pub async fn sync_peers(gw: &Gateway, store: &Store) -> Result<(), StoreError> {
    full_sync(gw, store).await.map(|_| ())
}

async fn full_sync(gw: &Gateway, store: &Store) -> Result<Installed, StoreError> {
    let wanted = wanted(store.tunnel_peers().await?);
    for p in gw.peers() {
        let k = p.identity.public_key;
        if wanted
            .get(&k)
            .is_none_or(|(addr, _, _)| *addr != p.identity.tunnel_addr)
        {
            gw.remove_peer(&k);
        }
    }
    install(gw, &wanted);
    let mut installed = Installed::default();
    installed.record(&wanted);
    Ok(installed)
}

/// Brings the keys of the notified sensors in step, reading their rows only: a
/// whole-table re-read per notification made registering N sensors cost N² rows,
/// and dropped the peers of registrations not yet committed (a 5 s handshake retry
/// each).
async fn sync_sensors(
    gw: &Gateway,
    store: &Store,
    ids: &[String],
    installed: &mut Installed,
) -> Result<(), StoreError> {
    let wanted = wanted(store.tunnel_peers_of(ids).await?);
    for id in ids {
        for k in installed.by_sensor.remove(id).unwrap_or_default() {
            if installed.owner.get(&k) != Some(id) {
                continue;
            }
            installed.owner.remove(&k);
            if !wanted.contains_key(&k) {
                gw.remove_peer(&k);
            }
        }
    }
    install(gw, &wanted);
    installed.record(&wanted);
    Ok(())
}

/// On PostgreSQL, follows the database's peers (for the gateway, when there is one, and
/// the identity cache) until shutdown, reconnecting with backoff. `syncs` counts the
/// times the follower started listening (and, with a gateway, re-read every peer).
pub fn spawn(
    gw: Option<Arc<Gateway>>,
    store: Store,
    syncs: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Store::Postgres(pg) = &store else {
        return None;
    };
    let cache_store = pg.clone();
    let mut config = (*pg.config()).clone();
    // Names it in pg_stat_activity (operators, and the replicas test, find it there).
    config.application_name("outpost-portal peer sync");
    Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        let cache = cache_store.auth_cache();
        loop {
            let run = follow(gw.as_deref(), &store, &config, &syncs, &mut backoff);
            tokio::select! {
                _ = shutdown.changed() => {
                    cache.set_listening(false);
                    return;
                }
                r = run => if let Err(e) = r {
                    tracing::warn!(error = %e, retry_in = ?backoff, "peer sync lost the database; reconnecting");
                }
            }
            // Whatever ended the session (a lost connection, an unanswered ping, a failed
            // re-read), notifications may be missed from now on.
            cache.set_listening(false);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }))
}

async fn follow(
    gw: Option<&Gateway>,
    store: &Store,
    config: &tokio_postgres::Config,
    syncs: &AtomicU64,
    backoff: &mut Duration,
) -> Result<(), SyncError> {
    let Store::Postgres(pg) = store else {
        return Ok(());
    };
    let cache = pg.clone();
    let (client, mut conn) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel::<()>();
    // The connection delivers notifications only to whoever polls it. This task alone
    // turns the identity cache on (once LISTEN is in place) and off (as the connection
    // ends), so it is never on while the connection is gone.
    let driver = tokio::spawn(async move {
        let cache = cache.auth_cache();
        let mut listening = Some(listening_rx);
        loop {
            let message = tokio::select! {
                m = std::future::poll_fn(|cx| conn.poll_message(cx)) => m,
                ready = async {
                    match listening.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                }, if listening.is_some() => {
                    listening = None;
                    if ready.is_ok() {
                        cache.set_listening(true);
                    }
                    continue;
                }
            };
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // The payload names the sensor whose keys changed (or that went).
                    let id = n.payload().to_owned();
                    cache.forget(std::slice::from_ref(&id));
                    if tx.send(id).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "LISTEN connection failed");
                    break;
                }
                None => break,
            }
        }
        cache.set_listening(false);
    });
    let _driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {PEERS_CHANNEL}"))
        .await?;
    // Listening before reading: a change between the two is read, or heard, or both.
    listening_tx.send(()).map_err(|_| SyncError::Closed)?;
    let mut installed = match gw {
        Some(gw) => Some(full_sync(gw, store).await?),
        None => None,
    };
    syncs.fetch_add(1, Ordering::Relaxed);
    *backoff = Duration::from_millis(500);
    tracing::info!("gateway peers follow the database");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            n = rx.recv() => {
                let mut ids = vec![n.ok_or(SyncError::Closed)?];
                // One read covers every change announced meanwhile.
                while let Ok(id) = rx.try_recv() {
                    ids.push(id);
                }
                ids.sort();
                ids.dedup();
                if let (Some(gw), Some(installed)) = (gw, installed.as_mut()) {
                    sync_sensors(gw, store, &ids, installed).await?;
                }
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
