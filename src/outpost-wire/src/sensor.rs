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
    /// The board's own serial number from its device tree (`serial-number`, e.g. the
    /// Raspberry Pi's), when it has one. `hardware_serial` falls back to DMI or the
    /// machine id where there is none; this field never does. Optional, so portals
    /// and agents from before it parse both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_serial: Option<String>,
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
    /// Ids of the jobs the sensor holds: the one it runs, and those whose report or update
    /// outcome it still has to deliver. The portal re-queues (or fails) the sensor's other
    /// running jobs. Absent from older agents and before the agent has looked at what a
    /// previous run left behind; then every running job of the sensor keeps its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<Vec<i64>>,
    /// The feed release live on the sensor, named as its feed root names it
    /// (`<PLUGIN_SET>-<first 16 hex of the manifest sha256>`, see [`crate::feed::release_name`]).
    /// Absent from older agents and while no synced release is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_release: Option<String>,
}

/// Most job ids a heartbeat may list (a sensor runs one job at a time).
pub const MAX_HEARTBEAT_JOBS: usize = 256;

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
    /// The feed release the sensor should run (its channel's), named like
    /// [`HeartbeatRequest::feed_release`]; absent when the portal has none published or
    /// is older. A sensor running another one syncs soon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_release: Option<String>,
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

/// Which hosts to treat as alive before scanning them: the named presets jobs have
/// always carried. Any other combination is given as [`ScanSpec::alive_methods`].
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

impl AliveTest {
    /// The methods this preset stands for.
    pub fn methods(self) -> Vec<AliveMethod> {
        match self {
            AliveTest::IcmpAndTcpAck => vec![AliveMethod::Icmp, AliveMethod::TcpAck],
            AliveTest::Icmp => vec![AliveMethod::Icmp],
            AliveTest::TcpSyn => vec![AliveMethod::TcpSyn],
            AliveTest::TcpAck => vec![AliveMethod::TcpAck],
            AliveTest::Arp => vec![AliveMethod::Arp],
            AliveTest::ConsiderAlive => vec![AliveMethod::ConsiderAlive],
        }
    }

    /// The preset for exactly these methods, when there is one (so a portal can send
    /// sensors that predate [`ScanSpec::alive_methods`] the same test).
    pub fn preset_for(methods: &[AliveMethod]) -> Option<AliveTest> {
        let mut m = methods.to_vec();
        m.sort_unstable();
        m.dedup();
        [
            AliveTest::IcmpAndTcpAck,
            AliveTest::Icmp,
            AliveTest::TcpSyn,
            AliveTest::TcpAck,
            AliveTest::Arp,
            AliveTest::ConsiderAlive,
        ]
        .into_iter()
        .find(|p| {
            let mut pm = p.methods();
            pm.sort_unstable();
            pm == m
        })
    }
}

/// One way of finding out whether a host is up, as ospd-openvas names them in
/// `<alive_test_methods>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliveMethod {
    Icmp,
    TcpAck,
    TcpSyn,
    Arp,
    /// Skip detection: every target address is scanned as if it answered.
    ConsiderAlive,
}

impl AliveMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AliveMethod::Icmp => "icmp",
            AliveMethod::TcpAck => "tcp_ack",
            AliveMethod::TcpSyn => "tcp_syn",
            AliveMethod::Arp => "arp",
            AliveMethod::ConsiderAlive => "consider_alive",
        }
    }
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
    /// Alive detection as any combination of methods (e.g. ICMP and ARP). When not
    /// empty it replaces `alive_test`; sensors that predate it ignore it and use
    /// `alive_test`, so a portal sets that to the nearest preset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alive_methods: Vec<AliveMethod>,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// The sensor stops the scan and reports it failed after this many seconds.
    #[serde(default = "default_deadline")]
    pub deadline_s: u64,
}

fn default_deadline() -> u64 {
    4 * 3600
}

impl ScanSpec {
    /// A scan of `targets` on `ports` with everything else as an operator who names
    /// nothing more gets it (the defaults a request without those fields decodes to).
    pub fn new(targets: Vec<String>, ports: impl Into<String>) -> ScanSpec {
        ScanSpec {
            targets,
            ports: ports.into(),
            exclude_hosts: vec![],
            families: vec![],
            oids: vec![],
            alive_test: AliveTest::default(),
            alive_methods: vec![],
            credentials: vec![],
            deadline_s: default_deadline(),
        }
    }

    /// The alive detection methods to run, sorted and without repeats.
    pub fn alive_methods(&self) -> Vec<AliveMethod> {
        let mut m = if self.alive_methods.is_empty() {
            self.alive_test.methods()
        } else {
            self.alive_methods.clone()
        };
        m.sort_unstable();
        m.dedup();
        m
    }
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

/// What a scan found on one host that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostFindings {
    pub host: String,
    /// The host name the scanner learned, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `port/proto` entries with at least one result on this host.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub findings: SeverityCounts,
    /// False when the scan of this host did not run to its end (the job stopped first).
    #[serde(default)]
    pub complete: bool,
}

/// The JSON summary stored next to the raw report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReportSummary {
    pub hosts: Vec<String>,
    /// `host:port/proto` entries with at least one result.
    pub ports: Vec<String>,
    pub findings: SeverityCounts,
    /// Hosts found alive (scanned), by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live_hosts: Vec<String>,
    /// Target addresses that did not answer the alive test, as addresses and ranges
    /// (`10.0.0.3-10.0.0.9`) after exclusions. Only a scan that ran to its end can say
    /// an address is dead; a partial report lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_hosts: Vec<String>,
    /// How many target addresses did not answer (ospd-openvas' count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_count: Option<u64>,
    /// Ports and findings of each live host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_host: Vec<HostFindings>,
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
    fn register_request_board_serial_is_optional_both_ways() {
        // what an agent from before the field sends
        let old = serde_json::json!({
            "name": "n", "site": "s", "hostname": "h", "os": "o", "board": "b",
            "hardware_serial": "x", "agent_version": "0.1.0", "capabilities": ["scan"],
            "wg_public_key": "k"
        });
        let req: RegisterRequest = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(req.board_serial, None);
        // and without a serial a new agent sends exactly that
        assert_eq!(serde_json::to_value(&req).unwrap(), old);
        let with = RegisterRequest {
            board_serial: Some("10000000abcdef01".into()),
            ..req
        };
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["board_serial"], "10000000abcdef01");
        assert_eq!(serde_json::from_value::<RegisterRequest>(v).unwrap(), with);
    }

    #[test]
    fn a_new_scan_spec_is_what_a_request_naming_only_targets_and_ports_decodes_to() {
        let v = serde_json::json!({"targets": ["10.9.0.0/24"], "ports": "T:1-1024"});
        let decoded: ScanSpec = serde_json::from_value(v).unwrap();
        assert_eq!(
            ScanSpec::new(vec!["10.9.0.0/24".into()], "T:1-1024"),
            decoded
        );
        assert_eq!(decoded.deadline_s, 4 * 3600);
    }

    #[test]
    fn job_spec_is_tagged_by_kind() {
        let spec = JobSpec::Scan(ScanSpec {
            targets: vec!["10.9.0.2".into()],
            ports: "T:22,80".into(),
            exclude_hosts: vec![],
            families: vec!["General".into()],
            oids: vec![],
            alive_test: AliveTest::ConsiderAlive,
            alive_methods: vec![],
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
    fn job_json_from_before_alive_methods_still_parses_and_round_trips() {
        // A job exactly as portals sent it before `alive_methods` and the host summary.
        let old = r#"{"id":3,"lease_expires_at":100,"attempt":0,"spec":{"kind":"scan",
            "targets":["10.9.0.0/24","10.9.1.5-10.9.1.9"],"ports":"T:22",
            "exclude_hosts":["10.9.0.7"],"families":["General"],"oids":[],
            "alive_test":"arp","credentials":[],"deadline_s":60}}"#;
        let job: Job = serde_json::from_str(old).unwrap();
        let JobSpec::Scan(spec) = &job.spec else {
            panic!("a scan job")
        };
        assert!(spec.alive_methods.is_empty());
        assert_eq!(spec.alive_methods(), [AliveMethod::Arp]);
        // A new portal sending a preset sends nothing an old sensor would not know.
        let v = serde_json::to_value(&job).unwrap();
        assert!(v["spec"].get("alive_methods").is_none(), "{v}");
        let old_summary =
            r#"{"hosts":["10.9.0.2"],"ports":[],"findings":{"high":0,"medium":0,"low":0,"log":1}}"#;
        let s: ReportSummary = serde_json::from_str(old_summary).unwrap();
        assert!(s.live_hosts.is_empty() && s.per_host.is_empty() && s.dead_count.is_none());
        assert_eq!(serde_json::to_string(&s).unwrap(), old_summary);
    }

    #[test]
    fn alive_method_combinations() {
        let mut spec: ScanSpec = serde_json::from_str(
            r#"{"targets":["h"],"ports":"T:80","alive_methods":["arp","icmp","arp"]}"#,
        )
        .unwrap();
        // The combination wins over the (default) preset, sorted and without repeats.
        assert_eq!(spec.alive_methods(), [AliveMethod::Icmp, AliveMethod::Arp]);
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["alive_methods"],
            serde_json::json!(["arp", "icmp", "arp"])
        );
        spec.alive_methods.clear();
        assert_eq!(
            spec.alive_methods(),
            [AliveMethod::Icmp, AliveMethod::TcpAck]
        );
        assert_eq!(
            AliveTest::preset_for(&[AliveMethod::TcpAck, AliveMethod::Icmp]),
            Some(AliveTest::IcmpAndTcpAck)
        );
        assert_eq!(
            AliveTest::preset_for(&[AliveMethod::ConsiderAlive]),
            Some(AliveTest::ConsiderAlive)
        );
        assert_eq!(
            AliveTest::preset_for(&[AliveMethod::Icmp, AliveMethod::Arp]),
            None
        );
        assert!(serde_json::from_str::<ScanSpec>(
            r#"{"targets":["h"],"ports":"T:80","alive_methods":["smoke_signals"]}"#
        )
        .is_err());
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
    fn feed_release_fields_are_optional_both_ways() {
        // Older agents and portals neither send nor expect them.
        let old = r#"{"activity":"idle","uptime_s":1,"agent_version":"0.1.0","metrics":{
            "cpu_percent":0,"load_avg_1m":0,"mem_total_bytes":0,"mem_used_bytes":0,
            "disk_total_bytes":0,"disk_used_bytes":0}}"#;
        let mut hb: HeartbeatRequest = serde_json::from_str(old).unwrap();
        assert_eq!(hb.feed_release, None);
        assert!(serde_json::to_value(&hb)
            .unwrap()
            .get("feed_release")
            .is_none());
        hb.feed_release = Some("202509150400-0123456789abcdef".into());
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["feed_release"], "202509150400-0123456789abcdef");
        let resp: HeartbeatResponse = serde_json::from_str(r#"{"server_time":5}"#).unwrap();
        assert_eq!(resp.feed_release, None);
        assert!(serde_json::to_value(&resp)
            .unwrap()
            .get("feed_release")
            .is_none());
    }

    #[test]
    fn heartbeat_job_list_is_optional_both_ways() {
        // An older agent's heartbeat (no `running_jobs`) still parses, as "not said".
        let old = r#"{"activity":"idle","uptime_s":1,"agent_version":"0.1.0","metrics":{
            "cpu_percent":0,"load_avg_1m":0,"mem_total_bytes":0,"mem_used_bytes":0,
            "disk_total_bytes":0,"disk_used_bytes":0}}"#;
        let hb: HeartbeatRequest = serde_json::from_str(old).unwrap();
        assert_eq!(hb.running_jobs, None);
        // "Nothing running" is sent as an empty list, distinct from not saying.
        let mut hb = hb;
        hb.running_jobs = Some(vec![]);
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["running_jobs"], serde_json::json!([]));
        hb.running_jobs = None;
        let v = serde_json::to_value(&hb).unwrap();
        assert!(v.get("running_jobs").is_none(), "{v}");
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
