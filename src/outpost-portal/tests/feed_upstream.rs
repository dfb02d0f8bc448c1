//! The portal fetching upstream itself (docs/feeds.md, "Fetching upstream"): the real
//! `greenbone-feed-sync` against a real `rsync --daemon` on loopback serving a synthetic
//! signed feed in Greenbone's module layout, imported with every check.
//!
//! Network: everything talks to 127.0.0.1 only, and every sync names its loopback URL
//! (the portal has no default upstream).

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_database, Backend};
use outpost_bundle::SecretKey;
use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec};
use outpost_portal::feeds::upstream::{sync_upstream, SyncError, UpstreamConfig};
use outpost_portal::feeds::{ImportError, ImportOptions};
use outpost_portal::store::Store;

/// The path under the rsync module, as Greenbone's server lays it out.
const FEED_PATH: &str = "vulnerability-feed/25.0";

/// greenbone-feed-sync as scripts/setup installs it (its own venv), else on PATH.
/// Missing is a failure, not a skip: scripts/setup installs it.
fn feed_sync_command() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTPOST_FEED_SYNC") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from("/opt/outpost-feed-sync/bin/greenbone-feed-sync");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("greenbone-feed-sync"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "greenbone-feed-sync is not installed (neither /opt/outpost-feed-sync/bin nor PATH): \
             run scripts/setup"
        )
    })
}

fn require_rsync() {
    let ok = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "rsync is not installed: run scripts/setup");
}

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
    l.local_addr().expect("addr").port()
}

/// A real `rsync --daemon` on a free loopback port, module `community` serving `root`.
struct RsyncDaemon {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RsyncDaemon {
    fn start(dir: &Path, root: &Path) -> RsyncDaemon {
        require_rsync();
        std::fs::create_dir_all(dir).expect("daemon dir");
        let port = free_port();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // As root the daemon would drop to `nobody`, who cannot read a 0700 temp dir.
        let conf = format!(
            "address = 127.0.0.1\nport = {port}\nuse chroot = no\nuid = {uid}\ngid = {gid}\n\
             pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\n\n\
             [community]\npath = {root}\nread only = yes\n",
            d = dir.display(),
            root = root.display()
        );
        let conf_path = dir.join("rsyncd.conf");
        std::fs::write(&conf_path, conf).expect("rsyncd.conf");
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rsync --daemon");
        let d = RsyncDaemon {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rsync --daemon did not listen on {addr}: {}",
                std::fs::read_to_string(d.dir.join("rsyncd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn url(&self) -> String {
        format!("rsync://127.0.0.1:{}/community/{FEED_PATH}", self.port)
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the generated tree onto the served one, the way an upstream publishes
/// (`nvt/` is served as `vt-data/nasl/`, `notus/` as `vt-data/notus/`).
fn publish(generated: &Path, served_root: &Path) {
    let vt = served_root.join(FEED_PATH).join("vt-data");
    for (from, to) in [("nvt", "nasl"), ("notus", "notus")] {
        let dst = vt.join(to);
        std::fs::create_dir_all(&dst).expect("served dir");
        let st = Command::new("rsync")
            .args(["-a", "--delete"])
            .arg(format!("{}/", generated.join(from).display()))
            .arg(format!("{}/", dst.display()))
            .status()
            .expect("local rsync");
        assert!(st.success(), "copying {from} onto the served tree");
    }
}

fn first_nasl(dir: &Path) -> PathBuf {
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "nasl") {
                return p;
            }
        }
    }
    panic!("no .nasl under {}", dir.display());
}

struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    store: Store,
    opts: ImportOptions,
    signer: GpgSigner,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("portal");
        std::fs::create_dir_all(&data).expect("data dir");
        let store = Store::open(&fresh_database(Backend::Sqlite, &data).await)
            .await
            .expect("store");
        let signer = GpgSigner::create(
            &dir.path().join("gnupg-upstream"),
            "Outpost Test Feed Integrity Key <feed@test.invalid>",
        )
        .expect("gpg key");
        let opts = ImportOptions::in_data_dir(&data);
        std::fs::write(&opts.keyring, signer.export_public().expect("export")).expect("keyring");
        SecretKey::generate()
            .expect("key")
            .write_new(&opts.signing_key, "feed test")
            .expect("feed key");
        Fixture {
            dir,
            data,
            store,
            opts,
            signer,
        }
    }

    async fn sync(&self, url: &str) -> Result<outpost_portal::feeds::ImportReport, SyncError> {
        let mut cfg = UpstreamConfig::new(url);
        cfg.command = feed_sync_command();
        sync_upstream(&self.store, &self.data, &cfg, &self.opts, 1_000).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greenbone_feed_sync_from_a_loopback_rsync_daemon_feeds_imports() {
    let f = Fixture::new().await;
    let spec = FeedSpec::new(7, 200).expect("spec");
    let generated = f.dir.path().join("generated");
    let served = f.dir.path().join("served");
    let s0 = generate(&generated, &spec, 0, Some(&f.signer)).expect("generate");
    publish(&generated, &served);
    let daemon = RsyncDaemon::start(&f.dir.path().join("rsyncd"), &served);

    // First sync: the whole tree, published as a release matching what was generated.
    let r1 = f.sync(&daemon.url()).await.expect("first sync");
    assert!(r1.created);
    assert_eq!(r1.manifest.plugin_set, s0.plugin_set);
    assert_eq!(r1.manifest.vt_count, s0.vt_count);
    assert_eq!(r1.release.vt_count, s0.vt_count);
    let staged = f.data.join("feeds/upstream/tree");
    assert!(staged.join("nvt/plugin_feed_info.inc").is_file());
    assert!(staged.join("notus/advisories/sha256sums.asc").is_file());

    // The next day upstream: the kept staging tree takes the delta, a new release.
    // rsync's quick check compares size and mtime in whole seconds; a real upstream's
    // releases are hours apart, so let the clock move before rewriting files.
    std::thread::sleep(Duration::from_millis(1100));
    let s1 = advance(&generated, &spec, 0, Some(&f.signer)).expect("advance");
    publish(&generated, &served);
    let r2 = f.sync(&daemon.url()).await.expect("second sync");
    assert!(r2.created);
    assert_eq!(r2.manifest.plugin_set, s1.plugin_set);
    assert_eq!(r2.manifest.vt_count, s1.vt_count);
    assert!(r2.release.id > r1.release.id);
    // Only the changed content is new to the store.
    assert!(
        r2.added_bytes < r2.release.bytes / 2,
        "{} of {} bytes new",
        r2.added_bytes,
        r2.release.bytes
    );

    // A file altered on the upstream after signing: fetched, refused by name, and the
    // previous release stays the newest.
    let victim = first_nasl(&served.join(FEED_PATH).join("vt-data/nasl"));
    let rel = victim
        .strip_prefix(served.join(FEED_PATH).join("vt-data/nasl"))
        .expect("relative")
        .display()
        .to_string();
    let original = std::fs::read(&victim).expect("read");
    let mut body = original.clone();
    body.extend_from_slice(b"\n# tampered\n");
    std::fs::write(&victim, body).expect("tamper");
    let err = f.sync(&daemon.url()).await.expect_err("tampered tree");
    let msg = err.to_string();
    assert!(
        matches!(err, SyncError::Refused(ImportError::Tree(_))),
        "{msg}"
    );
    assert!(msg.contains(&format!("nvt/{rel} is altered")), "{msg}");
    let list = f.store.feed_releases().await.expect("releases");
    assert_eq!(list.first().map(|r| r.id), Some(r2.release.id));
    assert_eq!(
        list.first().map(|r| r.plugin_set.clone()),
        Some(s1.plugin_set)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_clear_error() {
    require_rsync();
    let f = Fixture::new().await;
    // A loopback port with nothing listening.
    let url = format!("rsync://127.0.0.1:{}/community/{FEED_PATH}", free_port());
    let err = f.sync(&url).await.expect_err("nothing listens");
    let msg = err.to_string();
    assert!(matches!(err, SyncError::Fetch { .. }), "{msg}");
    assert!(msg.contains(&format!("fetching {url} failed")), "{msg}");
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(f.store.feed_releases().await.expect("releases").is_empty());

    // The one-shot command says the same and fails.
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("feed")
        .arg("--data-dir")
        .arg(&f.data)
        .args(["sync-upstream", "--upstream", &url, "--command"])
        .arg(feed_sync_command())
        .env_remove("OUTPOST_DATABASE")
        .env_remove("OUTPOST_PORTAL_DIR")
        .output()
        .expect("running outpost-portal");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("feed sync from {url} failed")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    // Not an rsync URL: refused before anything runs.
    let err = f
        .sync("https://127.0.0.1:1/feed")
        .await
        .expect_err("not rsync");
    assert!(matches!(err, SyncError::BadUrl(_)), "{err}");
}

/// `outpost-portal serve --feed-upstream`: the first slot runs at start and publishes; a
/// portal whose upstream is unreachable logs the failure and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_portal_syncs_on_its_schedule_and_survives_a_failing_upstream() {
    let f = Fixture::new().await;
    let spec = FeedSpec::new(3, 60).expect("spec");
    let generated = f.dir.path().join("generated");
    let served = f.dir.path().join("served");
    let s0 = generate(&generated, &spec, 0, Some(&f.signer)).expect("generate");
    publish(&generated, &served);
    let daemon = RsyncDaemon::start(&f.dir.path().join("rsyncd"), &served);

    let mut s = outpost_portal::Settings::new(f.data.clone(), "127.0.0.1:0".parse().expect("addr"));
    let mut cfg = UpstreamConfig::new(daemon.url());
    cfg.command = feed_sync_command();
    s.feed_upstream = Some(cfg);
    s.feed_sync_every = Duration::from_secs(3600);
    let portal = outpost_portal::Portal::start(s).await.expect("portal");
    let deadline = Instant::now() + Duration::from_secs(60);
    let release = loop {
        let list = portal.state.store.feed_releases().await.expect("releases");
        if let Some(r) = list.into_iter().next() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no release published by the schedule"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(release.plugin_set, s0.plugin_set);
    assert_eq!(release.vt_count, s0.vt_count);
    portal.stop().await;

    // Unreachable upstream: the sync fails (logged), the portal still answers.
    let mut s = outpost_portal::Settings::new(f.data.clone(), "127.0.0.1:0".parse().expect("addr"));
    let mut cfg = UpstreamConfig::new(format!(
        "rsync://127.0.0.1:{}/community/{FEED_PATH}",
        free_port()
    ));
    cfg.command = feed_sync_command();
    s.feed_upstream = Some(cfg);
    let portal = outpost_portal::Portal::start(s).await.expect("portal");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(TcpStream::connect_timeout(&portal.addr, Duration::from_secs(2)).is_ok());
    let list = portal.state.store.feed_releases().await.expect("releases");
    assert_eq!(list.len(), 1, "the failed sync published nothing");
    portal.stop().await;
}
