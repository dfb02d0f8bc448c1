//! Release channels and feed lag (docs/feeds.md, "Release channels"): which release a
//! sensor should run (its own channel, else its site's, else the newest), how far behind
//! the release it runs is, and whether the portal's own upstream is stale. All judged
//! against the portal's releases and clock, never a sensor's clock (a Pi has no RTC).

use std::collections::HashMap;

use outpost_feed::parse_plugin_set;
use outpost_wire::admin::{FeedChannel, FeedChannelInfo, FeedReleaseSummary, SensorFeed};
use outpost_wire::feed::{release_name, release_plugin_set};

use crate::store::{FeedRelease, RawChannel, SCOPE_SENSOR, SCOPE_SITE};

/// Default for `--feed-grace`: how long a sensor may be off its channel's release.
pub const DEFAULT_GRACE_S: i64 = 6 * 3600;
/// Default for `--feed-stale-after`: the newest PLUGIN_SET older than this is stale.
pub const DEFAULT_STALE_AFTER_S: i64 = 48 * 3600;

/// The stored channel settings, by site and by sensor.
#[derive(Debug, Default)]
pub struct Channels {
    sites: HashMap<String, FeedChannel>,
    sensors: HashMap<String, FeedChannel>,
}

fn channel(release_id: Option<i64>) -> FeedChannel {
    release_id.map_or(FeedChannel::Newest, FeedChannel::Pinned)
}

impl Channels {
    pub fn new(rows: &[RawChannel]) -> Channels {
        let mut c = Channels::default();
        for r in rows {
            let map = match r.scope.as_str() {
                SCOPE_SITE => &mut c.sites,
                SCOPE_SENSOR => &mut c.sensors,
                // Written by a newer portal: not ours to interpret.
                _ => continue,
            };
            map.insert(r.name.clone(), channel(r.release_id));
        }
        c
    }

    /// A sensor's channel and where it comes from: its own setting wins over its site's.
    pub fn of(&self, sensor: &str, site: &str) -> (FeedChannel, &'static str) {
        if let Some(c) = self.sensors.get(sensor) {
            (*c, "sensor")
        } else if let Some(c) = self.sites.get(site) {
            (*c, "site")
        } else {
            (FeedChannel::Newest, "default")
        }
    }
}

/// The rows as the admin API lists them.
pub fn infos(rows: &[RawChannel]) -> Vec<FeedChannelInfo> {
    rows.iter()
        .filter(|r| r.scope == SCOPE_SITE || r.scope == SCOPE_SENSOR)
        .map(|r| FeedChannelInfo {
            site: (r.scope == SCOPE_SITE).then(|| r.name.clone()),
            sensor: (r.scope == SCOPE_SENSOR).then(|| r.name.clone()),
            channel: channel(r.release_id),
            set_at: r.set_at,
        })
        .collect()
}

/// The release a channel serves from `releases` (newest first). A pin to a release that
/// is gone (retention keeps pinned ones, so only a hand-edited database) serves none:
/// the sensor keeps what it runs rather than jump to a release nobody chose.
pub fn wanted(channel: FeedChannel, releases: &[FeedRelease]) -> Option<&FeedRelease> {
    match channel {
        FeedChannel::Newest => releases.first(),
        FeedChannel::Pinned(id) => releases.iter().find(|r| r.id == id),
    }
}

/// A release's name as sensors give it.
pub fn name(r: &FeedRelease) -> String {
    release_name(&r.plugin_set, &r.manifest_sha256)
}

/// Unix seconds of a PLUGIN_SET, if it is one.
fn plugin_set_time(p: &str) -> Option<i64> {
    parse_plugin_set(p).and_then(|t| i64::try_from(t).ok())
}

/// What a sensor runs against what its channel wants.
pub struct Lag<'a> {
    pub channel: FeedChannel,
    pub channel_from: &'static str,
    pub live: Option<&'a str>,
    pub off_since: Option<i64>,
    pub now: i64,
    pub grace_s: i64,
}

/// How far behind a sensor's feed is. Newer releases are counted by PLUGIN_SET, so a
/// live release the portal has already collected is still placed.
pub fn sensor_feed(lag: &Lag<'_>, releases: &[FeedRelease]) -> SensorFeed {
    let want = wanted(lag.channel, releases);
    let wanted_name = want.map(name);
    let live_t = lag
        .live
        .and_then(release_plugin_set)
        .and_then(plugin_set_time);
    let want_t = want.and_then(|r| plugin_set_time(&r.plugin_set));
    let newer = live_t.map(|t| {
        let n = releases
            .iter()
            .filter(|r| plugin_set_time(&r.plugin_set).is_some_and(|rt| rt > t))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    });
    let off = match (lag.live, wanted_name.as_deref()) {
        (Some(l), Some(w)) => l != w,
        _ => false,
    };
    SensorFeed {
        live: lag.live.map(str::to_owned),
        channel: lag.channel,
        channel_from: lag.channel_from.to_owned(),
        wanted_release_id: want.map(|r| r.id),
        wanted: wanted_name,
        newer_releases: newer,
        plugin_set_behind_s: live_t.zip(want_t).map(|(l, w)| w - l),
        off_channel_since: lag.off_since.filter(|_| off),
        feed_behind: off
            && lag
                .off_since
                .is_some_and(|t| lag.now.saturating_sub(t) >= lag.grace_s),
    }
}

/// Whether the portal's upstream is stale: the newest release's PLUGIN_SET is older
/// than `stale_after_s` by the portal's clock, or nothing is published. Also its age.
pub fn upstream_stale(
    releases: &[FeedRelease],
    now: i64,
    stale_after_s: i64,
) -> (bool, Option<i64>) {
    let age = releases
        .first()
        .and_then(|r| plugin_set_time(&r.plugin_set))
        .map(|t| now.saturating_sub(t));
    (age.is_none_or(|a| a > stale_after_s), age)
}

/// The releases as the admin API lists them, each with the channels pinned to it.
pub fn summaries(releases: &[FeedRelease], rows: &[RawChannel]) -> Vec<FeedReleaseSummary> {
    releases
        .iter()
        .map(|r| FeedReleaseSummary {
            id: r.id,
            name: name(r),
            plugin_set: r.plugin_set.clone(),
            notus_version: r.notus_version.clone(),
            vt_count: r.vt_count,
            files: r.files,
            bytes: r.bytes,
            manifest_sha256: r.manifest_sha256.clone(),
            imported_at: r.imported_at,
            pinned_by: rows
                .iter()
                .filter(|c| c.release_id == Some(r.id))
                .map(|c| format!("{} {}", c.scope, c.name))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(id: i64, plugin_set: &str) -> FeedRelease {
        FeedRelease {
            id,
            manifest_sha256: format!("{id:016x}{}", "0".repeat(48)),
            plugin_set: plugin_set.into(),
            notus_version: None,
            vt_count: 1,
            files: 1,
            bytes: 1,
            signature: String::new(),
            imported_at: 0,
        }
    }

    fn row(scope: &str, name: &str, release: Option<i64>) -> RawChannel {
        RawChannel {
            scope: scope.into(),
            name: name.into(),
            release_id: release,
            set_at: 1,
        }
    }

    #[test]
    fn a_sensor_setting_wins_over_its_site() {
        let c = Channels::new(&[
            row("site", "berlin", Some(2)),
            row("sensor", "sn_a", None),
            row("region", "eu", Some(9)),
        ]);
        assert_eq!(c.of("sn_a", "berlin"), (FeedChannel::Newest, "sensor"));
        assert_eq!(c.of("sn_b", "berlin"), (FeedChannel::Pinned(2), "site"));
        assert_eq!(c.of("sn_b", "paris"), (FeedChannel::Newest, "default"));
    }

    #[test]
    fn lag_counts_newer_releases_and_plugin_set_age_from_the_portal() {
        // Newest first, a day apart.
        let rs = [
            rel(3, "202509170400"),
            rel(2, "202509160400"),
            rel(1, "202509150400"),
        ];
        let live = name(&rs[2]);
        let lag = |channel, off_since, now| Lag {
            channel,
            channel_from: "default",
            live: Some(&live),
            off_since,
            now,
            grace_s: 3600,
        };
        let f = sensor_feed(&lag(FeedChannel::Newest, Some(1000), 1000 + 3599), &rs);
        assert_eq!(f.wanted.as_deref(), Some(name(&rs[0]).as_str()));
        assert_eq!(f.newer_releases, Some(2));
        assert_eq!(f.plugin_set_behind_s, Some(2 * 86_400));
        assert!(!f.feed_behind, "still within the grace");
        let f = sensor_feed(&lag(FeedChannel::Newest, Some(1000), 1000 + 3600), &rs);
        assert!(f.feed_behind);
        assert_eq!(f.off_channel_since, Some(1000));

        // Pinned to the release it runs: on its channel, however many are newer.
        let f = sensor_feed(&lag(FeedChannel::Pinned(1), None, 99_999), &rs);
        assert!(!f.feed_behind);
        assert_eq!(f.newer_releases, Some(2));
        assert_eq!(f.plugin_set_behind_s, Some(0));

        // A live release the portal no longer holds is still placed by its PLUGIN_SET.
        let gone = "202509140400-ffffffffffffffff";
        let f = sensor_feed(
            &Lag {
                live: Some(gone),
                ..lag(FeedChannel::Newest, Some(0), 99_999)
            },
            &rs,
        );
        assert_eq!(f.newer_releases, Some(3));
        assert_eq!(f.plugin_set_behind_s, Some(3 * 86_400));
        assert!(f.feed_behind);

        // Nothing reported (older agent): nothing claimed.
        let f = sensor_feed(
            &Lag {
                live: None,
                ..lag(FeedChannel::Newest, None, 99_999)
            },
            &rs,
        );
        assert_eq!((f.newer_releases, f.feed_behind), (None, false));
    }

    #[test]
    fn upstream_is_stale_when_the_newest_plugin_set_is_old() {
        let rs = [rel(2, "202509170400"), rel(1, "202509150400")];
        let t = plugin_set_time("202509170400").unwrap();
        assert_eq!(
            upstream_stale(&rs, t + 48 * 3600, 48 * 3600),
            (false, Some(48 * 3600))
        );
        assert_eq!(
            upstream_stale(&rs, t + 48 * 3600 + 1, 48 * 3600),
            (true, Some(48 * 3600 + 1))
        );
        assert_eq!(upstream_stale(&[], t, 48 * 3600), (true, None));
    }
}
