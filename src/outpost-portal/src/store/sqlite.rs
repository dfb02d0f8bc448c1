//! SQLite backend: one connection behind a mutex, so every write is a single-writer
//! transaction and a claim cannot race another claim.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use outpost_wire::admin::{JobInfo, JobState, StoredLogEvent};
use outpost_wire::sensor::{HeartbeatRequest, Job, JobStatusUpdate, ReportAck, ReportUpload};

use super::{
    check_job_access, check_token, from_json, parse_state, state_after_update, JobLease,
    JobRefusal, NewSensor, Report, SensorAuth, SensorRow, StoreError, TokenRefusal, TokenRow,
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
];

const JOB_COLUMNS: &str =
    "id, site, state, spec, sensor_id, attempts, progress, cancel_requested, \
     failure_reason, created_at, lease_expires_at";

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
    ) -> Result<Result<Option<std::net::Ipv4Addr>, TokenRefusal>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
                return Ok(Err(refusal));
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
                 capabilities, wg_public_key, api_key_hash, registered_at, tunnel_address) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    s.id, s.req.name, s.req.site, s.req.hostname, s.req.os, s.req.board,
                    s.req.hardware_serial, s.req.agent_version, caps, s.req.wg_public_key,
                    s.api_key_hash, s.now, address.map(|a| a.to_string())
                ],
            )?;
            tx.commit()?;
            Ok(Ok(address))
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

    pub async fn tunnel_peers(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, wg_public_key, tunnel_address FROM sensors \
                 WHERE tunnel_address IS NOT NULL ORDER BY id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn rotate_key(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<Option<String>, StoreError> {
        let (sensor, new_key) = (sensor.to_owned(), new_key.to_owned());
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old: Option<String> = tx
                .query_row(
                    "SELECT wg_public_key FROM sensors WHERE id = ?1",
                    params![sensor],
                    |r| r.get(0),
                )
                .optional()?;
            if old.is_some() {
                tx.execute(
                    "UPDATE sensors SET wg_public_key = ?2, rotate_key_requested = 0 WHERE id = ?1",
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
        sensor: &str,
        hb: &HeartbeatRequest,
        metrics: &str,
        now: i64,
        lease_s: i64,
    ) -> Result<(Vec<i64>, bool), StoreError> {
        let sensor = sensor.to_owned();
        let activity = hb.activity.as_str();
        let phase = hb.phase.map(|p| p.as_str());
        let version = hb.agent_version.clone();
        let metrics = metrics.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE sensors SET last_heartbeat = ?2, activity = ?3, phase = ?4, metrics = ?5, \
                 agent_version = ?6 WHERE id = ?1",
                params![sensor, now, activity, phase, metrics, version],
            )?;
            tx.execute(
                "UPDATE jobs SET lease_expires_at = ?2 WHERE sensor_id = ?1 AND state = 'running'",
                params![sensor, now + lease_s],
            )?;
            let cancel = {
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
            Ok((cancel, rotate.unwrap_or(false)))
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
            let row = tx
                .query_row(
                    "UPDATE jobs SET state = 'running', sensor_id = ?1, claimed_at = ?2, \
                     lease_expires_at = ?3, progress = 0 \
                     WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND site = ?4 \
                                 AND kind IN (SELECT value FROM json_each(?5)) ORDER BY id LIMIT 1) \
                     RETURNING id, spec, attempts, lease_expires_at",
                    params![id, now, now + lease_s, site, kinds_json],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
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

    pub async fn requeue_expired(&self, now: i64) -> Result<Vec<i64>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "UPDATE jobs SET state = 'queued', sensor_id = NULL, lease_expires_at = NULL, \
                 claimed_at = NULL, attempts = attempts + 1, progress = 0 \
                 WHERE state = 'running' AND lease_expires_at < ?1 RETURNING id",
            )?;
            let ids = st.query_map(params![now], |r| r.get(0))?;
            Ok(ids.collect::<Result<Vec<i64>, _>>()?)
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
            if let Err(r) = check_job_access(lease.as_ref(), &sensor, false) {
                return Ok(Err(r));
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
        summary: &str,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let sensor = sensor.to_owned();
        let up = up.clone();
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
            if let Err(r) = check_job_access(lease.as_ref(), &sensor, true) {
                return Ok(Err(r));
            }
            let outcome = super::json(&up.outcome)?;
            let outcome = outcome.trim_matches('"').to_owned();
            tx.execute(
                "INSERT INTO reports (job_id, sensor_id, request_id, outcome, partial, content_type, \
                 content, summary, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![job, sensor, up.request_id, outcome, up.partial, up.content_type, up.content, summary, now],
            )?;
            let id = tx.last_insert_rowid();
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

    pub async fn create_job(
        &self,
        site: &str,
        kind: &str,
        spec: &str,
        now: i64,
    ) -> Result<i64, StoreError> {
        let (site, kind, spec) = (site.to_owned(), kind.to_owned(), spec.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO jobs (site, kind, spec, state, created_at) VALUES (?1, ?2, ?3, 'queued', ?4)",
                params![site, kind, spec, now],
            )?;
            Ok(c.last_insert_rowid())
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

    pub async fn report(&self, job: i64) -> Result<Option<Report>, StoreError> {
        self.call(move |c| {
            let raw = c
                .query_row(
                    "SELECT id, job_id, sensor_id, outcome, partial, content_type, content, summary, \
                     received_at FROM reports WHERE job_id = ?1",
                    params![job],
                    |r| {
                        Ok(super::RawReport {
                            id: r.get(0)?,
                            job_id: r.get(1)?,
                            sensor_id: r.get(2)?,
                            outcome: r.get(3)?,
                            partial: r.get(4)?,
                            content_type: r.get(5)?,
                            content: r.get(6)?,
                            summary: r.get(7)?,
                            received_at: r.get(8)?,
                        })
                    },
                )
                .optional()?;
            raw.map(super::RawReport::into_info).transpose()
        })
        .await
    }

    pub async fn sensors(&self) -> Result<Vec<SensorRow>, StoreError> {
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT s.id, s.name, s.site, s.hostname, s.board, s.agent_version, s.wg_public_key, \
                 s.registered_at, s.last_heartbeat, s.activity, s.phase, s.metrics, \
                 (SELECT COUNT(*) FROM jobs j WHERE j.sensor_id = s.id AND j.state = 'running') \
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

    pub async fn delete_sensor(&self, sensor: &str) -> Result<bool, StoreError> {
        let sensor = sensor.to_owned();
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Its running jobs go back to the queue for the site's other sensors.
            tx.execute(
                "UPDATE jobs SET state = 'queued', sensor_id = NULL, lease_expires_at = NULL, \
                 attempts = attempts + 1 WHERE sensor_id = ?1 AND state = 'running'",
                params![sensor],
            )?;
            let n = tx.execute("DELETE FROM sensors WHERE id = ?1", params![sensor])?;
            tx.commit()?;
            Ok(n > 0)
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
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![i as i64 + 1],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn lease_of(
    tx: &rusqlite::Transaction<'_>,
    job: i64,
) -> Result<Option<(JobLease, bool)>, StoreError> {
    let row: Option<(String, Option<String>, bool)> = tx
        .query_row(
            "SELECT state, sensor_id, cancel_requested FROM jobs WHERE id = ?1",
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    row.map(|(state, sensor_id, cancel)| {
        Ok((
            JobLease {
                state: parse_state(&state)?,
                sensor_id,
            },
            cancel,
        ))
    })
    .transpose()
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
    })
}
