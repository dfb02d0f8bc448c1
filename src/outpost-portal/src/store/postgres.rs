//! PostgreSQL backend for fleets. Claims use `FOR UPDATE SKIP LOCKED` on a subquery over
//! `jobs` alone (no outer join inside the locked subquery: PostgreSQL refuses to lock the
//! nullable side, and a join would lock rows it does not hand out).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use outpost_wire::admin::{BundleInfo, JobInfo, JobState, StoredLogEvent};
use outpost_wire::sensor::{Job, JobStatusUpdate, ReportAck, ReportUpload};

use super::{
    check_token, feed_columns, from_json, is_recovery, job_access, parse_state, rotation_step,
    state_after_update, update_effect, Access, AssignRefusal, Assignment, ChannelRefusal,
    ChannelWrite, FeedRelease, Heartbeat, HeartbeatOutcome, JobEffect, JobLease, JobRefusal,
    KeyOwner, LossRules, LostJob, NewBundle, NewFeedRelease, NewJob, NewSensor, PeerInstall,
    PeerRow, RawBundle, RawChannel, RawFeedRelease, RawJob, RawReport, RawSensor, RegisterRefusal,
    Registered, Report, RotationBegun, SensorAuth, SensorRow, SharedIdentity, StoreError, TokenRow,
    UpdateJobRow, UpdateRefusal, UpdateWrite, LOST_DELETED, LOST_LEASE, LOST_RESTART,
    RECOVERED_AFTER_LOSS, SCOPE_SENSOR, TARGET_DELETED,
};

type Tx<'a> = deadpool_postgres::Transaction<'a>;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
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
    registered_at BIGINT NOT NULL,
    last_heartbeat BIGINT,
    activity TEXT,
    phase TEXT,
    metrics TEXT
);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    sensor_id TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    progress BIGINT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    failure_reason TEXT,
    created_at BIGINT NOT NULL,
    claimed_at BIGINT,
    lease_expires_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_queue ON jobs (site, state, id);
CREATE INDEX jobs_lease ON jobs (state, lease_expires_at);
CREATE TABLE reports (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL UNIQUE REFERENCES jobs (id),
    sensor_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    partial BOOLEAN NOT NULL,
    content_type TEXT NOT NULL,
    content TEXT NOT NULL,
    summary TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE TABLE sensor_log (
    id BIGSERIAL PRIMARY KEY,
    sensor_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
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
ALTER TABLE sensors ADD COLUMN rotate_key_requested BOOLEAN NOT NULL DEFAULT FALSE;
"#,
    // A/B updates: published bundles, jobs made for one sensor, what sensors run.
    r#"
CREATE TABLE bundles (
    id BIGSERIAL PRIMARY KEY,
    version TEXT NOT NULL,
    compatible TEXT NOT NULL,
    min_version TEXT,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    published_at BIGINT NOT NULL
);
ALTER TABLE jobs ADD COLUMN target_sensor TEXT;
ALTER TABLE jobs ADD COLUMN bundle_id BIGINT REFERENCES bundles (id);
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
    id BIGSERIAL PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL UNIQUE,
    plugin_set TEXT NOT NULL,
    notus_version TEXT,
    vt_count BIGINT NOT NULL,
    files BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    signature TEXT NOT NULL,
    imported_at BIGINT NOT NULL
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
-- The claim query's own index: queued jobs only, in claim order per site. With 200,000
-- finished jobs, 20,000 queued and 10,000 just claimed (dead entries not yet vacuumed),
-- EXPLAIN (ANALYZE, BUFFERS) of the claim's SELECT showed 376 buffers and 2.0 ms through
-- jobs_queue (site, state, id: 12 MB, every state), 59 buffers and 0.5 ms through this
-- one (416 kB). Queued update jobs targeted at other sensors of the site are still
-- filtered one by one (a few thousand cost about 0.5 ms).
CREATE INDEX jobs_claimable ON jobs (site, id) WHERE state = 'queued';
"#,
    // Release channels (docs/feeds.md): a site's or a single sensor's; release_id NULL
    // follows the newest release. Retention keeps every release named here. Each
    // sensor's live release from its heartbeat, and since when it is off its channel.
    r#"
CREATE TABLE feed_channels (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    release_id BIGINT,
    set_at BIGINT NOT NULL,
    PRIMARY KEY (scope, name)
);
ALTER TABLE sensors ADD COLUMN feed_release TEXT;
ALTER TABLE sensors ADD COLUMN feed_off_since BIGINT;
"#,
    // Replicas (docs/operating.md): the identity every portal process on this database
    // shares (gateway key, CA, admin token), written once by the first process to start.
    // The credential key itself never enters the database (a dump must not open the
    // sealed credentials): only its SHA-256, so a replica with another key refuses to start.
    r#"
CREATE TABLE portal_secrets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    wg_private_key TEXT NOT NULL,
    ca_cert TEXT NOT NULL,
    ca_key TEXT NOT NULL,
    admin_token TEXT NOT NULL,
    credentials_key_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    // Report text in chunks (at most `REPORT_CHUNK` bytes, cut at character boundaries),
    // so storing and serving a report never holds it whole; `reports.content` stays empty.
    // The replicas' shared storage (bundles, feed blobs) is named by `storage_id`, which
    // its directories carry too, so a replica serving from other directories is refused.
    r#"
ALTER TABLE portal_secrets ADD COLUMN storage_id TEXT;
CREATE TABLE report_chunks (
    report_id BIGINT NOT NULL REFERENCES reports (id),
    seq BIGINT NOT NULL,
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

/// The claim: leases the oldest queued job of the site that the sensor may take. It must
/// walk `jobs_claimable` (migration 9; see there for what EXPLAIN showed), whose entries
/// are the queued jobs only. Written `site = $4 ... ORDER BY id`, the planner may take
/// `jobs_pkey` instead (the site being fixed, id order is the same) whenever the
/// statistics say most jobs are queued (an ANALYZE just after a batch was queued): it then
/// reads every job claimed before the next queued one, all of them again for each claim.
/// EXPLAIN of the benchmark's 10,000 queued jobs after ANALYZE chose `jobs_pkey`, and
/// the benchmark's runs where autovacuum had analysed the table just before the HTTP
/// phase claimed 760-900 a second instead of 4,000-5,000 (24 million index entries read
/// for 6,000 claims). Ordered by `site, id` with `site` bounded by a range (not an
/// equality, which would make the site a constant and id order enough), only an index
/// led by `site` gives that order without a sort: `jobs_claimable`, whatever the
/// statistics say. Tests EXPLAIN it (tests/claims.rs).
pub const CLAIM_SQL: &str = "UPDATE jobs SET state = 'running', sensor_id = $1, claimed_at = $2, \
     lease_expires_at = $3, progress = 0 \
     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND site >= $4 AND site <= $4 \
                 AND kind = ANY($5) \
                 AND (target_sensor IS NULL OR target_sensor = $1) \
                 ORDER BY site, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, spec, attempts, lease_expires_at";

const BUNDLE_COLUMNS: &str = "id, version, compatible, min_version, size, sha256, published_at";

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// For the dedicated LISTEN connection ([`crate::peer_sync`]), outside the pool.
    config: std::sync::Arc<tokio_postgres::Config>,
    /// The tunnel address this process allocated last (0: none yet). The next
    /// registration tries the addresses after it, each with one indexed lookup,
    /// instead of reading every sensor's address inside the registration lock.
    address_hint: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Sensor identities by API key digest, while the peer sync listens (auth_cache.rs).
    auth: std::sync::Arc<super::AuthCache>,
}

/// Addresses after the hint tried before falling back to a scan of all of them.
const ADDRESS_PROBES: usize = 16;

type Client = deadpool_postgres::Object;

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let cfg: tokio_postgres::Config = url.parse()?;
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(32)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = PgStore {
            pool,
            config: std::sync::Arc::new(cfg),
            address_hint: Default::default(),
            auth: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Pool(e.to_string()))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Serialises concurrent portal starts against one database.
        tx.execute("SELECT pg_advisory_xact_lock(7461001)", &[])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await?;
        let current: i64 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await?
            .get(0);
        let supported = MIGRATIONS.len() as i64;
        if current > supported {
            return Err(StoreError::SchemaTooNew {
                found: current,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            if i == UNIQUE_WG_KEY {
                dedupe_wg_keys(&tx).await?;
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&(i as i64 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The identities [`PgStore::sensor_by_key`] serves from memory; [`crate::peer_sync`]
    /// keeps it in step with the database.
    pub fn auth_cache(&self) -> &super::AuthCache {
        &self.auth
    }

    /// The replicas' shared identity: `proposed` becomes it unless a process stored one
    /// first; either way the stored row is answered, so processes starting at once agree.
    pub async fn shared_identity(
        &self,
        proposed: &SharedIdentity,
        now: i64,
    ) -> Result<SharedIdentity, StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO portal_secrets (id, wg_private_key, ca_cert, ca_key, admin_token, \
             credentials_key_sha256, created_at) VALUES (1, $1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO NOTHING",
            &[
                &proposed.wg_private_key,
                &proposed.ca_cert,
                &proposed.ca_key,
                &proposed.admin_token,
                &proposed.credentials_key_sha256,
                &now,
            ],
        )
        .await?;
        let r = c
            .query_one(
                "SELECT wg_private_key, ca_cert, ca_key, admin_token, credentials_key_sha256 \
                 FROM portal_secrets WHERE id = 1",
                &[],
            )
            .await?;
        Ok(SharedIdentity {
            wg_private_key: r.get(0),
            ca_cert: r.get(1),
            ca_key: r.get(2),
            admin_token: r.get(3),
            credentials_key_sha256: r.get(4),
        })
    }

    /// The id of the replicas' shared storage: `proposed` unless one was stored first.
    /// `None` before any portal stored the shared identity ([`PgStore::shared_identity`]).
    pub async fn shared_storage_id(&self, proposed: &str) -> Result<Option<String>, StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE portal_secrets SET storage_id = $1 WHERE id = 1 AND storage_id IS NULL",
            &[&proposed],
        )
        .await?;
        let r = c
            .query_opt("SELECT storage_id FROM portal_secrets WHERE id = 1", &[])
            .await?;
        Ok(r.and_then(|r| r.get::<_, Option<String>>(0)))
    }

    pub async fn create_token(
        &self,
        hash: &str,
        site: &str,
        uses: u32,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO tokens (hash, site, uses_left, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &site, &(uses as i64), &expires_at, &now],
            )
            .await?;
        Ok(())
    }

    pub async fn register(
        &self,
        token_hash: &str,
        s: NewSensor,
        install: PeerInstall,
    ) -> Result<Result<Registered, RegisterRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Registrations serialise on this lock: two at once with one token or one key
        // (a retry racing the original) must see each other's row, not both insert.
        tx.execute("SELECT pg_advisory_xact_lock(7461002)", &[])
            .await?;
        let owner = tx
            .query_opt(
                "SELECT id, site, enrolled_with, api_key_salt, tunnel_address FROM sensors \
                 WHERE wg_public_key = $1",
                &[&s.req.wg_public_key],
            )
            .await?
            .map(|r| KeyOwner {
                sensor_id: r.get(0),
                site: r.get(1),
                enrolled_with: r.get(2),
                api_key_salt: r.get(3),
                tunnel_address: r.get(4),
            });
        if let Some(owner) = owner {
            // A retry writes nothing; the peer is (re)installed in case it is missing.
            let reg = match super::retry_of(&owner, token_hash) {
                Ok(reg) => reg,
                Err(refusal) => return Ok(Err(refusal)),
            };
            if let Err(e) = install(reg.tunnel_address) {
                return Ok(Err(RegisterRefusal::Peer(e)));
            }
            return Ok(Ok(reg));
        }
        let row = tx
            .query_opt(
                "SELECT site, uses_left, expires_at FROM tokens WHERE hash = $1 FOR UPDATE",
                &[&token_hash],
            )
            .await?
            .map(|r| TokenRow {
                site: r.get(0),
                uses_left: r.get(1),
                expires_at: r.get(2),
            });
        if let Err(refusal) = check_token(row.as_ref(), &s.req.site, s.now) {
            return Ok(Err(RegisterRefusal::Token(refusal)));
        }
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = $1",
            &[&token_hash],
        )
        .await?;
        let caps = super::json(&s.req.capabilities)?;
        let address = match s.tunnel_pool {
            Some(pool) => match self.probe_address(&tx, &pool).await? {
                Some(free) => Some(free),
                None => {
                    let used: Vec<std::net::Ipv4Addr> = tx
                        .query(
                            "SELECT tunnel_address FROM sensors WHERE tunnel_address IS NOT NULL",
                            &[],
                        )
                        .await?
                        .iter()
                        .filter_map(|r| r.get::<_, String>(0).parse().ok())
                        .collect();
                    Some(pool.allocate(&used).ok_or_else(|| {
                        StoreError::Corrupt("the tunnel network has no free address".into())
                    })?)
                }
            },
            None => None,
        };
        let address_text = address.map(|a| a.to_string());
        tx.execute(
            "INSERT INTO sensors (id, name, site, hostname, os, board, hardware_serial, agent_version, \
             capabilities, wg_public_key, api_key_hash, registered_at, tunnel_address, \
             enrolled_with, api_key_salt, board_serial) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                &s.id, &s.req.name, &s.req.site, &s.req.hostname, &s.req.os, &s.req.board,
                &s.req.hardware_serial, &s.req.agent_version, &caps, &s.req.wg_public_key,
                &s.api_key_hash, &s.now, &address_text, &token_hash, &s.api_key_salt,
                &s.req.board_serial,
            ],
        )
        .await?;
        // Dropping `tx` without commit rolls back the row and the token use.
        if let Err(e) = install(address) {
            return Ok(Err(RegisterRefusal::Peer(e)));
        }
        notify_peers(&tx, &s.id).await?;
        tx.commit().await?;
        if let Some(a) = address {
            self.address_hint
                .store(u32::from(a), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Ok(Registered {
            sensor_id: s.id,
            site: s.req.site,
            api_key_salt: s.api_key_salt,
            tunnel_address: address,
            created: true,
        }))
    }

    /// A free tunnel address just after the one this process allocated last, if one
    /// of the next few is free. Called under the registration lock, so what it sees
    /// free stays free until the insert.
    async fn probe_address(
        &self,
        tx: &Tx<'_>,
        pool: &super::TunnelPool,
    ) -> Result<Option<std::net::Ipv4Addr>, StoreError> {
        let hint = self.address_hint.load(std::sync::atomic::Ordering::Relaxed);
        if hint == 0 {
            return Ok(None);
        }
        for candidate in pool.after(hint.into()).take(ADDRESS_PROBES) {
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM sensors WHERE tunnel_address = $1",
                    &[&candidate.to_string()],
                )
                .await?
                .is_some();
            if !taken {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }

    /// The sensor with this API key digest, from the cache when it holds it.
    pub async fn sensor_by_key(&self, key_hash: &str) -> Result<Option<SensorAuth>, StoreError> {
        if let Some(hit) = self.auth.get(key_hash) {
            return Ok(Some(hit));
        }
        let ticket = self.auth.ticket();
        let found = self.sensor_by_key_uncached(key_hash).await?;
        if let Some(s) = &found {
            self.auth.insert(ticket, key_hash, s);
        }
        Ok(found)
    }

    /// The sensor with this API key digest, read from the database.
    pub async fn sensor_by_key_uncached(
        &self,
        key_hash: &str,
    ) -> Result<Option<SensorAuth>, StoreError> {
        let client = self.client().await?;
        // Every sensor request authenticates: prepared once per connection.
        let st = client
            .prepare_cached(
                "SELECT id, name, site, wg_public_key FROM sensors WHERE api_key_hash = $1",
            )
            .await?;
        Ok(client
            .query_opt(&st, &[&key_hash])
            .await?
            .map(|r| SensorAuth {
                id: r.get(0),
                name: r.get(1),
                site: r.get(2),
                wg_public_key: r.get(3),
            }))
    }

    pub async fn tunnel_peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT id, wg_public_key, tunnel_address, wg_pending_key FROM sensors \
                 WHERE tunnel_address IS NOT NULL ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// [`PgStore::tunnel_peers`] of these sensors only.
    pub async fn tunnel_peers_of(&self, ids: &[String]) -> Result<Vec<PeerRow>, StoreError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT id, wg_public_key, tunnel_address, wg_pending_key FROM sensors \
                 WHERE tunnel_address IS NOT NULL AND id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    pub async fn begin_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<RotationBegun, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row: Option<(String, Option<String>)> = tx
            .query_opt(
                "SELECT wg_public_key, wg_pending_key FROM sensors WHERE id = $1 FOR UPDATE",
                &[&sensor],
            )
            .await?
            .map(|r| (r.get(0), r.get(1)));
        let taken: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM sensors WHERE id <> $1 \
                 AND (wg_public_key = $2 OR wg_pending_key = $2))",
                &[&sensor, &new_key],
            )
            .await?
            .get(0);
        let out = rotation_step(row, taken, new_key);
        if let RotationBegun::Pending { .. } = out {
            tx.execute(
                "UPDATE sensors SET wg_pending_key = $2 WHERE id = $1",
                &[&sensor, &new_key],
            )
            .await?;
            notify_peers(&tx, sensor).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    pub async fn finish_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let old: Option<String> = tx
            .query_opt(
                "SELECT wg_public_key FROM sensors WHERE id = $1 AND wg_pending_key = $2 \
                 FOR UPDATE",
                &[&sensor, &new_key],
            )
            .await?
            .map(|r| r.get(0));
        if old.is_some() {
            tx.execute(
                "UPDATE sensors SET wg_public_key = $2, wg_pending_key = NULL, \
                 rotate_key_requested = FALSE WHERE id = $1",
                &[&sensor, &new_key],
            )
            .await?;
            notify_peers(&tx, sensor).await?;
        }
        tx.commit().await?;
        if old.is_some() {
            // Its cached key is the old one; other processes hear the notification.
            self.auth.forget(&[sensor.to_owned()]);
        }
        Ok(old)
    }

    pub async fn heartbeat(
        &self,
        hb: &Heartbeat<'_>,
        metrics: &str,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (sensor, req, now) = (hb.sensor, hb.req, hb.now);
        let phase = req.phase.map(|p| p.as_str());
        tx.execute(
            "UPDATE sensors SET last_heartbeat = $2, activity = $3, phase = $4, metrics = $5, \
             agent_version = $6, firmware_version = $7, boot_slot = $8, feed_release = $9, \
             feed_off_since = CASE WHEN $9::TEXT IS NULL OR $10::TEXT IS NULL OR $9 = $10 \
             THEN NULL ELSE COALESCE(feed_off_since, $2) END WHERE id = $1",
            &[
                &sensor,
                &now,
                &req.activity.as_str(),
                &phase,
                &metrics,
                &req.agent_version,
                &req.firmware_version,
                &req.boot_slot,
                &req.feed_release,
                &hb.feed_wanted,
            ],
        )
        .await?;
        let mut lost = Vec::new();
        match &req.running_jobs {
            None => {
                tx.execute(
                    "UPDATE jobs SET lease_expires_at = $2 WHERE sensor_id = $1 AND state = 'running'",
                    &[&sensor, &(now + hb.lease_s)],
                )
                .await?;
            }
            Some(ids) => {
                tx.execute(
                    "UPDATE jobs SET lease_expires_at = $2 WHERE sensor_id = $1 \
                     AND state = 'running' AND id = ANY($3)",
                    &[&sensor, &(now + hb.lease_s), ids],
                )
                .await?;
                let gone: Vec<(i64, i64, bool)> = tx
                    .query(
                        "SELECT id, attempts, cancel_requested FROM jobs WHERE sensor_id = $1 \
                         AND state = 'running' AND NOT (id = ANY($2)) \
                         AND COALESCE(claimed_at, 0) <= $3 ORDER BY id FOR UPDATE",
                        &[&sensor, ids, &(now - hb.grace_s)],
                    )
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                for (id, attempts, cancel) in gone {
                    lost.extend(
                        lose(&tx, id, attempts, cancel, LOST_RESTART, hb.rules, now).await?,
                    );
                }
            }
        }
        let cancel_jobs = tx
            .query(
                "SELECT id FROM jobs WHERE sensor_id = $1 AND state = 'running' \
                 AND cancel_requested ORDER BY id",
                &[&sensor],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rotate: Option<bool> = tx
            .query_opt(
                "SELECT rotate_key_requested FROM sensors WHERE id = $1",
                &[&sensor],
            )
            .await?
            .map(|r| r.get(0));
        tx.commit().await?;
        Ok(HeartbeatOutcome {
            cancel_jobs,
            rotate_wg_key: rotate.unwrap_or(false),
            lost,
        })
    }

    pub async fn claim(
        &self,
        sensor: &SensorAuth,
        kinds: &[String],
        now: i64,
        lease_s: i64,
    ) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        // The hottest query (every sensor, every 5 s): prepared once per connection.
        let st = client.prepare_cached(CLAIM_SQL).await?;
        let row = client
            .query_opt(
                &st,
                &[&sensor.id, &now, &(now + lease_s), &sensor.site, &kinds],
            )
            .await?;
        row.map(|r| {
            let spec: String = r.get(1);
            Ok(Job {
                id: r.get(0),
                lease_expires_at: r.get(3),
                attempt: r.get::<_, i64>(2).clamp(0, u32::MAX as i64) as u32,
                spec: from_json(&spec)?,
            })
        })
        .transpose()
    }

    pub async fn requeue_expired(
        &self,
        now: i64,
        rules: LossRules,
    ) -> Result<Vec<LostJob>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // SKIP LOCKED: concurrent reapers (several portals) each take a job once.
        let expired: Vec<(i64, i64, bool)> = tx
            .query(
                "SELECT id, attempts, cancel_requested FROM jobs \
                 WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id \
                 FOR UPDATE SKIP LOCKED",
                &[&now],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let mut lost = Vec::new();
        for (id, attempts, cancel) in expired {
            lost.extend(lose(&tx, id, attempts, cancel, LOST_LEASE, rules, now).await?);
        }
        tx.commit().await?;
        Ok(lost)
    }

    pub async fn append_log(
        &self,
        sensor: &str,
        rows: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let st = tx
            .prepare("INSERT INTO sensor_log (sensor_id, received_at, event) VALUES ($1, $2, $3)")
            .await?;
        for row in rows {
            tx.execute(&st, &[&sensor, &now, row]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn job_status(
        &self,
        sensor: &str,
        job: i64,
        update: &JobStatusUpdate,
        now: i64,
        lease_s: i64,
    ) -> Result<Result<bool, JobRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let (lease, cancel) = match lease_of(&tx, job).await? {
            Some((l, cancel)) => (Some(l), cancel),
            None => (None, false),
        };
        let recovering = matches!(update, JobStatusUpdate::Failed { .. });
        let access = match job_access(lease.as_ref(), sensor, false, recovering) {
            Ok(a) => a,
            Err(r) => return Ok(Err(r)),
        };
        if access == Access::Recovered {
            if let JobStatusUpdate::Failed { reason } = update {
                finish_recovered(&tx, job, sensor, reason, now).await?;
            }
            tx.commit().await?;
            return Ok(Ok(cancel));
        }
        let next = state_after_update(update);
        match update {
            JobStatusUpdate::Running {
                progress_percent, ..
            } => {
                let progress = i64::from((*progress_percent).min(100));
                tx.execute(
                    "UPDATE jobs SET progress = $2, lease_expires_at = $3 WHERE id = $1",
                    &[&job, &progress, &(now + lease_s)],
                )
                .await?;
            }
            JobStatusUpdate::Failed { reason } => {
                tx.execute(
                    "UPDATE jobs SET state = $2, failure_reason = $3, finished_at = $4 WHERE id = $1",
                    &[&job, &next.as_str(), reason, &now],
                )
                .await?;
            }
            JobStatusUpdate::Cancelled => {
                tx.execute(
                    "UPDATE jobs SET state = $2, finished_at = $3 WHERE id = $1",
                    &[&job, &next.as_str(), &now],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Ok(cancel))
    }

    pub async fn store_report(
        &self,
        sensor: &str,
        job: i64,
        up: &ReportUpload,
        text: super::ReportChunks,
        summary: &str,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Lock the job row first so two uploads of the same report serialise here.
        let lease = lease_of(&tx, job).await?.map(|(l, _)| l);
        let existing = tx
            .query_opt(
                "SELECT id, request_id, sensor_id FROM reports WHERE job_id = $1",
                &[&job],
            )
            .await?;
        if let Some(r) = existing {
            let (id, request_id, owner): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
            if request_id == up.request_id && owner == sensor {
                return Ok(Ok(ReportAck {
                    report_id: id,
                    created: false,
                }));
            }
            return Ok(Err(if owner == sensor {
                JobRefusal::AlreadyReported
            } else {
                JobRefusal::NotYours
            }));
        }
        match job_access(lease.as_ref(), sensor, true, is_recovery(up)) {
            Ok(Access::Leased) => {}
            Ok(Access::Recovered) => {
                finish_recovered(&tx, job, sensor, RECOVERED_AFTER_LOSS, now).await?
            }
            Err(r) => return Ok(Err(r)),
        }
        let outcome = super::json(&up.outcome)?;
        let outcome = outcome.trim_matches('"');
        let id: i64 = tx
            .query_one(
                "INSERT INTO reports (job_id, sensor_id, request_id, outcome, partial, content_type, \
                 content, summary, received_at) VALUES ($1, $2, $3, $4, $5, $6, '', $7, $8) RETURNING id",
                &[&job, &sensor, &up.request_id, &outcome, &up.partial, &up.content_type, &summary, &now],
            )
            .await?
            .get(0);
        let insert = tx
            .prepare("INSERT INTO report_chunks (report_id, seq, data) VALUES ($1, $2, $3)")
            .await?;
        let mut text = text;
        let mut seq = 0i64;
        loop {
            // The text is a file: read it off the async threads, one chunk at a time.
            let (back, next) = tokio::task::spawn_blocking(move || {
                let next = text.next_chunk();
                (text, next)
            })
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?;
            text = back;
            let Some(chunk) = next.map_err(StoreError::ReportText)? else {
                break;
            };
            tx.execute(&insert, &[&id, &seq, &chunk]).await?;
            seq += 1;
        }
        let final_state = super::report_state(up.outcome);
        tx.execute(
            "UPDATE jobs SET state = $2, finished_at = COALESCE(finished_at, $3), \
             progress = CASE WHEN $2 = 'completed' THEN 100 ELSE progress END \
             WHERE id = $1 AND state = 'running'",
            &[&job, &final_state.as_str(), &now],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(ReportAck {
            report_id: id,
            created: true,
        }))
    }

    pub(super) async fn create_job(&self, j: NewJob) -> Result<i64, StoreError> {
        let c = self.client().await?;
        insert_job(&c, &j).await
    }

    pub async fn sensor_site(&self, sensor: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt("SELECT site FROM sensors WHERE id = $1", &[&sensor])
            .await?
            .map(|r| r.get(0)))
    }

    /// Inserts the release unless its manifest is stored; `true` when inserted.
    pub async fn insert_feed_release(&self, r: &NewFeedRelease) -> Result<bool, StoreError> {
        let (vts, files, bytes) = feed_columns(r)?;
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO feed_releases (manifest_sha256, plugin_set, notus_version, vt_count, \
                 files, bytes, signature, imported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (manifest_sha256) DO NOTHING",
                &[
                    &r.manifest_sha256,
                    &r.plugin_set,
                    &r.notus_version,
                    &vts,
                    &files,
                    &bytes,
                    &r.signature,
                    &r.imported_at,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn feed_releases(&self) -> Result<Vec<FeedRelease>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, manifest_sha256, plugin_set, notus_version, vt_count, files, bytes, \
                 signature, imported_at FROM feed_releases ORDER BY id DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                RawFeedRelease {
                    id: r.get(0),
                    manifest_sha256: r.get(1),
                    plugin_set: r.get(2),
                    notus_version: r.get(3),
                    vt_count: r.get(4),
                    files: r.get(5),
                    bytes: r.get(6),
                    signature: r.get(7),
                    imported_at: r.get(8),
                }
                .into_release()
            })
            .collect())
    }

    pub async fn delete_feed_releases(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.client()
            .await?
            // A pinned release stays, whatever retention asked (docs/feeds.md).
            .execute(
                "DELETE FROM feed_releases f WHERE f.id = ANY($1) \
                 AND NOT EXISTS (SELECT 1 FROM feed_channels c WHERE c.release_id = f.id)",
                &[&ids],
            )
            .await?;
        Ok(())
    }

    /// Sets or clears one channel; the pinned release and the sensor must exist. The
    /// release row is locked (FOR SHARE) so retention cannot delete it meanwhile.
    pub async fn set_feed_channel(
        &self,
        ch: &ChannelWrite,
    ) -> Result<Result<bool, ChannelRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if let Some(id) = ch.pinned {
            let found = tx
                .query_opt(
                    "SELECT id FROM feed_releases WHERE id = $1 FOR SHARE",
                    &[&id],
                )
                .await?;
            if found.is_none() {
                return Ok(Err(ChannelRefusal::UnknownRelease(id)));
            }
        }
        if ch.scope == SCOPE_SENSOR {
            let found = tx
                .query_opt("SELECT id FROM sensors WHERE id = $1", &[&ch.name])
                .await?;
            if found.is_none() {
                return Ok(Err(ChannelRefusal::UnknownSensor(ch.name.clone())));
            }
        }
        let changed = if ch.clear {
            tx.execute(
                "DELETE FROM feed_channels WHERE scope = $1 AND name = $2",
                &[&ch.scope, &ch.name],
            )
            .await?
                > 0
        } else {
            tx.execute(
                "INSERT INTO feed_channels (scope, name, release_id, set_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope, name) DO UPDATE SET release_id = excluded.release_id, \
                 set_at = excluded.set_at",
                &[&ch.scope, &ch.name, &ch.pinned, &ch.now],
            )
            .await?;
            true
        };
        tx.commit().await?;
        Ok(Ok(changed))
    }

    pub async fn feed_channels(&self) -> Result<Vec<RawChannel>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT scope, name, release_id, set_at FROM feed_channels ORDER BY scope, name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RawChannel {
                scope: r.get(0),
                name: r.get(1),
                release_id: r.get(2),
                set_at: r.get(3),
            })
            .collect())
    }

    /// Inserts the bundle unless one with its sha256 exists; returns the new id.
    pub async fn insert_bundle(&self, b: &NewBundle) -> Result<Option<i64>, StoreError> {
        let size = i64::try_from(b.size)
            .map_err(|_| StoreError::Corrupt(format!("bundle size {}", b.size)))?;
        Ok(self
            .client()
            .await?
            .query_opt(
                "INSERT INTO bundles (version, compatible, min_version, size, sha256, published_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING RETURNING id",
                &[
                    &b.version,
                    &b.compatible,
                    &b.min_version,
                    &size,
                    &b.sha256,
                    &b.published_at,
                ],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Bundles, newest first; only the one with this id or sha256 when given.
    pub async fn bundles(
        &self,
        id: Option<i64>,
        sha256: Option<String>,
    ) -> Result<Vec<BundleInfo>, StoreError> {
        let sql = format!(
            "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE ($1::BIGINT IS NULL OR id = $1) \
             AND ($2::TEXT IS NULL OR sha256 = $2) ORDER BY id DESC"
        );
        let rows = self.client().await?.query(&sql, &[&id, &sha256]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                RawBundle {
                    id: r.get(0),
                    version: r.get(1),
                    compatible: r.get(2),
                    min_version: r.get(3),
                    size: r.get(4),
                    sha256: r.get(5),
                    published_at: r.get(6),
                }
                .into_info()
            })
            .collect())
    }

    pub(super) async fn assign_bundle(
        &self,
        a: Assignment,
    ) -> Result<Result<Vec<i64>, AssignRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(site) = &a.site {
            targets = tx
                .query(
                    "SELECT id, site FROM sensors WHERE site = $1 ORDER BY registered_at, id",
                    &[site],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if targets.is_empty() {
                return Ok(Err(AssignRefusal::EmptySite(site.clone())));
            }
        }
        for id in &a.sensors {
            let Some(row) = tx
                .query_opt("SELECT site FROM sensors WHERE id = $1", &[id])
                .await?
            else {
                return Ok(Err(AssignRefusal::UnknownSensor(id.clone())));
            };
            if !targets.iter().any(|(t, _)| t == id) {
                targets.push((id.clone(), row.get(0)));
            }
        }
        let mut jobs = Vec::with_capacity(targets.len());
        for (sensor, site) in targets {
            let job = NewJob {
                site,
                kind: "update",
                spec: a.spec.clone(),
                target_sensor: Some(sensor),
                bundle_id: Some(a.bundle_id),
                now: a.now,
            };
            jobs.push(insert_job(&tx, &job).await?);
        }
        tx.commit().await?;
        Ok(Ok(jobs))
    }

    pub async fn may_download(&self, sensor: &str, bundle: i64) -> Result<bool, StoreError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'update' AND bundle_id = $2 \
                 AND (target_sensor = $1 OR sensor_id = $1))",
                &[&sensor, &bundle],
            )
            .await?
            .get(0))
    }

    pub(super) async fn update_state(
        &self,
        w: UpdateWrite,
    ) -> Result<Result<(), UpdateRefusal>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let row = match w.report.job_id {
            Some(job) => tx
                .query_opt(
                    "SELECT state, sensor_id, kind, bundle_id FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&job],
                )
                .await?
                .map(|r| {
                    Ok::<_, StoreError>(UpdateJobRow {
                        lease: JobLease {
                            state: parse_state(r.get(0))?,
                            sensor_id: r.get(1),
                            lost_by: None,
                        },
                        kind: r.get(2),
                        bundle_id: r.get(3),
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
                        "UPDATE jobs SET progress = $2, lease_expires_at = $3 WHERE id = $1",
                        &[&job, &i64::from(p), &(w.now + w.lease_s)],
                    )
                    .await?;
                }
                JobEffect::Complete => {
                    tx.execute(
                        "UPDATE jobs SET state = 'completed', progress = 100, finished_at = $2 \
                         WHERE id = $1 AND state = 'running'",
                        &[&job, &w.now],
                    )
                    .await?;
                }
                JobEffect::Fail(reason) => {
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', failure_reason = $2, finished_at = $3 \
                         WHERE id = $1 AND state = 'running'",
                        &[&job, &reason, &w.now],
                    )
                    .await?;
                }
            }
        }
        tx.execute(
            "UPDATE sensors SET update_state = $2 WHERE id = $1",
            &[&w.sensor, &w.update],
        )
        .await?;
        tx.execute(
            "INSERT INTO sensor_log (sensor_id, received_at, event) VALUES ($1, $2, $3)",
            &[&w.sensor, &w.now, &w.log],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    pub async fn cancel_job(&self, job: i64, now: i64) -> Result<Option<JobState>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let Some(row) = tx
            .query_opt("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", &[&job])
            .await?
        else {
            return Ok(None);
        };
        let state = parse_state(row.get(0))?;
        let after = match state {
            JobState::Queued => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = TRUE, finished_at = $2 WHERE id = $1",
                    &[&job, &now],
                )
                .await?;
                JobState::Cancelled
            }
            JobState::Running => {
                tx.execute(
                    "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1",
                    &[&job],
                )
                .await?;
                JobState::Running
            }
            done => done,
        };
        tx.commit().await?;
        Ok(Some(after))
    }

    pub async fn job(&self, job: i64) -> Result<Option<JobInfo>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = self.client().await?.query_opt(&sql, &[&job]).await?;
        row.map(|r| raw_job(&r).into_info()).transpose()
    }

    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobInfo>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1");
        let rows = self.client().await?.query(&sql, &[&limit]).await?;
        rows.iter().map(|r| raw_job(r).into_info()).collect()
    }

    pub async fn report_head(&self, job: i64) -> Result<Option<(Report, i64)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, job_id, sensor_id, outcome, partial, content_type, summary, received_at, \
                 (SELECT COUNT(*) FROM report_chunks k WHERE k.report_id = r.id) \
                 FROM reports r WHERE job_id = $1",
                &[&job],
            )
            .await?;
        row.map(|r| {
            RawReport {
                id: r.get(0),
                job_id: r.get(1),
                sensor_id: r.get(2),
                outcome: r.get(3),
                partial: r.get(4),
                content_type: r.get(5),
                content: String::new(),
                summary: r.get(6),
                received_at: r.get(7),
            }
            .into_info()
            .map(|info| (info, r.get::<_, i64>(8)))
        })
        .transpose()
    }

    pub async fn report_chunk(&self, report: i64, seq: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT data FROM report_chunks WHERE report_id = $1 AND seq = $2",
                &[&report, &seq],
            )
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn sensors(&self) -> Result<Vec<SensorRow>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT s.id, s.name, s.site, s.hostname, s.board, s.agent_version, s.wg_public_key, \
                 s.registered_at, s.last_heartbeat, s.activity, s.phase, s.metrics, \
                 (SELECT COUNT(*) FROM jobs j WHERE j.sensor_id = s.id AND j.state = 'running' \
                  AND j.kind = 'scan'), \
                 s.firmware_version, s.boot_slot, s.update_state, s.board_serial, \
                 s.feed_release, s.feed_off_since \
                 FROM sensors s ORDER BY s.registered_at, s.id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                RawSensor {
                    id: r.get(0),
                    name: r.get(1),
                    site: r.get(2),
                    hostname: r.get(3),
                    board: r.get(4),
                    agent_version: r.get(5),
                    wg_public_key: r.get(6),
                    registered_at: r.get(7),
                    last_heartbeat: r.get(8),
                    activity: r.get(9),
                    phase: r.get(10),
                    metrics: r.get(11),
                    running_jobs: r.get(12),
                    firmware_version: r.get(13),
                    boot_slot: r.get(14),
                    update: r.get(15),
                    board_serial: r.get(16),
                    feed_release: r.get(17),
                    feed_off_since: r.get(18),
                }
                .into_row()
            })
            .collect()
    }

    pub async fn sensor_log(
        &self,
        sensor: &str,
        limit: i64,
    ) -> Result<Vec<StoredLogEvent>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT received_at, event FROM (SELECT id, received_at, event FROM sensor_log \
                 WHERE sensor_id = $1 ORDER BY id DESC LIMIT $2) AS recent ORDER BY id",
                &[&sensor, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let ev: String = r.get(1);
                Ok(StoredLogEvent {
                    received_at: r.get(0),
                    event: from_json(&ev)?,
                })
            })
            .collect()
    }

    pub async fn request_key_rotation(&self, sensor: &str) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE sensors SET rotate_key_requested = TRUE WHERE id = $1",
                &[&sensor],
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn delete_sensor(
        &self,
        sensor: &str,
        now: i64,
        rules: LossRules,
    ) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = forget_sensor(&tx, sensor, now, rules).await?;
        tx.commit().await?;
        // Refused here at once; other processes once they hear the notification.
        self.auth.forget(&[sensor.to_owned()]);
        Ok(n)
    }
}

/// Deletes a sensor: the jobs made for it alone fail, its other running jobs are lost
/// ([`super::loss`]). Whether it existed.
async fn forget_sensor(
    tx: &Tx<'_>,
    sensor: &str,
    now: i64,
    rules: LossRules,
) -> Result<bool, StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', failure_reason = $2, finished_at = $3 \
         WHERE target_sensor = $1 AND state IN ('queued', 'running')",
        &[&sensor, &TARGET_DELETED, &now],
    )
    .await?;
    let running: Vec<(i64, i64, bool)> = tx
        .query(
            "SELECT id, attempts, cancel_requested FROM jobs \
             WHERE sensor_id = $1 AND state = 'running' ORDER BY id FOR UPDATE",
            &[&sensor],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (id, attempts, cancel) in running {
        lose(tx, id, attempts, cancel, LOST_DELETED, rules, now).await?;
    }
    let gone = tx
        .execute("DELETE FROM sensors WHERE id = $1", &[&sensor])
        .await?
        > 0;
    if gone {
        notify_peers(tx, sensor).await?;
    }
    Ok(gone)
}

/// The channel on which every change to a sensor's WireGuard keys is announced; each
/// portal process LISTENs on it to keep its gateway's peers in step ([`crate::peer_sync`]).
pub const PEERS_CHANNEL: &str = "outpost_peers";

/// Announces a change of `sensor`'s keys. Inside the transaction that makes it, so
/// listeners hear of it exactly when it commits (and never of a rolled-back one).
async fn notify_peers(tx: &Tx<'_>, sensor: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&PEERS_CHANNEL, &sensor])
        .await?;
    Ok(())
}

/// Ends a re-queued job as failed for the sensor that lost it ([`Access::Recovered`]).
async fn finish_recovered(
    tx: &Tx<'_>,
    job: i64,
    sensor: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'failed', sensor_id = $2, failure_reason = $3, \
         finished_at = $4, lease_expires_at = NULL WHERE id = $1 AND state = 'queued'",
        &[&job, &sensor, &reason, &now],
    )
    .await?;
    Ok(())
}

/// Applies [`super::loss`] to one running job; `None` if it was no longer running.
async fn lose(
    tx: &Tx<'_>,
    id: i64,
    attempts: i64,
    cancel_requested: bool,
    why: &str,
    rules: LossRules,
    now: i64,
) -> Result<Option<LostJob>, StoreError> {
    let l = super::loss(attempts, cancel_requested, why, rules);
    let n = match &l {
        super::Loss::Cancel => {
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, finished_at = $2 \
                 WHERE id = $1 AND state = 'running'",
                &[&id, &now],
            )
            .await?
        }
        super::Loss::Requeue => {
            tx.execute(
                "UPDATE jobs SET state = 'queued', lost_by = sensor_id, sensor_id = NULL, \
                 lease_expires_at = NULL, claimed_at = NULL, attempts = attempts + 1, progress = 0 \
                 WHERE id = $1 AND state = 'running'",
                &[&id],
            )
            .await?
        }
        super::Loss::Fail(reason) => {
            tx.execute(
                "UPDATE jobs SET state = 'failed', attempts = attempts + 1, lease_expires_at = NULL, \
                 failure_reason = $2, finished_at = $3 WHERE id = $1 AND state = 'running'",
                &[&id, reason, &now],
            )
            .await?
        }
    };
    Ok((n > 0).then(|| LostJob {
        id,
        state: super::loss_state(&l),
    }))
}

/// Before the unique index: keeps the newest sensor of each WireGuard key and deletes
/// the older ones (an older portal could register a key twice), logging each.
async fn dedupe_wg_keys(tx: &Tx<'_>) -> Result<(), StoreError> {
    let older: Vec<(String, String)> = tx
        .query(
            "SELECT s.id, s.wg_public_key FROM sensors s WHERE EXISTS (SELECT 1 FROM sensors n \
             WHERE n.wg_public_key = s.wg_public_key AND (n.registered_at > s.registered_at \
             OR (n.registered_at = s.registered_at AND n.id > s.id))) ORDER BY s.id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let now = outpost_wire::unix_now();
    for (id, key) in older {
        tracing::warn!(sensor = %id, wg_public_key = %key, "removing an older sensor registered with the same WireGuard key as a newer one");
        forget_sensor(tx, &id, now, LossRules::default()).await?;
    }
    Ok(())
}

async fn lease_of(
    tx: &deadpool_postgres::Transaction<'_>,
    job: i64,
) -> Result<Option<(JobLease, bool)>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT state, sensor_id, cancel_requested, lost_by FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job],
        )
        .await?;
    row.map(|r| {
        Ok((
            JobLease {
                state: parse_state(r.get(0))?,
                sensor_id: r.get(1),
                lost_by: r.get(3),
            },
            r.get(2),
        ))
    })
    .transpose()
}

/// Works on a pooled client and inside a transaction alike.
async fn insert_job<C: deadpool_postgres::GenericClient>(
    c: &C,
    j: &NewJob,
) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "INSERT INTO jobs (site, kind, spec, state, created_at, target_sensor, bundle_id) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6) RETURNING id",
        &[
            &j.site,
            &j.kind,
            &j.spec,
            &j.now,
            &j.target_sensor,
            &j.bundle_id,
        ],
    )
    .await?
    .get(0))
}

fn raw_job(r: &tokio_postgres::Row) -> RawJob {
    RawJob {
        id: r.get(0),
        site: r.get(1),
        state: r.get(2),
        spec: r.get(3),
        sensor_id: r.get(4),
        attempts: r.get(5),
        progress: r.get(6),
        cancel_requested: r.get(7),
        failure_reason: r.get(8),
        created_at: r.get(9),
        lease_expires_at: r.get(10),
        target_sensor: r.get(11),
    }
}
