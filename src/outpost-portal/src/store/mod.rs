//! Persistence: one `Store` over two backends with the same behaviour. SQLite (one file in
//! the data directory, a single writer) is the zero-setup default; PostgreSQL serves fleets.
//! Decisions that do not need the database (token checks, lease arithmetic, access rules)
//! live here once; the backends only run SQL.

mod postgres;
mod sqlite;

use std::net::Ipv4Addr;

use outpost_wire::admin::{
    JobInfo, JobState, ReportInfo, SensorInfo, SensorStatus, StoredLogEvent,
};
use outpost_wire::log::LogEvent;
use outpost_wire::sensor::{
    Capability, HeartbeatRequest, Job, JobSpec, JobStatusUpdate, RegisterRequest, ReportAck,
    ReportOutcome, ReportUpload,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    #[error("database worker stopped: {0}")]
    Worker(String),
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
    #[error("database schema is version {found}, newer than this portal ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Invalid,
    Expired,
    UsedUp,
    SiteMismatch,
}

/// Why a sensor may not act on a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRefusal {
    NotFound,
    /// The job is leased to another sensor (or never was this one's).
    NotYours,
    /// The lease expired and the job went back to the queue, or the job is final.
    LeaseLost(JobState),
    /// A different report was already stored for this job.
    AlreadyReported,
}

/// The authenticated caller of the sensor API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorAuth {
    pub id: String,
    pub name: String,
    pub site: String,
    /// The key its tunnel must use; requests through the tunnel are checked against it.
    pub wg_public_key: String,
}

/// A sensor row as registration writes it.
#[derive(Debug, Clone)]
pub struct NewSensor {
    pub id: String,
    pub api_key_hash: String,
    pub req: RegisterRequest,
    pub now: i64,
    /// Where to take the sensor's tunnel address from, when the portal runs a gateway.
    pub tunnel_pool: Option<TunnelPool>,
}

/// The tunnel network: sensors get host addresses in it, except the portal's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPool {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub portal: Ipv4Addr,
}

impl TunnelPool {
    /// The lowest free host address, or None when the network is full.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix.min(32)));
        let base = u32::from(self.network)
            & (u64::from(u32::MAX) << (32 - u32::from(self.prefix.min(32)))) as u32;
        let used: std::collections::HashSet<u32> = used.iter().map(|a| u32::from(*a)).collect();
        // Skip the network address (offset 0) and the broadcast address (last).
        (1..size.saturating_sub(1))
            .map(|off| base.wrapping_add(off as u32))
            .find(|a| *a != u32::from(self.portal) && !used.contains(a))
            .map(Ipv4Addr::from)
    }
}

/// A sensor's tunnel peer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPeerRow {
    pub sensor_id: String,
    pub wg_public_key: String,
    pub tunnel_address: Ipv4Addr,
}

/// The token row as read inside the registration transaction.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub site: String,
    pub uses_left: i64,
    pub expires_at: i64,
}

/// The single rule for enrollment tokens, shared by both backends.
pub fn check_token(row: Option<&TokenRow>, site: &str, now: i64) -> Result<(), TokenRefusal> {
    let row = row.ok_or(TokenRefusal::Invalid)?;
    if row.expires_at <= now {
        return Err(TokenRefusal::Expired);
    }
    if row.uses_left <= 0 {
        return Err(TokenRefusal::UsedUp);
    }
    if row.site != site {
        return Err(TokenRefusal::SiteMismatch);
    }
    Ok(())
}

/// The job columns a sensor-side decision needs.
#[derive(Debug, Clone)]
pub struct JobLease {
    pub state: JobState,
    pub sensor_id: Option<String>,
}

/// The single rule for "may this sensor act on this job", shared by both backends.
/// `final_ok` allows acting on a job that already ended (a report after a failure or
/// a cancellation acknowledgement).
pub fn check_job_access(
    lease: Option<&JobLease>,
    sensor: &str,
    final_ok: bool,
) -> Result<(), JobRefusal> {
    let lease = lease.ok_or(JobRefusal::NotFound)?;
    match lease.sensor_id.as_deref() {
        Some(owner) if owner == sensor => {
            if lease.state == JobState::Running || (final_ok && lease.state.is_final()) {
                Ok(())
            } else {
                Err(JobRefusal::LeaseLost(lease.state))
            }
        }
        None if lease.state == JobState::Queued => Err(JobRefusal::LeaseLost(lease.state)),
        _ => Err(JobRefusal::NotYours),
    }
}

/// State a job takes after a sensor's status update.
pub fn state_after_update(update: &JobStatusUpdate) -> JobState {
    match update {
        JobStatusUpdate::Running { .. } => JobState::Running,
        JobStatusUpdate::Failed { .. } => JobState::Failed,
        JobStatusUpdate::Cancelled => JobState::Cancelled,
    }
}

/// A report row for the admin API.
pub type Report = ReportInfo;

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Raw sensor row; the API layer computes its status.
#[derive(Debug, Clone)]
pub struct SensorRow {
    pub info: SensorInfo,
    pub running_jobs: i64,
}

impl Store {
    /// Opens `postgres://...` URLs with PostgreSQL and anything else as an SQLite file path.
    pub async fn open(database: &str) -> Result<Store, StoreError> {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect(database).await?))
        } else {
            Ok(Store::Sqlite(SqliteStore::open(database.into()).await?))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    pub async fn create_token(
        &self,
        hash: &str,
        site: &str,
        uses: u32,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.create_token(hash, site, uses, expires_at, now).await,
            Store::Postgres(s) => s.create_token(hash, site, uses, expires_at, now).await,
        }
    }

    /// Spends one use of the token and inserts the sensor, atomically; allocates its
    /// tunnel address when a pool is given.
    pub async fn register(
        &self,
        token_hash: &str,
        sensor: NewSensor,
    ) -> Result<Result<Option<Ipv4Addr>, TokenRefusal>, StoreError> {
        match self {
            Store::Sqlite(s) => s.register(token_hash, sensor).await,
            Store::Postgres(s) => s.register(token_hash, sensor).await,
        }
    }

    /// Every sensor with a tunnel address, for the gateway's peer table.
    pub async fn tunnel_peers(&self) -> Result<Vec<TunnelPeerRow>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.tunnel_peers().await?,
            Store::Postgres(s) => s.tunnel_peers().await?,
        };
        rows.into_iter()
            .map(|(sensor_id, wg_public_key, addr)| {
                let tunnel_address = addr
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("tunnel address {addr:?}")))?;
                Ok(TunnelPeerRow {
                    sensor_id,
                    wg_public_key,
                    tunnel_address,
                })
            })
            .collect()
    }

    /// Replaces a sensor's WireGuard public key; returns the old one.
    pub async fn rotate_key(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.rotate_key(sensor, new_key).await,
            Store::Postgres(s) => s.rotate_key(sensor, new_key).await,
        }
    }

    pub async fn sensor_by_key(&self, key_hash: &str) -> Result<Option<SensorAuth>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensor_by_key(key_hash).await,
            Store::Postgres(s) => s.sensor_by_key(key_hash).await,
        }
    }

    /// Records the heartbeat, extends the leases of the sensor's running jobs and returns
    /// the ids of those an operator asked to cancel, and whether a key rotation is pending.
    pub async fn heartbeat(
        &self,
        sensor: &str,
        hb: &HeartbeatRequest,
        now: i64,
        lease_s: i64,
    ) -> Result<(Vec<i64>, bool), StoreError> {
        let metrics = json(&hb.metrics)?;
        match self {
            Store::Sqlite(s) => s.heartbeat(sensor, hb, &metrics, now, lease_s).await,
            Store::Postgres(s) => s.heartbeat(sensor, hb, &metrics, now, lease_s).await,
        }
    }

    /// Leases the oldest queued job of the sensor's site whose kind it can take.
    pub async fn claim(
        &self,
        sensor: &SensorAuth,
        caps: &[Capability],
        now: i64,
        lease_s: i64,
    ) -> Result<Option<Job>, StoreError> {
        let kinds: Vec<String> = caps.iter().map(|c| c.as_str().to_owned()).collect();
        if kinds.is_empty() {
            return Ok(None);
        }
        match self {
            Store::Sqlite(s) => s.claim(sensor, &kinds, now, lease_s).await,
            Store::Postgres(s) => s.claim(sensor, &kinds, now, lease_s).await,
        }
    }

    /// Puts running jobs whose lease ended back in the queue; returns their ids.
    pub async fn requeue_expired(&self, now: i64) -> Result<Vec<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.requeue_expired(now).await,
            Store::Postgres(s) => s.requeue_expired(now).await,
        }
    }

    pub async fn append_log(
        &self,
        sensor: &str,
        events: &[LogEvent],
        now: i64,
    ) -> Result<(), StoreError> {
        let rows = events.iter().map(json).collect::<Result<Vec<_>, _>>()?;
        match self {
            Store::Sqlite(s) => s.append_log(sensor, &rows, now).await,
            Store::Postgres(s) => s.append_log(sensor, &rows, now).await,
        }
    }

    /// Applies a sensor's status update; answers whether cancellation was requested.
    pub async fn job_status(
        &self,
        sensor: &str,
        job: i64,
        update: &JobStatusUpdate,
        now: i64,
        lease_s: i64,
    ) -> Result<Result<bool, JobRefusal>, StoreError> {
        match self {
            Store::Sqlite(s) => s.job_status(sensor, job, update, now, lease_s).await,
            Store::Postgres(s) => s.job_status(sensor, job, update, now, lease_s).await,
        }
    }

    /// Stores a report once per job; a retry with the same request id gets the same answer.
    pub async fn store_report(
        &self,
        sensor: &str,
        job: i64,
        upload: &ReportUpload,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let summary = json(&upload.summary)?;
        match self {
            Store::Sqlite(s) => s.store_report(sensor, job, upload, &summary, now).await,
            Store::Postgres(s) => s.store_report(sensor, job, upload, &summary, now).await,
        }
    }

    pub async fn create_job(
        &self,
        site: &str,
        spec: &JobSpec,
        now: i64,
    ) -> Result<i64, StoreError> {
        let kind = spec.capability().as_str();
        let spec = json(spec)?;
        match self {
            Store::Sqlite(s) => s.create_job(site, kind, &spec, now).await,
            Store::Postgres(s) => s.create_job(site, kind, &spec, now).await,
        }
    }

    /// Cancels a queued job at once, or asks the sensor running it to stop.
    /// Returns the state after the request, or None if there is no such job.
    pub async fn cancel_job(&self, job: i64, now: i64) -> Result<Option<JobState>, StoreError> {
        match self {
            Store::Sqlite(s) => s.cancel_job(job, now).await,
            Store::Postgres(s) => s.cancel_job(job, now).await,
        }
    }

    pub async fn job(&self, job: i64) -> Result<Option<JobInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => s.job(job).await,
            Store::Postgres(s) => s.job(job).await,
        }
    }

    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => s.jobs(limit).await,
            Store::Postgres(s) => s.jobs(limit).await,
        }
    }

    pub async fn report(&self, job: i64) -> Result<Option<Report>, StoreError> {
        match self {
            Store::Sqlite(s) => s.report(job).await,
            Store::Postgres(s) => s.report(job).await,
        }
    }

    pub async fn sensors(&self) -> Result<Vec<SensorRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensors().await,
            Store::Postgres(s) => s.sensors().await,
        }
    }

    pub async fn sensor_log(
        &self,
        sensor: &str,
        limit: i64,
    ) -> Result<Vec<StoredLogEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensor_log(sensor, limit).await,
            Store::Postgres(s) => s.sensor_log(sensor, limit).await,
        }
    }

    /// Asks the sensor (through its next heartbeat) to rotate its WireGuard key; the flag
    /// clears in [`Store::rotate_key`]. `false` when no such sensor exists.
    pub async fn request_key_rotation(&self, sensor: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.request_key_rotation(sensor).await,
            Store::Postgres(s) => s.request_key_rotation(sensor).await,
        }
    }

    pub async fn delete_sensor(&self, sensor: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_sensor(sensor).await,
            Store::Postgres(s) => s.delete_sensor(sensor).await,
        }
    }
}

/// Job state after a report with this outcome arrives for a running job.
pub(crate) fn report_state(outcome: ReportOutcome) -> JobState {
    match outcome {
        ReportOutcome::Completed => JobState::Completed,
        ReportOutcome::Cancelled => JobState::Cancelled,
        ReportOutcome::Failed => JobState::Failed,
    }
}

/// Columns of a job row as both backends read them.
pub(crate) struct RawJob {
    pub id: i64,
    pub site: String,
    pub state: String,
    pub spec: String,
    pub sensor_id: Option<String>,
    pub attempts: i64,
    pub progress: i64,
    pub cancel_requested: bool,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    pub lease_expires_at: Option<i64>,
}

impl RawJob {
    pub fn into_info(self) -> Result<JobInfo, StoreError> {
        Ok(JobInfo {
            id: self.id,
            site: self.site,
            state: parse_state(&self.state)?,
            spec: from_json(&self.spec)?,
            sensor_id: self.sensor_id,
            attempts: self.attempts.clamp(0, u32::MAX as i64) as u32,
            progress_percent: self.progress.clamp(0, 100) as u8,
            cancel_requested: self.cancel_requested,
            failure_reason: self.failure_reason,
            created_at: self.created_at,
            lease_expires_at: self.lease_expires_at,
        })
    }
}

pub(crate) struct RawReport {
    pub id: i64,
    pub job_id: i64,
    pub sensor_id: String,
    pub outcome: String,
    pub partial: bool,
    pub content_type: String,
    pub content: String,
    pub summary: String,
    pub received_at: i64,
}

impl RawReport {
    pub fn into_info(self) -> Result<Report, StoreError> {
        Ok(ReportInfo {
            id: self.id,
            job_id: self.job_id,
            sensor_id: self.sensor_id,
            outcome: from_json(&format!("\"{}\"", self.outcome))?,
            partial: self.partial,
            content_type: self.content_type,
            content: self.content,
            summary: from_json(&self.summary)?,
            received_at: self.received_at,
        })
    }
}

pub(crate) struct RawSensor {
    pub id: String,
    pub name: String,
    pub site: String,
    pub hostname: String,
    pub board: String,
    pub agent_version: String,
    pub wg_public_key: String,
    pub registered_at: i64,
    pub last_heartbeat: Option<i64>,
    pub activity: Option<String>,
    pub phase: Option<String>,
    pub metrics: Option<String>,
    pub running_jobs: i64,
}

impl RawSensor {
    pub fn into_row(self) -> Result<SensorRow, StoreError> {
        let quoted = |s: Option<String>| s.map(|s| format!("\"{s}\""));
        Ok(SensorRow {
            info: SensorInfo {
                id: self.id,
                name: self.name,
                site: self.site,
                // Placeholder; the API layer computes the real status from the clock.
                status: SensorStatus::Offline,
                hostname: self.hostname,
                board: self.board,
                agent_version: self.agent_version,
                wg_public_key: self.wg_public_key,
                registered_at: self.registered_at,
                last_heartbeat: self.last_heartbeat,
                activity: quoted(self.activity).map(|s| from_json(&s)).transpose()?,
                phase: quoted(self.phase).map(|s| from_json(&s)).transpose()?,
                metrics: self.metrics.map(|s| from_json(&s)).transpose()?,
            },
            running_jobs: self.running_jobs,
        })
    }
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("job state {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(site: &str, uses: i64, exp: i64) -> TokenRow {
        TokenRow {
            site: site.into(),
            uses_left: uses,
            expires_at: exp,
        }
    }

    #[test]
    fn token_rules_in_order() {
        assert_eq!(check_token(None, "a", 10), Err(TokenRefusal::Invalid));
        assert_eq!(
            check_token(Some(&row("a", 1, 10)), "a", 10),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            check_token(Some(&row("a", 0, 11)), "a", 10),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            check_token(Some(&row("a", 1, 11)), "b", 10),
            Err(TokenRefusal::SiteMismatch)
        );
        assert_eq!(check_token(Some(&row("a", 1, 11)), "a", 10), Ok(()));
    }

    #[test]
    fn tunnel_addresses_are_allocated_lowest_first() {
        let pool = TunnelPool {
            network: "100.96.0.0".parse().unwrap(),
            prefix: 29,
            portal: "100.96.0.1".parse().unwrap(),
        };
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(pool.allocate(&[]), Some(a("100.96.0.2")));
        assert_eq!(
            pool.allocate(&[a("100.96.0.2"), a("100.96.0.4")]),
            Some(a("100.96.0.3"))
        );
        let full: Vec<Ipv4Addr> = (2..=6).map(|i| a(&format!("100.96.0.{i}"))).collect();
        assert_eq!(
            pool.allocate(&full),
            None,
            "network and broadcast are never handed out"
        );
    }

    #[test]
    fn job_access_rules() {
        let lease = |state, s: Option<&str>| JobLease {
            state,
            sensor_id: s.map(str::to_owned),
        };
        use JobState::*;
        assert_eq!(
            check_job_access(None, "s1", false),
            Err(JobRefusal::NotFound)
        );
        assert_eq!(
            check_job_access(Some(&lease(Running, Some("s1"))), "s1", false),
            Ok(())
        );
        assert_eq!(
            check_job_access(Some(&lease(Running, Some("s2"))), "s1", false),
            Err(JobRefusal::NotYours)
        );
        assert_eq!(
            check_job_access(Some(&lease(Queued, None)), "s1", false),
            Err(JobRefusal::LeaseLost(Queued))
        );
        assert_eq!(
            check_job_access(Some(&lease(Failed, Some("s1"))), "s1", false),
            Err(JobRefusal::LeaseLost(Failed))
        );
        assert_eq!(
            check_job_access(Some(&lease(Failed, Some("s1"))), "s1", true),
            Ok(())
        );
    }
}
