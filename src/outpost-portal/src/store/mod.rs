//! Persistence: one `Store` over two backends with the same behaviour. SQLite (one file in
//! the data directory, a single writer) is the zero-setup default; PostgreSQL serves fleets.
//! Decisions that do not need the database (token checks, lease arithmetic, access rules)
//! live here once; the backends only run SQL.

mod auth_cache;
mod postgres;
mod sqlite;

use std::net::Ipv4Addr;

use outpost_wire::admin::{
    BundleInfo, JobInfo, JobState, ReportInfo, SensorInfo, SensorStatus, SensorUpdate,
    StoredLogEvent,
};
use outpost_wire::log::{EventKind, Level, LogEvent};
use outpost_wire::sensor::{
    Capability, HeartbeatRequest, Job, JobSpec, JobStatusUpdate, RegisterRequest, ReportAck,
    ReportOutcome, ReportUpload, UpdateSpec, UpdateState, UpdateStateReport,
};

pub use auth_cache::AuthCache;
pub use postgres::{PgStore, CLAIM_SQL, PEERS_CHANNEL};
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
    #[error("reading the report text: {0}")]
    ReportText(std::io::Error),
}

/// Bytes of report text per row of `report_chunks`: what the portal holds of a report at
/// once while storing or serving it, whatever the report's size.
pub const REPORT_CHUNK: usize = 1024 * 1024;

/// A report's text read in chunks of at most `size` bytes, each cut at a character
/// boundary (so every chunk is text of its own and can be served as it is read).
pub struct ReportChunks {
    src: Box<dyn std::io::Read + Send>,
    size: usize,
    carry: Vec<u8>,
}

impl ReportChunks {
    pub fn new(src: impl std::io::Read + Send + 'static, size: usize) -> ReportChunks {
        ReportChunks {
            src: Box::new(src),
            // room for the longest character
            size: size.max(4),
            carry: Vec::new(),
        }
    }

    /// Text already in memory (tests, small reports).
    pub fn text(text: String, size: usize) -> ReportChunks {
        ReportChunks::new(std::io::Cursor::new(text.into_bytes()), size)
    }

    /// The next chunk, `None` at the end. Text that is not UTF-8 is an error.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<String>> {
        use std::io::Read;
        let mut buf = std::mem::take(&mut self.carry);
        let want = (self.size - buf.len()) as u64;
        let n = (&mut self.src).take(want).read_to_end(&mut buf)?;
        let end = (n as u64) < want;
        if buf.is_empty() {
            return Ok(None);
        }
        let cut = match std::str::from_utf8(&buf) {
            Ok(_) => buf.len(),
            Err(e) if e.error_len().is_none() && !end && e.valid_up_to() > 0 => e.valid_up_to(),
            Err(e) => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        };
        self.carry = buf.split_off(cut);
        String::from_utf8(buf)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
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
    /// Random value the API key is derived from (with the enrollment token), so a retry
    /// of the same registration can be given the same key (see `auth::derive_api_key`).
    pub api_key_salt: String,
    pub req: RegisterRequest,
    pub now: i64,
    /// Where to take the sensor's tunnel address from, when the portal runs a gateway.
    pub tunnel_pool: Option<TunnelPool>,
}

/// What registration stored (or found, for a retry of the same registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub sensor_id: String,
    pub site: String,
    pub api_key_salt: String,
    pub tunnel_address: Option<Ipv4Addr>,
    /// False when this was a retry: the sensor existed and the token was not used again.
    pub created: bool,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefusal {
    Token(TokenRefusal),
    /// The WireGuard key belongs to a sensor enrolled with another token.
    KeyInUse,
    /// The gateway would not take the peer; nothing was stored.
    Peer(String),
}

/// Runs inside the registration transaction, before it commits: installs the sensor's
/// tunnel peer. An error rolls the registration back, so a sensor row never exists
/// without its peer (and a failed add does not use up the token).
pub type PeerInstall = Box<dyn FnOnce(Option<Ipv4Addr>) -> Result<(), String> + Send>;

/// The stored registration row found by WireGuard key, inside the transaction.
#[derive(Debug, Clone)]
pub struct KeyOwner {
    pub sensor_id: String,
    pub site: String,
    pub enrolled_with: Option<String>,
    pub api_key_salt: Option<String>,
    pub tunnel_address: Option<String>,
}

/// The single rule for a registration whose key is already stored: the same token makes
/// it a retry (answered with the same sensor); anything else is refused.
pub fn retry_of(owner: &KeyOwner, token_hash: &str) -> Result<Registered, RegisterRefusal> {
    match (&owner.enrolled_with, &owner.api_key_salt) {
        (Some(t), Some(salt)) if t == token_hash => Ok(Registered {
            sensor_id: owner.sensor_id.clone(),
            site: owner.site.clone(),
            api_key_salt: salt.clone(),
            tunnel_address: owner.tunnel_address.as_deref().and_then(|a| a.parse().ok()),
            created: false,
        }),
        _ => Err(RegisterRefusal::KeyInUse),
    }
}

/// How a running job that its sensor lost (lease expired, restarted without it, sensor
/// deleted) is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossRules {
    /// A job lost this many times fails instead of going back to the queue.
    pub max_attempts: u32,
}

impl Default for LossRules {
    fn default() -> LossRules {
        LossRules { max_attempts: 3 }
    }
}

/// What becomes of one lost job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// An operator had asked to cancel it: it ends cancelled, never re-queued.
    Cancel,
    Requeue,
    Fail(String),
}

/// The single rule for lost jobs, shared by both backends. `attempts` is how often the job
/// was lost before this time.
pub fn loss(attempts: i64, cancel_requested: bool, why: &str, rules: LossRules) -> Loss {
    if cancel_requested {
        return Loss::Cancel;
    }
    let lost = attempts.saturating_add(1);
    if lost >= i64::from(rules.max_attempts.max(1)) {
        Loss::Fail(format!(
            "{why}; given up after {lost} attempts (the limit is {}, --max-attempts)",
            rules.max_attempts.max(1)
        ))
    } else {
        Loss::Requeue
    }
}

/// A job taken from a sensor that lost it, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostJob {
    pub id: i64,
    pub state: JobState,
}

/// Reasons recorded with [`loss`].
pub const LOST_LEASE: &str = "the sensor stopped heartbeating (lease expired)";
pub const LOST_RESTART: &str = "the sensor no longer runs the job (restarted without it)";
pub const LOST_DELETED: &str = "the sensor running the job was deleted";

/// The tunnel network: sensors get host addresses in it, except the portal's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPool {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub portal: Ipv4Addr,
}

impl TunnelPool {
    /// The host addresses after `addr`, in order, the portal's left out (none when
    /// `addr` is outside the network).
    pub fn after(&self, addr: Ipv4Addr) -> impl Iterator<Item = Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix.min(32)));
        let base = u32::from(self.network)
            & (u64::from(u32::MAX) << (32 - u32::from(self.prefix.min(32)))) as u32;
        let start = u64::from(u32::from(addr).wrapping_sub(base)) + 1;
        let portal = u32::from(self.portal);
        // Up to the broadcast address, which is left out.
        (start..size.saturating_sub(1))
            .map(move |off| base.wrapping_add(off as u32))
            .filter(move |a| *a != portal)
            .map(Ipv4Addr::from)
    }

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

/// What every portal process on one PostgreSQL database must share (`portal_secrets`):
/// the gateway's WireGuard key, the CA sensors pin, the admin token, and the SHA-256 of
/// the credential key (the key itself stays out of the database).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedIdentity {
    pub wg_private_key: String,
    pub ca_cert: String,
    pub ca_key: String,
    pub admin_token: String,
    pub credentials_key_sha256: String,
}

impl std::fmt::Debug for SharedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedIdentity(..)")
    }
}

/// A sensor's tunnel peer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPeerRow {
    pub sensor_id: String,
    pub wg_public_key: String,
    pub tunnel_address: Ipv4Addr,
    /// A rotated key not yet used: the gateway accepts it too (two-phase rotation).
    pub pending_key: Option<String>,
}

/// A backend's raw peer row: id, key, tunnel address, pending key.
pub(crate) type PeerRow = (String, String, String, Option<String>);

/// What announcing a new WireGuard key did ([`Store::begin_rotation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationBegun {
    NoSensor,
    /// Another sensor holds the key (current or pending).
    KeyInUse,
    /// The key is already the sensor's current one: the rotation finished before.
    AlreadyCurrent,
    /// Stored as pending; `replaced` is an earlier, different pending key (the sensor
    /// lost it) that the gateway should stop accepting.
    Pending {
        replaced: Option<String>,
    },
}

/// The decision of [`Store::begin_rotation`] from the sensor's (current, pending) keys
/// and whether another sensor holds `new_key`; both backends share it.
pub(crate) fn rotation_step(
    row: Option<(String, Option<String>)>,
    taken: bool,
    new_key: &str,
) -> RotationBegun {
    match row {
        None => RotationBegun::NoSensor,
        Some(_) if taken => RotationBegun::KeyInUse,
        Some((current, _)) if current == new_key => RotationBegun::AlreadyCurrent,
        Some((_, pending)) => RotationBegun::Pending {
            replaced: pending.filter(|p| p != new_key),
        },
    }
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
    /// The sensor that last lost the job (it went back to the queue from there).
    pub lost_by: Option<String>,
}

/// How a sensor may act on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The job is leased to it (or ended there).
    Leased,
    /// The job went back to the queue when this sensor lost it, and the sensor now
    /// returns what it recovered (a failure, a partial report): the job ends failed
    /// with that, and is not run again.
    Recovered,
}

/// Recorded as the failure of a job a sensor lost and then finished with a partial report.
pub const RECOVERED_AFTER_LOSS: &str = "interrupted: the sensor lost the job (it restarted) \
     and returned a partial report of what it had collected, so the job is not run again";

/// [`check_job_access`], plus one exception for `recovering` requests (a failed status,
/// a partial report that did not complete): a job that went back to the queue after
/// this very sensor lost it, and that nobody has claimed since, is still this sensor's
/// to finish. A job claimed again meanwhile stays with the new run.
pub fn job_access(
    lease: Option<&JobLease>,
    sensor: &str,
    final_ok: bool,
    recovering: bool,
) -> Result<Access, JobRefusal> {
    match check_job_access(lease, sensor, final_ok) {
        Ok(()) => Ok(Access::Leased),
        Err(refusal) => match lease {
            Some(l)
                if recovering
                    && l.state == JobState::Queued
                    && l.sensor_id.is_none()
                    && l.lost_by.as_deref() == Some(sensor) =>
            {
                Ok(Access::Recovered)
            }
            _ => Err(refusal),
        },
    }
}

/// Whether a report upload comes from a sensor finishing a job it lost.
pub fn is_recovery(up: &ReportUpload) -> bool {
    up.partial && up.outcome != ReportOutcome::Completed
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

/// A published bundle as the publish handler hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBundle {
    pub version: String,
    pub compatible: String,
    pub min_version: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub published_at: i64,
}

/// A published feed release (`crate::feeds`): its manifest is the blob named
/// `manifest_sha256`, signed by the portal's feed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRelease {
    pub id: i64,
    pub manifest_sha256: String,
    pub plugin_set: String,
    pub notus_version: Option<String>,
    pub vt_count: u64,
    pub files: u64,
    pub bytes: u64,
    /// The manifest signature line (`outpost_feed::ManifestSignature::to_line`).
    pub signature: String,
    pub imported_at: i64,
}

/// A feed release as the import hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeedRelease {
    pub manifest_sha256: String,
    pub plugin_set: String,
    pub notus_version: Option<String>,
    pub vt_count: u64,
    pub files: u64,
    pub bytes: u64,
    pub signature: String,
    pub imported_at: i64,
}

/// Columns of a feed release row as both backends read them.
pub(crate) struct RawFeedRelease {
    pub id: i64,
    pub manifest_sha256: String,
    pub plugin_set: String,
    pub notus_version: Option<String>,
    pub vt_count: i64,
    pub files: i64,
    pub bytes: i64,
    pub signature: String,
    pub imported_at: i64,
}

impl RawFeedRelease {
    pub fn into_release(self) -> FeedRelease {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        FeedRelease {
            id: self.id,
            manifest_sha256: self.manifest_sha256,
            plugin_set: self.plugin_set,
            notus_version: self.notus_version,
            vt_count: n(self.vt_count),
            files: n(self.files),
            bytes: n(self.bytes),
            signature: self.signature,
            imported_at: self.imported_at,
        }
    }
}

/// The numbers of a release as signed 64-bit columns.
pub(crate) fn feed_columns(r: &NewFeedRelease) -> Result<(i64, i64, i64), StoreError> {
    let c = |what: &str, v: u64| {
        i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("feed release {what} {v}")))
    };
    Ok((
        c("vt_count", r.vt_count)?,
        c("files", r.files)?,
        c("bytes", r.bytes)?,
    ))
}

/// Why an assignment created no jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignRefusal {
    UnknownSensor(String),
    /// The site has no registered sensor.
    EmptySite(String),
}

/// Why an update-state report was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRefusal {
    Job(JobRefusal),
    /// `job_id` names a job that is not an update.
    NotAnUpdate,
    /// `job_id` names the update to another bundle than `bundle_id`.
    OtherBundle(Option<i64>),
}

/// The job columns an update-state decision needs.
#[derive(Debug, Clone)]
pub struct UpdateJobRow {
    pub lease: JobLease,
    pub kind: String,
    pub bundle_id: Option<i64>,
}

/// What an update-state report does to its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEffect {
    /// Only the sensor's update state changes.
    Nothing,
    /// Still running: progress, and the lease is renewed.
    Progress(u8),
    /// The slot is written and the sensor reboots into it (or already runs it).
    Complete,
    Fail(String),
}

/// The single rule for update-state reports, shared by both backends. `row` is the job the
/// report names (`None` when it names none that exists).
pub fn update_effect(
    row: Option<&UpdateJobRow>,
    sensor: &str,
    report: &UpdateStateReport,
) -> Result<JobEffect, UpdateRefusal> {
    if report.job_id.is_none() {
        return Ok(JobEffect::Nothing);
    }
    let row = row.ok_or(UpdateRefusal::Job(JobRefusal::NotFound))?;
    if row.kind != Capability::Update.as_str() {
        return Err(UpdateRefusal::NotAnUpdate);
    }
    if row.bundle_id != Some(report.bundle_id) {
        return Err(UpdateRefusal::OtherBundle(row.bundle_id));
    }
    check_job_access(Some(&row.lease), sensor, true).map_err(UpdateRefusal::Job)?;
    let in_progress = matches!(
        report.state,
        UpdateState::Downloading | UpdateState::Installing
    );
    if row.lease.state.is_final() {
        // The job ended (completed at `rebooting`, or cancelled): later outcomes such as
        // `committed` are news about the sensor, not the job; progress is out of place.
        return if in_progress {
            Err(UpdateRefusal::Job(JobRefusal::LeaseLost(row.lease.state)))
        } else {
            Ok(JobEffect::Nothing)
        };
    }
    Ok(match report.state {
        UpdateState::Downloading | UpdateState::Installing => {
            JobEffect::Progress(report.progress_percent.min(100))
        }
        // `rebooting` ends the job: the reboot into the new slot may take longer than the
        // lease, and the job must not go back to the queue meanwhile.
        UpdateState::Rebooting | UpdateState::Committed => JobEffect::Complete,
        UpdateState::RolledBack | UpdateState::Refused | UpdateState::Failed => {
            let reason = if report.reason.is_empty() {
                "no reason given".to_owned()
            } else {
                report.reason.clone()
            };
            JobEffect::Fail(format!("update {}: {reason}", report.state.as_str()))
        }
    })
}

/// The sensor's latest update state and the log line that records it.
pub(crate) fn update_records(
    report: &UpdateStateReport,
    now: i64,
) -> Result<(String, String), StoreError> {
    let update = SensorUpdate {
        bundle_id: report.bundle_id,
        version: report.version.clone(),
        state: report.state,
        reason: report.reason.clone(),
        progress_percent: report.progress_percent.min(100),
        updated_at: now,
    };
    let mut message = format!(
        "update to {} (bundle {}): {}",
        report.version,
        report.bundle_id,
        report.state.as_str()
    );
    if matches!(
        report.state,
        UpdateState::Downloading | UpdateState::Installing
    ) {
        message.push_str(&format!(" {}%", report.progress_percent.min(100)));
    }
    if !report.reason.is_empty() {
        message.push_str(&format!(": {}", report.reason));
    }
    if let Some(slot) = &report.slot {
        message.push_str(&format!(" (from slot {slot})"));
    }
    let level = match report.state {
        UpdateState::Failed | UpdateState::Refused => Level::Error,
        UpdateState::RolledBack => Level::Warn,
        _ => Level::Info,
    };
    // Recorded by the portal, not sent by the sensor: `seq` 0 keeps it apart from the
    // sensor's own numbering.
    let event = LogEvent {
        seq: 0,
        ts_ms: u64::try_from(now).unwrap_or(0).saturating_mul(1000),
        level,
        kind: match report.job_id {
            Some(job_id) => EventKind::Job { job_id, message },
            None => EventKind::Message { message },
        },
    };
    Ok((json(&update)?, json(&event)?))
}

/// The job spec of an update to `bundle`.
pub fn update_spec(bundle: &BundleInfo) -> JobSpec {
    JobSpec::Update(UpdateSpec {
        bundle_id: bundle.id,
        version: bundle.version.clone(),
        size: bundle.size,
        sha256: bundle.sha256.clone(),
    })
}

fn spec_bundle(spec: &JobSpec) -> Option<i64> {
    match spec {
        JobSpec::Update(u) => Some(u.bundle_id),
        JobSpec::Scan(_) => None,
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
    /// The feed release its last heartbeat named.
    pub feed_live: Option<String>,
    /// Since when its heartbeats name another release than its channel's.
    pub feed_off_since: Option<i64>,
}

/// `feed_channels.scope` of a site's channel.
pub const SCOPE_SITE: &str = "site";
/// `feed_channels.scope` of a single sensor's channel.
pub const SCOPE_SENSOR: &str = "sensor";

/// A channel setting as both backends write it.
#[derive(Debug, Clone)]
pub struct ChannelWrite {
    pub scope: &'static str,
    pub name: String,
    /// `None`: the newest release.
    pub pinned: Option<i64>,
    /// Remove the setting instead (the sensor follows its site, the site the default).
    pub clear: bool,
    pub now: i64,
}

/// Why a channel was not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRefusal {
    UnknownRelease(i64),
    UnknownSensor(String),
}

/// A stored channel row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChannel {
    pub scope: String,
    pub name: String,
    pub release_id: Option<i64>,
    pub set_at: i64,
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
    /// tunnel address when a pool is given, and runs `install` before committing. A
    /// registration with a key already enrolled with the same token is a retry: it
    /// answers the stored sensor and spends nothing.
    pub async fn register(
        &self,
        token_hash: &str,
        sensor: NewSensor,
        install: PeerInstall,
    ) -> Result<Result<Registered, RegisterRefusal>, StoreError> {
        match self {
            Store::Sqlite(s) => s.register(token_hash, sensor, install).await,
            Store::Postgres(s) => s.register(token_hash, sensor, install).await,
        }
    }

    /// Every sensor with a tunnel address, for the gateway's peer table.
    pub async fn tunnel_peers(&self) -> Result<Vec<TunnelPeerRow>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.tunnel_peers().await?,
            Store::Postgres(s) => s.tunnel_peers().await?,
        };
        Ok(Self::peer_rows(rows))
    }

    /// [`Store::tunnel_peers`] of these sensors only (those without an address are left out).
    pub async fn tunnel_peers_of(&self, ids: &[String]) -> Result<Vec<TunnelPeerRow>, StoreError> {
        let rows = match self {
            // One process, a few hundred sensors: the whole table is cheap enough.
            Store::Sqlite(s) => {
                let mut rows = s.tunnel_peers().await?;
                rows.retain(|r| ids.contains(&r.0));
                rows
            }
            Store::Postgres(s) => s.tunnel_peers_of(ids).await?,
        };
        Ok(Self::peer_rows(rows))
    }

    fn peer_rows(rows: Vec<PeerRow>) -> Vec<TunnelPeerRow> {
        // One damaged row must not take every other sensor's tunnel down with it.
        rows
            .into_iter()
            .filter_map(|(sensor_id, wg_public_key, addr, pending_key)| match addr.parse() {
                Ok(tunnel_address) => Some(TunnelPeerRow {
                    sensor_id,
                    wg_public_key,
                    tunnel_address,
                    pending_key,
                }),
                Err(_) => {
                    tracing::error!(sensor = %sensor_id, address = %addr, "skipping a sensor with an unreadable tunnel address");
                    None
                }
            })
            .collect()
    }

    /// First phase of a key rotation: stores `new_key` as the sensor's pending key,
    /// beside its current one. Repeating it (the answer was lost) changes nothing.
    pub async fn begin_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<RotationBegun, StoreError> {
        match self {
            Store::Sqlite(s) => s.begin_rotation(sensor, new_key).await,
            Store::Postgres(s) => s.begin_rotation(sensor, new_key).await,
        }
    }

    /// Second phase, once a request came through a tunnel keyed with `new_key`: the
    /// pending key becomes the sensor's key and the rotation request clears. Returns the
    /// replaced key, or `None` when `new_key` is not the sensor's pending key.
    pub async fn finish_rotation(
        &self,
        sensor: &str,
        new_key: &str,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.finish_rotation(sensor, new_key).await,
            Store::Postgres(s) => s.finish_rotation(sensor, new_key).await,
        }
    }

    /// The sensor with this API key digest. On PostgreSQL possibly from memory
    /// (`auth_cache.rs`: no older than the replica's gateway peers).
    pub async fn sensor_by_key(&self, key_hash: &str) -> Result<Option<SensorAuth>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensor_by_key(key_hash).await,
            Store::Postgres(s) => s.sensor_by_key(key_hash).await,
        }
    }

    /// [`Store::sensor_by_key`] read from the database, for when a cached answer is
    /// in doubt (a tunnel key it does not name).
    pub async fn sensor_by_key_uncached(
        &self,
        key_hash: &str,
    ) -> Result<Option<SensorAuth>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensor_by_key(key_hash).await,
            Store::Postgres(s) => s.sensor_by_key_uncached(key_hash).await,
        }
    }

    /// Records the heartbeat and extends the leases of the sensor's running jobs: all of
    /// them when the heartbeat does not list its jobs (older agents), else only those it
    /// lists. Running jobs it does not list, claimed before `now - grace_s` (an answer to
    /// a claim may cross the heartbeat on the way), are lost ([`loss`]).
    pub async fn heartbeat(&self, hb: &Heartbeat<'_>) -> Result<HeartbeatOutcome, StoreError> {
        let metrics = json(&hb.req.metrics)?;
        match self {
            Store::Sqlite(s) => s.heartbeat(hb, &metrics).await,
            Store::Postgres(s) => s.heartbeat(hb, &metrics).await,
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

    /// Takes running jobs whose lease ended from their sensor ([`loss`]: back to the queue,
    /// failed at the attempt limit, cancelled if so asked); each exactly once.
    pub async fn requeue_expired(
        &self,
        now: i64,
        rules: LossRules,
    ) -> Result<Vec<LostJob>, StoreError> {
        match self {
            Store::Sqlite(s) => s.requeue_expired(now, rules).await,
            Store::Postgres(s) => s.requeue_expired(now, rules).await,
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
    /// The text is `upload.content`, held in memory (see [`Store::store_report_chunks`]).
    pub async fn store_report(
        &self,
        sensor: &str,
        job: i64,
        upload: &ReportUpload,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let text = ReportChunks::text(upload.content.clone(), REPORT_CHUNK);
        self.store_report_chunks(sensor, job, upload, text, now)
            .await
    }

    /// [`Store::store_report`] with the text read from `text` (`upload.content` is not
    /// used), one chunk at a time, each its own row of `report_chunks`, in the report's
    /// transaction. A retry or a refusal reads none of it.
    pub async fn store_report_chunks(
        &self,
        sensor: &str,
        job: i64,
        upload: &ReportUpload,
        text: ReportChunks,
        now: i64,
    ) -> Result<Result<ReportAck, JobRefusal>, StoreError> {
        let summary = json(&upload.summary)?;
        match self {
            Store::Sqlite(s) => {
                s.store_report(sensor, job, upload, text, &summary, now)
                    .await
            }
            Store::Postgres(s) => {
                s.store_report(sensor, job, upload, text, &summary, now)
                    .await
            }
        }
    }

    /// Queues a job any sensor of the site may claim.
    pub async fn create_job(
        &self,
        site: &str,
        spec: &JobSpec,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.create_job_for(site, spec, None, now).await
    }

    /// Queues a job; with `target`, only that sensor may claim it.
    pub async fn create_job_for(
        &self,
        site: &str,
        spec: &JobSpec,
        target: Option<&str>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let job = NewJob {
            site: site.to_owned(),
            kind: spec.capability().as_str(),
            spec: json(spec)?,
            target_sensor: target.map(str::to_owned),
            bundle_id: spec_bundle(spec),
            now,
        };
        match self {
            Store::Sqlite(s) => s.create_job(job).await,
            Store::Postgres(s) => s.create_job(job).await,
        }
    }

    /// The site of a sensor, or None when there is no such sensor.
    pub async fn sensor_site(&self, sensor: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.sensor_site(sensor).await,
            Store::Postgres(s) => s.sensor_site(sensor).await,
        }
    }

    /// Records a published bundle; a bundle with the same sha256 is not stored twice.
    /// Returns the stored bundle and whether it is new.
    pub async fn publish_bundle(&self, b: &NewBundle) -> Result<(BundleInfo, bool), StoreError> {
        let id = match self {
            Store::Sqlite(s) => s.insert_bundle(b).await?,
            Store::Postgres(s) => s.insert_bundle(b).await?,
        };
        let created = id.is_some();
        let info = self.bundle_by_sha256(&b.sha256).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("bundle {} vanished after insert", b.sha256))
        })?;
        Ok((info, created))
    }

    pub async fn bundle(&self, id: i64) -> Result<Option<BundleInfo>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.bundles(Some(id), None).await?,
            Store::Postgres(s) => s.bundles(Some(id), None).await?,
        };
        Ok(rows.into_iter().next())
    }

    pub async fn bundle_by_sha256(&self, sha256: &str) -> Result<Option<BundleInfo>, StoreError> {
        let rows = match self {
            Store::Sqlite(s) => s.bundles(None, Some(sha256.to_owned())).await?,
            Store::Postgres(s) => s.bundles(None, Some(sha256.to_owned())).await?,
        };
        Ok(rows.into_iter().next())
    }

    /// Every published bundle, newest first.
    pub async fn bundles(&self) -> Result<Vec<BundleInfo>, StoreError> {
        match self {
            Store::Sqlite(s) => s.bundles(None, None).await,
            Store::Postgres(s) => s.bundles(None, None).await,
        }
    }

    /// Records a published feed release; the same manifest is not stored twice. Returns
    /// the stored release and whether it is new.
    pub async fn publish_feed_release(
        &self,
        r: &NewFeedRelease,
    ) -> Result<(FeedRelease, bool), StoreError> {
        let created = match self {
            Store::Sqlite(s) => s.insert_feed_release(r).await?,
            Store::Postgres(s) => s.insert_feed_release(r).await?,
        };
        let stored = self
            .feed_releases()
            .await?
            .into_iter()
            .find(|x| x.manifest_sha256 == r.manifest_sha256)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "feed release {} vanished after insert",
                    r.manifest_sha256
                ))
            })?;
        Ok((stored, created))
    }

    /// Sets (or clears) a site's or a sensor's release channel. Refused for a release
    /// that is not published or a sensor that does not exist; `Ok(false)` when a clear
    /// found nothing to remove.
    pub async fn set_feed_channel(
        &self,
        ch: ChannelWrite,
    ) -> Result<Result<bool, ChannelRefusal>, StoreError> {
        match self {
            Store::Sqlite(s) => s.set_feed_channel(ch).await,
            Store::Postgres(s) => s.set_feed_channel(&ch).await,
        }
    }

    /// Every channel setting.
    pub async fn feed_channels(&self) -> Result<Vec<RawChannel>, StoreError> {
        match self {
            Store::Sqlite(s) => s.feed_channels().await,
            Store::Postgres(s) => s.feed_channels().await,
        }
    }

    /// Every feed release, newest first.
    pub async fn feed_releases(&self) -> Result<Vec<FeedRelease>, StoreError> {
        match self {
            Store::Sqlite(s) => s.feed_releases().await,
            Store::Postgres(s) => s.feed_releases().await,
        }
    }

    pub async fn delete_feed_releases(&self, ids: &[i64]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_feed_releases(ids.to_vec()).await,
            Store::Postgres(s) => s.delete_feed_releases(ids).await,
        }
    }

    /// One update job per sensor (every sensor of `site`, plus `sensors`), each claimable
    /// only by its sensor, all or none.
    pub async fn assign_bundle(
        &self,
        bundle: &BundleInfo,
        site: Option<&str>,
        sensors: &[String],
        now: i64,
    ) -> Result<Result<Vec<i64>, AssignRefusal>, StoreError> {
        let a = Assignment {
            site: site.map(str::to_owned),
            sensors: sensors.to_vec(),
            spec: json(&update_spec(bundle))?,
            bundle_id: bundle.id,
            now,
        };
        match self {
            Store::Sqlite(s) => s.assign_bundle(a).await,
            Store::Postgres(s) => s.assign_bundle(a).await,
        }
    }

    /// Whether the sensor has (or had) an update job for the bundle: only those may
    /// download it.
    pub async fn may_download(&self, sensor: &str, bundle: i64) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.may_download(sensor, bundle).await,
            Store::Postgres(s) => s.may_download(sensor, bundle).await,
        }
    }

    /// Applies a sensor's update-state report ([`update_effect`]), stores it as the sensor's
    /// latest update state and appends it to the sensor's log, atomically.
    pub async fn update_state(
        &self,
        sensor: &str,
        report: &UpdateStateReport,
        now: i64,
        lease_s: i64,
    ) -> Result<Result<(), UpdateRefusal>, StoreError> {
        let (update, log) = update_records(report, now)?;
        let r = UpdateWrite {
            sensor: sensor.to_owned(),
            report: report.clone(),
            update,
            log,
            now,
            lease_s,
        };
        match self {
            Store::Sqlite(s) => s.update_state(r).await,
            Store::Postgres(s) => s.update_state(r).await,
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

    /// A job's report with its text whole in memory (tests, tools); the admin API streams
    /// it with [`Store::report_head`] and [`Store::report_chunk`] instead.
    pub async fn report(&self, job: i64) -> Result<Option<Report>, StoreError> {
        let Some((mut r, chunks)) = self.report_head(job).await? else {
            return Ok(None);
        };
        for seq in 0..chunks {
            let chunk = self.report_chunk(r.id, seq).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("report {}: chunk {seq} is missing", r.id))
            })?;
            r.content.push_str(&chunk);
        }
        Ok(Some(r))
    }

    /// A job's report without its text (`content` is empty), and how many chunks the text
    /// has (read them with [`Store::report_chunk`], 0 first).
    pub async fn report_head(&self, job: i64) -> Result<Option<(Report, i64)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.report_head(job).await,
            Store::Postgres(s) => s.report_head(job).await,
        }
    }

    /// Chunk `seq` of report `report`'s text.
    pub async fn report_chunk(&self, report: i64, seq: i64) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.report_chunk(report, seq).await,
            Store::Postgres(s) => s.report_chunk(report, seq).await,
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
    /// clears in [`Store::finish_rotation`]. `false` when no such sensor exists.
    pub async fn request_key_rotation(&self, sensor: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.request_key_rotation(sensor).await,
            Store::Postgres(s) => s.request_key_rotation(sensor).await,
        }
    }

    /// Forgets a sensor: its running jobs go back to the queue, and the jobs made for it
    /// alone (which nobody else may claim) fail.
    pub async fn delete_sensor(
        &self,
        sensor: &str,
        now: i64,
        rules: LossRules,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_sensor(sensor, now, rules).await,
            Store::Postgres(s) => s.delete_sensor(sensor, now, rules).await,
        }
    }
}

/// A heartbeat as the store records it.
pub struct Heartbeat<'a> {
    pub sensor: &'a str,
    pub req: &'a HeartbeatRequest,
    pub now: i64,
    pub lease_s: i64,
    /// Jobs claimed this recently are never taken for missing from the list.
    pub grace_s: i64,
    pub rules: LossRules,
    /// The release the sensor's channel wants, named as sensors name releases.
    pub feed_wanted: Option<&'a str>,
}

/// What a heartbeat's answer carries, and what it took from the sensor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub cancel_jobs: Vec<i64>,
    pub rotate_wg_key: bool,
    pub lost: Vec<LostJob>,
}

/// The state a job takes for a [`Loss`].
pub(crate) fn loss_state(l: &Loss) -> JobState {
    match l {
        Loss::Cancel => JobState::Cancelled,
        Loss::Requeue => JobState::Queued,
        Loss::Fail(_) => JobState::Failed,
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

/// A job row as both backends insert it.
pub(crate) struct NewJob {
    pub site: String,
    pub kind: &'static str,
    pub spec: String,
    pub target_sensor: Option<String>,
    pub bundle_id: Option<i64>,
    pub now: i64,
}

/// An assignment as both backends run it.
pub(crate) struct Assignment {
    pub site: Option<String>,
    pub sensors: Vec<String>,
    pub spec: String,
    pub bundle_id: i64,
    pub now: i64,
}

/// An accepted update-state report as both backends write it.
pub(crate) struct UpdateWrite {
    pub sensor: String,
    pub report: UpdateStateReport,
    /// [`SensorUpdate`] as JSON.
    pub update: String,
    /// [`LogEvent`] as JSON.
    pub log: String,
    pub now: i64,
    pub lease_s: i64,
}

/// Message for a job made for a sensor that was then deleted.
pub(crate) const TARGET_DELETED: &str = "the sensor this job was made for was deleted";

/// Columns of a bundle row as both backends read them.
pub(crate) struct RawBundle {
    pub id: i64,
    pub version: String,
    pub compatible: String,
    pub min_version: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub published_at: i64,
}

impl RawBundle {
    pub fn into_info(self) -> BundleInfo {
        BundleInfo {
            id: self.id,
            version: self.version,
            compatible: self.compatible,
            min_version: self.min_version,
            size: u64::try_from(self.size).unwrap_or(0),
            sha256: self.sha256,
            published_at: self.published_at,
        }
    }
}

/// Columns of a job row as both backends read them.
pub(crate) struct RawJob {
    pub id: i64,
    pub site: String,
    pub state: String,
    pub spec: String,
    pub sensor_id: Option<String>,
    pub target_sensor: Option<String>,
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
            target_sensor: self.target_sensor,
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
    pub firmware_version: Option<String>,
    pub boot_slot: Option<String>,
    /// [`SensorUpdate`] as JSON.
    pub update: Option<String>,
    pub running_jobs: i64,
    pub board_serial: Option<String>,
    pub feed_release: Option<String>,
    pub feed_off_since: Option<i64>,
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
                board_serial: self.board_serial,
                agent_version: self.agent_version,
                wg_public_key: self.wg_public_key,
                registered_at: self.registered_at,
                last_heartbeat: self.last_heartbeat,
                activity: quoted(self.activity).map(|s| from_json(&s)).transpose()?,
                phase: quoted(self.phase).map(|s| from_json(&s)).transpose()?,
                metrics: self.metrics.map(|s| from_json(&s)).transpose()?,
                firmware_version: self.firmware_version,
                boot_slot: self.boot_slot,
                update: self.update.map(|s| from_json(&s)).transpose()?,
                // Filled in by the API layer from the gateway's live counters.
                tunnel: None,
                // Filled in by the API layer from the releases and channels.
                feed: None,
            },
            running_jobs: self.running_jobs,
            feed_live: self.feed_release,
            feed_off_since: self.feed_off_since,
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
        let next: Vec<_> = pool.after(a("100.96.0.0")).take(2).collect();
        assert_eq!(next, [a("100.96.0.2"), a("100.96.0.3")]);
        // /29: .7 is the broadcast address; .9 is outside.
        assert_eq!(
            pool.after(a("100.96.0.5")).collect::<Vec<_>>(),
            [a("100.96.0.6")]
        );
        assert_eq!(pool.after(a("100.96.0.6")).next(), None);
        assert_eq!(pool.after(a("100.96.0.9")).next(), None);
        assert_eq!(pool.after(a("100.95.0.1")).next(), None);
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
    fn update_report_rules() {
        use outpost_wire::sensor::{UpdateState as U, UpdateStateReport};
        let row = |state, owner: Option<&str>, kind: &str, bundle: Option<i64>| UpdateJobRow {
            lease: JobLease {
                state,
                sensor_id: owner.map(str::to_owned),
                lost_by: None,
            },
            kind: kind.into(),
            bundle_id: bundle,
        };
        let report = |job: Option<i64>, state, reason: &str| UpdateStateReport {
            job_id: job,
            bundle_id: 3,
            version: "1.2.0".into(),
            state,
            reason: reason.into(),
            progress_percent: 140,
            slot: None,
        };
        let mine = row(JobState::Running, Some("s1"), "update", Some(3));
        let eff = |r: &UpdateJobRow, st, reason| {
            update_effect(Some(r), "s1", &report(Some(7), st, reason))
        };

        // Without a job only the sensor's state changes, whatever the state.
        assert_eq!(
            update_effect(None, "s1", &report(None, U::RolledBack, "tries used up")),
            Ok(JobEffect::Nothing)
        );
        assert_eq!(
            eff(&mine, U::Downloading, ""),
            Ok(JobEffect::Progress(100)),
            "clamped"
        );
        assert_eq!(eff(&mine, U::Installing, ""), Ok(JobEffect::Progress(100)));
        assert_eq!(eff(&mine, U::Rebooting, ""), Ok(JobEffect::Complete));
        assert_eq!(eff(&mine, U::Committed, ""), Ok(JobEffect::Complete));
        assert_eq!(
            eff(&mine, U::Refused, "wrong board"),
            Ok(JobEffect::Fail("update refused: wrong board".into()))
        );
        assert_eq!(
            eff(&mine, U::Failed, ""),
            Ok(JobEffect::Fail("update failed: no reason given".into()))
        );

        // A job that already ended: outcomes are accepted, progress is not.
        let done = row(JobState::Completed, Some("s1"), "update", Some(3));
        assert_eq!(eff(&done, U::Committed, ""), Ok(JobEffect::Nothing));
        assert_eq!(eff(&done, U::Rebooting, ""), Ok(JobEffect::Nothing));
        assert_eq!(
            eff(&done, U::Downloading, ""),
            Err(UpdateRefusal::Job(JobRefusal::LeaseLost(
                JobState::Completed
            )))
        );

        // Wrong job, other bundle, another sensor's job, a job back in the queue.
        assert_eq!(
            update_effect(None, "s1", &report(Some(7), U::Downloading, "")),
            Err(UpdateRefusal::Job(JobRefusal::NotFound))
        );
        let scan = row(JobState::Running, Some("s1"), "scan", None);
        assert_eq!(
            eff(&scan, U::Committed, ""),
            Err(UpdateRefusal::NotAnUpdate)
        );
        let other = row(JobState::Running, Some("s1"), "update", Some(4));
        assert_eq!(
            eff(&other, U::Committed, ""),
            Err(UpdateRefusal::OtherBundle(Some(4)))
        );
        let theirs = row(JobState::Running, Some("s2"), "update", Some(3));
        assert_eq!(
            eff(&theirs, U::Downloading, ""),
            Err(UpdateRefusal::Job(JobRefusal::NotYours))
        );
        let queued = row(JobState::Queued, None, "update", Some(3));
        assert_eq!(
            eff(&queued, U::Downloading, ""),
            Err(UpdateRefusal::Job(JobRefusal::LeaseLost(JobState::Queued)))
        );
    }

    #[test]
    fn job_access_rules() {
        let lease = |state, s: Option<&str>| JobLease {
            state,
            sensor_id: s.map(str::to_owned),
            lost_by: None,
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

    #[test]
    fn a_sensor_may_finish_a_job_it_lost_while_nobody_else_has_it() {
        use JobState::*;
        let lost = |state, s: Option<&str>, by: Option<&str>| JobLease {
            state,
            sensor_id: s.map(str::to_owned),
            lost_by: by.map(str::to_owned),
        };
        let requeued = lost(Queued, None, Some("s1"));
        assert_eq!(
            job_access(Some(&requeued), "s1", true, true),
            Ok(Access::Recovered)
        );
        // Only with what it recovered, only the sensor that lost it.
        assert_eq!(
            job_access(Some(&requeued), "s1", true, false),
            Err(JobRefusal::LeaseLost(Queued))
        );
        assert_eq!(
            job_access(Some(&requeued), "s2", true, true),
            Err(JobRefusal::LeaseLost(Queued))
        );
        // Claimed again since: the new run has it.
        assert_eq!(
            job_access(
                Some(&lost(Running, Some("s2"), Some("s1"))),
                "s1",
                true,
                true
            ),
            Err(JobRefusal::NotYours)
        );
        assert_eq!(
            job_access(Some(&lost(Running, Some("s1"), None)), "s1", false, true),
            Ok(Access::Leased)
        );
        let partial = |outcome, partial| ReportUpload {
            request_id: "r".into(),
            outcome,
            partial,
            content_type: "application/xml".into(),
            content: String::new(),
            summary: Default::default(),
        };
        assert!(is_recovery(&partial(ReportOutcome::Failed, true)));
        assert!(!is_recovery(&partial(ReportOutcome::Failed, false)));
        assert!(!is_recovery(&partial(ReportOutcome::Completed, true)));
    }
}
