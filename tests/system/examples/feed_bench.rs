//! `scripts/bench vt-reload [SCRIPTS]`: openvas reloading its VTs in QEMU after a one-day
//! change of a synthetic feed (default 2,000 scripts plus the demo feed's), applied live
//! through the portal. Prints `vt_full_load_s=` (the first release, every script parsed),
//! `vt_reload_s=` (the next day's release: from the switch to `ready` at the new count;
//! only the changed scripts are parsed again), `vt_count=` and `feed_scripts=`.

use std::time::Duration;

use outpost_feedgen::{advance, generate, FeedSpec};
use outpost_system_tests::feeds::{
    add_demo_scripts, import, lab_signer, portal_feed_setup, relist_nvt,
};
use outpost_system_tests::lab::{Lab, READY_TIMEOUT};
use outpost_wire::provision::FeedThresholds;

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
    println!("feed_scripts={scripts}");
    println!("vt_count={}", first.vt_count);
    println!("vt_full_load_s={full:.1}");
    println!("vt_reload_s={:.1}", seconds(&line)?);
    Ok(())
}
