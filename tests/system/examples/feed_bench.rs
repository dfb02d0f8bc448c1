//! `scripts/bench vt-reload [SCRIPTS]`: openvas reloading its VTs in QEMU after a one-day
//! change of a synthetic feed (default 2,000 scripts plus the demo feed's), applied live
//! through the portal. Prints `vt_full_load_s=` (the first release, every script parsed),
//! `vt_reload_s=` (the next day's release: from the switch to `ready` at the new count;
//! openvas parses every script again, docs/feeds.md), `vt_count=` and `feed_scripts=`, and where
//! the time went, from the console's timestamps: `vt_full_openvas_s=` (openvas' part of
//! the first load, every script parsed), `vt_reload_notice_s=` (the
//! switch until ospd-openvas starts loading), `vt_reload_openvas_s=` (its load, openvas
//! parsing what changed) and `vt_reload_rest_s=` (its VT hash and the sensor's wait).

use std::time::Duration;

use outpost_feedgen::{advance, generate, FeedSpec};
use outpost_system_tests::feeds::{
    add_demo_scripts, import, lab_signer, portal_feed_setup, relist_nvt,
};
use outpost_system_tests::lab::{Lab, READY_TIMEOUT};
use outpost_wire::provision::FeedThresholds;

/// Seconds of the day of the first line matching `pattern` after byte `from` of
/// `console`, from the line's timestamp: ospd-openvas' `2026-12-05 06:57:42,738` or the
/// agent's `2026-12-05T06:39:01.251351Z`. Returns it with where the line ends.
fn stamp(console: &str, from: usize, pattern: &str) -> Result<(f64, usize), String> {
    let line = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
    let time = regex::Regex::new(r"\d{4}-\d\d-\d\d[ T](\d\d):(\d\d):(\d\d)[,.](\d+)")
        .map_err(|e| e.to_string())?;
    let m = line
        .find_at(console, from)
        .ok_or_else(|| format!("no {pattern:?} on the console"))?;
    let start = console[..m.start()].rfind('\n').map_or(0, |i| i + 1);
    let end = console[m.end()..]
        .find('\n')
        .map_or(console.len(), |i| m.end() + i);
    let c = time
        .captures(&console[start..end])
        .ok_or_else(|| format!("no timestamp in {:?}", &console[start..end]))?;
    let n = |i: usize| c[i].parse::<f64>().unwrap_or(0.0);
    let frac = format!("0.{}", &c[4]).parse::<f64>().unwrap_or(0.0);
    Ok((n(1) * 3600.0 + n(2) * 60.0 + n(3) + frac, end))
}

/// `b - a` across midnight.
fn span(a: f64, b: f64) -> f64 {
    if b >= a {
        b - a
    } else {
        b + 86_400.0 - a
    }
}

/// The seconds in `... loaded N VTs in S s`.
fn seconds(line: &str) -> Result<f64, String> {
    line.rsplit_once(" in ")
        .and_then(|(_, t)| t.trim_end_matches(" s").parse().ok())
        .ok_or_else(|| format!("no load time in {line:?}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scripts: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000);
    let work = tempfile::tempdir()?;
    let signer = lab_signer(&work.path().join("gnupg"));
    let tree = work.path().join("feed");
    let spec = FeedSpec::new(11, scripts)?;
    generate(&tree, &spec, 0, Some(&signer))?;
    add_demo_scripts(&tree);
    relist_nvt(&tree, &signer);
    let thresholds = FeedThresholds {
        min_nasl: scripts / 2,
        min_notus: 1,
        max_age_hours: 12,
    };
    let mut first = None;
    let mut lab = Lab::boot_custom("bench", "", None, thresholds, |portal| {
        portal_feed_setup(portal);
        first = Some(import(portal.dir.path(), &tree));
    });
    let first = first.ok_or("release 1 not published")?;
    let ready = r"outpost\[bench\]: phase ready done";
    let line = lab.vm.wait_for(ready, READY_TIMEOUT)?;
    let full = seconds(&line)?;

    advance(&tree, &spec, 0, Some(&signer))?;
    relist_nvt(&tree, &signer);
    let next = import(lab.portal.dir.path(), &tree);
    lab.vm.wait_for(
        &format!("feed release {} is verified and ready", next.name),
        Duration::from_secs(900),
    )?;
    let line = lab.vm.wait_for(ready, READY_TIMEOUT)?;
    if !line.contains(&format!("loaded {} VTs", next.vt_count)) {
        return Err(format!("the next release did not load whole: {line}").into());
    }
    let reload = seconds(&line)?;
    let console = lab.vm.console();
    let (switched, at) = stamp(
        &console,
        0,
        &format!("feed release live release={}", regex::escape(&next.name)),
    )?;
    let (loading, at) = stamp(&console, at, r"ospd_openvas\.daemon\) Loading VTs")?;
    let (loaded, _) = stamp(&console, at, r"ospd_openvas\.daemon\) Finished loading VTs")?;
    let (full_loading, at) = stamp(&console, 0, r"ospd_openvas\.daemon\) Loading VTs")?;
    let (full_loaded, _) = stamp(&console, at, r"ospd_openvas\.daemon\) Finished loading VTs")?;
    let notice = span(switched, loading);
    let openvas = span(loading, loaded);
    println!("feed_scripts={scripts}");
    println!("vt_count={}", first.vt_count);
    println!("vt_full_load_s={full:.1}");
    println!("vt_full_openvas_s={:.1}", span(full_loading, full_loaded));
    println!("vt_reload_s={reload:.1}");
    println!("vt_reload_notice_s={notice:.1}");
    println!("vt_reload_openvas_s={openvas:.1}");
    println!("vt_reload_rest_s={:.1}", reload - notice - openvas);
    Ok(())
}
