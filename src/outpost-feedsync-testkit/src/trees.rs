//! Generated feed trees at any size, cached on disk: day 0 and day 1 of a synthetic feed
//! (`outpost-feedgen`) with the throwaway GnuPG home that signed them, under
//! `build/feed-bench/seed<S>-n<N>/` (shared by the full-size test and `scripts/bench
//! feed`), so only the first run on a machine pays for generating them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec};

const UID: &str = "Outpost Bench Feed Integrity Key <feed@bench.invalid>";

/// The cached trees of day 0 and day 1 and the key that signed them.
pub struct Trees {
    pub signer: GpgSigner,
    pub day0: PathBuf,
    pub day1: PathBuf,
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

/// `cp -a`: unchanged files keep their modification times, as in a synced tree.
pub fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Where the trees of `seed` and `scripts` are cached, under the repository's `build/`
/// (`OUTPOST_ROOT`, else found from this crate's location).
pub fn cache_dir(seed: u64, scripts: u32) -> PathBuf {
    let root = std::env::var_os("OUTPOST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.join("build/feed-bench")
        .join(format!("seed{seed}-n{scripts}"))
}

/// Day 0 and day 1 of `spec` under `cache`, generated on first use. A tree is used only
/// once marked complete (`dayN.done`), so a run cut while generating starts it again.
pub fn cached(cache: &Path, spec: &FeedSpec) -> Trees {
    std::fs::create_dir_all(cache).unwrap();
    let home = cache.join("gnupg");
    let signer = match GpgSigner::open(&home, UID) {
        Ok(s) => s,
        Err(_) => {
            let _ = std::fs::remove_dir_all(&home);
            // A new key invalidates the trees it did not sign.
            for d in ["day0", "day0.done", "day1", "day1.done"] {
                let _ = std::fs::remove_dir_all(cache.join(d));
                let _ = std::fs::remove_file(cache.join(d));
            }
            GpgSigner::create(&home, UID).unwrap()
        }
    };
    let (day0, day1) = (cache.join("day0"), cache.join("day1"));
    if !cache.join("day0.done").exists() {
        let _ = std::fs::remove_dir_all(&day0);
        let _ = std::fs::remove_file(cache.join("day1.done"));
        let t = Instant::now();
        generate(&day0, spec, 0, Some(&signer)).unwrap();
        // As if fetched a day before day 1: rsync's quick check (size and whole-second
        // mtime) must see the files day 1 rewrites as changed, as it would upstream.
        let yesterday = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 86_400;
        run(Command::new("find")
            .arg(&day0)
            .args(["-exec", "touch", "-h", "-m", "-d"])
            .arg(format!("@{yesterday}"))
            .args(["{}", "+"]));
        eprintln!("generated day 0 in {:.1} s", t.elapsed().as_secs_f64());
        std::fs::write(cache.join("day0.done"), b"").unwrap();
    }
    if !cache.join("day1.done").exists() {
        copy_tree(&day0, &day1);
        advance(&day1, spec, 0, Some(&signer)).unwrap();
        std::fs::write(cache.join("day1.done"), b"").unwrap();
    }
    Trees { signer, day0, day1 }
}
