//! [`inspect`]: the feed on disk summed up in one [`FeedStatus`].

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::debug;

use crate::checksum::verify_sha256sums;
use crate::error::FeedError;
use crate::nasl::{count_nasl, read_feed_info, PluginFeedInfo};
use crate::notus::{count_notus_advisories, count_notus_products, NotusCount};
use crate::time::parse_plugin_set;

/// Where the parts of one feed live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPaths {
    /// NASL scripts and `plugin_feed_info.inc` (openvas `plugins_folder`).
    pub plugins: PathBuf,
    /// Notus products, read by notus-scanner (`--products-directory`).
    pub notus_products: PathBuf,
    /// Notus advisories, read by ospd-openvas (`--notus-feed-dir`).
    pub notus_advisories: PathBuf,
}

impl FeedPaths {
    /// The layout Outpost keeps on the data partition and ships in the
    /// demo feed: `root/plugins`, `root/notus/products`,
    /// `root/notus/advisories`.
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        FeedPaths {
            plugins: root.join("plugins"),
            notus_products: root.join("notus").join("products"),
            notus_advisories: root.join("notus").join("advisories"),
        }
    }
}

/// The feed on disk, as the boot phases need to judge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedStatus {
    /// Whether the plugins directory exists at all.
    pub plugins_present: bool,
    /// `*.nasl` files under the plugins directory.
    pub nasl_count: u64,
    /// `plugin_feed_info.inc`, when present.
    pub info: Option<PluginFeedInfo>,
    /// `PLUGIN_SET` as Unix seconds, when present and well-formed.
    pub version_time: Option<u64>,
    /// How old the feed is, in seconds; `None` when the version is unknown.
    /// A feed newer than the clock counts as age 0 (see `clock_behind`).
    pub age_secs: Option<u64>,
    /// The feed claims to be from the future: the device clock is behind
    /// (no RTC, no time sync yet), so the age cannot be trusted.
    pub clock_behind: bool,
    /// Notus advisories (ospd-openvas side).
    pub notus_advisories: NotusCount,
    /// Notus products (notus-scanner side).
    pub notus_products: NotusCount,
    /// Whether the `sha256sums` lists were checked ([`inspect_verified`]).
    pub checksums_verified: bool,
    /// Integrity problems found when checked: `dir: problem`.
    pub checksum_problems: Vec<String>,
    /// A release synced from the portal: what its signed manifest says, which overrides
    /// what is counted on disk. `None` for a feed placed on the card.
    pub release: Option<ReleaseFacts>,
}

/// What a synced release's signed manifest and the portal vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseFacts {
    /// The VT count the scanner must list: distinct OIDs, counted at import the way
    /// ospd-openvas counts (scripts sharing an OID, advisories sharing a script's OID).
    pub vt_count: u64,
    /// The portal confirmed this is the release the sensor should run (the last sync
    /// found it current). Its freshness is then the portal's to judge against its own
    /// upstream, not the device clock's: a Pi has no RTC.
    pub current_at_portal: bool,
}

impl FeedStatus {
    /// Age in whole hours, rounded down.
    pub fn age_hours(&self) -> Option<u64> {
        self.age_secs.map(|s| s / 3600)
    }

    /// The feed version (`PLUGIN_SET`), if known.
    pub fn version(&self) -> Option<&str> {
        self.info.as_ref().and_then(|i| i.plugin_set.as_deref())
    }

    /// The number of VTs ospd-openvas lists once it has loaded this feed:
    /// every NASL script plus every Notus advisory (ospd-openvas merges
    /// both into `get_vts`).
    /// A synced release's manifest count wins: it is exact where "scripts + advisories"
    /// overcounts shared OIDs.
    pub fn expected_vts(&self) -> u64 {
        match &self.release {
            Some(r) => r.vt_count,
            None => self.nasl_count + self.notus_advisories.advisories,
        }
    }
}

/// Counts and dates the feed without hashing it: cheap enough for every
/// boot. `now` is passed in so callers (and tests) control the clock.
pub fn inspect(paths: &FeedPaths, now: SystemTime) -> Result<FeedStatus, FeedError> {
    let nasl = count_nasl(&paths.plugins)?;
    let info = read_feed_info(&paths.plugins)?;
    let version_time = info
        .as_ref()
        .and_then(|i| i.plugin_set.as_deref())
        .and_then(parse_plugin_set);
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (age_secs, clock_behind) = match version_time {
        Some(v) => (Some(now_secs.saturating_sub(v)), v > now_secs),
        None => (None, false),
    };
    let status = FeedStatus {
        plugins_present: nasl.is_some(),
        nasl_count: nasl.unwrap_or(0),
        info,
        version_time,
        age_secs,
        clock_behind,
        notus_advisories: count_notus_advisories(&paths.notus_advisories)?,
        notus_products: count_notus_products(&paths.notus_products)?,
        checksums_verified: false,
        checksum_problems: Vec::new(),
        release: None,
    };
    debug!(
        nasl = status.nasl_count,
        notus = status.notus_advisories.advisories,
        version = status.version().unwrap_or("-"),
        "feed inspected"
    );
    Ok(status)
}

/// [`inspect`] plus a check of every `sha256sums` list (plugins, Notus
/// products, Notus advisories): reads the whole feed, so run it after a
/// sync rather than on every boot.
pub fn inspect_verified(paths: &FeedPaths, now: SystemTime) -> Result<FeedStatus, FeedError> {
    let mut status = inspect(paths, now)?;
    for dir in [
        &paths.plugins,
        &paths.notus_products,
        &paths.notus_advisories,
    ] {
        if let Some(problems) = verify_sha256sums(dir)? {
            status
                .checksum_problems
                .extend(problems.iter().map(|p| format!("{}: {p}", dir.display())));
        }
    }
    status.checksums_verified = true;
    Ok(status)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A scratch directory removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let p =
                std::env::temp_dir().join(format!("outpost-feed-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
        pub(crate) fn write(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const ADVISORY: &str = r#"{"version":"1.0","spdx-license-identifier":"CC0-1.0","copyright":"x","family":"F","advisories":[{"oid":"1.3.6.1.4.1.25623.1.1.999.1","title":"t","creation_date":1718000000,"last_modification":1718100000}]}"#;

    /// A small complete feed: `nasl` scripts, version `plugin_set`, one advisory.
    pub(crate) fn small_feed(nasl: usize, plugin_set: &str) -> TempDir {
        let t = TempDir::new("feed");
        for i in 0..nasl {
            t.write(&format!("plugins/s{i}.nasl"), "exit(0);\n");
        }
        t.write(
            "plugins/plugin_feed_info.inc",
            &format!("PLUGIN_SET = \"{plugin_set}\";\nPLUGIN_FEED = \"Test\";\n"),
        );
        t.write("notus/advisories/debian_12.notus", ADVISORY);
        t.write(
            "notus/products/debian_12.notus",
            r#"{"version":"1.0","package_type":"deb","product_name":"Debian 12","advisories":[{"oid":"1.3.6.1.4.1.25623.1.1.999.1","fixed_packages":[{"name":"x","full_version":"1.0","specifier":">="}]}]}"#,
        );
        t
    }

    /// 2024-06-12 05:02 UTC plus `hours`.
    pub(crate) fn at(hours: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_718_168_520 + hours * 3600)
    }

    #[test]
    fn inspects_a_complete_feed() {
        let t = small_feed(4, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), at(5)).unwrap();
        assert!(s.plugins_present);
        assert_eq!(s.nasl_count, 4);
        assert_eq!(s.version(), Some("202406120502"));
        assert_eq!(s.age_hours(), Some(5));
        assert!(!s.clock_behind);
        assert_eq!(s.notus_advisories.advisories, 1);
        assert_eq!(s.notus_products.advisories, 1);
        assert_eq!(s.expected_vts(), 5);
        assert!(!s.checksums_verified);
    }

    #[test]
    fn empty_dir_is_an_empty_feed_not_an_error() {
        let t = TempDir::new("empty");
        let s = inspect(&FeedPaths::under(t.path()), at(0)).unwrap();
        assert!(!s.plugins_present);
        assert_eq!(s.nasl_count, 0);
        assert_eq!(s.age_secs, None);
        assert!(!s.notus_advisories.present);
    }

    #[test]
    fn feed_from_the_future_means_the_clock_is_behind() {
        let t = small_feed(1, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), UNIX_EPOCH).unwrap();
        assert!(s.clock_behind);
        assert_eq!(s.age_secs, Some(0));
    }

    #[test]
    fn verified_inspection_reports_tampered_files() {
        let t = small_feed(1, "202406120502");
        // sha256("exit(0);\n") recorded for s0.nasl, then the file changes.
        let sum = {
            use sha2::{Digest, Sha256};
            let d = Sha256::digest(b"exit(0);\n");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        t.write("plugins/sha256sums", &format!("{sum}  s0.nasl\n"));
        let paths = FeedPaths::under(t.path());
        let ok = inspect_verified(&paths, at(1)).unwrap();
        assert!(ok.checksums_verified);
        assert!(
            ok.checksum_problems.is_empty(),
            "{:?}",
            ok.checksum_problems
        );
        t.write("plugins/s0.nasl", "exit(1);\n");
        let bad = inspect_verified(&paths, at(1)).unwrap();
        assert_eq!(bad.checksum_problems.len(), 1);
        assert!(
            bad.checksum_problems[0].ends_with("s0.nasl does not match sha256sums"),
            "{:?}",
            bad.checksum_problems
        );
    }
}
