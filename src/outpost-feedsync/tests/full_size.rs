//! The sync at the real feed's size: 136,302 NASL scripts, 136 includes, the nine Notus
//! advisory files and 505 product files of the synthetic feed (outpost-feedgen, the trees
//! cached under `build/feed-bench/`, shared with `scripts/bench feed`), through a real
//! portal over HTTPS on loopback. One test, so the portal imports each day once:
//! - too little space is refused before any content moves, naming the bytes;
//! - day 0 from nothing: every file arrives, checked, compressed on the wire;
//! - the next day moves only what changed (in-file deltas), in bytes, and a sync cut
//!   after its first request resumes without asking for anything it already has;
//! - the previous release is kept for rollback.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use outpost_feedgen::FeedSpec;
use outpost_feedsync::{sync, FeedSource, Progress, SourceError, SyncError, SyncOutcome};
use outpost_feedsync_testkit::trees::{cache_dir, cached};
use outpost_feedsync_testkit::{Http, TestPortal};
use outpost_wire::feed::{FeedDeltaPair, FeedReleaseInfo};

const SEED: u64 = 5;
const FULL: u32 = 136_302;

/// The testkit's source, cutting every answer after `cut_after` requests halfway.
struct Cut {
    inner: Http,
    cut_after: Option<usize>,
    answers: Mutex<usize>,
}

impl Cut {
    fn answer(&self, body: Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>, SourceError> {
        let mut n = self.answers.lock().unwrap();
        *n += 1;
        match self.cut_after {
            Some(k) if *n > k => {
                let mut all = Vec::new();
                let mut body = body;
                body.read_to_end(&mut all)
                    .map_err(|e| SourceError(e.to_string()))?;
                all.truncate(all.len() / 2);
                Ok(Box::new(std::io::Cursor::new(all).chain(Reset)))
            }
            _ => Ok(body),
        }
    }
}

struct Reset;

impl Read for Reset {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        ))
    }
}

impl FeedSource for Cut {
    fn release(&self) -> Result<Option<FeedReleaseInfo>, SourceError> {
        self.inner.release()
    }
    fn blobs(&self, sha256: &[String]) -> Result<Box<dyn Read + Send>, SourceError> {
        self.answer(self.inner.blobs(sha256)?)
    }
    fn deltas(&self, pairs: &[FeedDeltaPair]) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        match self.inner.deltas(pairs)? {
            Some(b) => self.answer(b).map(Some),
            None => Ok(None),
        }
    }
}

fn targets(src: &Http) -> Vec<String> {
    let mut all = src.asked();
    all.extend(src.asked_deltas().into_iter().map(|p| p.target));
    all
}

#[test]
fn the_full_feed_syncs_and_the_next_day_moves_only_what_changed() {
    let spec = FeedSpec::full(SEED);
    let trees = cached(&cache_dir(SEED, FULL), &spec);
    let dir = tempfile::tempdir().unwrap();
    let tp = TestPortal::start(
        &dir.path().join("portal"),
        &trees.signer.export_public().unwrap(),
        "berlin",
        Duration::from_secs(600),
    );
    let day0 = tp.import(&trees.day0, 1_757_930_000);
    let m0 = &day0.manifest;
    assert_eq!(m0.nasl_scripts, u64::from(FULL));
    let root = dir.path().join("sensor-feeds");
    let content0: u64 = m0.files.iter().map(|f| f.size).sum();
    assert!(
        content0 > 500 << 20,
        "the real feed's size: {content0} bytes"
    );

    // A card too small: refused before any content moves, with the bytes named.
    let mut small = tp.config(&root);
    small.free_space = Box::new(|_| Ok(100 << 20));
    let src = tp.source();
    match sync(&small, &src, &mut |_: &Progress| {}) {
        Err(e @ SyncError::NoSpace { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("not enough space") && text.contains("104857600 are free"),
                "{text}"
            );
        }
        other => panic!("a full card must be refused: {other:?}"),
    }
    assert_eq!(src.asked().len(), 1, "only the manifest was fetched");
    assert!(!root.join("current").exists());

    // Day 0 from nothing.
    let cfg = tp.config(&root);
    let r0 = match sync(&cfg, &src, &mut |_: &Progress| {}).unwrap() {
        SyncOutcome::Applied(r) => r,
        other => panic!("day 0 not applied: {other:?}"),
    };
    assert_eq!(r0.files, m0.files.len() as u64);
    assert_eq!(r0.vt_count, m0.vt_count);
    // The manifest came in the refused run and was kept; the rest once, compressed.
    let distinct: BTreeSet<&str> = m0.files.iter().map(|f| f.sha256.as_str()).collect();
    assert_eq!(r0.fetched_blobs, distinct.len() as u64);
    assert!(
        r0.wire_bytes < content0 / 4,
        "{} on the wire for {content0} bytes of content",
        r0.wire_bytes
    );
    let live = std::fs::read_link(root.join("current")).unwrap();
    assert!(live.ends_with(&r0.release));

    // Day 1, cut after the first answer, then resumed.
    let day1 = tp.import(&trees.day1, 1_757_930_000 + 86_400);
    let m1 = &day1.manifest;
    let old: BTreeSet<(&str, &str)> = m0
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let changed: Vec<_> = m1
        .files
        .iter()
        .filter(|f| !old.contains(&(f.path.as_str(), f.sha256.as_str())))
        .collect();
    let changed_bytes: u64 = changed.iter().map(|f| f.size).sum();
    assert!(
        changed.len() < 200 && changed_bytes > 40 << 20,
        "a day rewrites a few files, big ones among them: {} files, {changed_bytes} bytes",
        changed.len()
    );
    let cut = Cut {
        inner: tp.source(),
        cut_after: Some(1),
        answers: Mutex::new(0),
    };
    let e = sync(&cfg, &cut, &mut |_: &Progress| {}).unwrap_err();
    assert!(e.to_string().contains("cut"), "{e}");
    assert!(
        live.ends_with(&r0.release),
        "day 0 stays live after the cut"
    );
    let first = targets(&cut.inner);
    let manifest = day1.release.manifest_sha256.clone();
    assert_eq!(first[0], manifest, "the manifest comes first");
    let resumed = Cut {
        inner: tp.source(),
        cut_after: None,
        answers: Mutex::new(0),
    };
    let r1 = match sync(&cfg, &resumed, &mut |_: &Progress| {}).unwrap() {
        SyncOutcome::Applied(r) => r,
        other => panic!("day 1 not applied: {other:?}"),
    };
    // The manifest arrived (rebuilt from its delta) before the cut: not asked again.
    assert!(r1.resumed_blobs >= 1, "{r1:?}");
    assert!(
        !targets(&resumed.inner).contains(&manifest),
        "the resumed sync asks again for the manifest"
    );
    // Only the changed content moved, as deltas: a small fraction of its bytes.
    assert_eq!(r1.linked_files as usize, m1.files.len() - changed.len());
    assert!(r1.delta_blobs > 0);
    assert!(
        r1.wire_bytes < changed_bytes / 100,
        "{} bytes on the wire for {changed_bytes} bytes of changed files",
        r1.wire_bytes
    );
    assert_eq!(r1.previous.as_deref(), Some(r0.release.as_str()));
    let now = std::fs::read_link(root.join("current")).unwrap();
    assert!(now.ends_with(&r1.release));
    let prev = std::fs::read_link(root.join("previous")).unwrap();
    assert!(prev.ends_with(&r0.release), "day 0 kept for rollback");
}
