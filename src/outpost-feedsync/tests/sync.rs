//! Feed sync against a real portal on loopback: a synthetic feed (outpost-feedgen, signed
//! with a throwaway GnuPG key) is imported and published, and the sensor side fetches it
//! through the sensor API (`/api/sensor/feed/*`) over HTTPS with a registered sensor's key.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_bundle::{SecretKey, TrustedKeys};
use outpost_feed::batch::{encode, BatchReader};
use outpost_feed::{inspect, FeedManifest};
use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec};
use outpost_feedsync::{
    rollback, sync, FeedSource, Progress, SourceError, SyncConfig, SyncError, SyncOutcome,
    SyncReport,
};
use outpost_portal::feeds::{import, ImportOptions, ImportReport};
use outpost_portal::{Portal, Settings};
use outpost_wire::feed::{FeedBlobsRequest, FeedReleaseInfo, BLOBS_PATH, RELEASE_PATH};

const SCRIPTS: u32 = 200;

/// What a source may do to a batch on its way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Cut the body of the batch after this many successful batches, halfway through.
    CutAfter(usize),
    /// Alter the first blob of every batch (re-framed, so only the hash can tell).
    Tamper,
}

/// The sensor API over HTTPS, as `outpostd` speaks it (without the tunnel).
struct Http {
    agent: ureq::Agent,
    url: String,
    key: String,
    fault: Fault,
    batches: Mutex<usize>,
    /// Every digest asked for, in order.
    asked: Mutex<Vec<String>>,
}

impl Http {
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl FeedSource for Http {
    fn release(&self) -> Result<Option<FeedReleaseInfo>, SourceError> {
        let mut r = self
            .agent
            .get(format!("{}{RELEASE_PATH}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .call()
            .map_err(|e| SourceError(e.to_string()))?;
        match r.status().as_u16() {
            204 => Ok(None),
            200 => r
                .body_mut()
                .read_json()
                .map(Some)
                .map_err(|e| SourceError(e.to_string())),
            s => Err(SourceError(format!("status {s}"))),
        }
    }

    fn blobs(&self, sha256: &[String]) -> Result<Box<dyn Read + Send>, SourceError> {
        self.asked.lock().unwrap().extend(sha256.iter().cloned());
        let mut r = self
            .agent
            .post(format!("{}{BLOBS_PATH}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .send_json(FeedBlobsRequest {
                sha256: sha256.to_vec(),
            })
            .map_err(|e| SourceError(e.to_string()))?;
        if r.status() != 200 {
            let body = r.body_mut().read_to_string().unwrap_or_default();
            return Err(SourceError(format!("status {}: {body}", r.status())));
        }
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| SourceError(e.to_string()))?;
        let mut n = self.batches.lock().unwrap();
        *n += 1;
        match self.fault {
            Fault::CutAfter(k) if *n > k => {
                let half = body.len() / 2;
                Ok(Box::new(
                    std::io::Cursor::new(body[..half].to_vec()).chain(Broken),
                ))
            }
            Fault::Tamper => {
                let mut r = BatchReader::new(&body[..]).unwrap();
                let mut blobs = Vec::new();
                while let Some(e) = r.next_entry().unwrap() {
                    let mut b = Vec::new();
                    r.content().read_to_end(&mut b).unwrap();
                    blobs.push((e.sha256, b));
                }
                // Same length, other bytes: only the SHA-256 can tell.
                if let Some(first) = blobs.first_mut() {
                    if let Some(x) = first.1.first_mut() {
                        *x ^= 0x20;
                    }
                }
                let wire = encode(blobs.iter().map(|(s, b)| (s.as_str(), b.as_slice()))).unwrap();
                Ok(Box::new(std::io::Cursor::new(wire)))
            }
            _ => Ok(Box::new(std::io::Cursor::new(body))),
        }
    }
}

/// A connection that dies.
struct Broken;

impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        ))
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    portal: Portal,
    data: PathBuf,
    signer: GpgSigner,
    spec: FeedSpec,
    opts: ImportOptions,
    feed_pub: PathBuf,
    ca_pem: Vec<u8>,
    api_key: String,
    tree: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("portal");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut s = Settings::new(data.clone(), "127.0.0.1:0".parse().unwrap());
        s.database = Some(
            data.join("portal.sqlite")
                .to_str()
                .expect("utf-8 path")
                .to_owned(),
        );
        let portal = rt.block_on(Portal::start(s)).expect("portal starts");
        let signer = GpgSigner::create(
            &dir.path().join("gnupg"),
            "Outpost Test Feed Integrity Key <feed@test.invalid>",
        )
        .unwrap();
        let opts = ImportOptions::in_data_dir(&data);
        std::fs::write(&opts.keyring, signer.export_public().unwrap()).unwrap();
        let feed_pub = SecretKey::generate()
            .unwrap()
            .write_new(&opts.signing_key, "feed test")
            .unwrap();
        let ca_pem = std::fs::read(data.join("ca.pem")).unwrap();
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let mut f = Fixture {
            tree: dir.path().join("feed"),
            dir,
            rt,
            portal,
            data,
            signer,
            spec: FeedSpec::new(5, SCRIPTS).unwrap(),
            opts,
            feed_pub,
            ca_pem,
            api_key: String::new(),
        };
        f.api_key = f.register(&admin);
        f
    }

    fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let cert = Certificate::from_pem(&self.ca_pem).unwrap();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent()
    }

    fn register(&self, admin: &str) -> String {
        let agent = self.agent();
        let tok: serde_json::Value = agent
            .post(format!("{}/api/admin/tokens", self.portal.url))
            .header("authorization", format!("Bearer {admin}"))
            .send_json(serde_json::json!({"site": "berlin", "uses": 1, "ttl_s": 3600}))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let tok = tok["token"].as_str().unwrap().to_owned();
        let reg: serde_json::Value = agent
            .post(format!("{}/api/sensor/register", self.portal.url))
            .header("authorization", format!("Bearer {tok}"))
            .send_json(serde_json::json!({
                "name": "s1", "site": "berlin", "hostname": "s1", "os": "test",
                "board": "qemu-arm64", "hardware_serial": "0", "agent_version": "0.1.0",
                "capabilities": ["scan"],
                "wg_public_key": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
            }))
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        reg["api_key"].as_str().expect("api key").to_owned()
    }

    fn source(&self, fault: Fault) -> Http {
        Http {
            agent: self.agent(),
            url: self.portal.url.clone(),
            key: self.api_key.clone(),
            fault,
            batches: Mutex::new(0),
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Publishes day 0 (generated) or the next day (advanced in place).
    fn publish(&self, day: u32) -> ImportReport {
        if day == 0 {
            generate(&self.tree, &self.spec, 0, Some(&self.signer)).unwrap();
        } else {
            advance(&self.tree, &self.spec, day - 1, Some(&self.signer)).unwrap();
        }
        self.rt
            .block_on(import(
                &self.portal.state.store,
                &self.data,
                &self.tree,
                &self.opts,
                1_757_930_000 + i64::from(day),
            ))
            .expect("import")
    }

    fn sensor_root(&self) -> PathBuf {
        self.dir.path().join("sensor-feeds")
    }

    /// Small batches, so a few hundred files take many requests.
    fn config(&self) -> SyncConfig {
        let mut c = SyncConfig::new(
            self.sensor_root(),
            TrustedKeys::load(&self.feed_pub).unwrap(),
        );
        c.batch_blobs = 40;
        c.batch_bytes = 64 * 1024;
        c
    }
}

fn applied(out: Result<SyncOutcome, SyncError>) -> SyncReport {
    match out {
        Ok(SyncOutcome::Applied(r)) => r,
        other => panic!("expected a release applied, got {other:?}"),
    }
}

fn current_name(root: &Path) -> Option<String> {
    std::fs::read_link(root.join("current"))
        .ok()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
}

/// Every file of the live release is the manifest's, byte for byte.
fn assert_live_is(root: &Path, m: &FeedManifest) {
    let cur = root.join("current");
    for f in &m.files {
        let rel = match f.path.strip_prefix("nvt/") {
            Some(r) => format!("plugins/{r}"),
            None => f.path.clone(),
        };
        let bytes = std::fs::read(cur.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(bytes.len() as u64, f.size, "{rel}");
        assert_eq!(
            outpost_portal::feeds::blobs::sha256_hex(&bytes),
            f.sha256,
            "{rel}"
        );
    }
}

fn no_progress(_: &Progress) {}

#[test]
fn day_one_from_nothing_then_day_two_moves_only_changed_content() {
    let f = Fixture::new();
    let root = f.sensor_root();
    // Nothing published yet: the sensor keeps what it has.
    let src = f.source(Fault::None);
    assert_eq!(
        sync(&f.config(), &src, &mut no_progress).unwrap(),
        SyncOutcome::NoRelease
    );
    assert!(src.asked().is_empty());

    let day0 = f.publish(0);
    let mut seen = Vec::new();
    let r1 = applied(sync(&f.config(), &src, &mut |p: &Progress| seen.push(*p)));
    let blobs0: BTreeMap<&str, u64> = day0
        .manifest
        .files
        .iter()
        .map(|x| (x.sha256.as_str(), x.size))
        .collect();
    // Everything once, the manifest included, in many compressed batches.
    assert_eq!(r1.fetched_blobs, blobs0.len() as u64 + 1);
    assert_eq!(r1.linked_files, 0);
    assert_eq!(r1.previous, None);
    assert!(r1.batches > 5, "{r1:?}");
    assert!(
        r1.wire_bytes < r1.fetched_bytes / 2,
        "compressed on the wire: {r1:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(
        (last.blobs_done, last.bytes_done),
        (last.blobs_total, last.bytes_total)
    );
    assert_eq!(last.blobs_total, blobs0.len() as u64);
    assert_live_is(&root, &day0.manifest);
    let status = inspect(&f.config().current_paths(), std::time::SystemTime::now()).unwrap();
    assert_eq!(status.nasl_count, u64::from(SCRIPTS));
    assert_eq!(status.version(), Some(day0.manifest.plugin_set.as_str()));
    // The same release again: nothing moves.
    let again = f.source(Fault::None);
    assert!(matches!(
        sync(&f.config(), &again, &mut no_progress).unwrap(),
        SyncOutcome::UpToDate { .. }
    ));
    assert!(again.asked().is_empty());

    // Remember an unchanged file's inode and mtime.
    let unchanged = day0
        .manifest
        .files
        .iter()
        .find(|x| x.path.ends_with(".inc"))
        .unwrap();
    let unchanged_path = root
        .join("current")
        .join(unchanged.path.replace("nvt/", "plugins/"));
    let before = std::fs::metadata(&unchanged_path).unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let day1 = f.publish(1);
    let src2 = f.source(Fault::None);
    let r2 = applied(sync(&f.config(), &src2, &mut no_progress));
    let new: BTreeMap<&str, u64> = day1
        .manifest
        .files
        .iter()
        .filter(|x| !blobs0.contains_key(x.sha256.as_str()))
        .map(|x| (x.sha256.as_str(), x.size))
        .collect();
    let manifest_size = std::fs::metadata(
        outpost_portal::feeds::blobs::BlobStore::open(&f.data.join("feeds"))
            .unwrap()
            .path(&day1.release.manifest_sha256),
    )
    .unwrap()
    .len();
    // Exactly the changed content and the manifest, nothing else.
    let asked: BTreeSet<String> = src2.asked().into_iter().collect();
    let mut expect: BTreeSet<String> = new.keys().map(|s| s.to_string()).collect();
    expect.insert(day1.release.manifest_sha256.clone());
    assert_eq!(asked, expect);
    assert_eq!(r2.fetched_blobs, new.len() as u64 + 1);
    assert_eq!(r2.fetched_bytes, new.values().sum::<u64>() + manifest_size);
    assert!(new.len() < blobs0.len() / 4, "a day changes little");
    let unchanged_files = day1
        .manifest
        .files
        .iter()
        .filter(|x| blobs0.contains_key(x.sha256.as_str()))
        .count() as u64;
    assert_eq!(r2.linked_files, unchanged_files);
    assert_eq!(r2.previous.as_deref(), Some(r1.release.as_str()));
    assert_live_is(&root, &day1.manifest);
    // Unchanged files are the same inode with the same mtime: openvas keeps its cache.
    let after = std::fs::metadata(
        root.join("current")
            .join(unchanged.path.replace("nvt/", "plugins/")),
    )
    .unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    // The previous release is kept whole for rollback, and rollback is one switch.
    assert_eq!(current_name(&root).as_deref(), Some(r2.release.as_str()));
    assert_eq!(rollback(&root).unwrap(), r1.release);
    assert_live_is(&root, &day0.manifest);
    assert_eq!(rollback(&root).unwrap(), r2.release);
    assert_live_is(&root, &day1.manifest);
    assert!(!root.join("staging/blobs").exists(), "staging emptied");
}

/// A clock that moves only when slept on: the cap's waits are computed, not timed.
#[derive(Default)]
struct FakeClock(Mutex<Duration>);

impl outpost_feedsync::throttle::Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.0.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

/// With `max_kbit_per_s`, a whole sync from the portal takes as long as its bytes on the
/// wire at the cap (less the bucket's quarter-second burst), across every batch.
#[test]
fn the_bandwidth_cap_paces_the_whole_sync() {
    let f = Fixture::new();
    let day0 = f.publish(0);
    let clock = Arc::new(FakeClock::default());
    let mut cfg = f.config().with_max_kbit_per_s(800);
    cfg.clock = clock.clone();
    let r = applied(sync(&cfg, &f.source(Fault::None), &mut no_progress));
    assert_live_is(&f.sensor_root(), &day0.manifest);
    assert!(r.batches > 5, "{}", r.batches);
    let rate = 100_000u64; // 800 kbit/s in bytes
    let expect = Duration::from_nanos((r.wire_bytes - rate / 4) * 1_000_000_000 / rate);
    let took = *clock.0.lock().unwrap();
    assert_eq!(
        r.throttled, took,
        "the fake clock moves only by the cap's waits"
    );
    assert!(
        took >= expect && took - expect < Duration::from_millis(1),
        "{} bytes on the wire took {took:?}, expected {expect:?}",
        r.wire_bytes
    );
}

#[test]
fn a_cut_sync_resumes_without_fetching_again() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let cut = f.source(Fault::CutAfter(4));
    let err = sync(&f.config(), &cut, &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Source(_)), "{err}");
    assert_eq!(current_name(&root), None, "nothing live after a cut");
    let staged: BTreeSet<String> = std::fs::read_dir(root.join("staging/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    // The manifest and four whole batches (40 blobs or 64 KiB each) at least.
    assert!(staged.len() > 20, "{}", staged.len());

    let resume = f.source(Fault::None);
    let r = applied(sync(&f.config(), &resume, &mut no_progress));
    let asked: BTreeSet<String> = resume.asked().into_iter().collect();
    assert!(
        asked.is_disjoint(&staged),
        "refetched: {:?}",
        asked.intersection(&staged).collect::<Vec<_>>()
    );
    assert_eq!(r.resumed_blobs, staged.len() as u64);
    let distinct = day0.manifest.blobs().len() as u64 + 1;
    assert_eq!(r.resumed_blobs + r.fetched_blobs, distinct);
    assert_live_is(&root, &day0.manifest);
}

#[test]
fn a_blob_tampered_in_transit_is_refused_and_the_old_release_stays_live() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let r1 = applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    f.publish(1);
    let err = sync(&f.config(), &f.source(Fault::Tamper), &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Tampered(_)), "{err}");
    assert!(
        err.to_string().contains("does not match its SHA-256"),
        "{err}"
    );
    assert_eq!(current_name(&root).as_deref(), Some(r1.release.as_str()));
    assert_live_is(&root, &day0.manifest);
}

#[test]
fn tampered_files_on_disk_are_never_taken() {
    let f = Fixture::new();
    let root = f.sensor_root();
    f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    // A cut leaves verified blobs in staging; one of them is then altered on disk.
    // Tiny batches: the manifest, then two blobs a time; cut in the third request.
    let mut tiny = f.config();
    tiny.batch_blobs = 2;
    let err = sync(&tiny, &f.source(Fault::CutAfter(2)), &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Source(_)), "{err}");
    let staged: Vec<PathBuf> = std::fs::read_dir(root.join("staging/blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    let victim = staged
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() != day1.release.manifest_sha256)
        .expect("a staged content blob");
    std::fs::write(victim, b"altered on disk").unwrap();
    // And a file of the live release that day 2 keeps unchanged is altered too.
    let kept = day1
        .manifest
        .files
        .iter()
        .find(|x| x.path.ends_with(".inc") && !x.path.ends_with("plugin_feed_info.inc"))
        .unwrap();
    let live_file = root
        .join("current")
        .join(kept.path.replace("nvt/", "plugins/"));
    std::fs::write(&live_file, b"altered on disk").unwrap();

    let src = f.source(Fault::None);
    let r = applied(sync(&f.config(), &src, &mut no_progress));
    let asked = src.asked();
    let victim_sha = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        asked.contains(&victim_sha),
        "the altered staged blob is fetched again"
    );
    assert!(
        asked.contains(&kept.sha256),
        "the altered live file is fetched, not linked"
    );
    assert_eq!(r.plugin_set, day1.manifest.plugin_set);
    assert_live_is(&root, &day1.manifest);
}

#[test]
fn too_little_space_is_refused_before_fetching() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let mut cfg = f.config();
    cfg.free_space = Box::new(|_| Ok(10_000));
    let src = f.source(Fault::None);
    let err = sync(&cfg, &src, &mut no_progress).unwrap_err();
    let SyncError::NoSpace {
        needed, available, ..
    } = &err
    else {
        panic!("{err}");
    };
    let content: u64 = day0.manifest.files.iter().map(|x| x.size).sum();
    assert!(*needed > content / 2, "{needed} for {content}");
    assert_eq!(*available, 10_000);
    assert!(
        err.to_string()
            .contains(&format!("it needs {needed} bytes, 10000 are free")),
        "{err}"
    );
    // Only the manifest was fetched; nothing went live.
    assert_eq!(src.asked(), vec![day0.release.manifest_sha256.clone()]);
    assert_eq!(current_name(&root), None);
}

#[test]
fn a_manifest_signed_by_another_key_is_refused() {
    let f = Fixture::new();
    f.publish(0);
    let other = SecretKey::from_seed(&[9; 32]);
    let mut cfg = f.config();
    cfg.trusted = TrustedKeys::parse(&other.public_line(""), Path::new("other.pub")).unwrap();
    let src = f.source(Fault::None);
    let err = sync(&cfg, &src, &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Manifest(_)), "{err}");
    assert_eq!(src.asked().len(), 1, "nothing but the manifest is fetched");
    assert_eq!(current_name(&f.sensor_root()), None);
}

#[test]
fn the_portal_refuses_bad_batch_requests() {
    let f = Fixture::new();
    let day0 = f.publish(0);
    let agent = f.agent();
    let post = |key: &str, body: serde_json::Value| {
        let mut r = agent
            .post(format!("{}{BLOBS_PATH}", f.portal.url))
            .header("authorization", format!("Bearer {key}"))
            .send_json(body)
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    let some = &day0.manifest.files[0].sha256;
    assert_eq!(
        post("osk_wrong", serde_json::json!({"sha256": [some]})).0,
        401
    );
    let r = agent
        .get(format!("{}{RELEASE_PATH}", f.portal.url))
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(post(&f.api_key, serde_json::json!({"sha256": []})).0, 400);
    assert_eq!(
        post(&f.api_key, serde_json::json!({"sha256": [some, some]})).0,
        400
    );
    assert_eq!(
        post(
            &f.api_key,
            serde_json::json!({"sha256": ["../../etc/passwd"]})
        )
        .0,
        400
    );
    let (s, body) = post(&f.api_key, serde_json::json!({"sha256": ["0".repeat(64)]}));
    assert_eq!(s, 404);
    assert!(body.contains(&"0".repeat(64)), "{body}");
    let many: Vec<String> = (0..3000).map(|i| format!("{i:064x}")).collect();
    assert_eq!(post(&f.api_key, serde_json::json!({"sha256": many})).0, 413);
}
