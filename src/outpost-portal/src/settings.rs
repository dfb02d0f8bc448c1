use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `outpost-portal serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the SQLite file, the generated CA, server certificate and admin token.
    pub data_dir: PathBuf,
    /// Where published bundles and feed blobs live, when not in `data_dir`: a directory
    /// every replica mounts (docs/operating.md, Replicas).
    pub shared_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    /// `postgres://...`; SQLite in `data_dir` when absent.
    pub database: Option<String>,
    /// A sensor without a heartbeat for this long is `offline`.
    pub offline_after: Duration,
    /// A claimed job whose sensor stops heartbeating goes back to the queue after this.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    /// A job lost this many times (lease expired, sensor restarted without it, sensor
    /// deleted) fails instead of going back to the queue.
    pub max_attempts: u32,
    /// A job claimed less than this long ago is not taken from a sensor whose heartbeat
    /// does not list it: the claim's answer and the heartbeat may cross.
    pub claim_grace: Duration,
    /// Told to sensors at registration.
    pub heartbeat_interval: Duration,
    pub claim_interval: Duration,
    /// Extra DNS names or IP addresses for the generated server certificate.
    pub extra_sans: Vec<String>,
    /// An operator's own certificate chain and key instead of the generated ones.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The WireGuard gateway, when sensors should reach the API through the tunnel.
    pub tunnel: Option<TunnelSettings>,
    /// Largest report upload accepted, bytes (the wire limit by default; tests lower it).
    pub max_report_body: u64,
    /// Bytes of report text stored per database row, and so held at once while a report
    /// is stored or served (`store::REPORT_CHUNK`; tests lower it).
    pub report_chunk: usize,
    /// A sensor off its channel's feed release for longer than this is `feed_behind`.
    pub feed_grace: Duration,
    /// The newest release's PLUGIN_SET older than this marks the upstream stale.
    pub feed_stale_after: Duration,
    /// Fetch the upstream feed with greenbone-feed-sync and import it on a schedule
    /// (off when absent: there is no default upstream).
    pub feed_upstream: Option<crate::feeds::upstream::UpstreamConfig>,
    /// Time between scheduled upstream syncs.
    pub feed_sync_every: Duration,
}

#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// UDP address the gateway listens on.
    pub listen: SocketAddr,
    /// `host:port` sensors are told to send to (the address they can reach).
    pub endpoint: String,
    /// The tunnel network; the portal takes `.1`, sensors the addresses after it.
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub keepalive_s: u16,
    /// Serve the sensor API (all but `register`) only through the tunnel.
    pub require: bool,
}

impl TunnelSettings {
    pub fn new(listen: SocketAddr, endpoint: String) -> TunnelSettings {
        TunnelSettings {
            listen,
            endpoint,
            // RFC 6598 shared address space: unlikely to be a branch LAN, and in any case
            // the tunnel adds no routes on either side.
            network: Ipv4Addr::new(100, 96, 0, 0),
            prefix: 16,
            keepalive_s: 25,
            require: true,
        }
    }

    pub fn portal_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }
}

impl Settings {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Settings {
        Settings {
            data_dir,
            shared_dir: None,
            listen,
            database: None,
            offline_after: Duration::from_secs(120),
            lease: Duration::from_secs(600),
            reap_every: Duration::from_secs(5),
            max_attempts: 3,
            claim_grace: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            extra_sans: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tunnel: None,
            max_report_body: outpost_wire::MAX_REPORT_BODY as u64,
            report_chunk: crate::store::REPORT_CHUNK,
            feed_grace: Duration::from_secs(crate::feeds::channels::DEFAULT_GRACE_S as u64),
            feed_stale_after: Duration::from_secs(
                crate::feeds::channels::DEFAULT_STALE_AFTER_S as u64,
            ),
            feed_upstream: None,
            feed_sync_every: Duration::from_secs(6 * 3600),
        }
    }

    pub fn loss_rules(&self) -> crate::store::LossRules {
        crate::store::LossRules {
            max_attempts: self.max_attempts.max(1),
        }
    }

    /// The directory holding `bundles/` and `feeds/`: `--shared-dir`, else the data
    /// directory.
    pub fn storage_dir(&self) -> &Path {
        self.shared_dir.as_deref().unwrap_or(&self.data_dir)
    }

    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => self.data_dir.join("portal.sqlite").display().to_string(),
        }
    }
}
