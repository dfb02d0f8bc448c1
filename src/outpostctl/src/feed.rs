//! `outpostctl feed`: the portal's feed releases (and whether its upstream is stale),
//! and the release channel each site or sensor follows (docs/feeds.md).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use outpost_wire::admin::{
    paths, FeedChannel, FeedChannelInfo, FeedReleases, SensorFeed, SensorInfo, SetFeedChannel,
};

use crate::client::Client;

#[derive(Subcommand)]
pub enum FeedCmd {
    /// Feed releases published on the portal, newest first, the channels pinned to each,
    /// and whether the portal's upstream is stale.
    List,
    /// Release channels: which release a site or a single sensor follows.
    #[command(subcommand)]
    Channel(ChannelCmd),
}

#[derive(Subcommand)]
pub enum ChannelCmd {
    /// Every channel set on the portal (sites and sensors not listed follow the newest).
    List,
    /// Follow CHANNEL: `newest`, or a published release id to pin (`feed list`). A
    /// sensor's own channel wins over its site's.
    Set {
        channel: String,
        #[command(flatten)]
        who: Who,
    },
    /// Remove a site's or sensor's own channel: the sensor follows its site again, the
    /// site the newest release.
    Clear {
        #[command(flatten)]
        who: Who,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    #[arg(long)]
    site: Option<String>,
    /// Sensor id.
    #[arg(long)]
    sensor: Option<String>,
}

fn parse_channel(s: &str) -> Result<FeedChannel> {
    if s == "newest" {
        return Ok(FeedChannel::Newest);
    }
    match s.parse::<i64>() {
        Ok(id) if id > 0 => Ok(FeedChannel::Pinned(id)),
        _ => bail!("channel {s:?} is neither `newest` nor a release id"),
    }
}

pub fn run(cmd: FeedCmd, c: &Client, json: bool) -> Result<()> {
    match cmd {
        FeedCmd::List => {
            let r: FeedReleases = c.get(paths::FEED_RELEASES)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            println!(
                "{:>5}  {:<29} {:>8} {:>8} {:>12}  pinned by",
                "id", "release", "vts", "files", "bytes"
            );
            for x in &r.releases {
                println!(
                    "{:>5}  {:<29} {:>8} {:>8} {:>12}  {}",
                    x.id,
                    x.name,
                    x.vt_count,
                    x.files,
                    x.bytes,
                    if x.pinned_by.is_empty() {
                        "-".to_owned()
                    } else {
                        x.pinned_by.join(", ")
                    }
                );
            }
            let verdict = if r.stale { "STALE" } else { "fresh" };
            match r.newest_age_s {
                Some(a) => println!(
                    "upstream: {verdict} (newest PLUGIN_SET {} old; stale after {})",
                    duration(a),
                    duration(r.stale_after_s)
                ),
                None => println!("upstream: {verdict} (no release published)"),
            }
        }
        FeedCmd::Channel(ChannelCmd::List) => {
            let list: Vec<FeedChannelInfo> = c.get(paths::FEED_CHANNELS)?;
            print_channels(&list, json)?;
        }
        FeedCmd::Channel(ChannelCmd::Set { channel, who }) => {
            let channel = parse_channel(&channel)?;
            let list: Vec<FeedChannelInfo> = c.post(
                paths::FEED_CHANNELS,
                &SetFeedChannel {
                    site: who.site.clone(),
                    sensor: who.sensor.clone(),
                    channel: Some(channel),
                },
            )?;
            if json {
                print_channels(&list, json)?;
            } else {
                println!("{}: feed channel {channel}", who_text(&who));
            }
        }
        FeedCmd::Channel(ChannelCmd::Clear { who }) => {
            let list: Vec<FeedChannelInfo> = c.post(
                paths::FEED_CHANNELS,
                &SetFeedChannel {
                    site: who.site.clone(),
                    sensor: who.sensor.clone(),
                    channel: None,
                },
            )?;
            if json {
                print_channels(&list, json)?;
            } else {
                println!("{}: feed channel cleared", who_text(&who));
            }
        }
    }
    Ok(())
}

fn who_text(w: &Who) -> String {
    match (&w.site, &w.sensor) {
        (Some(s), _) => format!("site {s}"),
        (None, Some(s)) => format!("sensor {s}"),
        (None, None) => String::new(),
    }
}

fn print_channels(list: &[FeedChannelInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(());
    }
    println!("{:<28} channel", "for");
    for ch in list {
        let who = match (&ch.site, &ch.sensor) {
            (Some(s), _) => format!("site {s}"),
            (None, Some(s)) => format!("sensor {s}"),
            (None, None) => "-".into(),
        };
        println!("{who:<28} {}", ch.channel);
    }
    Ok(())
}

/// `3d 4h`, `5h 10m`, `42m`; negative as `-...`.
pub fn duration(s: i64) -> String {
    let (sign, s) = if s < 0 { ("-", -s) } else { ("", s) };
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    let t = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m")
    };
    format!("{sign}{t}")
}

/// A sensor's feed in one cell: `<live>` when on its channel's release, else
/// `<live> -> <wanted> (N newer, 2d 0h behind)`, with `BEHIND` past the portal's grace.
pub fn feed_text(s: &SensorInfo) -> String {
    let Some(f) = &s.feed else {
        return "-".into();
    };
    let live = f.live.as_deref().unwrap_or("unknown");
    if f.live.is_some() && f.live == f.wanted {
        return live.to_owned();
    }
    let Some(wanted) = &f.wanted else {
        return live.to_owned();
    };
    let mut t = format!("{live} -> {wanted}");
    let lag = lag_text(f);
    if !lag.is_empty() {
        t.push_str(&format!(" ({lag})"));
    }
    if f.feed_behind {
        t.push_str(" BEHIND");
    }
    t
}

fn lag_text(f: &SensorFeed) -> String {
    let mut parts = Vec::new();
    if let Some(n) = f.newer_releases {
        parts.push(format!("{n} newer"));
    }
    if let Some(b) = f.plugin_set_behind_s {
        parts.push(format!("{} behind", duration(b)));
    }
    parts.join(", ")
}

/// The lines `sensor show` prints about the feed.
pub fn feed_lines(s: &SensorInfo) -> Vec<(&'static str, String)> {
    let Some(f) = &s.feed else {
        return vec![("feed:", "-".into())];
    };
    let mut v = vec![
        (
            "feed:",
            f.live
                .clone()
                .unwrap_or_else(|| "unknown (not reported)".into()),
        ),
        (
            "feed channel:",
            format!("{} (from {})", f.channel, f.channel_from),
        ),
        (
            "feed wanted:",
            f.wanted.clone().unwrap_or_else(|| "none published".into()),
        ),
    ];
    let lag = lag_text(f);
    if !lag.is_empty() {
        v.push(("feed lag:", lag));
    }
    if let Some(t) = f.off_channel_since {
        v.push((
            "feed off since:",
            format!(
                "{t}{}",
                if f.feed_behind {
                    " (BEHIND: longer than the portal's grace)"
                } else {
                    ""
                }
            ),
        ));
    }
    v
}
