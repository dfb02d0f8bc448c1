//! `scripts/bench feed [SCRIPTS]`: a sensor's feed sync through a real portal over HTTPS on
//! loopback, for the synthetic feed (outpost-feedgen, full size by default), against
//! `rsync -az` between the same two trees through an rsync daemon on loopback (how
//! `greenbone-feed-sync` moves the feed): the anchor for the daily delta.
//!
//! Generated trees are cached under `build/feed-bench/` keyed by seed, size and day (with
//! the throwaway GnuPG home that signed them; `outpost_feedsync_testkit::trees`, shared
//! with the full-size test), so reruns skip generation.
//!
//! Prints `metric=value` lines:
//! - `feed_full_wire_bytes`, `feed_full_sync_s`: day 0 from nothing;
//! - `feed_delta_wire_bytes`, `feed_delta_sync_s`: day 0 to day 1 (in-file deltas for the
//!   changed files and the manifest, computed by the portal on this first ask: its delta
//!   cache is cold);
//! - `rsync_delta_wire_bytes`: rsync's total bytes sent and received for the same change;
//! - `feed_apply_s`: in the day-1 sync, from the last batch fetched (every blob on disk) to
//!   `current` switched (the sync's return): tree assembly (hard links, new files) and the
//!   switch;
//! - `feed_delta_vs_rsync_ratio`: the goal is at most 0.5.
//!
//! The wire bytes are those of the compressed batch and delta bodies the sensor reads (what
//! `SyncReport::wire_bytes` counts), without HTTP headers and TLS framing; rsync's figure
//! includes its protocol (file list, checksums) over plain TCP.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_feedgen::FeedSpec;
use outpost_feedsync::{sync, Progress, SyncOutcome};
use outpost_feedsync_testkit::trees::{cache_dir, cached, copy_tree};
use outpost_feedsync_testkit::TestPortal;
use outpost_portal::feeds::ImportReport;

const SEED: u64 = 5;
const FULL: u32 = 136_302;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An rsync daemon serving `tree` as module `feed` on 127.0.0.1; stopped on drop.
struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl RsyncDaemon {
    fn start(dir: &Path, tree: &Path) -> RsyncDaemon {
        let conf = dir.join("rsyncd.conf");
        // Started as root, the daemon would read the tree as `nobody`: keep our own ids.
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = {uid}\ngid = {gid}\npid file = {}\n\
                 [feed]\n  path = {}\n  read only = yes\n",
                dir.join("rsyncd.pid").display(),
                tree.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address", "127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("rsync daemon starts");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "rsync daemon listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RsyncDaemon { child, port }
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rsync's total bytes sent and received pulling the daemon's tree into `dest`.
fn rsync_bytes(port: u16, dest: &Path) -> u64 {
    let out = Command::new("rsync")
        .args(["-az", "--delete", "--stats"])
        .arg(format!("rsync://127.0.0.1:{port}/feed/"))
        .arg(format!("{}/", dest.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rsync: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in rsync's stats: {text}"))
            .trim()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    field("Total bytes sent:") + field("Total bytes received:")
}

fn main() {
    let scripts: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("SCRIPTS: a number"))
        .unwrap_or(FULL);
    let spec = if scripts == FULL {
        FeedSpec::full(SEED)
    } else {
        FeedSpec::new(SEED, scripts).unwrap()
    };
    let t = cached(&cache_dir(SEED, scripts), &spec);

    let dir = tempfile::tempdir().unwrap();
    let tp = TestPortal::start(
        &dir.path().join("portal"),
        &t.signer.export_public().unwrap(),
        "bench",
        Duration::from_secs(600),
    );
    let src = tp.source();
    let publish = |tree: &Path, day: u32| -> ImportReport {
        let t0 = Instant::now();
        let r = tp.import(tree, 1_757_930_000 + i64::from(day));
        eprintln!("imported day {day} in {:.1} s", t0.elapsed().as_secs_f64());
        r
    };
    let cfg = tp.config(&dir.path().join("sensor-feeds"));

    // Day 0 from nothing.
    publish(&t.day0, 0);
    let t0 = Instant::now();
    let full = match sync(&cfg, &src, &mut |_: &Progress| {}).unwrap() {
        SyncOutcome::Applied(r) => r,
        other => panic!("day 0 not applied: {other:?}"),
    };
    let full_s = t0.elapsed().as_secs_f64();
    println!("feed_full_wire_bytes={}", full.wire_bytes);
    println!("feed_full_sync_s={full_s:.2}");

    // Day 0 to day 1.
    publish(&t.day1, 1);
    let mut fetched: Option<Instant> = None;
    let t1 = Instant::now();
    let delta = match sync(&cfg, &src, &mut |p: &Progress| {
        if p.blobs_done == p.blobs_total {
            fetched.get_or_insert_with(Instant::now);
        }
    })
    .unwrap()
    {
        SyncOutcome::Applied(r) => r,
        other => panic!("day 1 not applied: {other:?}"),
    };
    let done = Instant::now();
    let apply_s = (done - fetched.unwrap_or(t1)).as_secs_f64();
    eprintln!(
        "day 1: {} blobs ({} bytes) fetched whole and {} ({} bytes) rebuilt from deltas \
         (the manifest included) in {} requests, {} files linked, {:.2} s in all",
        delta.fetched_blobs,
        delta.fetched_bytes,
        delta.delta_blobs,
        delta.delta_bytes,
        delta.batches,
        delta.linked_files,
        (done - t1).as_secs_f64()
    );
    println!("feed_delta_wire_bytes={}", delta.wire_bytes);
    println!("feed_delta_sync_s={:.2}", (done - t1).as_secs_f64());

    // The anchor: rsync from the day-1 tree onto a copy of the day-0 tree.
    let dest = dir.path().join("rsync-day0");
    copy_tree(&t.day0, &dest);
    let daemon = RsyncDaemon::start(dir.path(), &t.day1);
    let rsync = rsync_bytes(daemon.port, &dest);
    drop(daemon);
    for list in ["nvt/sha256sums", "notus/advisories/sha256sums"] {
        assert_eq!(
            std::fs::read(dest.join(list)).unwrap(),
            std::fs::read(t.day1.join(list)).unwrap(),
            "rsync brought {list} to day 1"
        );
    }
    println!("rsync_delta_wire_bytes={rsync}");
    println!("feed_apply_s={apply_s:.2}");
    println!(
        "feed_delta_vs_rsync_ratio={:.3}",
        delta.wire_bytes as f64 / rsync as f64
    );
    drop(tp);
}
