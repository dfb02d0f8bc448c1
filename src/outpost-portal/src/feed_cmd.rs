//! `outpost-portal feed`: the portal's feed mirror (docs/feeds.md). These commands run on
//! the portal host against its data directory and database: an import reads a whole feed
//! tree (about 550 MB for the real one) and writes the portal's blob store, which is
//! cheaper done in place than uploaded through the admin API. The portal's own scheduled
//! upstream fetch will call the same import.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use serde_json::json;

use outpost_bundle::SecretKey;
use outpost_portal::feeds::{
    self, channels, upstream, ImportOptions, ImportReport, DEFAULT_KEEP, SIGNING_KEY_FILE,
};
use outpost_portal::store::Store;
use outpost_portal::Settings;
use outpost_wire::admin::FeedReleases;

#[derive(Subcommand)]
pub enum FeedCmd {
    /// Create the portal's feed key: KEY (secret, mode 0600) and KEY.pub (sensors trust it).
    /// A key of its own, not the bundle key. Default: <data-dir>/feed-signing.key.
    Keygen {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Comment stored in KEY.pub, e.g. who owns the key.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Verify a feed tree as greenbone-feed-sync leaves it (nvt/, notus/advisories/,
    /// notus/products/, each with a signed sha256sums) and publish it as a release.
    Import {
        dir: PathBuf,
        /// PostgreSQL URL of the portal; SQLite in --portal-dir when absent.
        #[arg(long, env = "OUTPOST_DATABASE")]
        database: Option<String>,
        /// OpenPGP keys (armoured or binary) whose signatures on sha256sums are accepted.
        /// Default: <data-dir>/feed-keyring.gpg.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// The feed key that signs the release manifest. Default: <data-dir>/feed-signing.key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Releases to keep (the new one included); older ones and their files are removed.
        #[arg(long, default_value_t = DEFAULT_KEEP)]
        keep: usize,
    },
    /// Fetch the upstream feed once with greenbone-feed-sync into <data-dir>/feeds/upstream
    /// (kept, so the next sync moves only the delta) and import it like `import`.
    SyncUpstream {
        /// rsync URL base, e.g. rsync://feed.community.greenbone.net/community/vulnerability-feed/25.0
        /// (NASL at <URL>/vt-data/nasl/, Notus at <URL>/vt-data/notus/).
        #[arg(long)]
        upstream: String,
        /// The greenbone-feed-sync command (a name on PATH or a path).
        #[arg(long, default_value = upstream::DEFAULT_COMMAND)]
        command: PathBuf,
        #[arg(long, env = "OUTPOST_DATABASE")]
        database: Option<String>,
        /// Releases to keep (the new one included).
        #[arg(long, default_value_t = DEFAULT_KEEP)]
        keep: usize,
    },
    /// Feed releases published on the portal, newest first, the channels pinned to each,
    /// and whether the upstream is stale (the newest PLUGIN_SET too old).
    List {
        #[arg(long, env = "OUTPOST_DATABASE")]
        database: Option<String>,
        /// Hours after which the newest release's PLUGIN_SET marks the upstream stale.
        #[arg(long, default_value_t = 48)]
        stale_after_hours: u64,
    },
}

fn data_dir(portal_dir: Option<&Path>) -> Result<&Path> {
    portal_dir.ok_or_else(|| {
        anyhow!("give --data-dir DIR: feed commands work on the portal's data directory")
    })
}

fn open_store(
    data_dir: &Path,
    database: Option<String>,
) -> Result<(tokio::runtime::Runtime, Store)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The same rule as `outpost-portal serve`: SQLite in the data directory by default.
    let mut s = Settings::new(data_dir.to_owned(), "127.0.0.1:0".parse()?);
    s.database = database;
    let url = s.database_url();
    let store = rt
        .block_on(Store::open(&url))
        .with_context(|| format!("opening the portal database {url}"))?;
    Ok((rt, store))
}

/// The blobs go where the replicas serve them from, or nowhere (`shared::check_storage`).
async fn check_storage(store: &Store, data_dir: &Path, shared_dir: Option<&Path>) -> Result<()> {
    outpost_portal::shared::check_storage(store, shared_dir.unwrap_or(data_dir)).await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn run(
    cmd: FeedCmd,
    portal_dir: Option<&Path>,
    shared_dir: Option<&Path>,
    json: bool,
) -> Result<()> {
    match cmd {
        FeedCmd::Keygen { out, comment } => {
            let out = match out {
                Some(o) => o,
                None => data_dir(portal_dir)?.join(SIGNING_KEY_FILE),
            };
            let key = SecretKey::generate()?;
            let pub_path = key.write_new(&out, &comment)?;
            if json {
                let v = json!({"secret": out, "public": pub_path, "key": key.id().to_string()});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("feed key: {} (keep it on the portal)", out.display());
                println!(
                    "public key: {} (sensors trust it for feeds)",
                    pub_path.display()
                );
                print!("{}", key.public_line(&comment));
            }
            Ok(())
        }
        FeedCmd::Import {
            dir,
            database,
            keyring,
            key,
            keep,
        } => {
            let data = data_dir(portal_dir)?;
            let mut opts = ImportOptions::in_data_dir(data);
            opts.keep = keep.max(1);
            opts.shared_dir = shared_dir.map(Path::to_owned);
            if let Some(k) = keyring {
                opts.keyring = k;
            }
            if let Some(k) = key {
                opts.signing_key = k;
            }
            let (rt, store) = open_store(data, database)?;
            rt.block_on(check_storage(&store, data, shared_dir))?;
            let r = rt
                .block_on(feeds::import(&store, data, &dir, &opts, now()))
                .with_context(|| format!("feed {} refused", dir.display()))?;
            print_import(&r, json)
        }
        FeedCmd::SyncUpstream {
            upstream: url,
            command,
            database,
            keep,
        } => {
            let data = data_dir(portal_dir)?;
            let mut opts = ImportOptions::in_data_dir(data);
            opts.keep = keep.max(1);
            opts.shared_dir = shared_dir.map(Path::to_owned);
            let mut cfg = upstream::UpstreamConfig::new(url.clone());
            cfg.command = command;
            let (rt, store) = open_store(data, database)?;
            rt.block_on(check_storage(&store, data, shared_dir))?;
            let r = rt
                .block_on(upstream::sync_upstream(&store, data, &cfg, &opts, now()))
                .with_context(|| format!("feed sync from {url} failed"))?;
            print_import(&r, json)
        }
        FeedCmd::List {
            database,
            stale_after_hours,
        } => {
            let data = data_dir(portal_dir)?;
            let (rt, store) = open_store(data, database)?;
            let list = rt.block_on(store.feed_releases())?;
            let rows = rt.block_on(store.feed_channels())?;
            let stale_after_s =
                i64::try_from(stale_after_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
            let (stale, age) = channels::upstream_stale(&list, now(), stale_after_s);
            let summaries = channels::summaries(&list, &rows);
            if json {
                let v = FeedReleases {
                    releases: summaries,
                    stale,
                    stale_after_s,
                    newest_age_s: age,
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:>5}  {:<12} {:<6} {:>8} {:>8} {:>12}  {:<64}  pinned by",
                    "id", "plugin_set", "notus", "vts", "files", "bytes", "manifest"
                );
                for r in &summaries {
                    println!(
                        "{:>5}  {:<12} {:<6} {:>8} {:>8} {:>12}  {:<64}  {}",
                        r.id,
                        r.plugin_set,
                        r.notus_version.as_deref().unwrap_or("-"),
                        r.vt_count,
                        r.files,
                        r.bytes,
                        r.manifest_sha256,
                        if r.pinned_by.is_empty() {
                            "-".to_owned()
                        } else {
                            r.pinned_by.join(", ")
                        }
                    );
                }
                println!("{}", upstream_line(stale, age, stale_after_hours));
            }
            Ok(())
        }
    }
}

fn print_import(r: &ImportReport, json: bool) -> Result<()> {
    let m = &r.manifest;
    if json {
        let v = json!({
            "release": r.release.id,
            "created": r.created,
            "manifest_sha256": r.release.manifest_sha256,
            "plugin_set": m.plugin_set,
            "notus_version": m.notus_version,
            "vt_count": m.vt_count,
            "nasl_scripts": m.nasl_scripts,
            "notus_advisories": m.notus_advisories,
            "files": r.release.files,
            "bytes": r.release.bytes,
            "upstream_signers": m.upstream_signers,
            "added_blobs": r.added_blobs,
            "added_bytes": r.added_bytes,
            "dropped_releases": r.dropped_releases,
            "collected_blobs": r.collected.blobs,
            "collected_bytes": r.collected.bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "feed release {}{}: PLUGIN_SET {}, Notus {}, {} VTs ({} NASL scripts, {} advisories)",
            r.release.id,
            if r.created {
                ""
            } else {
                " (already published)"
            },
            m.plugin_set,
            m.notus_version.as_deref().unwrap_or("none"),
            m.vt_count,
            m.nasl_scripts,
            m.notus_advisories
        );
        println!(
            "{} files, {} bytes; stored {} new bytes in {} blobs",
            r.release.files, r.release.bytes, r.added_bytes, r.added_blobs
        );
        println!("upstream signed by {}", m.upstream_signers.join(", "));
        if !r.dropped_releases.is_empty() {
            let ids: Vec<String> = r.dropped_releases.iter().map(i64::to_string).collect();
            println!(
                "dropped release(s) {}; freed {} bytes in {} blobs",
                ids.join(" "),
                r.collected.bytes,
                r.collected.blobs
            );
        }
    }
    Ok(())
}

/// `upstream: fresh (newest PLUGIN_SET 5 h old)` or `upstream: STALE (...)`.
fn upstream_line(stale: bool, age_s: Option<i64>, stale_after_hours: u64) -> String {
    let verdict = if stale { "STALE" } else { "fresh" };
    match age_s {
        Some(a) => format!(
            "upstream: {verdict} (newest PLUGIN_SET {} h old; stale after {stale_after_hours} h)",
            a / 3600
        ),
        None => format!("upstream: {verdict} (no release published)"),
    }
}
