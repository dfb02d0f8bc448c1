use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `outpost-portal serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Holds the SQLite file, the generated CA, server certificate and admin token.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://...`; SQLite in `data_dir` when absent.
    pub database: Option<String>,
    /// A sensor without a heartbeat for this long is `offline`.
    pub offline_after: Duration,
    /// A claimed job whose sensor stops heartbeating goes back to the queue after this.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub reap_every: Duration,
    /// Told to sensors at registration.
    pub heartbeat_interval: Duration,
    pub claim_interval: Duration,
    /// Extra DNS names or IP addresses for the generated server certificate.
    pub extra_sans: Vec<String>,
    /// An operator's own certificate chain and key instead of the generated ones.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Settings {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Settings {
        Settings {
            data_dir,
            listen,
            database: None,
            offline_after: Duration::from_secs(120),
            lease: Duration::from_secs(600),
            reap_every: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            extra_sans: Vec::new(),
            tls_cert: None,
            tls_key: None,
        }
    }

    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => self.data_dir.join("portal.sqlite").display().to_string(),
        }
    }
}
