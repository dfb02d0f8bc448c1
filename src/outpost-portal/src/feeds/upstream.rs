//! Fetching the upstream feed (docs/feeds.md, "Fetching upstream"): `greenbone-feed-sync`
//! mirrors the NASL and Notus trees into a staging directory kept under the data
//! directory, and the staged tree goes through the ordinary [`import`](super::import), so
//! every signature and file check applies to what rsync brought.
//!
//! ```text
//! feeds/upstream/tree/nvt     what greenbone-feed-sync leaves (kept: rsync moves deltas)
//! feeds/upstream/tree/notus
//! feeds/upstream/lock         held while a sync runs (a second one is refused, not queued)
//! ```

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::watch;

use super::{import, ImportError, ImportOptions, ImportReport, TreeProblem, DIR};
use crate::store::Store;

/// The command run when the operator names none (found on `PATH`).
pub const DEFAULT_COMMAND: &str = "greenbone-feed-sync";
/// Under the feeds directory.
pub const STAGING_DIR: &str = "upstream";
/// rsync gives up after this long without data, so a stalled server cannot hold the
/// sync (and the next slot) forever.
pub const RSYNC_TIMEOUT_S: u64 = 600;

/// Where and how to fetch. There is deliberately no default URL: a portal (or a test)
/// never reaches Greenbone's public server unless the operator names it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// rsync URL base laid out like Greenbone's, e.g.
    /// `rsync://feed.community.greenbone.net/community/vulnerability-feed/25.0`:
    /// the NASL tree is at `<base>/vt-data/nasl/`, Notus at `<base>/vt-data/notus/`.
    pub url: String,
    /// `greenbone-feed-sync`, or a path to it.
    pub command: PathBuf,
}

impl UpstreamConfig {
    pub fn new(url: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            url: url.into(),
            command: PathBuf::from(DEFAULT_COMMAND),
        }
    }

    fn module_url(&self, sub: &str) -> String {
        format!("{}/vt-data/{sub}/", self.url.trim_end_matches('/'))
    }
}

/// Why a sync did not publish a release.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the upstream URL {0:?} is not an rsync:// URL")]
    BadUrl(String),
    #[error("another upstream feed sync is running ({0} is locked)")]
    Busy(PathBuf),
    // The io::Error is in the message and not a `source`, so `{:#}` does not say it twice.
    #[error("{step} {path}: {error}")]
    Io {
        step: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot run {command}: {error} (scripts/setup installs greenbone-feed-sync)")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    #[error("fetching {url} failed: {command} exited with {status}: {output}")]
    Fetch {
        url: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("the fetched feed was refused: {0}")]
    Refused(#[from] ImportError),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SyncError + 'a {
    move |error| SyncError::Io {
        step,
        path: path.to_path_buf(),
        error,
    }
}

/// The staging directory a sync fills and imports.
pub fn staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR).join(STAGING_DIR)
}

/// Held while a sync runs; released when dropped.
struct SyncLock(#[allow(dead_code)] std::fs::File);

fn try_lock(path: &Path) -> Result<SyncLock, SyncError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    // SAFETY: flock only uses the descriptor, which `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SyncError::Busy(path.to_path_buf()));
        }
        return Err(io_err("locking", path)(e));
    }
    Ok(SyncLock(f))
}

/// Runs `greenbone-feed-sync` into the staging tree, then imports it.
pub async fn sync_upstream(
    store: &Store,
    data_dir: &Path,
    cfg: &UpstreamConfig,
    opts: &ImportOptions,
    now: i64,
) -> Result<ImportReport, SyncError> {
    if !cfg.url.starts_with("rsync://") {
        return Err(SyncError::BadUrl(cfg.url.clone()));
    }
    let stage = staging_dir(data_dir);
    let tree = stage.join("tree");
    std::fs::create_dir_all(&tree).map_err(io_err("creating", &tree))?;
    // A sync lock of its own: the import below takes the feeds lock itself, and a second
    // sync into the same staging tree must not wait to rsync over a tree being imported.
    let _lock = try_lock(&stage.join("lock"))?;
    fetch(&stage, &tree, cfg).await?;
    match import(store, data_dir, &tree, opts, now).await {
        Ok(r) => Ok(r),
        Err(ImportError::Tree(problems)) => {
            forget_altered(&tree, &problems);
            Err(SyncError::Refused(ImportError::Tree(problems)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the staged copies of files that did not match their signed list. rsync's
/// quick check compares only size and modification time, so a bad copy with the same
/// ones as upstream's file would otherwise never be fetched again and every later sync
/// would be refused; removed, the next run fetches it whole.
fn forget_altered(tree: &Path, problems: &[TreeProblem]) {
    for p in problems {
        let rel = match p {
            TreeProblem::Altered { path, .. } | TreeProblem::TooLarge(path) => Path::new(path),
            _ => continue,
        };
        // Paths come from the tree's own lists: only plain components stay inside it.
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        let staged = tree.join(rel);
        match std::fs::remove_file(&staged) {
            Ok(()) => {
                tracing::info!(path = %staged.display(), "removed a staged file that did not match its signed list")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %staged.display(), error = %e, "cannot remove a staged file")
            }
        }
    }
}

async fn fetch(stage: &Path, tree: &Path, cfg: &UpstreamConfig) -> Result<(), SyncError> {
    // An empty config file of our own, so /etc/gvm or ~/.config settings cannot redirect
    // the sync; a missing enterprise key file so none on the host changes the URLs.
    let config = stage.join("greenbone-feed-sync.toml");
    std::fs::write(&config, "").map_err(io_err("writing", &config))?;
    // SAFETY: plain getters without side effects.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut cmd = tokio::process::Command::new(&cfg.command);
    cmd.arg("--config")
        .arg(&config)
        // --quiet: no spinner or lock chatter; errors still go to stderr.
        .args(["--quiet", "--type", "nvt", "--fail-fast", "--no-wait"])
        .arg(format!("--rsync-timeout={RSYNC_TIMEOUT_S}"))
        .arg("--nasl-url")
        .arg(cfg.module_url("nasl"))
        .arg("--notus-url")
        .arg(cfg.module_url("notus"))
        .arg("--nasl-destination")
        .arg(tree.join("nvt"))
        .arg("--notus-destination")
        .arg(tree.join("notus"))
        .arg("--openvas-lock-file")
        .arg(stage.join("openvas-feed-update.lock"))
        .arg("--gvmd-lock-file")
        .arg(stage.join("gvmd-feed-update.lock"))
        .arg("--greenbone-enterprise-feed-key")
        .arg(stage.join("no-enterprise-key"))
        // Run as whoever runs the portal (as root it would switch to user `gvm`).
        .arg("--user")
        .arg(uid.to_string())
        .arg("--group")
        .arg(gid.to_string())
        // Its console wraps at 80 columns when not on a terminal, which would split rsync's
        // error lines in our log.
        .env("COLUMNS", "500")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let command = cfg.command.display().to_string();
    tracing::info!(url = %cfg.url, staging = %tree.display(), "fetching the upstream feed");
    let out = cmd.output().await.map_err(|error| SyncError::Spawn {
        command: command.clone(),
        error,
    })?;
    if !out.status.success() {
        // With --quiet, stderr holds rsync's own messages (or the tool's error); stdout
        // only when stderr says nothing.
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        // rsync's messages are short; the cap only guards the log against a flood.
        let output: String = text.chars().take(2000).collect();
        return Err(SyncError::Fetch {
            url: cfg.url.clone(),
            command,
            status: out.status.to_string(),
            output,
        });
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Syncs at start and then every `every` until `shutdown`. Runs are sequential, so they
/// never overlap here; a failure is logged with its reason and the next slot retries.
pub async fn schedule(
    store: Store,
    data_dir: PathBuf,
    cfg: UpstreamConfig,
    opts: ImportOptions,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Less than a minute apart would only hammer the upstream.
    let every = every.max(Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let run = sync_upstream(&store, &data_dir, &cfg, &opts, unix_now());
        let result = tokio::select! {
            _ = shutdown.changed() => return,
            r = run => r,
        };
        match result {
            Ok(r) => tracing::info!(
                release = r.release.id,
                created = r.created,
                plugin_set = %r.manifest.plugin_set,
                vt_count = r.manifest.vt_count,
                added_bytes = r.added_bytes,
                "upstream feed synced"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                retry_in_s = every.as_secs(),
                "upstream feed sync failed; retrying at the next slot"
            ),
        }
    }
}
