//! The demo feed the image ships (image/feed-demo) passes `feed_ready`
//! under its own thresholds (image/feed-demo/thresholds.toml), its
//! sha256sums hold, and the production defaults refuse it.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_feed::{feed_ready, inspect_verified, sync_decision, FeedPaths, SyncDecision};
use outpost_wire::provision::{FeedThresholds, Provision};

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../image/feed-demo")
}

/// thresholds.toml is a `[feed]` snippet for outpost.toml: parse it the way
/// the daemon will, inside a minimal valid provisioning file.
fn demo_thresholds() -> FeedThresholds {
    let snippet = std::fs::read_to_string(demo_dir().join("thresholds.toml")).unwrap();
    let file = format!(
        "[portal]\nurl = \"https://portal.invalid\"\nca_cert = \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\"\n\
         [sensor]\nname = \"demo\"\nsite = \"lab\"\ntoken = \"otk_0123456789abcdef\"\n{snippet}"
    );
    Provision::parse(&file, |_| Err("no files".into()))
        .unwrap()
        .feed
}

#[test]
fn the_demo_feed_is_ready_under_its_thresholds() {
    let now = SystemTime::now();
    let status = inspect_verified(&FeedPaths::under(demo_dir()), now).unwrap();
    assert!(
        status.checksum_problems.is_empty(),
        "{:?}",
        status.checksum_problems
    );
    assert_eq!(status.nasl_count, 6);
    assert_eq!(status.notus_advisories.advisories, 3);
    assert_eq!(status.notus_products.advisories, 3);
    assert_eq!(status.version(), Some("202412050000"));
    assert_eq!(status.expected_vts(), 9);
    let info = status.info.as_ref().unwrap();
    assert_eq!(info.plugin_feed.as_deref(), Some("Outpost Demo Feed"));

    let t = demo_thresholds();
    assert_eq!(feed_ready(&status, &t), Ok(()));
    assert!(matches!(
        sync_decision(&status, &t),
        SyncDecision::Skip {
            nasl: 6,
            notus: 3,
            ..
        }
    ));
}

#[test]
fn production_thresholds_refuse_the_demo_feed() {
    // A fixed clock one day after the feed's PLUGIN_SET.
    let now = UNIX_EPOCH + Duration::from_secs(1_733_356_800 + 24 * 3600);
    let status = inspect_verified(&FeedPaths::under(demo_dir()), now).unwrap();
    let err = feed_ready(&status, &FeedThresholds::default()).unwrap_err();
    assert_eq!(
        err.reasons,
        vec![
            "only 6 NASL scripts, at least 2000 required".to_owned(),
            "feed is 24 h old, at most 12 h allowed".to_owned(),
            "only 3 Notus advisories, at least 500 required".to_owned(),
        ]
    );
}

/// Every signed list of the demo feed carries a signature by the lab key that still
/// matches it (checked by Debian's `gpgv` with only that key): an edit without
/// `image/feed-demo/sign` would make test images refuse the feed at run time.
#[test]
fn the_demo_feed_lists_are_signed_by_the_lab_key() {
    let root = demo_dir();
    let lab = root.join("../lab-keys/lab-feed-key.asc");
    let home = tempfile::tempdir().unwrap();
    let keyring = home.path().join("lab.gpg");
    let dearmor = std::process::Command::new("gpg")
        .args(["--batch", "--quiet", "--homedir"])
        .arg(home.path())
        .arg("--output")
        .arg(&keyring)
        .arg("--dearmor")
        .arg(&lab)
        .status()
        .expect("gpg runs");
    assert!(dearmor.success());
    for dir in ["plugins", "notus/advisories", "notus/products"] {
        let list = root.join(dir).join("sha256sums");
        let out = std::process::Command::new("gpgv")
            .arg("--keyring")
            .arg(&keyring)
            .arg(list.with_extension("asc"))
            .arg(&list)
            .output()
            .expect("gpgv runs");
        assert!(
            out.status.success(),
            "{dir}/sha256sums.asc does not verify with the lab key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
