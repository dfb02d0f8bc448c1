//! Bodies of the sensor API (`/api/sensor/*`).

use serde::{Deserialize, Serialize};

use crate::Secret;

/// What a sensor can do; the portal only hands out jobs of kinds the sensor declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Scan,
    Update,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Scan => "scan",
            Capability::Update => "update",
        }
    }
}

/// `POST /api/sensor/register`, authorised with the enrollment token as Bearer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The name the operator gave the sensor in `outpost.toml`.
    pub name: String,
    /// The site the sensor believes it belongs to; must match the token's site.
    pub site: String,
    pub hostname: String,
    pub os: String,
    pub board: String,
    pub hardware_serial: String,
    pub agent_version: String,
    pub capabilities: Vec<Capability>,
    /// The device's WireGuard public key, base64 as `wg pubkey` prints it.
    pub wg_public_key: String,
}

/// Tunnel parameters handed to a sensor at registration, in wg-quick terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelConfig {
    /// The sensor's own tunnel address (`Address = x/32`).
    pub sensor_address: String,
    /// The portal's address inside the tunnel; the API is reached there.
    pub portal_address: String,
    /// The portal gateway's public key (`[Peer] PublicKey`).
    pub portal_public_key: String,
    /// `host:port` of the gateway's UDP socket (`[Peer] Endpoint`).
    pub endpoint: String,
    /// `PersistentKeepalive` in seconds.
    pub persistent_keepalive_s: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub sensor_id: String,
    /// Per-sensor API key for every later request. The portal keeps only its hash.
    pub api_key: Secret,
    pub site: String,
    /// Present when the portal runs a WireGuard gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelConfig>,
    pub heartbeat_interval_s: u32,
    pub claim_interval_s: u32,
}

/// `POST /api/sensor/wg-key`: the sensor's new WireGuard public key. The portal switches
/// the gateway's peer entry at once; the answer is the (unchanged) tunnel config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyRequest {
    pub wg_public_key: String,
}

/// What the sensor is doing right now, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    #[default]
    Idle,
    Scanning,
    Updating,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Scanning => "scanning",
            Activity::Updating => "updating",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub label: String,
    pub celsius: f32,
}

/// System figures sent with each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    pub cpu_percent: f32,
    pub load_avg_1m: f64,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_used_bytes: u64,
    #[serde(default)]
    pub temperatures: Vec<Temperature>,
}

/// `POST /api/sensor/heartbeat`, every 30 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub activity: Activity,
    pub uptime_s: u64,
    pub agent_version: String,
    /// The boot phase the sensor has reached (see [`crate::log::Phase`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::log::Phase>,
    /// The firmware (image) version running, from `/etc/outpost-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    /// The A/B slot booted (`a` or `b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_slot: Option<String>,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Portal clock, Unix seconds: lets a sensor without RTC notice a wrong clock.
    pub server_time: i64,
    /// Jobs leased to this sensor that an operator cancelled; the sensor stops them.
    #[serde(default)]
    pub cancel_jobs: Vec<i64>,
    /// An operator asked this sensor to rotate its WireGuard key (`POST` [`crate::paths::WG_KEY`]).
    #[serde(default)]
    pub rotate_wg_key: bool,
}

/// `POST /api/sensor/claim`, every 5 s. Answered `204 No Content` or 200 with a [`Job`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Job kinds this sensor takes right now (a busy scanner may still take an update).
    pub capabilities: Vec<Capability>,
}

/// A job leased to one sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    /// The lease ends at this Unix time unless the sensor keeps heartbeating.
    pub lease_expires_at: i64,
    /// How many times this job was handed out before (0 on the first claim).
    pub attempt: u32,
    pub spec: JobSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    Scan(ScanSpec),
    Update(UpdateSpec),
}

impl JobSpec {
    pub fn capability(&self) -> Capability {
        match self {
            JobSpec::Scan(_) => Capability::Scan,
            JobSpec::Update(_) => Capability::Update,
        }
    }
}

/// Install a published update bundle (`docs/updates.md`). The sensor downloads it from
/// [`crate::paths::bundle`] (HTTP ranges, so an interrupted download resumes), verifies it
/// against the keys in its image and reports progress with [`UpdateStateReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSpec {
    /// The portal's id of the published bundle.
    pub bundle_id: i64,
    /// The version the bundle's manifest claims (the device trusts only the signed manifest).
    pub version: String,
    /// Bundle file size in bytes.
    pub size: u64,
    /// sha256 of the whole bundle file, lowercase hex: lets a resumed download be checked
    /// before the (authoritative) signature and part hashes are.
    pub sha256: String,
}

/// Where a sensor is in installing an update, as the portal shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Downloading,
    Installing,
    Rebooting,
    /// The new slot booted, became healthy and was marked good.
    Committed,
    /// The new slot failed its tries; the device is back on the old one.
    RolledBack,
    /// The device would not install the bundle (signature, board, version, hashes...).
    Refused,
    /// Download or slot write failed for a reason that is not the bundle's fault.
    Failed,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Downloading => "downloading",
            UpdateState::Installing => "installing",
            UpdateState::Rebooting => "rebooting",
            UpdateState::Committed => "committed",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Refused => "refused",
            UpdateState::Failed => "failed",
        }
    }

    /// States after which nothing more happens for this bundle on this sensor.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Committed
                | UpdateState::RolledBack
                | UpdateState::Refused
                | UpdateState::Failed
        )
    }
}

/// `POST /api/sensor/update-state`: the sensor's update progress. Sent during the job
/// (downloading, installing, rebooting) and after the reboot, by the new slot (committed)
/// or by the old one after U-Boot fell back (rolled_back), when the job is long finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStateReport {
    /// The update job, when the sensor still knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    pub bundle_id: i64,
    /// Version of the bundle this report is about.
    pub version: String,
    pub state: UpdateState,
    /// Why, for refused/failed/rolled_back; progress text otherwise.
    #[serde(default)]
    pub reason: String,
    /// Download or install progress, 0-100.
    #[serde(default)]
    pub progress_percent: u8,
    /// The slot the report is sent from (`a` or `b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// Which hosts to treat as alive before scanning them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AliveTest {
    #[default]
    IcmpAndTcpAck,
    Icmp,
    TcpSyn,
    TcpAck,
    Arp,
    ConsiderAlive,
}

/// A login the scanner may use for authenticated checks. Never written to disk or logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// `ssh`, `smb`, `esxi` or `snmp`.
    pub service: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// What to scan and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSpec {
    /// Hosts, CIDRs or ranges.
    pub targets: Vec<String>,
    /// OpenVAS port list, e.g. `T:1-1024,U:53`.
    pub ports: String,
    #[serde(default)]
    pub exclude_hosts: Vec<String>,
    /// VT families to run.
    #[serde(default)]
    pub families: Vec<String>,
    /// Single VTs (OIDs) to run.
    #[serde(default)]
    pub oids: Vec<String>,
    #[serde(default)]
    pub alive_test: AliveTest,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// The sensor stops the scan and reports it failed after this many seconds.
    #[serde(default = "default_deadline")]
    pub deadline_s: u64,
}

fn default_deadline() -> u64 {
    4 * 3600
}

/// Job progress as the sensor reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobStatusUpdate {
    Running {
        progress_percent: u8,
        #[serde(default)]
        message: String,
    },
    Failed {
        reason: String,
    },
    /// Acknowledges an operator's cancellation; a partial report may follow.
    Cancelled,
}

/// `POST /api/sensor/jobs/{id}/status` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatusResponse {
    /// True when an operator asked for this job to stop.
    pub cancel_requested: bool,
}

/// How a job ended, as recorded with its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    Completed,
    Cancelled,
    Failed,
}

/// Findings counted by severity class (CVSS: high >= 7, medium >= 4, low > 0, log = 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SeverityCounts {
    pub high: u32,
    pub medium: u32,
    pub low: u32,
    pub log: u32,
}

/// The JSON summary stored next to the raw report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReportSummary {
    pub hosts: Vec<String>,
    /// `host:port/proto` entries with at least one result.
    pub ports: Vec<String>,
    pub findings: SeverityCounts,
}

/// `POST /api/sensor/jobs/{id}/report`, with an `idempotency-key` header equal to `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportUpload {
    /// Chosen once by the sensor when it spools the report; a retry reuses it.
    pub request_id: String,
    pub outcome: ReportOutcome,
    /// True when the scan did not run to its end (cancelled, failed, deadline).
    pub partial: bool,
    /// MIME type of `content`, e.g. `application/xml` for OSP results.
    pub content_type: String,
    pub content: String,
    pub summary: ReportSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub report_id: i64,
    /// False when this upload repeated one the portal already had.
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_spec_is_tagged_by_kind() {
        let spec = JobSpec::Scan(ScanSpec {
            targets: vec!["10.9.0.2".into()],
            ports: "T:22,80".into(),
            exclude_hosts: vec![],
            families: vec!["General".into()],
            oids: vec![],
            alive_test: AliveTest::ConsiderAlive,
            credentials: vec![],
            deadline_s: 60,
        });
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["kind"], "scan");
        assert_eq!(v["alive_test"], "consider_alive");
        let back: JobSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn scan_spec_defaults_apply() {
        let s: ScanSpec = serde_json::from_str(r#"{"targets":["h"],"ports":"T:80"}"#).unwrap();
        assert_eq!(s.deadline_s, 4 * 3600);
        assert_eq!(s.alive_test, AliveTest::IcmpAndTcpAck);
    }

    #[test]
    fn credentials_do_not_leak_through_debug() {
        let c = Credential {
            service: "ssh".into(),
            username: "scan".into(),
            password: Some(Secret::new("hunter2")),
            private_key: None,
            port: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn status_update_wire_form() {
        let u = JobStatusUpdate::Running {
            progress_percent: 40,
            message: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"state":"running","progress_percent":40,"message":""}"#
        );
    }
}
