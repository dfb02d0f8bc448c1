//! Bodies of the admin API (`/api/admin/*`) used by `outpostctl`.

use serde::{Deserialize, Serialize};

use crate::log::{LogEvent, Phase};
use crate::sensor::{Activity, JobSpec, ReportOutcome, ReportSummary, UpdateState};

pub mod paths {
    pub const TOKENS: &str = "/api/admin/tokens";
    pub const JOBS: &str = "/api/admin/jobs";
    pub const SENSORS: &str = "/api/admin/sensors";

    pub fn job(id: i64) -> String {
        format!("/api/admin/jobs/{id}")
    }
    pub fn cancel_job(id: i64) -> String {
        format!("/api/admin/jobs/{id}/cancel")
    }
    pub fn job_report(id: i64) -> String {
        format!("/api/admin/jobs/{id}/report")
    }
    pub fn sensor(id: &str) -> String {
        format!("/api/admin/sensors/{id}")
    }
    pub fn sensor_log(id: &str) -> String {
        format!("/api/admin/sensors/{id}/log")
    }
    pub fn rotate_key(id: &str) -> String {
        format!("/api/admin/sensors/{id}/rotate-key")
    }
    /// `POST` the bundle file as the raw body (`application/octet-stream`) to publish it;
    /// `GET` lists published bundles.
    pub const BUNDLES: &str = "/api/admin/bundles";
    pub fn bundle(id: i64) -> String {
        format!("/api/admin/bundles/{id}")
    }
    /// `POST` an [`super::AssignBundle`]: one update job per sensor.
    pub fn assign_bundle(id: i64) -> String {
        format!("/api/admin/bundles/{id}/assign")
    }
    /// `GET`: [`super::FeedReleases`], the published feed releases and the staleness flag.
    pub const FEED_RELEASES: &str = "/api/admin/feed/releases";
    /// `GET`: every [`super::FeedChannelInfo`]; `POST` a [`super::SetFeedChannel`].
    pub const FEED_CHANNELS: &str = "/api/admin/feed/channels";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    pub site: String,
    /// How many sensors may enroll with it.
    pub uses: u32,
    /// Lifetime in seconds.
    pub ttl_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub site: String,
    pub expires_at: i64,
    pub uses: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateJob {
    pub site: String,
    pub spec: JobSpec,
    /// Only this sensor (of the site) may claim the job; any sensor of the site when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_id: Option<String>,
}

/// A published update bundle, as the portal read it from the bundle's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    pub id: i64,
    pub version: String,
    /// Board `compatible` string from the manifest.
    pub compatible: String,
    /// Lowest version the bundle may replace, if the manifest sets one.
    #[serde(default)]
    pub min_version: Option<String>,
    pub size: u64,
    /// sha256 of the whole file, lowercase hex.
    pub sha256: String,
    pub published_at: i64,
}

/// Assign a bundle to sensors: every sensor of `site`, and/or the sensors listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AssignBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default)]
    pub sensors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignResult {
    /// The update jobs created, one per sensor.
    pub jobs: Vec<i64>,
}

/// A sensor's latest update state, as it last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SensorUpdate {
    pub bundle_id: i64,
    pub version: String,
    pub state: UpdateState,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub progress_percent: u8,
    pub updated_at: i64,
}

/// The feed release a site or sensor follows (docs/feeds.md, "Release channels").
/// JSON: `"newest"` or `{"pinned": <release id>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeedChannel {
    /// The newest published release.
    #[default]
    Newest,
    /// One published release, by id; retention never collects it while pinned.
    Pinned(i64),
}

impl std::fmt::Display for FeedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedChannel::Newest => f.write_str("newest"),
            FeedChannel::Pinned(id) => write!(f, "pinned {id}"),
        }
    }
}

/// Sets (or, with `channel` absent, clears) the channel of one site or one sensor:
/// exactly one of `site` and `sensor`. A sensor's own setting wins over its site's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SetFeedChannel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<FeedChannel>,
}

/// One stored channel setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedChannelInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    pub channel: FeedChannel,
    pub set_at: i64,
}

/// A published feed release as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedReleaseSummary {
    pub id: i64,
    /// As sensors name it ([`crate::feed::release_name`]).
    pub name: String,
    pub plugin_set: String,
    #[serde(default)]
    pub notus_version: Option<String>,
    pub vt_count: u64,
    pub files: u64,
    pub bytes: u64,
    pub manifest_sha256: String,
    pub imported_at: i64,
    /// Channels pinned to it (`site <name>`, `sensor <id>`): retention keeps it.
    #[serde(default)]
    pub pinned_by: Vec<String>,
}

/// `GET` [`paths::FEED_RELEASES`]: newest first, and whether the portal's upstream is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedReleases {
    pub releases: Vec<FeedReleaseSummary>,
    /// The newest release's PLUGIN_SET is older than `stale_after_s` by the portal's
    /// clock (or nothing is published): the upstream fetch is not keeping up.
    pub stale: bool,
    pub stale_after_s: i64,
    /// Age of the newest release's PLUGIN_SET, seconds, by the portal's clock.
    #[serde(default)]
    pub newest_age_s: Option<i64>,
}

/// A sensor's feed as the portal sees it: what it runs, what its channel wants, and how
/// far behind it is, judged against the portal's releases (never the sensor's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SensorFeed {
    /// The release its last heartbeat named; absent for older agents or none live.
    #[serde(default)]
    pub live: Option<String>,
    pub channel: FeedChannel,
    /// Where the channel comes from: `sensor`, `site` or `default`.
    pub channel_from: String,
    /// The release it should have; absent when nothing is published.
    #[serde(default)]
    pub wanted: Option<String>,
    #[serde(default)]
    pub wanted_release_id: Option<i64>,
    /// Published releases with a newer PLUGIN_SET than the live one.
    #[serde(default)]
    pub newer_releases: Option<u32>,
    /// How much older the live release's PLUGIN_SET is than the wanted one's, seconds
    /// (negative when a pin holds it on an older release than it runs).
    #[serde(default)]
    pub plugin_set_behind_s: Option<i64>,
    /// Since when (portal clock) its heartbeats name another release than its channel's.
    #[serde(default)]
    pub off_channel_since: Option<i64>,
    /// Off its channel's release for longer than the portal's grace (`--feed-grace`).
    #[serde(default)]
    pub feed_behind: bool,
}

/// The sensor's WireGuard peer at the portal's gateway (inner packets, i.e. plaintext IP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TunnelCounters {
    pub session_up: bool,
    pub handshakes_completed: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Inner packets from the sensor addressed to anything but the portal: a sensor that
    /// routes other traffic (a scan, say) into the tunnel shows up here.
    pub dropped_not_for_us: u64,
    /// Inner packets whose source was not the sensor's tunnel address.
    pub dropped_spoofed_source: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub site: String,
    pub state: JobState,
    pub spec: JobSpec,
    #[serde(default)]
    pub sensor_id: Option<String>,
    /// The only sensor allowed to claim the job, if the job was made for one.
    #[serde(default)]
    pub target_sensor: Option<String>,
    pub attempts: u32,
    pub progress_percent: u8,
    pub cancel_requested: bool,
    #[serde(default)]
    pub failure_reason: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub lease_expires_at: Option<i64>,
}

/// Portal-computed status: online = heartbeat within the threshold (default 2 minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorStatus {
    Online,
    Scanning,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorInfo {
    pub id: String,
    pub name: String,
    pub site: String,
    pub status: SensorStatus,
    pub hostname: String,
    pub board: String,
    /// The board's own serial number (e.g. the Raspberry Pi's) as the sensor sent it
    /// at registration; absent when it has none or enrolled before portals kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_serial: Option<String>,
    pub agent_version: String,
    pub wg_public_key: String,
    pub registered_at: i64,
    #[serde(default)]
    pub last_heartbeat: Option<i64>,
    #[serde(default)]
    pub activity: Option<Activity>,
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub metrics: Option<crate::sensor::Metrics>,
    #[serde(default)]
    pub firmware_version: Option<String>,
    #[serde(default)]
    pub boot_slot: Option<String>,
    #[serde(default)]
    pub update: Option<SensorUpdate>,
    /// Present when the portal runs the gateway and the sensor is a peer.
    #[serde(default)]
    pub tunnel: Option<TunnelCounters>,
    /// Its feed release and lag; absent from older portals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<SensorFeed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLogEvent {
    pub received_at: i64,
    #[serde(flatten)]
    pub event: LogEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInfo {
    pub id: i64,
    pub job_id: i64,
    pub sensor_id: String,
    pub outcome: ReportOutcome,
    pub partial: bool,
    pub content_type: String,
    pub content: String,
    pub summary: ReportSummary,
    pub received_at: i64,
}
