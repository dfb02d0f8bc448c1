use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use outpost_portal::Settings;

mod feed_cmd;

#[derive(Parser)]
#[command(
    name = "outpost-portal",
    version,
    about = "Outpost reference control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the sensor and admin APIs over HTTPS.
    Serve(Box<ServeArgs>),
    /// The feed mirror, on this host's data directory: keygen, import (verify and
    /// publish a feed tree), sync-upstream (fetch and import), list.
    Feed(FeedArgs),
}

#[derive(clap::Args)]
struct FeedArgs {
    /// The portal's data directory.
    #[arg(long, env = "OUTPOST_PORTAL_DIR")]
    data_dir: PathBuf,
    /// The replicas' shared directory (as given to `serve --shared-dir`): an import
    /// writes the feed blobs there.
    #[arg(long, env = "OUTPOST_SHARED_DIR")]
    shared_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    cmd: feed_cmd::FeedCmd,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory for the SQLite database, TLS material and the admin token.
    #[arg(long, env = "OUTPOST_PORTAL_DIR")]
    data_dir: PathBuf,
    /// Directory for published bundles and feed blobs, mounted by every replica (a shared
    /// filesystem); the data directory when absent.
    #[arg(long, env = "OUTPOST_SHARED_DIR")]
    shared_dir: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the URL is written to portal.url).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// PostgreSQL URL (postgres://user@host/db); SQLite in the data directory if absent.
    #[arg(long, env = "OUTPOST_DATABASE")]
    database: Option<String>,
    /// Seconds without a heartbeat before a sensor counts as offline.
    #[arg(long, default_value_t = 120)]
    offline_after: u64,
    /// Seconds a claimed job stays leased without a heartbeat before it is re-queued.
    #[arg(long, default_value_t = 600)]
    lease: u64,
    /// Times a job may be lost (lease expired, sensor restarted without it) before it
    /// fails instead of going back to the queue.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds after a claim before a heartbeat that does not list the job takes it back.
    #[arg(long, default_value_t = 60)]
    claim_grace: u64,
    /// Heartbeat interval told to sensors, seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_interval: u64,
    /// Claim interval told to sensors, seconds.
    #[arg(long, default_value_t = 5)]
    claim_interval: u64,
    /// Extra DNS name or IP for the generated server certificate (repeatable).
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Your own PEM certificate chain (with --tls-key) instead of the generated one.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Run the WireGuard gateway on this UDP address (e.g. 0.0.0.0:51820).
    #[arg(long)]
    wg_listen: Option<SocketAddr>,
    /// host:port sensors send WireGuard to (default: the --wg-listen address).
    #[arg(long)]
    wg_endpoint: Option<String>,
    /// Tunnel network in CIDR form; the portal takes the first address.
    #[arg(long, default_value = "100.96.0.0/16")]
    wg_network: String,
    /// Also serve the sensor API outside the tunnel (migration from tunnel-less sensors).
    #[arg(long)]
    wg_optional: bool,
    /// Hours a sensor may run another feed release than its channel's before it is
    /// flagged `feed_behind`.
    #[arg(long, default_value_t = 6)]
    feed_grace_hours: u64,
    /// Hours after which the newest feed release's PLUGIN_SET marks the upstream stale.
    #[arg(long, default_value_t = 48)]
    feed_stale_after_hours: u64,
    /// Fetch the feed from this rsync URL base with greenbone-feed-sync and import it on a
    /// schedule, e.g. rsync://feed.community.greenbone.net/community/vulnerability-feed/25.0
    /// (NASL at <URL>/vt-data/nasl/, Notus at <URL>/vt-data/notus/). Off when absent.
    #[arg(long)]
    feed_upstream: Option<String>,
    /// Hours between upstream feed syncs (the first runs at start; a failed one is retried
    /// at the next slot).
    #[arg(long, default_value_t = 6, requires = "feed_upstream")]
    feed_sync_every: u64,
    /// The greenbone-feed-sync command (a name on PATH or a path).
    #[arg(long, default_value = outpost_portal::feeds::upstream::DEFAULT_COMMAND, requires = "feed_upstream")]
    feed_sync_command: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-portal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let a = match cli.cmd {
        Cmd::Serve(a) => *a,
        Cmd::Feed(f) => {
            return feed_cmd::run(f.cmd, Some(&f.data_dir), f.shared_dir.as_deref(), f.json)
        }
    };
    let mut s = Settings::new(a.data_dir, a.listen);
    s.database = a.database;
    s.shared_dir = a.shared_dir;
    s.offline_after = Duration::from_secs(a.offline_after);
    s.lease = Duration::from_secs(a.lease);
    s.reap_every = Duration::from_secs(a.lease.clamp(1, 5));
    s.max_attempts = a.max_attempts.max(1);
    s.claim_grace = Duration::from_secs(a.claim_grace);
    s.heartbeat_interval = Duration::from_secs(a.heartbeat_interval.max(1));
    s.claim_interval = Duration::from_secs(a.claim_interval.max(1));
    s.extra_sans = a.sans;
    s.tls_cert = a.tls_cert;
    s.tls_key = a.tls_key;
    s.feed_grace = Duration::from_secs(a.feed_grace_hours.saturating_mul(3600));
    s.feed_stale_after = Duration::from_secs(a.feed_stale_after_hours.saturating_mul(3600));
    if let Some(url) = a.feed_upstream {
        if !url.starts_with("rsync://") {
            anyhow::bail!("--feed-upstream {url:?} is not an rsync:// URL");
        }
        let mut cfg = outpost_portal::feeds::upstream::UpstreamConfig::new(url);
        cfg.command = a.feed_sync_command;
        s.feed_upstream = Some(cfg);
        s.feed_sync_every = Duration::from_secs(a.feed_sync_every.max(1).saturating_mul(3600));
    }
    if let Some(listen) = a.wg_listen {
        let (network, prefix) = outpost_wire::provision::parse_cidr(&a.wg_network)
            .filter(|(_, p)| (8..=30).contains(p))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--wg-network {:?} is not an IPv4 CIDR between /8 and /30",
                    a.wg_network
                )
            })?;
        let mut t = outpost_portal::settings::TunnelSettings::new(
            listen,
            a.wg_endpoint.unwrap_or_else(|| listen.to_string()),
        );
        t.network = network;
        t.prefix = prefix;
        t.require = !a.wg_optional;
        s.tunnel = Some(t);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(outpost_portal::run(s))
}
