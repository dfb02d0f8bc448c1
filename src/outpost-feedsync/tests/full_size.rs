//! The sync at the real feed's size: 136,302 NASL scripts, 136 includes, the nine Notus
//! advisory files and 505 product files of the synthetic feed (outpost-feedgen, the trees
//! cached under `build/feed-bench/`, shared with `scripts/bench feed`), through a real
//! portal over HTTPS on loopback. One test, so the portal imports each day once:
//! - too little space is refused before any content moves, naming the bytes;
//! - day 0 from nothing: every file arrives, checked, compressed on the wire;
//! - the next day moves only what changed (in-file deltas), in bytes; altered in transit
//!   it is refused and day 0 stays live; a sync cut after its first request resumes
//!   without asking for anything it already has, and a file damaged on the card is
//!   fetched again, not linked;
//! - the previous release is kept for rollback;
//! - at this size too, the portal refuses an unsigned, a wrongly signed, a tampered, an
//!   incomplete and an over-complete tree, naming the problem, and publishes nothing.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::FeedSpec;
use outpost_feedsync::{sync, FeedSource, Progress, SourceError, SyncError, SyncOutcome};
use outpost_feedsync_testkit::trees::{cache_dir, cached};
use outpost_feedsync_testkit::{tamper_first_delta, Http, TestPortal};
use outpost_portal::feeds::openpgp::SigError;
use outpost_portal::feeds::{ImportError, TreeProblem};
use outpost_wire::feed::{FeedDeltaPair, FeedReleaseInfo};

const SEED: u64 = 5;
const FULL: u32 = 136_302;

/// The testkit's source, cutting every answer after `cut_after` requests halfway, or
/// altering the first delta of every deltas answer (`tamper`, from the portal's `blobs`).
struct Cut {
    inner: Http,
    cut_after: Option<usize>,
    tamper: Option<std::path::PathBuf>,
    answers: Mutex<usize>,
}

impl Cut {
    fn source(inner: Http, cut_after: Option<usize>) -> Cut {
        Cut {
            inner,
            cut_after,
            tamper: None,
            answers: Mutex::new(0),
        }
    }

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
        match (self.inner.deltas(pairs)?, &self.tamper) {
            (Some(mut b), Some(blobs)) => {
                let mut all = Vec::new();
                b.read_to_end(&mut all)
                    .map_err(|e| SourceError(e.to_string()))?;
                Ok(Some(Box::new(std::io::Cursor::new(tamper_first_delta(
                    &all, blobs,
                )))))
            }
            (Some(b), None) => self.answer(b).map(Some),
            (None, _) => Ok(None),
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
    // Altered in transit (the manifest's delta, the first thing asked): refused, day 0
    // stays live, nothing of it kept.
    let tampered = Cut {
        tamper: Some(tp.data.join("feeds/blobs")),
        ..Cut::source(tp.source(), None)
    };
    let e = sync(&cfg, &tampered, &mut |_: &Progress| {}).unwrap_err();
    assert!(matches!(e, SyncError::Tampered(_)), "{e}");
    assert!(
        e.to_string()
            .contains("rebuilt from the portal's delta does not match its SHA-256"),
        "{e}"
    );
    assert!(live.ends_with(&r0.release), "day 0 stays live");
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        live,
        "day 0 stays live"
    );
    let cut = Cut::source(tp.source(), Some(1));
    let e = sync(&cfg, &cut, &mut |_: &Progress| {}).unwrap_err();
    assert!(e.to_string().contains("cut"), "{e}");
    assert!(
        live.ends_with(&r0.release),
        "day 0 stays live after the cut"
    );
    let first = targets(&cut.inner);
    let manifest = day1.release.manifest_sha256.clone();
    assert_eq!(first[0], manifest, "the manifest comes first");
    // A file day 1 keeps unchanged is damaged on the card meanwhile: fetched, not linked.
    let kept = m1
        .files
        .iter()
        .find(|f| {
            f.path.ends_with(".inc")
                && !f.path.ends_with("plugin_feed_info.inc")
                && old.contains(&(f.path.as_str(), f.sha256.as_str()))
        })
        .expect("an unchanged include");
    let on_card = |release: &std::path::Path| release.join(kept.path.replace("nvt/", "plugins/"));
    std::fs::write(on_card(&root.join("current")), b"altered on the card").unwrap();
    let resumed = Cut::source(tp.source(), None);
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
    assert_eq!(r1.linked_files as usize, m1.files.len() - changed.len() - 1);
    assert!(
        targets(&resumed.inner).contains(&kept.sha256),
        "the damaged file is fetched again"
    );
    assert_eq!(
        std::fs::read(on_card(&root.join("current"))).unwrap(),
        std::fs::read(tp.blob_path(&kept.sha256)).unwrap(),
        "day 1 carries the file as published"
    );
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

    refusals(&tp, &trees.day1, dir.path());
}

/// Bad trees at full size, each a hard-linked copy of day 1 with one thing wrong (a file
/// is replaced, never written through the link: the cached tree stays intact).
fn refusals(tp: &TestPortal, day1: &std::path::Path, tmp: &std::path::Path) {
    let published = tp.releases();
    let tree = tmp.join("bad");
    let st = std::process::Command::new("cp")
        .arg("-al")
        .arg(day1)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    let replace = |rel: &str, bytes: &[u8]| {
        let p = tree.join(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).unwrap();
    };
    let refused = |what: &str| -> ImportError {
        match tp.try_import(&tree, 1_757_930_000 + 2 * 86_400) {
            Err(e) => e,
            Ok(r) => panic!("{what}: imported as {}", r.release.manifest_sha256),
        }
    };
    let sums = std::fs::read(tree.join("nvt/sha256sums")).unwrap();
    let victim = String::from_utf8_lossy(&sums)
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, p)| format!("nvt/{p}")))
        .find(|p| p.ends_with(".nasl") && p.matches('/').count() > 1)
        .unwrap();

    // Unsigned.
    let sig = std::fs::read(tree.join("nvt/sha256sums.asc")).unwrap();
    std::fs::remove_file(tree.join("nvt/sha256sums.asc")).unwrap();
    let e = refused("unsigned");
    assert!(
        matches!(&e, ImportError::Unsigned { list } if list == "nvt/sha256sums"),
        "{e}"
    );

    // Signed by a key the operator never trusted.
    let mallory = GpgSigner::create(&tmp.join("gnupg-other"), "Mallory <m@test.invalid>").unwrap();
    mallory
        .sign(
            &tree.join("nvt/sha256sums"),
            &tree.join("nvt/sha256sums.asc"),
        )
        .unwrap();
    let e = refused("wrongly signed");
    assert!(
        matches!(&e, ImportError::Signature { list, reason: SigError::UnknownKey(_) } if list == "nvt/sha256sums"),
        "{e}"
    );
    replace("nvt/sha256sums.asc", &sig);

    // Tampered: one byte of one script among 136,302.
    let original = std::fs::read(tree.join(&victim)).unwrap();
    let mut altered = original.clone();
    altered[100] ^= 0x20;
    replace(&victim, &altered);
    let e = refused("tampered");
    assert!(
        matches!(&e, ImportError::Tree(p) if p == &[TreeProblem::Altered { path: victim.clone(), list: "nvt/sha256sums".into() }]),
        "{e}"
    );
    replace(&victim, &original);

    // Incomplete: one listed script gone.
    std::fs::remove_file(tree.join(&victim)).unwrap();
    let e = refused("incomplete");
    assert!(
        e.to_string().contains(&format!(
            "{victim} is listed in nvt/sha256sums but missing from the tree"
        )),
        "{e}"
    );
    replace(&victim, &original);

    // Over-complete: one script no signed list names.
    replace("nvt/gb_not_listed.nasl", b"exit(0);\n");
    let e = refused("over-complete");
    assert!(
        matches!(&e, ImportError::Tree(p) if p == &[TreeProblem::Unlisted("nvt/gb_not_listed.nasl".into())]),
        "{e}"
    );
    assert_eq!(tp.releases(), published, "a refused tree publishes nothing");
}
