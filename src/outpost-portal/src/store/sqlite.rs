//! SQLite backend: one connection behind a mutex, so every write is a single-writer
//! transaction and a claim cannot race another claim.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use outpost_wire::admin::{BundleInfo, JobInfo, JobState, StoredLogEvent};
use outpost_wire::sensor::{Job, JobStatusUpdate, ReportAck, ReportUpload};

use super::{
    check_token, feed_columns, from_json, is_recovery, job_access, parse_state, rotation_step,
    state_after_update, update_effect, Access, AssignRefusal, Assignment, ChannelRefusal,
    ChannelWrite, FeedRelease, Heartbeat, HeartbeatOutcome, JobEffect, JobLease, JobRefusal,
    KeyOwner, LossRules, LostJob, NewBundle, NewFeedRelease, NewJob, NewSensor, PeerInstall,
    PeerRow, RawBundle, RawChannel, RawFeedRelease, RegisterRefusal, Registered, Report,
    RotationBegun, SensorAuth, SensorRow, StoreError, TokenRow, UpdateJobRow, UpdateRefusal,
    UpdateWrite, LOST_DELETED, LOST_LEASE, LOST_RESTART, RECOVERED_AFTER_LOSS, SCOPE_SENSOR,
    TARGET_DELETED,
};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    uses_left INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE sensors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    site TEXT NOT NULL,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    board TEXT NOT NULL,
    hardware_serial TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    wg_public_key TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    registered_at INTEGER NOT NULL,
    last_heartbeat INTEGER,
    activity TEXT,
    phase TEXT,
    metrics TEXT
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    sensor_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    failure_reason TEXT,
    created_at INTEGER NOT NULL,
    claimed_at INTEGER,
    lease_expires_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX jobs_queue ON jobs (site, state, id);
CREATE INDEX jobs_lease ON jobs (state, lease_expires_at);
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL UNIQUE REFERENCES jobs (id),
    sensor_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    partial INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    content TEXT NOT NULL,
    summary TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE TABLE sensor_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX sensor_log_by_sensor ON sensor_log (sensor_id, id);
"#,
    r#"
ALTER TABLE sensors ADD COLUMN tunnel_address TEXT;
CREATE UNIQUE INDEX sensors_tunnel_address ON sensors (tunnel_address);
"#,
    // Set by an operator's rotate-key request; cleared when the sensor's new key lands.
    r#"
ALTER TABLE sensors ADD COLUMN rotate_key_requested INTEGER NOT NULL DEFAULT 0;
"#,
    // A/B updates: published bundles, jobs made for one sensor, what sensors run.
    r#"
CREATE TABLE bundles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    compatible TEXT NOT NULL,
    min_version TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    published_at INTEGER NOT NULL
);
ALTER TABLE jobs ADD COLUMN target_sensor TEXT;
ALTER TABLE jobs ADD COLUMN bundle_id INTEGER REFERENCES bundles (id);
CREATE INDEX jobs_bundle ON jobs (bundle_id);
ALTER TABLE sensors ADD COLUMN firmware_version TEXT;
ALTER TABLE sensors ADD COLUMN boot_slot TEXT;
ALTER TABLE sensors ADD COLUMN update_state TEXT;
"#,
    // Idempotent registration: the token a sensor enrolled with (its hash) and the salt
    // its API key is derived from, so a retry of a registration gets the same answer.
    r#"
ALTER TABLE sensors ADD COLUMN enrolled_with TEXT;
ALTER TABLE sensors ADD COLUMN api_key_salt TEXT;
"#,
    // One sensor per WireGuard key. Duplicates left by older portals are removed first
    // (`dedupe_wg_keys`, keeping the newest).
    r#"
CREATE UNIQUE INDEX sensors_wg_public_key ON sensors (wg_public_key);
"#,
    // The sensor a re-queued job was lost by, so it may still finish it (`job_access`).
    r#"
ALTER TABLE jobs ADD COLUMN lost_by TEXT;
"#,
    // Feed releases: the manifest (a blob under feeds/) and its signature.
    r#"
CREATE TABLE feed_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    manifest_sha256 TEXT NOT NULL UNIQUE,
    plugin_set TEXT NOT NULL,
    notus_version TEXT,
    vt_count INTEGER NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    signature TEXT NOT NULL,
    imported_at INTEGER NOT NULL
);
"#,
    // The board's own serial number (the Pi's, from its device tree) sent at
    // registration; NULL for sensors without one and for those enrolled before.
    r#"
ALTER TABLE sensors ADD COLUMN board_serial TEXT;
"#,
    // Two-phase key rotation: the key a sensor announced and has not yet used; the
    // gateway accepts it beside `wg_public_key` until a request comes through it.
    r#"
ALTER TABLE sensors ADD COLUMN wg_pending_key TEXT;
CREATE UNIQUE INDEX sensors_wg_pending_key ON sensors (wg_pending_key);
-- The claim query's index, as on PostgreSQL (see there).
CREATE INDEX jobs_claimable ON jobs (site, id) WHERE state = 'queued';
"#,
    // Release channels (docs/feeds.md): a site's or a single sensor's; release_id NULL
    // follows the newest release. Retention keeps every release named here. Each
    // sensor's live release from its heartbeat, and since when it is off its channel.
    r#"
CREATE TABLE feed_channels (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    release_id INTEGER,
    set_at INTEGER NOT NULL,
    PRIMARY KEY (scope, name)
);
ALTER TABLE sensors ADD COLUMN feed_release TEXT;
ALTER TABLE sensors ADD COLUMN feed_off_since INTEGER;
"#,
    // The replicas' shared identity (postgres.rs). SQLite serves one process only, so
    // nothing writes it; the table keeps both schemas at the same version.
    r#"
CREATE TABLE portal_secrets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wg_private_key TEXT NOT NULL,
    ca_cert TEXT NOT NULL,
    ca_key TEXT NOT NULL,
    admin_token TEXT NOT NULL,
    credentials_key_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    // Report text in chunks (at most `REPORT_CHUNK` bytes, cut at character boundaries),
    // so storing and serving a report never holds it whole; `reports.content` stays empty.
    // The replicas' shared storage (bundles, feed blobs) is named by `storage_id`, which
    // its directories carry too, so a replica serving from other directories is refused.
    r#"
ALTER TABLE portal_secrets ADD COLUMN storage_id TEXT;
CREATE TABLE report_chunks (
    report_id INTEGER NOT NULL REFERENCES reports (id),
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (report_id, seq)
);
INSERT INTO report_chunks (report_id, seq, data) SELECT id, 0, content FROM reports WHERE content <> '';
UPDATE reports SET content = '' WHERE content <> '';
"#,
];

/// Index in [`MIGRATIONS`] of the unique WireGuard key; duplicates go before it runs.
const UNIQUE_WG_KEY: usize = 5;

const JOB_COLUMNS: &str =
    "id, site, state, spec, sensor_id, attempts, progress, cancel_requested, \
     failure_reason, created_at, lease_expires_at, target_sensor";

const BUNDLE_COLUMNS: &str = "id, version, compatible, min_version, size, sha256, published_at";

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    pub async fn open(path: PathBuf) -> Result<SqliteStore, StoreError> {
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let mut conn = Connection::open(&path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            migrate(&mut conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("sqlite connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    pub async fn create_token(
        &self,
        hash: &str,
        site: &str,
        uses: u32,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (hash, site) = (hash.to_owned(), site.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO tokens (hash, site, uses_left, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, site, uses, expires_at, now],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn register(
        &self,
        token_hash: &str,
        s: NewSensor,
        install: PeerInstall,
    ) -> Result<Result<Registered, RegisterRefusal>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.call(move |c| {
            // Immediate: one registration at a time, so concurrent ones on one token or
            // one key see each other's row.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let owner = tx
                .query_row(
                    "SELECT id, site, enrolled_with, api_key_salt, tunnel_address FROM sensors \
                     WHERE wg_public_key = ?1",
                    params![s.req.wg_public_key],
                    |r| {
                        Ok(KeyOwner {
                            sensor_id: r.get(0)?,
                            site: r.get(1)?,
                            enrolled_with: r.get(2)?,
                            api_key_salt: r.get(3)?,
                            tunnel_address: r.get(4)?,
                        })
                    },
                )
                .optional()?;
            if let Some(owner) = owner {
                // A retry writes nothing; the peer is (re)installed in case it is missing.
                let reg = match super::retry_of(&owner, &token_hash) {
                    Ok(reg) => reg,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                if let Err(e) = install(reg.tunnel_address) {
                    return Ok(Err(RegisterRefusal::Peer(e)));
                }
                return Ok(Ok(reg));
            }
            let row = tx
                .query_row(
                    "SELECT site, uses_left, expires_at FROM tokens WHERE hash = ?1",
                    params![token_hash],
                    |r| {
                        Ok(TokenRow {
                            site: r.get(0)?,
                            uses_left: r.get(1)?,
                            expires_at: r.get(2)?,
                        })
                    },
                )
                .optional()?;
            if let Err(refusal) = check_token(row.as_ref(), &s.req.site, s.now) {
                return Ok(Err(RegisterRefusal::Token(refusal)));
            }
            tx.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?1",
                params![token_hash],
            )?;
            let caps = super::json(&s.req.capabilities)?;
            let address = match s.tunnel_pool {
                Some(pool) => {
                    let used = {
                        let mut st = tx.prepare(
                            "SELECT tunnel_address FROM sensors WHERE tunnel_address IS NOT NULL",
                        )?;
                        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
                        rows.filter_map(|r| r.ok()?.parse().ok()).collect::<Vec<_>>()
                    };
                    Some(pool.allocate(&used).ok_or_else(|| {
                        StoreError::Corrupt("the tunnel network has no free address".into())
                    })?)
                }
                None => None,
            };
            tx.execute(
                "INSERT INTO sensors (id, name, site, hostname, os, board, hardware_serial, agent_version, \
                 capabilities, wg_public_key, api_key_hash, registered_at, tunnel_address, \
                 enrolled_with, api_key_salt, board_serial) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    s.id, s.req.name, s.req.site, s.req.hostname, s.req.os, s.req.board,
                    s.req.hardware_serial, s.req.agent_version, caps, s.req.wg_public_key,
                    s.api_key_hash, s.now, address.map(|a| a.to_string()), token_hash,
                    s.api_key_salt, s.req.board_serial
                ],
            )?;
            // Dropping `tx` without commit rolls back the row and the token use.
            if let Err(e) = install(address) {
                return Ok(Err(RegisterRefusal::Peer(e)));
            }
            tx.commit()?;
            Ok(Ok(Registered {
                sensor_id: s.id,
                site: s.req.site,
                api_key_salt: s.api_key_salt,
                tunnel_address: address,
                created: true,
            }))
        })
        .await
    }

    pub async fn sensor_by_key(&self, key_hash: &str) -> Result<Option<SensorAuth>, StoreError> {
        let key_hash = key_hash.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, name, site, wg_public_key FROM sensors WHERE api_key_hash = ?1",
                params![key_hash],
                |r| {
                    Ok(SensorAuth {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        site: r.get(2)?,
                        wg_public_key: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub async fn tunnel_peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, wg_public_key, tunnel_address, wg_pending_key FROM sensors \
                 WHERE tunnel_address IS NOT NULL ORDER BY id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn begin_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<RotationBegun, StoreError> {
        let (sensor, new_key) = (sensor.to_owned(), new_key.to_owned());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT wg_public_key, wg_pending_key FROM sensors WHERE id = ?1",
                    params![sensor],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM sensors WHERE id <> ?1 \
                 AND (wg_public_key = ?2 OR wg_pending_key = ?2))",
                params![sensor, new_key],
                |r| r.get(0),
            )?;
            let out = rotation_step(row, taken, &new_key);
            if let RotationBegun::Pending { .. } = out {
                tx.execute(
                    "UPDATE sensors SET wg_pending_key = ?2 WHERE id = ?1",
                    params![sensor, new_key],
                )?;
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    pub async fn finish_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let (sensor, new_key) = (sensor.to_owned(), new_key.to_owned());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT wg_public_key FROM sensors WHERE id = ?1 AND wg_pending_key = ?2",
                    params![sensor, new_key],
                    |r| r.get(0),
                )
                .optional()?;
            if old.is_some() {
                tx.execute(
                    "UPDATE sensors SET wg_public_key = ?2, wg_pending_key = NULL, \
                     rotate_key_requested = 0 WHERE id = ?1",
                    params![sensor, new_key],
                )?;
            }
            tx.commit()?;
            Ok(old)
        })
        .await
    }

    pub async fn heartbeat(
        &self,
        hb: &Heartbeat<'_>,
        metrics: &str,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let sensor = hb.sensor.to_owned();
        let activity = hb.req.activity.as_str();
        let phase = hb.req.phase.map(|p| p.as_str());
        let version = hb.req.agent_version.clone();
        let firmware = hb.req.firmware_version.clone();
        let slot = hb.req.boot_slot.clone();
        let listed = hb.req.running_jobs.clone();
        let feed_live = hb.req.feed_release.clone();
        let feed_wanted = hb.feed_wanted.map(str::to_owned);
        let metrics = metrics.to_owned();
        let (now, lease_s, grace_s, rules) = (hb.now, hb.lease_s, hb.grace_s, hb.rules);
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE sensors SET last_heartbeat = ?2, activity = ?3, phase = ?4, metrics = ?5, \
                 agent_version = ?6, firmware_version = ?7, boot_slot = ?8, feed_release = ?9, \
                 feed_off_since = CASE WHEN ?9 IS NULL OR ?10 IS NULL OR ?9 = ?10 THEN NULL \
                 ELSE COALESCE(feed_off_since, ?2) END WHERE id = ?1",
                params![sensor, now, activity, phase, metrics, version, firmware, slot, feed_live, feed_wanted],
            )?;
            let mut lost = Vec::new();
            match &listed {
                None => {
                    tx.execute(
                        "UPDATE jobs SET lease_expires_at = ?2 WHERE sensor_id = ?1 AND state = 'running'",
                        params![sensor, now + lease_s],
                    )?;
                }
                Some(ids) => {
                    let ids = super::json(ids)?;
                    tx.execute(
                        "UPDATE jobs SET lease_expires_at = ?2 WHERE sensor_id = ?1 AND state = 'running' \
                         AND id IN (SELECT value FROM json_each(?3))",
                        params![sensor, now + lease_s, ids],
                    )?;
                    let gone = {
                        let mut st = tx.prepare(
                            "SELECT id, attempts, cancel_requested FROM jobs WHERE sensor_id = ?1 \
                             AND state = 'running' AND id NOT IN (SELECT value FROM json_each(?2)) \
                             AND COALESCE(claimed_at, 0) <= ?3 ORDER BY id",
                        )?;
                        let rows = st.query_map(params![sensor, ids, now - grace_s], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })?;
                        rows.collect::<Result<Vec<(i64, i64, bool)>, _>>()?
                    };
                    for (id, attempts, cancel) in gone {
                        lost.extend(lose(&tx, id, attempts, cancel, LOST_RESTART, rules, now)?);
                    }
                }
            }
            let cancel_jobs = {
                let mut st = tx.prepare(
                    "SELECT id FROM jobs WHERE sensor_id = ?1 AND state = 'running' \
                     AND cancel_requested = 1 ORDER BY id",
                )?;
                let ids = st.query_map(params![sensor], |r| r.get(0))?;
                ids.collect::<Result<Vec<i64>, _>>()?
            };
            let rotate: Option<bool> = tx
                .query_row(
                    "SELECT rotate_key_requested FROM sensors WHERE id = ?1",
                    params![sensor],
                    |r| r.get(0),
                )
                .optional()?;
            tx.commit()?;
            Ok(HeartbeatOutcome {
                cancel_jobs,
                rotate_wg_key: rotate.unwrap_or(false),
                lost,
            })
        })
        .await
    }

    pub async fn claim(
        &self,
        sensor: &SensorAuth,
        kinds: &[String],
        now: i64,
        lease_s: i64,
    ) -> Result<Option<Job>, StoreError> {
        let (id, site) = (sensor.id.clone(), sensor.site.clone());
        let kinds = kinds.to_vec();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Kinds are a short fixed vocabulary; a JSON array keeps the query static.
            let kinds_json = super::json(&kinds)?;
            // Prepared once, from rusqlite's per-connection statement cache.
            let row = tx
                .prepare_cached(
                    "UPDATE jobs SET state = 'running', sensor_id = ?1, claimed_at = ?2, \
                     lease_expires_at = ?3, progress = 0 \
                     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND site = ?4 \
                                 AND kind IN (SELECT value FROM json_each(?5)) \
                                 AND (target_sensor IS NULL OR target_sensor = ?1) \
                                 ORDER BY id LIMIT 1) \
                     RETURNING id, spec, attempts, lease_expires_at",
                )?
                .query_row(params![id, now, now + lease_s, site, kinds_json], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            tx.commit()?;
            row.map(|(id, spec, attempts, lease)| {
                Ok(Job {
                    id,
                    lease_expires_at: lease,
                    attempt: attempts as u32,
                    spec: from_json(&spec)?,
                })
            })
            .transpose()
        })
        .await
    }

    pub async fn requeue_expired(
        &self,
        now: i64,
        rules: LossRules,
    ) -> Result<Vec<LostJob>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = {
                let mut st = tx.prepare(
                    "SELECT id, attempts, cancel_requested FROM jobs \
                     WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY id",
                )?;
                let rows = st.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<Vec<(i64, i64, bool)>, _>>()?
            };
            let mut lost = Vec::new();
            for (id, attempts, cancel) in expired {
                lost.extend(lose(&tx, id, attempts, cancel, LOST_LEASE, rules, now)?);
            }
            tx.commit()?;
            Ok(lost)
        })
        .await
    }

    pub async fn append_log(
        &self,
        sensor: &str,
        rows: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let sensor = sensor.to_owned();
        let rows = rows.to_vec();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare(
                    "INSERT INTO sensor_log (sensor_id, received_at, event) VALUES (?1, ?2, ?3)",
                )?;
                for row in &rows {
                    st.execute(params![sensor, now, row])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn job_status(
        &self,
        sensor: &str,
        job: i64,
        update: &JobStatusUpdate,
        now: i64,
        lease_s: i64,
    ) -> Result<Result<bool, JobRefusal>, StoreError> {
        let sensor = sensor.to_owned();
        let update = update.clone();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (lease, cancel) = match lease_of(&tx, job)? {
                Some((l, cancel)) => (Some(l), cancel),
                None => (None, false),
            };
            let recovering = matches!(update, JobStatusUpdate::Failed { .. });
            let access = match job_access(lease.as_ref(), &sensor, false, recovering) {
                Ok(a) => a,
                Err(r) => return Ok(Err(r)),
            };
            if access == Access::Recovered {
                if let JobStatusUpdate::Failed { reason } = &update {
                    finish_recovered(&tx, job, &sensor, reason, now)?;
                }
                tx.commit()?;
                return Ok(Ok(cancel));
            }
            let next = state_after_update(&update);
            match &update {
                JobStatusUpdate::Running { progress_percent, .. } => {
                    tx.execute(
                        "UPDATE jobs SET progress = ?2, lease_expires_at = ?3 WHERE id = ?1",
                        params![job, (*progress_percent).min(100), now + lease_s],
                    )?;
                }
                JobStatusUpdate::Failed { reason } => {
                    tx.execute(
                        "UPDATE jobs SET state = ?2, failure_reason = ?3, finished_at = ?4 WHERE id = ?1",
                        params![job, next.as_str(), reason, now],
                    )?;
                }
                JobStatusUpdate::Cancelled => {
                    tx.execute(
                        "UPDATE jobs SET state = ?2, finished_at = ?3 WHERE id = ?1",
                        params![job, next.as_str(), now],
                    )?;
                }
            }
            tx.commit()?;
            Ok(Ok(cancel))
        })
        .await
    }

    pub async fn store_report(
        &self,
        sensor: &str,
        job: i64,
        up: &ReportUpload,
        mut text: super::ReportChunks,
        summary: &str,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let sensor = sensor.to_owned();
        // Everything but the text, which comes from `text`.
        let up = ReportUpload {
            content: String::new(),
            ..up.clone()
        };
        let summary = summary.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<(i64, String, String)> = tx
                .query_row(
                    "SELECT id, request_id, sensor_id FROM reports WHERE job_id = ?1",
                    params![job],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((id, request_id, owner)) = existing {
                // A retry of the upload we already have: same answer, nothing written.
                if request_id == up.request_id && owner == sensor {
                    return Ok(Ok(ReportAck { report_id: id, created: false }));
                }
                return Ok(Err(if owner == sensor {
                    JobRefusal::AlreadyReported
                } else {
                    JobRefusal::NotYours
                }));
            }
            let lease = lease_of(&tx, job)?.map(|(l, _)| l);
            match job_access(lease.as_ref(), &sensor, true, is_recovery(&up)) {
                Ok(Access::Leased) => {}
                Ok(Access::Recovered) => {
                    finish_recovered(&tx, job, &sensor, RECOVERED_AFTER_LOSS, now)?
                }
                Err(r) => return Ok(Err(r)),
            }
            let outcome = super::json(&up.outcome)?;
            let outcome = outcome.trim_matches('"').to_owned();
            tx.execute(
                "INSERT INTO reports (job_id, sensor_id, request_id, outcome, partial, content_type, \
                 content, summary, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8)",
                params![job, sensor, up.request_id, outcome, up.partial, up.content_type, summary, now],
            )?;
            let id = tx.last_insert_rowid();
            let mut seq = 0i64;
            while let Some(chunk) = text.next_chunk().map_err(StoreError::ReportText)? {
                tx.execute(
                    "INSERT INTO report_chunks (report_id, seq, data) VALUES (?1, ?2, ?3)",
                    params![id, seq, chunk],
                )?;
                seq += 1;
            }
            let final_state = super::report_state(up.outcome);
            tx.execute(
                "UPDATE jobs SET state = ?2, finished_at = COALESCE(finished_at, ?3), \
                 progress = CASE WHEN ?2 = 'completed' THEN 100 ELSE progress END \
                 WHERE id = ?1 AND state = 'running'",
                params![job, final_state.as_str(), now],
            )?;
            tx.commit()?;
            Ok(Ok(ReportAck { report_id: id, created: true }))
        })
        .await
    }

    pub(super) async fn create_job(&self, j: NewJob) -> Result<i64, StoreError> {
        self.call(move |c| insert_job(c, &j)).await
    }

    pub async fn sensor_site(&self, sensor: &str) -> Result<Option<String>, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT site FROM sensors WHERE id = ?1",
                params![sensor],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Inserts the release unless its manifest is stored; `true` when inserted.
    pub async fn insert_feed_release(&self, r: &NewFeedRelease) -> Result<bool, StoreError> {
        let r = r.clone();
        let (vts, files, bytes) = feed_columns(&r)?;
        self.call(move |c| {
            Ok(c.execute(
                "INSERT INTO feed_releases (manifest_sha256, plugin_set, notus_version, vt_count, \
                 files, bytes, signature, imported_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (manifest_sha256) DO NOTHING",
                params![
                    r.manifest_sha256,
                    r.plugin_set,
                    r.notus_version,
                    vts,
                    files,
                    bytes,
                    r.signature,
                    r.imported_at
                ],
            )? == 1)
        })
        .await
    }

    pub async fn feed_releases(&self) -> Result<Vec<FeedRelease>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT id, manifest_sha256, plugin_set, notus_version, vt_count, files, bytes, \
                 signature, imported_at FROM feed_releases ORDER BY id DESC",
            )?;
            let rows = st.query_map([], |r| {
                Ok(RawFeedRelease {
                    id: r.get(0)?,
                    manifest_sha256: r.get(1)?,
                    plugin_set: r.get(2)?,
                    notus_version: r.get(3)?,
                    vt_count: r.get(4)?,
                    files: r.get(5)?,
                    bytes: r.get(6)?,
                    signature: r.get(7)?,
                    imported_at: r.get(8)?,
                }
                .into_release())
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn delete_feed_releases(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for id in &ids {
                // A pinned release stays, whatever retention asked (docs/feeds.md).
                tx.execute(
                    "DELETE FROM feed_releases WHERE id = ?1 \
                     AND NOT EXISTS (SELECT 1 FROM feed_channels WHERE release_id = ?1)",
                    params![id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Sets or clears one channel; the pinned release and the sensor must exist.
    pub async fn set_feed_channel(
        &self,
        ch: ChannelWrite,
    ) -> Result<Result<bool, ChannelRefusal>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(id) = ch.pinned {
                let found: Option<i64> = tx
                    .query_row("SELECT id FROM feed_releases WHERE id = ?1", params![id], |r| r.get(0))
                    .optional()?;
                if found.is_none() {
                    return Ok(Err(ChannelRefusal::UnknownRelease(id)));
                }
            }
            if ch.scope == SCOPE_SENSOR {
                let found: Option<String> = tx
                    .query_row("SELECT id FROM sensors WHERE id = ?1", params![ch.name], |r| r.get(0))
                    .optional()?;
                if found.is_none() {
                    return Ok(Err(ChannelRefusal::UnknownSensor(ch.name)));
                }
            }
            let changed = if ch.clear {
                tx.execute(
                    "DELETE FROM feed_channels WHERE scope = ?1 AND name = ?2",
                    params![ch.scope, ch.name],
                )? > 0
            } else {
                tx.execute(
                    "INSERT INTO feed_channels (scope, name, release_id, set_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (scope, name) DO UPDATE SET release_id = excluded.release_id, \
                     set_at = excluded.set_at",
                    params![ch.scope, ch.name, ch.pinned, ch.now],
                )?;
                true
            };
            tx.commit()?;
            Ok(Ok(changed))
        })
        .await
    }

    pub async fn feed_channels(&self) -> Result<Vec<RawChannel>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT scope, name, release_id, set_at FROM feed_channels ORDER BY scope, name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(RawChannel {
                    scope: r.get(0)?,
                    name: r.get(1)?,
                    release_id: r.get(2)?,
                    set_at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Inserts the bundle unless one with its sha256 exists; returns the new id.
    pub async fn insert_bundle(&self, b: &NewBundle) -> Result<Option<i64>, StoreError> {
        let b = b.clone();
        self.call(move |c| {
            let size = i64::try_from(b.size)
                .map_err(|_| StoreError::Corrupt(format!("bundle size {}", b.size)))?;
            Ok(c.query_row(
                "INSERT INTO bundles (version, compatible, min_version, size, sha256, published_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sha256) DO NOTHING RETURNING id",
                params![b.version, b.compatible, b.min_version, size, b.sha256, b.published_at],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Bundles, newest first; only the one with this id or sha256 when given.
    pub async fn bundles(
        &self,
        id: Option<i64>,
        sha256: Option<String>,
    ) -> Result<Vec<BundleInfo>, StoreError> {
        self.call(move |c| {
            let sql = format!(
                "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE (?1 IS NULL OR id = ?1) \
                 AND (?2 IS NULL OR sha256 = ?2) ORDER BY id DESC"
            );
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![id, sha256], |r| {
                Ok(RawBundle {
                    id: r.get(0)?,
                    version: r.get(1)?,
                    compatible: r.get(2)?,
                    min_version: r.get(3)?,
                    size: r.get(4)?,
                    sha256: r.get(5)?,
                    published_at: r.get(6)?,
                }
                .into_info())
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub(super) async fn assign_bundle(
        &self,
        a: Assignment,
    ) -> Result<Result<Vec<i64>, AssignRefusal>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut targets: Vec<(String, String)> = Vec::new();
            if let Some(site) = &a.site {
                let mut st = tx.prepare(
                    "SELECT id, site FROM sensors WHERE site = ?1 ORDER BY registered_at, id",
                )?;
                let rows = st.query_map(params![site], |r| Ok((r.get(0)?, r.get(1)?)))?;
                targets = rows.collect::<Result<Vec<_>, _>>()?;
                if targets.is_empty() {
                    return Ok(Err(AssignRefusal::EmptySite(site.clone())));
                }
            }
            for id in &a.sensors {
                let site: Option<String> = tx
                    .query_row("SELECT site FROM sensors WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let Some(site) = site else {
                    return Ok(Err(AssignRefusal::UnknownSensor(id.clone())));
                };
                if !targets.iter().any(|(t, _)| t == id) {
                    targets.push((id.clone(), site));
                }
            }
            let mut jobs = Vec::with_capacity(targets.len());
            for (sensor, site) in targets {
                jobs.push(insert_job(
                    &tx,
                    &NewJob {
                        site,
                        kind: "update",
                        spec: a.spec.clone(),
                        target_sensor: Some(sensor),
                        bundle_id: Some(a.bundle_id),
                        now: a.now,
                    },
                )?);
            }
            tx.commit()?;
            Ok(Ok(jobs))
        })
        .await
    }

    pub async fn may_download(&self, sensor: &str, bundle: i64) -> Result<bool, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'update' AND bundle_id = ?2 \
                 AND (target_sensor = ?1 OR sensor_id = ?1))",
                params![sensor, bundle],
                |r| r.get(0),
            )?)
        })
        .await
    }

    pub(super) async fn update_state(
        &self,
        w: UpdateWrite,
    ) -> Result<Result<(), UpdateRefusal>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = match w.report.job_id {
                Some(job) => tx
                    .query_row(
                        "SELECT state, sensor_id, kind, bundle_id FROM jobs WHERE id = ?1",
                        params![job],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, Option<String>>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, Option<i64>>(3)?,
                            ))
                        },
                    )
                    .optional()?
                    .map(|(state, sensor_id, kind, bundle_id)| {
                        Ok::<_, StoreError>(UpdateJobRow {
                            lease: JobLease {
                                state: parse_state(&state)?,
                                sensor_id,
                                lost_by: None,
                            },
                            kind,
                            bundle_id,
                        })
                    })
                    .transpose()?,
                None => None,
            };
            let effect = match update_effect(row.as_ref(), &w.sensor, &w.report) {
                Ok(e) => e,
                Err(r) => return Ok(Err(r)),
            };
            if let Some(job) = w.report.job_id {
                match effect {
                    JobEffect::Nothing => {}
                    JobEffect::Progress(p) => {
                        tx.execute(
                            "UPDATE jobs SET progress = ?2, lease_expires_at = ?3 WHERE id = ?1",
                            params![job, p, w.now + w.lease_s],
                        )?;
                    }
                    JobEffect::Complete => {
                        tx.execute(
                            "UPDATE jobs SET state = 'completed', progress = 100, finished_at = ?2 \
                             WHERE id = ?1 AND state = 'running'",
                            params![job, w.now],
                        )?;
                    }
                    JobEffect::Fail(reason) => {
                        tx.execute(
                            "UPDATE jobs SET state = 'failed', failure_reason = ?2, finished_at = ?3 \
                             WHERE id = ?1 AND state = 'running'",
                            params![job, reason, w.now],
                        )?;
                    }
                }
            }
            tx.execute(
                "UPDATE sensors SET update_state = ?2 WHERE id = ?1",
                params![w.sensor, w.update],
            )?;
            tx.execute(
                "INSERT INTO sensor_log (sensor_id, received_at, event) VALUES (?1, ?2, ?3)",
                params![w.sensor, w.now, w.log],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    pub async fn cancel_job(&self, job: i64, now: i64) -> Result<Option<JobState>, StoreError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let state: Option<String> = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![job], |r| r.get(0))
                .optional()?;
            let Some(state) = state else { return Ok(None) };
            let state = parse_state(&state)?;
            let after = match state {
                JobState::Queued => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?2 WHERE id = ?1",
                        params![job, now],
                    )?;
                    JobState::Cancelled
                }
                JobState::Running => {
                    tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", params![job])?;
                    JobState::Running
                }
                done => done,
            };
            tx.commit()?;
            Ok(Some(after))
        })
        .await
    }

    pub async fn job(&self, job: i64) -> Result<Option<JobInfo>, StoreError> {
        self.call(move |c| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
            let raw = c.query_row(&sql, params![job], raw_job).optional()?;
            raw.map(super::RawJob::into_info).transpose()
        })
        .await
    }

    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobInfo>, StoreError> {
        self.call(move |c| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?1");
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(params![limit], raw_job)?;
            rows.map(|r| {
                r.map_err(StoreError::from)
                    .and_then(super::RawJob::into_info)
            })
            .collect()
        })
        .await
    }

    pub async fn report_head(&self, job: i64) -> Result<Option<(Report, i64)>, StoreError> {
        self.call(move |c| {
            let raw = c
                .query_row(
                    "SELECT id, job_id, sensor_id, outcome, partial, content_type, summary, \
                     received_at, (SELECT COUNT(*) FROM report_chunks k WHERE k.report_id = r.id) \
                     FROM reports r WHERE job_id = ?1",
                    params![job],
                    |r| {
                        Ok((
                            super::RawReport {
                                id: r.get(0)?,
                                job_id: r.get(1)?,
                                sensor_id: r.get(2)?,
                                outcome: r.get(3)?,
                                partial: r.get(4)?,
                                content_type: r.get(5)?,
                                content: String::new(),
                                summary: r.get(6)?,
                                received_at: r.get(7)?,
                            },
                            r.get::<_, i64>(8)?,
                        ))
                    },
                )
                .optional()?;
            raw.map(|(r, n)| r.into_info().map(|r| (r, n))).transpose()
        })
        .await
    }

    pub async fn report_chunk(&self, report: i64, seq: i64) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT data FROM report_chunks WHERE report_id = ?1 AND seq = ?2",
                params![report, seq],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    pub async fn sensors(&self) -> Result<Vec<SensorRow>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT s.id, s.name, s.site, s.hostname, s.board, s.agent_version, s.wg_public_key, \
                 s.registered_at, s.last_heartbeat, s.activity, s.phase, s.metrics, \
                 (SELECT COUNT(*) FROM jobs j WHERE j.sensor_id = s.id AND j.state = 'running' \
                  AND j.kind = 'scan'), \
                 s.firmware_version, s.boot_slot, s.update_state, s.board_serial, \
                 s.feed_release, s.feed_off_since \
                 FROM sensors s ORDER BY s.registered_at, s.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(super::RawSensor {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    site: r.get(2)?,
                    hostname: r.get(3)?,
                    board: r.get(4)?,
                    agent_version: r.get(5)?,
                    wg_public_key: r.get(6)?,
                    registered_at: r.get(7)?,
                    last_heartbeat: r.get(8)?,
                    activity: r.get(9)?,
                    phase: r.get(10)?,
                    metrics: r.get(11)?,
                    running_jobs: r.get(12)?,
                    firmware_version: r.get(13)?,
                    boot_slot: r.get(14)?,
                    update: r.get(15)?,
                    board_serial: r.get(16)?,
                    feed_release: r.get(17)?,
                    feed_off_since: r.get(18)?,
                })
            })?;
            rows.map(|r| r.map_err(StoreError::from).and_then(super::RawSensor::into_row))
                .collect()
        })
        .await
    }

    pub async fn sensor_log(
        &self,
        sensor: &str,
        limit: i64,
    ) -> Result<Vec<StoredLogEvent>, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT received_at, event FROM (SELECT id, received_at, event FROM sensor_log \
                 WHERE sensor_id = ?1 ORDER BY id DESC LIMIT ?2) ORDER BY id",
            )?;
            let rows = st.query_map(params![sensor, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            rows.map(|r| {
                let (received_at, ev) = r?;
                Ok(StoredLogEvent {
                    received_at,
                    event: from_json(&ev)?,
                })
            })
            .collect()
        })
        .await
    }

    pub async fn request_key_rotation(&self, sensor: &str) -> Result<bool, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE sensors SET rotate_key_requested = 1 WHERE id = ?1",
                params![sensor],
            )?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn delete_sensor(
        &self,
        sensor: &str,
        now: i64,
        rules: LossRules,
    ) -> Result<bool, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = forget_sensor(&tx, &sensor, now, rules)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        if i == UNIQUE_WG_KEY {
            dedupe_wg_keys(&tx)?;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![i as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Deletes a sensor: the jobs made for it alone fail, its other running jobs are lost
/// ([`super::loss`]). Whether it existed.
fn forget_sensor(
    tx: &Connection,
    sensor: &str,
    now: i64,
    rules: LossRules,
) -> Result<bool, StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', failure_reason = ?2, finished_at = ?3 \
         WHERE target_sensor = ?1 AND state IN ('queued', 'running')",
        params![sensor, TARGET_DELETED, now],
    )?;
    let running = {
        let mut st = tx.prepare(
            "SELECT id, attempts, cancel_requested FROM jobs \
             WHERE sensor_id = ?1 AND state = 'running' ORDER BY id",
        )?;
        let rows = st.query_map(params![sensor], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<Vec<(i64, i64, bool)>, _>>()?
    };
    for (id, attempts, cancel) in running {
        lose(tx, id, attempts, cancel, LOST_DELETED, rules, now)?;
    }
    Ok(tx.execute("DELETE FROM sensors WHERE id = ?1", params![sensor])? > 0)
}

/// Ends a re-queued job as failed for the sensor that lost it ([`Access::Recovered`]).
fn finish_recovered(
    tx: &Connection,
    job: i64,
    sensor: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', sensor_id = ?2, failure_reason = ?3, \
         finished_at = ?4, lease_expires_at = NULL WHERE id = ?1 AND state = 'queued'",
        params![job, sensor, reason, now],
    )?;
    Ok(())
}

/// Applies [`super::loss`] to one running job; `None` if it was no longer running.
fn lose(
    tx: &Connection,
    id: i64,
    attempts: i64,
    cancel_requested: bool,
    why: &str,
    rules: LossRules,
    now: i64,
) -> Result<Option<LostJob>, StoreError> {
    let l = super::loss(attempts, cancel_requested, why, rules);
    let n = match &l {
        super::Loss::Cancel => tx.execute(
            "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, finished_at = ?2 \
             WHERE id = ?1 AND state = 'running'",
            params![id, now],
        )?,
        super::Loss::Requeue => tx.execute(
            "UPDATE jobs SET state = 'queued', lost_by = sensor_id, sensor_id = NULL, \
             lease_expires_at = NULL, claimed_at = NULL, attempts = attempts + 1, progress = 0 \
             WHERE id = ?1 AND state = 'running'",
            params![id],
        )?,
        super::Loss::Fail(reason) => tx.execute(
            "UPDATE jobs SET state = 'failed', attempts = attempts + 1, lease_expires_at = NULL, \
             failure_reason = ?2, finished_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, reason, now],
        )?,
    };
    Ok((n > 0).then(|| LostJob {
        id,
        state: super::loss_state(&l),
    }))
}

/// Before the unique index: keeps the newest sensor of each WireGuard key and deletes
/// the older ones (an older portal could register a key twice), logging each.
fn dedupe_wg_keys(tx: &Connection) -> Result<(), StoreError> {
    let older: Vec<(String, String)> = {
        let mut st = tx.prepare(
            "SELECT s.id, s.wg_public_key FROM sensors s WHERE EXISTS (SELECT 1 FROM sensors n \
             WHERE n.wg_public_key = s.wg_public_key AND (n.registered_at > s.registered_at \
             OR (n.registered_at = s.registered_at AND n.id > s.id))) ORDER BY s.id",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let now = outpost_wire::unix_now();
    for (id, key) in older {
        tracing::warn!(sensor = %id, wg_public_key = %key, "removing an older sensor registered with the same WireGuard key as a newer one");
        forget_sensor(tx, &id, now, LossRules::default())?;
    }
    Ok(())
}

fn lease_of(
    tx: &rusqlite::Transaction<'_>,
    job: i64,
) -> Result<Option<(JobLease, bool)>, StoreError> {
    let row: Option<(String, Option<String>, bool, Option<String>)> = tx
        .query_row(
            "SELECT state, sensor_id, cancel_requested, lost_by FROM jobs WHERE id = ?1",
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    row.map(|(state, sensor_id, cancel, lost_by)| {
        Ok((
            JobLease {
                state: parse_state(&state)?,
                sensor_id,
                lost_by,
            },
            cancel,
        ))
    })
    .transpose()
}

fn insert_job(c: &Connection, j: &NewJob) -> Result<i64, StoreError> {
    c.execute(
        "INSERT INTO jobs (site, kind, spec, state, created_at, target_sensor, bundle_id) \
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
        params![j.site, j.kind, j.spec, j.now, j.target_sensor, j.bundle_id],
    )?;
    Ok(c.last_insert_rowid())
}

fn raw_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<super::RawJob> {
    Ok(super::RawJob {
        id: r.get(0)?,
        site: r.get(1)?,
        state: r.get(2)?,
        spec: r.get(3)?,
        sensor_id: r.get(4)?,
        attempts: r.get(5)?,
        progress: r.get(6)?,
        cancel_requested: r.get(7)?,
        failure_reason: r.get(8)?,
        created_at: r.get(9)?,
        lease_expires_at: r.get(10)?,
        target_sensor: r.get(11)?,
    })
}
