//! The two boot-phase decisions: `feed_sync` (skip or sync) and
//! `feed_ready` (go on or refuse), both with reasons in plain words.

use std::fmt;

use outpost_wire::provision::FeedThresholds;
use serde::Serialize;

use crate::status::FeedStatus;

/// Why `feed_ready` refuses the feed; `Display` joins the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedRefusal {
    /// Each reason on its own, e.g. "feed is 30 h old, at most 12 h allowed".
    pub reasons: Vec<String>,
}

impl fmt::Display for FeedRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reasons.join("; "))
    }
}

impl std::error::Error for FeedRefusal {}

/// What `feed_sync` should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SyncDecision {
    /// The feed on disk is fresh and large enough.
    Skip {
        /// NASL scripts on disk.
        nasl: u64,
        /// Notus advisories on disk.
        notus: u64,
        /// Feed age in hours.
        age_hours: u64,
    },
    /// A sync is needed, for these reasons.
    Needed {
        /// What is wrong with the feed on disk.
        reasons: Vec<String>,
    },
}

impl fmt::Display for SyncDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncDecision::Skip {
                nasl,
                notus,
                age_hours,
            } => write!(
                f,
                "feed on disk is current ({nasl} NASL scripts, {notus} Notus advisories, {age_hours} h old): sync skipped"
            ),
            SyncDecision::Needed { reasons } => write!(f, "sync needed: {}", reasons.join("; ")),
        }
    }
}

/// Decides `feed_ready`: `Ok` when the feed meets every threshold and has
/// no integrity problem; otherwise every reason it falls short.
pub fn feed_ready(status: &FeedStatus, t: &FeedThresholds) -> Result<(), FeedRefusal> {
    let reasons = shortfalls(status, t);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(FeedRefusal { reasons })
    }
}

/// Decides `feed_sync`: skip when the feed on disk would pass
/// [`feed_ready`], else sync (the reasons say why, for the log).
pub fn sync_decision(status: &FeedStatus, t: &FeedThresholds) -> SyncDecision {
    let reasons = shortfalls(status, t);
    if reasons.is_empty() {
        SyncDecision::Skip {
            nasl: status.nasl_count,
            notus: status.notus_advisories.advisories,
            age_hours: status.age_hours().unwrap_or(0),
        }
    } else {
        SyncDecision::Needed { reasons }
    }
}

fn shortfalls(s: &FeedStatus, t: &FeedThresholds) -> Vec<String> {
    let mut r = Vec::new();
    let min_nasl = u64::from(t.min_nasl);
    if !s.plugins_present {
        r.push(format!(
            "no NASL scripts (plugins directory missing), at least {min_nasl} required"
        ));
    } else if s.nasl_count < min_nasl || s.nasl_count == 0 {
        r.push(match s.nasl_count {
            0 => format!("no NASL scripts, at least {} required", min_nasl.max(1)),
            1 => format!("only 1 NASL script, at least {min_nasl} required"),
            n => format!("only {n} NASL scripts, at least {min_nasl} required"),
        });
    }

    let vouched = s.release.as_ref().is_some_and(|x| x.current_at_portal);
    match s.age_secs {
        // The portal's current release: how old upstream is, is the portal's to flag.
        _ if vouched => {}
        None => r.push(
            "feed version unknown: plugin_feed_info.inc is missing or has no valid PLUGIN_SET"
                .into(),
        ),
        Some(age) if age > u64::from(t.max_age_hours) * 3600 => r.push(format!(
            "feed is {} h old, at most {} h allowed",
            age / 3600,
            t.max_age_hours
        )),
        Some(_) => {}
    }

    let notus = &s.notus_advisories;
    if let Some(first) = notus.problems.first() {
        r.push(format!(
            "{} Notus advisory file(s) unreadable (first: {first})",
            notus.problems.len()
        ));
    }
    let min_notus = u64::from(t.min_notus);
    if notus.advisories == 0 && min_notus > 0 {
        r.push("no Notus advisories".into());
    } else if notus.advisories < min_notus {
        r.push(format!(
            "only {} Notus advisories, at least {min_notus} required",
            notus.advisories
        ));
    }
    if let Some(first) = s.notus_products.problems.first() {
        r.push(format!(
            "{} Notus product file(s) unreadable (first: {first})",
            s.notus_products.problems.len()
        ));
    }

    if let Some(first) = s.checksum_problems.first() {
        r.push(format!(
            "{} feed file(s) fail the sha256sums check (first: {first})",
            s.checksum_problems.len()
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::{at, small_feed, TempDir};
    use crate::status::{inspect, FeedPaths};

    fn demo_thresholds() -> FeedThresholds {
        FeedThresholds {
            min_nasl: 3,
            min_notus: 1,
            max_age_hours: 24,
        }
    }

    #[test]
    fn a_good_feed_is_ready_and_sync_is_skipped() {
        let t = small_feed(3, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), at(2)).unwrap();
        assert_eq!(feed_ready(&s, &demo_thresholds()), Ok(()));
        let d = sync_decision(&s, &demo_thresholds());
        assert_eq!(
            d,
            SyncDecision::Skip {
                nasl: 3,
                notus: 1,
                age_hours: 2
            }
        );
        assert_eq!(
            d.to_string(),
            "feed on disk is current (3 NASL scripts, 1 Notus advisories, 2 h old): sync skipped"
        );
    }

    /// A release the portal confirmed as current is not judged by the device clock (a
    /// Pi's clock may be anything); its VT count is the manifest's, not scripts plus
    /// advisories. Counts still apply.
    #[test]
    fn the_portals_current_release_is_fresh_whatever_the_clock_says() {
        let t = small_feed(3, "202406120502");
        let mut s = inspect(&FeedPaths::under(t.path()), at(24 * 400)).unwrap();
        assert!(feed_ready(&s, &demo_thresholds()).is_err(), "400 days old");
        assert_eq!(s.expected_vts(), 4);
        s.release = Some(crate::ReleaseFacts {
            vt_count: 3,
            current_at_portal: false,
        });
        let err = feed_ready(&s, &demo_thresholds()).unwrap_err();
        assert!(err.to_string().contains("h old"), "{err}");
        assert_eq!(s.expected_vts(), 3, "the manifest's count");
        s.release = Some(crate::ReleaseFacts {
            vt_count: 3,
            current_at_portal: true,
        });
        assert_eq!(feed_ready(&s, &demo_thresholds()), Ok(()));
        let strict = FeedThresholds {
            min_nasl: 4,
            ..demo_thresholds()
        };
        assert!(feed_ready(&s, &strict).is_err(), "counts still count");
    }

    #[test]
    fn too_few_scripts_is_refused_in_plain_words() {
        let t = small_feed(3, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), at(2)).unwrap();
        let err = feed_ready(&s, &FeedThresholds::default()).unwrap_err();
        assert!(
            err.reasons
                .contains(&"only 3 NASL scripts, at least 2000 required".to_owned()),
            "{err}"
        );
        assert!(
            err.reasons
                .contains(&"only 1 Notus advisories, at least 500 required".to_owned()),
            "{err}"
        );
        assert!(matches!(
            sync_decision(&s, &FeedThresholds::default()),
            SyncDecision::Needed { .. }
        ));
    }

    #[test]
    fn an_old_feed_is_refused_with_its_age() {
        let t = small_feed(3, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), at(30)).unwrap();
        let mut th = demo_thresholds();
        th.max_age_hours = 12;
        let err = feed_ready(&s, &th).unwrap_err();
        assert_eq!(err.to_string(), "feed is 30 h old, at most 12 h allowed");
        assert_eq!(
            sync_decision(&s, &th).to_string(),
            "sync needed: feed is 30 h old, at most 12 h allowed"
        );
    }

    #[test]
    fn an_empty_dir_lists_every_shortfall() {
        let t = TempDir::new("nothing");
        let s = inspect(&FeedPaths::under(t.path()), at(0)).unwrap();
        let err = feed_ready(&s, &demo_thresholds()).unwrap_err();
        assert_eq!(
            err.reasons,
            vec![
                "no NASL scripts (plugins directory missing), at least 3 required".to_owned(),
                "feed version unknown: plugin_feed_info.inc is missing or has no valid PLUGIN_SET"
                    .to_owned(),
                "no Notus advisories".to_owned(),
            ]
        );
    }

    #[test]
    fn missing_notus_is_refused_even_with_plenty_of_nasl() {
        let t = small_feed(5, "202406120502");
        std::fs::remove_file(t.path().join("notus/advisories/debian_12.notus")).unwrap();
        let s = inspect(&FeedPaths::under(t.path()), at(1)).unwrap();
        let err = feed_ready(&s, &demo_thresholds()).unwrap_err();
        assert_eq!(err.to_string(), "no Notus advisories");
    }

    #[test]
    fn zero_nasl_is_refused_even_with_a_zero_threshold() {
        let t = small_feed(0, "202406120502");
        let s = inspect(&FeedPaths::under(t.path()), at(1)).unwrap();
        let th = FeedThresholds {
            min_nasl: 0,
            min_notus: 0,
            max_age_hours: 24,
        };
        assert_eq!(
            feed_ready(&s, &th).unwrap_err().to_string(),
            "no NASL scripts, at least 1 required"
        );
    }

    #[test]
    fn broken_notus_json_and_bad_checksums_refuse() {
        let t = small_feed(3, "202406120502");
        t.write("notus/advisories/broken.notus", "{\"advisories\": [}");
        let mut s = inspect(&FeedPaths::under(t.path()), at(1)).unwrap();
        s.checksum_problems
            .push("plugins: s0.nasl does not match sha256sums".into());
        let err = feed_ready(&s, &demo_thresholds()).unwrap_err();
        assert_eq!(err.reasons.len(), 2, "{err}");
        assert!(err.reasons[0]
            .starts_with("1 Notus advisory file(s) unreadable (first: broken.notus: "));
        assert_eq!(
            err.reasons[1],
            "1 feed file(s) fail the sha256sums check (first: plugins: s0.nasl does not match sha256sums)"
        );
    }
}
