//! Feed sync against a real portal on loopback: a synthetic feed (outpost-feedgen, signed
//! with a throwaway GnuPG key) is imported and published, and the sensor side fetches it
//! through the sensor API (`/api/sensor/feed/*`) over HTTPS with a registered sensor's key
//! (the portal and the source are `outpost-feedsync-testkit`'s, shared with the benchmark).

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
    live, rollback, sync, sync_holding, FeedSource, Progress, SourceError, SyncConfig, SyncError,
    SyncOutcome, SyncReport,
};
use outpost_feedsync_testkit::{tamper_first_delta, Http, TestPortal};
use outpost_portal::feeds::ImportReport;
use outpost_wire::feed::{FeedDeltaPair, FeedReleaseInfo, BLOBS_PATH, DELTAS_PATH, RELEASE_PATH};

const SCRIPTS: u32 = 200;

/// What a source may do to an answer on its way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Cut the body after this many successful requests (blobs or deltas), halfway.
    CutAfter(usize),
    /// Alter the first blob of every blob batch (re-framed, so only the hash can tell).
    Tamper,
    /// Replace the first delta of every deltas answer by a valid delta from the same base
    /// to other bytes of the same length: only the rebuilt file's hash can tell.
    TamperDelta,
    /// Rewrite the first delta's base digest: a delta against a file the sensor lacks.
    WrongBase,
    /// A portal without the deltas endpoint.
    NoDeltas,
}

/// The testkit's source with faults.
struct Src {
    inner: Http,
    fault: Fault,
    batches: Mutex<usize>,
    /// Calls of [`FeedSource::deltas`].
    delta_calls: Mutex<usize>,
    /// The portal's blobs, to rebuild a delta's target for [`Fault::TamperDelta`].
    blobs: PathBuf,
}

impl Src {
    fn asked(&self) -> Vec<String> {
        self.inner.asked()
    }

    fn asked_deltas(&self) -> Vec<FeedDeltaPair> {
        self.inner.asked_deltas()
    }

    /// Every target asked for, whole or as a delta.
    fn asked_targets(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.asked().into_iter().collect();
        all.extend(self.asked_deltas().into_iter().map(|p| p.target));
        all
    }

    fn read_entries(body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut r = BatchReader::new(body).unwrap();
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut b = Vec::new();
            r.content().read_to_end(&mut b).unwrap();
            out.push((e.sha256, b));
        }
        out
    }

    fn answer(&self, body: Vec<u8>, deltas: bool) -> Box<dyn Read + Send> {
        let mut n = self.batches.lock().unwrap();
        *n += 1;
        let reframe = |entries: Vec<(String, Vec<u8>)>| -> Box<dyn Read + Send> {
            let wire = encode(entries.iter().map(|(s, b)| (s.as_str(), b.as_slice()))).unwrap();
            Box::new(std::io::Cursor::new(wire))
        };
        match self.fault {
            Fault::CutAfter(k) if *n > k => {
                let half = body.len() / 2;
                Box::new(std::io::Cursor::new(body[..half].to_vec()).chain(Broken))
            }
            Fault::Tamper if !deltas => {
                let mut blobs = Self::read_entries(&body);
                // Same length, other bytes: only the SHA-256 can tell.
                if let Some(x) = blobs.first_mut().and_then(|b| b.1.first_mut()) {
                    *x ^= 0x20;
                }
                reframe(blobs)
            }
            Fault::TamperDelta if deltas => {
                Box::new(std::io::Cursor::new(tamper_first_delta(&body, &self.blobs)))
            }
            Fault::WrongBase if deltas => {
                let mut entries = Self::read_entries(&body);
                if let Some((_, d)) = entries.first_mut() {
                    d[4..36].copy_from_slice(&[0x11; 32]);
                }
                reframe(entries)
            }
            _ => Box::new(std::io::Cursor::new(body)),
        }
    }
}

fn read_all(mut r: Box<dyn Read + Send>) -> Result<Vec<u8>, SourceError> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .map_err(|e| SourceError(e.to_string()))?;
    Ok(v)
}

impl FeedSource for Src {
    fn release(&self) -> Result<Option<FeedReleaseInfo>, SourceError> {
        self.inner.release()
    }

    fn blobs(&self, sha256: &[String]) -> Result<Box<dyn Read + Send>, SourceError> {
        let body = read_all(self.inner.blobs(sha256)?)?;
        Ok(self.answer(body, false))
    }

    fn deltas(&self, pairs: &[FeedDeltaPair]) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        *self.delta_calls.lock().unwrap() += 1;
        if self.fault == Fault::NoDeltas {
            return Ok(None);
        }
        let Some(body) = self.inner.deltas(pairs)? else {
            return Ok(None);
        };
        let body = read_all(body)?;
        Ok(Some(self.answer(body, true)))
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
    tp: TestPortal,
    signer: GpgSigner,
    spec: FeedSpec,
    tree: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let signer = GpgSigner::create(
            &dir.path().join("gnupg"),
            "Outpost Test Feed Integrity Key <feed@test.invalid>",
        )
        .unwrap();
        let tp = TestPortal::start(
            &dir.path().join("portal"),
            &signer.export_public().unwrap(),
            "berlin",
            Duration::from_secs(60),
        );
        Fixture {
            tree: dir.path().join("feed"),
            dir,
            tp,
            signer,
            spec: FeedSpec::new(5, SCRIPTS).unwrap(),
        }
    }

    fn source(&self, fault: Fault) -> Src {
        Src {
            inner: self.tp.source(),
            fault,
            batches: Mutex::new(0),
            delta_calls: Mutex::new(0),
            blobs: self.tp.data.join("feeds/blobs"),
        }
    }

    /// Publishes day 0 (generated) or the next day (advanced in place).
    fn publish(&self, day: u32) -> ImportReport {
        if day == 0 {
            generate(&self.tree, &self.spec, 0, Some(&self.signer)).unwrap();
        } else {
            advance(&self.tree, &self.spec, day - 1, Some(&self.signer)).unwrap();
        }
        self.tp.import(&self.tree, 1_757_930_000 + i64::from(day))
    }

    fn sensor_root(&self) -> PathBuf {
        self.dir.path().join("sensor-feeds")
    }

    /// Small batches, so a few hundred files take many requests.
    fn config(&self) -> SyncConfig {
        let mut c = self.tp.config(&self.sensor_root());
        c.batch_blobs = 40;
        c.batch_bytes = 64 * 1024;
        c
    }

    fn blob(&self, sha: &str) -> Vec<u8> {
        std::fs::read(self.tp.blob_path(sha)).unwrap()
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
        outpost_portal::feeds::blobs::BlobStore::open(&f.tp.data.join("feeds"))
            .unwrap()
            .path(&day1.release.manifest_sha256),
    )
    .unwrap()
    .len();
    // Exactly the changed content and the manifest, nothing else, whole or as deltas
    // (each delta against the live release's version of the same path).
    let mut expect: BTreeSet<String> = new.keys().map(|s| s.to_string()).collect();
    expect.insert(day1.release.manifest_sha256.clone());
    assert_eq!(src2.asked_targets(), expect);
    let deltas = src2.asked_deltas();
    assert!(
        deltas
            .iter()
            .any(|p| p.target == day1.release.manifest_sha256
                && p.base == day0.release.manifest_sha256),
        "the manifest comes as a delta against the live one"
    );
    let old_by_path: BTreeMap<&str, &str> = day0
        .manifest
        .files
        .iter()
        .map(|x| (x.path.as_str(), x.sha256.as_str()))
        .collect();
    for p in deltas
        .iter()
        .filter(|p| p.target != day1.release.manifest_sha256)
    {
        let file = day1
            .manifest
            .files
            .iter()
            .find(|x| x.sha256 == p.target)
            .unwrap();
        assert_eq!(old_by_path.get(file.path.as_str()), Some(&p.base.as_str()));
    }
    assert_eq!(r2.fetched_blobs + r2.delta_blobs, new.len() as u64 + 1);
    assert_eq!(
        r2.fetched_bytes + r2.delta_bytes,
        new.values().sum::<u64>() + manifest_size
    );
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

/// A sensor holds its scans just before the switch: the hook sees the new release built
/// and durable beside the live one, `current` still the old; a release that failed to
/// load here is declined and the live one stays; rollback gives the restored release's
/// changed files a new mtime (so openvas parses them again) and leaves the others alone.
#[test]
fn the_switch_waits_for_the_hold_a_failed_release_is_declined_and_rollback_renews_changed_files() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let src = f.source(Fault::None);
    let r1 = applied(sync(&f.config(), &src, &mut no_progress));
    let live1 = live(&root).expect("a live release");
    assert_eq!(live1.name, r1.release);
    assert_eq!(live1.vt_count, day0.manifest.vt_count);
    assert_eq!(live1.plugin_set, day0.manifest.plugin_set);
    assert!(!live1.has_previous);

    let day1 = f.publish(1);
    let mut held = Vec::new();
    let r2 = match sync_holding(&f.config(), &src, &mut no_progress, &mut |name| {
        // Built, verified and on disk; the scanner still reads the old release.
        assert!(root.join("releases").join(name).join("plugins").is_dir());
        held.push((name.to_owned(), current_name(&root)));
    }) {
        Ok(SyncOutcome::Applied(r)) => r,
        other => panic!("expected the next day applied, got {other:?}"),
    };
    assert_eq!(held, vec![(r2.release.clone(), Some(r1.release.clone()))]);
    assert_live_is(&root, &day1.manifest);
    assert!(live(&root).unwrap().has_previous);

    // Back to day 0: the files day 1 changed get a new mtime, the rest keep theirs.
    let changed: Vec<&str> = day0
        .manifest
        .files
        .iter()
        .filter(|x| {
            day1.manifest
                .files
                .iter()
                .find(|y| y.path == x.path)
                .is_none_or(|y| y.sha256 != x.sha256)
        })
        .map(|x| x.path.as_str())
        .collect();
    assert!(!changed.is_empty() && changed.len() < day0.manifest.files.len());
    let tree = |p: &str| {
        root.join("releases")
            .join(&r1.release)
            .join(p.replace("nvt/", "plugins/"))
    };
    let mtime = |p: &str| std::fs::metadata(tree(p)).unwrap().modified().unwrap();
    let unchanged = day0
        .manifest
        .files
        .iter()
        .find(|x| !changed.contains(&x.path.as_str()))
        .unwrap();
    let before_changed = mtime(changed[0]);
    let before_unchanged = mtime(&unchanged.path);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rollback(&root).unwrap(), r1.release);
    assert_live_is(&root, &day0.manifest);
    for p in &changed {
        assert!(mtime(p) > before_changed, "{p} was not renewed");
    }
    assert_eq!(mtime(&unchanged.path), before_unchanged);

    // The portal still offers day 1, which "failed to load" here: declined, nothing moves.
    let mut cfg = f.config();
    cfg.skip_release = Some(r2.release.clone());
    let asked = src.asked().len();
    match sync(&cfg, &src, &mut no_progress) {
        Ok(SyncOutcome::Declined { release }) => assert_eq!(release, r2.release),
        other => panic!("expected the failed release declined, got {other:?}"),
    }
    assert_eq!(src.asked().len(), asked, "nothing fetched");
    assert_eq!(current_name(&root).as_deref(), Some(r1.release.as_str()));
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

    // The next day's deltas are paced the same way (64 kbit/s: 8,000 bytes a second).
    f.publish(1);
    let clock = Arc::new(FakeClock::default());
    let mut cfg = f.config().with_max_kbit_per_s(64);
    cfg.clock = clock.clone();
    let r = applied(sync(&cfg, &f.source(Fault::None), &mut no_progress));
    assert!(r.delta_blobs > 0, "{r:?}");
    let rate = 8_000u64;
    assert!(r.wire_bytes > rate / 4, "{r:?}");
    let expect = Duration::from_nanos((r.wire_bytes - rate / 4) * 1_000_000_000 / rate);
    let took = *clock.0.lock().unwrap();
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
    // Tiny batches: the manifest's delta, then two deltas a time; cut in the third request.
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
    let asked = src.asked_targets();
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
    let agent = f.tp.agent();
    let post = |key: &str, body: serde_json::Value| {
        let mut r = agent
            .post(format!("{}{BLOBS_PATH}", f.tp.url()))
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
        .get(format!("{}{RELEASE_PATH}", f.tp.url()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        post(&f.tp.api_key, serde_json::json!({"sha256": []})).0,
        400
    );
    assert_eq!(
        post(&f.tp.api_key, serde_json::json!({"sha256": [some, some]})).0,
        400
    );
    assert_eq!(
        post(
            &f.tp.api_key,
            serde_json::json!({"sha256": ["../../etc/passwd"]})
        )
        .0,
        400
    );
    let (s, body) = post(
        &f.tp.api_key,
        serde_json::json!({"sha256": ["0".repeat(64)]}),
    );
    assert_eq!(s, 404);
    assert!(body.contains(&"0".repeat(64)), "{body}");
    let many: Vec<String> = (0..3000).map(|i| format!("{i:064x}")).collect();
    assert_eq!(
        post(&f.tp.api_key, serde_json::json!({"sha256": many})).0,
        413
    );
}

/// What fetching `shas` whole costs on the wire, in batches as the portal compresses them
/// (one per blob: an upper bound close to what the sync without deltas read).
fn whole_wire(f: &Fixture, shas: &BTreeSet<String>) -> u64 {
    shas.iter()
        .map(|s| {
            let b = f.blob(s);
            encode([(s.as_str(), &b[..])].into_iter()).unwrap().len() as u64
        })
        .sum()
}

/// Issue #11: a one-day change moves the changed bytes, not the changed files: the
/// rewritten Notus files, `sha256sums` lists and the manifest come as deltas against the
/// live release, and only files without an old version come whole.
#[test]
fn a_one_day_delta_moves_little_more_than_what_changed() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    let src = f.source(Fault::None);
    let r = applied(sync(&f.config(), &src, &mut no_progress));
    assert_live_is(&root, &day1.manifest);

    let old: BTreeSet<&str> = day0
        .manifest
        .files
        .iter()
        .map(|x| x.sha256.as_str())
        .collect();
    let old_paths: BTreeSet<&str> = day0
        .manifest
        .files
        .iter()
        .map(|x| x.path.as_str())
        .collect();
    let mut changed: BTreeSet<String> = day1
        .manifest
        .files
        .iter()
        .filter(|x| !old.contains(x.sha256.as_str()))
        .map(|x| x.sha256.clone())
        .collect();
    changed.insert(day1.release.manifest_sha256.clone());
    // Files new by path (no old version to patch) are the only ones fetched whole.
    let new_paths: BTreeSet<String> = day1
        .manifest
        .files
        .iter()
        .filter(|x| !old_paths.contains(x.path.as_str()))
        .map(|x| x.sha256.clone())
        .collect();
    let whole: BTreeSet<String> = src.asked().into_iter().collect();
    assert!(
        whole.is_superset(&new_paths),
        "files without an old version whole"
    );
    // Beyond those, only files whose delta the portal declined (not smaller: the
    // signatures, a tiny `plugin_feed_info.inc`) come whole, after asking.
    let asked_deltas: BTreeSet<String> = src.asked_deltas().into_iter().map(|p| p.target).collect();
    for sha in whole.difference(&new_paths) {
        assert!(asked_deltas.contains(sha), "{sha} not tried as a delta");
        assert!(f.blob(sha).len() < 4096, "{sha} is small");
    }
    let via_delta: BTreeSet<String> = changed.difference(&whole).cloned().collect();
    assert_eq!(r.delta_blobs, via_delta.len() as u64);
    for big in ["nvt/sha256sums", "notus/advisories/debian.notus"] {
        let sha = &day1
            .manifest
            .files
            .iter()
            .find(|x| x.path == big)
            .unwrap()
            .sha256;
        assert!(via_delta.contains(sha), "{big} comes as a delta");
    }

    // On the wire: the whole changed files compressed, against what the sync read.
    let before = whole_wire(&f, &changed);
    let deltas_whole = whole_wire(&f, &via_delta);
    let new_whole = whole_wire(&f, &whole);
    eprintln!(
        "day 2: {} bytes on the wire; {} whole before ({} for the files now patched, {} for those fetched whole)",
        r.wire_bytes, before, deltas_whole, new_whole
    );
    assert!(
        r.wire_bytes * 5 < before,
        "{} bytes on the wire, {before} to fetch the changed files whole",
        r.wire_bytes
    );
    // The deltas cost a small part of their files compressed: per file a day changes a
    // line or an advisory. What is left beyond the whole files is the deltas.
    let delta_wire = r.wire_bytes - new_whole.min(r.wire_bytes);
    assert!(
        delta_wire * 5 < deltas_whole,
        "{delta_wire} bytes of deltas for {deltas_whole} bytes of whole files"
    );
}

#[test]
fn a_tampered_delta_is_refused_and_the_old_release_stays_live() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let r1 = applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    f.publish(1);
    let src = f.source(Fault::TamperDelta);
    let err = sync(&f.config(), &src, &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Tampered(_)), "{err}");
    assert!(
        err.to_string()
            .contains("rebuilt from the portal's delta does not match its SHA-256"),
        "{err}"
    );
    // The first delta is the manifest's: nothing else was asked for.
    assert_eq!(src.asked_deltas().len(), 1);
    assert!(src.asked().is_empty());
    assert_eq!(current_name(&root).as_deref(), Some(r1.release.as_str()));
    assert_live_is(&root, &day0.manifest);
    let staged: Vec<String> = std::fs::read_dir(root.join("staging/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(staged.is_empty(), "nothing of it kept: {staged:?}");
    // A clean portal afterwards brings the release.
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
}

#[test]
fn a_delta_against_a_base_the_sensor_does_not_hold_is_refused() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    let r1 = applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    f.publish(1);
    let err = sync(&f.config(), &f.source(Fault::WrongBase), &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Tampered(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("is against {}", "11".repeat(32))),
        "{err}"
    );
    assert_eq!(current_name(&root).as_deref(), Some(r1.release.as_str()));
    assert_live_is(&root, &day0.manifest);
}

/// A live file that no longer matches its manifest is no base: the sensor fetches its
/// next version whole instead of patching what it cannot vouch for.
#[test]
fn a_damaged_base_falls_back_to_the_whole_file() {
    let f = Fixture::new();
    let root = f.sensor_root();
    f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    let path = "notus/advisories/debian.notus";
    std::fs::write(root.join("current").join(path), b"damaged on the card").unwrap();
    let target = &day1
        .manifest
        .files
        .iter()
        .find(|x| x.path == path)
        .unwrap()
        .sha256;
    let src = f.source(Fault::None);
    let r = applied(sync(&f.config(), &src, &mut no_progress));
    assert!(src.asked().contains(target), "fetched whole");
    assert!(
        !src.asked_deltas().iter().any(|p| &p.target == target),
        "not patched"
    );
    assert!(r.delta_blobs > 0, "the other files still come as deltas");
    assert_live_is(&root, &day1.manifest);
}

/// A portal that declines a delta (here: it no longer holds the base) is answered by
/// fetching the file whole.
#[test]
fn a_delta_the_portal_declines_is_fetched_whole() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    let path = "nvt/sha256sums";
    let old = &day0
        .manifest
        .files
        .iter()
        .find(|x| x.path == path)
        .unwrap()
        .sha256;
    let new = &day1
        .manifest
        .files
        .iter()
        .find(|x| x.path == path)
        .unwrap()
        .sha256;
    std::fs::remove_file(f.tp.blob_path(old)).unwrap();
    let src = f.source(Fault::None);
    applied(sync(&f.config(), &src, &mut no_progress));
    assert!(src.asked_deltas().iter().any(|p| &p.target == new));
    assert!(src.asked().contains(new), "then fetched whole");
    assert_live_is(&root, &day1.manifest);
}

#[test]
fn a_cut_delta_sync_resumes_without_fetching_again() {
    let f = Fixture::new();
    let root = f.sensor_root();
    f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    // Two deltas a request: the manifest's, then two more whole requests, then a cut.
    let mut tiny = f.config();
    tiny.batch_blobs = 2;
    let cut = f.source(Fault::CutAfter(3));
    let err = sync(&tiny, &cut, &mut no_progress).unwrap_err();
    assert!(matches!(err, SyncError::Source(_)), "{err}");
    assert!(cut.asked().is_empty(), "cut among the deltas");
    let staged: BTreeSet<String> = std::fs::read_dir(root.join("staging/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(
        staged.len() >= 5,
        "the manifest and four rebuilt: {staged:?}"
    );
    assert!(staged.contains(&day1.release.manifest_sha256));

    let resume = f.source(Fault::None);
    let mut seen = Vec::new();
    let r = applied(sync(&tiny, &resume, &mut |p: &Progress| seen.push(*p)));
    let asked = resume.asked_targets();
    assert!(
        asked.is_disjoint(&staged),
        "refetched: {:?}",
        asked.intersection(&staged).collect::<Vec<_>>()
    );
    assert_eq!(r.resumed_blobs, staged.len() as u64);
    assert!(r.delta_blobs > 0);
    let last = seen.last().unwrap();
    assert_eq!(
        (last.blobs_done, last.bytes_done),
        (last.blobs_total, last.bytes_total)
    );
    assert_live_is(&root, &day1.manifest);
}

#[test]
fn the_portal_refuses_bad_delta_requests() {
    let f = Fixture::new();
    let day0 = f.publish(0);
    let agent = f.tp.agent();
    let post = |key: &str, body: serde_json::Value| {
        let mut r = agent
            .post(format!("{}{DELTAS_PATH}", f.tp.url()))
            .header("authorization", format!("Bearer {key}"))
            .send_json(body)
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().with_config().read_to_vec().unwrap_or_default(),
        )
    };
    let a = &day0.manifest.files[0].sha256;
    let b = &day0.manifest.files[1].sha256;
    let pair = |base: &str, target: &str| serde_json::json!({"base": base, "target": target});
    assert_eq!(
        post("osk_wrong", serde_json::json!({"deltas": [pair(a, b)]})).0,
        401
    );
    assert_eq!(
        post(&f.tp.api_key, serde_json::json!({"deltas": []})).0,
        400
    );
    assert_eq!(
        post(
            &f.tp.api_key,
            serde_json::json!({"deltas": [pair(a, b), pair(b, b)]})
        )
        .0,
        400
    );
    assert_eq!(
        post(
            &f.tp.api_key,
            serde_json::json!({"deltas": [pair("../x", b)]})
        )
        .0,
        400
    );
    let (s, body) = post(
        &f.tp.api_key,
        serde_json::json!({"deltas": [pair(a, &"0".repeat(64))]}),
    );
    assert_eq!(s, 404);
    assert!(String::from_utf8_lossy(&body).contains(&"0".repeat(64)));
    // An unknown base is declined: an empty batch, the sensor fetches whole.
    let (s, body) = post(
        &f.tp.api_key,
        serde_json::json!({"deltas": [pair(&"0".repeat(64), b)]}),
    );
    assert_eq!(s, 200);
    assert_eq!(BatchReader::new(&body[..]).unwrap().remaining(), 0);
    // A known base: a delta that rebuilds the target.
    let (s, body) = post(&f.tp.api_key, serde_json::json!({"deltas": [pair(a, b)]}));
    assert_eq!(s, 200);
    let n = BatchReader::new(&body[..]).unwrap().remaining();
    assert!(n <= 1, "{n}");
    let many: Vec<serde_json::Value> = (0..3000).map(|i| pair(a, &format!("{i:064x}"))).collect();
    assert_eq!(
        post(&f.tp.api_key, serde_json::json!({"deltas": many})).0,
        413
    );
}

/// A portal that predates deltas: the manifest and every changed file come whole, and
/// after the manifest's refusal and one more try the sensor stops asking.
#[test]
fn a_portal_without_deltas_serves_every_file_whole() {
    let f = Fixture::new();
    let root = f.sensor_root();
    let day0 = f.publish(0);
    applied(sync(&f.config(), &f.source(Fault::None), &mut no_progress));
    let day1 = f.publish(1);
    let src = f.source(Fault::NoDeltas);
    let r = applied(sync(&f.config(), &src, &mut no_progress));
    assert_eq!(r.delta_blobs, 0);
    let old: BTreeSet<&str> = day0
        .manifest
        .files
        .iter()
        .map(|x| x.sha256.as_str())
        .collect();
    let mut changed: BTreeSet<String> = day1
        .manifest
        .files
        .iter()
        .filter(|x| !old.contains(x.sha256.as_str()))
        .map(|x| x.sha256.clone())
        .collect();
    changed.insert(day1.release.manifest_sha256.clone());
    assert_eq!(src.asked().into_iter().collect::<BTreeSet<_>>(), changed);
    assert_eq!(
        *src.delta_calls.lock().unwrap(),
        2,
        "the manifest's, then one batch"
    );
    assert_live_is(&root, &day1.manifest);
}
