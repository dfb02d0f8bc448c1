//! Feeds through the portal, in QEMU, on one machine that lives through all of it (a
//! cold boot costs a minute or more in emulation):
//! - a sensor with production-style thresholds (hundreds of scripts, a 12 h age limit)
//!   and no usable feed on its card syncs a medium feed (a synthetic feed with the demo
//!   feed's scripts, signed by the lab OpenPGP key, published by the portal under the
//!   image's feed key) and reaches `ready`, although the feed's PLUGIN_SET is months
//!   older than the guest's clock: freshness is the portal's to judge;
//! - the next release, with a detection only it has, is applied without a reboot while
//!   the sensor runs: the new VTs are loaded and that detection fires against the demo
//!   target;
//! - a release that changes only Notus data (same PLUGIN_SET, which ospd-openvas alone
//!   would never notice) is applied live: ospd-openvas is restarted and lists the new
//!   advisory;
//! - a release with a script openvas cannot load is rolled back on its own, named at the
//!   portal, and not applied again;
//! - with signature checking on (every image now), a script altered on the sensor's disk
//!   is refused by openvas at scan time.

use std::path::PathBuf;
use std::time::Duration;

use outpost_e2e_tests::eventually;
use outpost_feedgen::{advance, generate, FeedSpec};
use outpost_system_tests::feeds::{
    add_advisory, add_demo_scripts, import, lab_signer, portal_feed_setup, relist, relist_nvt,
    Published,
};
use outpost_system_tests::lab::{Lab, READY_TIMEOUT};
use outpost_wire::provision::FeedThresholds;

/// Scripts of the synthetic part: a medium feed (the real one has 136,302). openvas
/// loads about 30 VTs a second under emulation.
const SCRIPTS: u32 = 400;
const SCAN: Duration = Duration::from_secs(900);
const DEMO_TARGET: &str = "10.9.0.10";
/// The detection only the second release has.
const NEW_OID: &str = "1.3.6.1.4.1.25623.1.0.990006";
const NEW_SCRIPT: &str = "outpost_demo_web_seen.nasl";
/// The Notus advisory only the Notus-only release adds.
const NOTUS_OID: &str = "1.3.6.1.4.1.25623.1.1.990.1";
/// A script whose body openvas cannot parse: its release never loads whole.
const BROKEN_OID: &str = "1.3.6.1.4.1.25623.1.0.990007";

/// Production-style thresholds, scaled to the medium feed.
fn thresholds() -> FeedThresholds {
    FeedThresholds {
        min_nasl: 300,
        min_notus: 100,
        max_age_hours: 12,
    }
}

/// A detection the first release lacks: reports the demo target's web server, found by
/// the demo HTTP check.
fn new_detection() -> String {
    format!(
        r#"# Outpost feed test: a detection published in a later release.

if(description)
{{
  script_oid("{NEW_OID}");
  script_version("2024-06-13T05:02:00+0000");
  script_tag(name:"last_modification", value:"2024-06-13 05:02:00 +0000 (Thu, 13 Jun 2024)");
  script_tag(name:"creation_date", value:"2024-06-13 05:02:00 +0000 (Thu, 13 Jun 2024)");
  script_tag(name:"cvss_base", value:"0.0");
  script_tag(name:"cvss_base_vector", value:"AV:N/AC:L/Au:N/C:N/I:N/A:N");
  script_name("Outpost Demo: Web Server Seen");
  script_category(ACT_GATHER_INFO);
  script_family("General");
  script_copyright("Copyright (C) 2024 Outpost project");
  script_dependencies("outpost_demo_http_server.nasl");
  script_require_keys("outpost_demo/banner/8080");
  script_tag(name:"summary", value:"Reports the demo target's web server, seen by the HTTP check.");
  script_tag(name:"qod_type", value:"remote_banner");
  exit(0);
}}

server = get_kb_item("outpost_demo/banner/8080");
if(!server)
  exit(0);
log_message(port:8080, data:"Outpost feed test: web server seen: " + server);
exit(0);
"#
    )
}

fn broken_script() -> String {
    format!(
        "# Outpost feed test: this script does not parse.\n\nif(description)\n{{\n  script_oid(\"{BROKEN_OID}\");\n  script_name(\"Outpost Demo: Broken\");\n  script_family(\"General\");\n  exit(0);\n}}\n\nx = ;\n"
    )
}

fn report_xml(lab: &Lab, job: i64) -> String {
    lab.report(job)["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn boot_id(lab: &mut Lab) -> String {
    lab.vm
        .run("cat /proc/sys/kernel/random/boot_id")
        .expect("boot id")
        .stdout
        .trim()
        .to_owned()
}

/// Waits until release `r` is applied without a reboot: verified, then `then` on the
/// console when given, then `ready` at its VT count, on the same boot.
fn applied_live(lab: &mut Lab, r: &Published, then: Option<&str>, boot: &str) {
    let verified = format!(
        r"feed release {} is verified and ready",
        regex::escape(&r.name)
    );
    lab.vm.wait_for(&verified, SCAN).unwrap();
    if let Some(t) = then {
        lab.vm.wait_for(t, SCAN).unwrap();
    }
    let ready = format!(r"outpost\[{}\]: phase ready done", lab.name);
    let line = lab.vm.wait_for(&ready, SCAN).unwrap();
    assert!(
        line.contains(&format!("loaded {} VTs", r.vt_count)),
        "{} loaded: {line}",
        r.name
    );
    assert_eq!(boot_id(lab), boot, "{} applied without a reboot", r.name);
}

fn live_at_portal(lab: &Lab) -> Option<String> {
    lab.sensor()["feed"]["live"].as_str().map(str::to_owned)
}

#[test]
fn a_sensor_syncs_applies_live_rolls_back_and_checks_signatures() {
    let work = tempfile::tempdir().unwrap();
    let signer = lab_signer(&work.path().join("gnupg"));
    let tree = work.path().join("feed");
    let spec = FeedSpec::new(11, SCRIPTS).unwrap();
    generate(&tree, &spec, 0, Some(&signer)).expect("the medium feed");
    add_demo_scripts(&tree);
    relist_nvt(&tree, &signer);
    let mut r1 = None;
    let mut lab = Lab::boot_custom("feeds", "", None, thresholds(), |portal| {
        portal_feed_setup(portal);
        r1 = Some(import(portal.dir.path(), &tree));
    });
    let r1 = r1.expect("release 1 published");
    let portal_dir: PathBuf = lab.portal.dir.path().to_path_buf();

    // --- a card with no usable feed syncs the portal's and reaches ready --------------
    let name = lab.name.clone();
    let line = lab
        .vm
        .wait_for(
            &format!(r"outpost\[{name}\]: phase feed_sync (done|failed)"),
            READY_TIMEOUT,
        )
        .unwrap();
    assert!(
        line.contains(&format!("feed release {} is live", r1.name)),
        "the first sync brings release 1: {line}"
    );
    let line = lab
        .vm
        .wait_for(
            &format!(r"outpost\[{name}\]: phase ready done"),
            READY_TIMEOUT,
        )
        .unwrap();
    assert!(
        line.contains(&format!("loaded {} VTs", r1.vt_count)),
        "ready once the manifest's VT count is loaded: {line}"
    );
    // The demo feed the test image seeds is not what runs: the synced release is.
    let conf = lab.vm.run("cat /etc/openvas/openvas.conf").unwrap().stdout;
    assert!(conf.contains("nasl_no_signature_check = no"), "{conf}");
    assert!(
        conf.contains("plugins_folder = /data/feeds/current/plugins"),
        "{conf}"
    );
    eventually("the portal to see release 1", SCAN, || {
        (live_at_portal(&lab).as_deref() == Some(r1.name.as_str())).then_some(())
    });
    let boot = boot_id(&mut lab);

    // --- the next release, applied while the sensor runs ------------------------------
    advance(&tree, &spec, 0, Some(&signer)).expect("day 1");
    std::fs::write(tree.join("nvt").join(NEW_SCRIPT), new_detection()).unwrap();
    relist_nvt(&tree, &signer);
    let r2 = import(&portal_dir, &tree);
    assert_eq!(
        r2.vt_count,
        r1.vt_count + 2,
        "one new synthetic script, one detection"
    );
    applied_live(&mut lab, &r2, None, &boot);
    eventually("the portal to see release 2", SCAN, || {
        (live_at_portal(&lab).as_deref() == Some(r2.name.as_str())).then_some(())
    });
    lab.demo_lab_up();
    let job = lab.queue_demo_scan(DEMO_TARGET);
    let done = lab.wait_job_final(job, SCAN);
    if done["state"] != "completed" {
        panic!("the scan did not complete: {done}\n{}", lab.scanner_logs());
    }
    let xml = report_xml(&lab, job);
    assert!(
        xml.contains(NEW_OID) && xml.contains("web server seen"),
        "the new release's detection fires: {xml}"
    );
    assert!(xml.contains("1.3.6.1.4.1.25623.1.0.990004"), "{xml}");

    // --- a release that changes only Notus data -----------------------------------------
    add_advisory(&tree, NOTUS_OID);
    relist(&tree, "notus/advisories", &signer);
    let r2n = import(&portal_dir, &tree);
    assert_eq!(r2n.vt_count, r2.vt_count + 1, "one new advisory");
    // Same PLUGIN_SET: ospd-openvas would never reload by itself; the sensor restarts it,
    // and the manifest's count (one more) means the new advisory is listed.
    let restart = r"restarting ospd-openvas to load the feed: the feed's Notus data changed";
    applied_live(&mut lab, &r2n, Some(restart), &boot);
    let r2 = r2n;

    // --- a release that cannot load is rolled back ------------------------------------
    advance(&tree, &spec, 1, Some(&signer)).expect("day 2");
    // The day's Notus files, with the advisory release 2 added (when advance rewrote it).
    add_advisory(&tree, NOTUS_OID);
    relist(&tree, "notus/advisories", &signer);
    std::fs::write(tree.join("nvt/outpost_demo_broken.nasl"), broken_script()).unwrap();
    relist_nvt(&tree, &signer);
    let r3 = import(&portal_dir, &tree);
    let line = lab
        .vm
        .wait_for(
            &format!(r"feed release {} failed to load", regex::escape(&r3.name)),
            SCAN,
        )
        .unwrap();
    assert!(
        line.contains(&format!("rolled back to {}", r2.name))
            && line.contains(&format!("of its {} VTs", r3.vt_count)),
        "{line}"
    );
    let line = lab
        .vm
        .wait_for(&format!(r"outpost\[{name}\]: phase ready done"), SCAN)
        .unwrap();
    // Release 2's VTs for release 2's version (the wait checks it); the one script
    // only release 3 added may stay listed: openvas drops cache entries of vanished
    // files only when its cache holds more entries than the feed has files.
    let loaded: u64 = regex::Regex::new(r"loaded (\d+) VTs")
        .unwrap()
        .captures(&line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("a VT count: {line}"));
    assert!(
        (r2.vt_count..r3.vt_count).contains(&loaded),
        "release 2 loaded again: {line}"
    );
    // The portal hears why, sees release 2 live again, and the sensor does not take
    // release 3 again while the portal still offers it.
    eventually(
        "the rollback in the sensor's log at the portal",
        SCAN,
        || {
            let log = lab.portal.ctl(&["sensor", "log", &lab.sensor_id()]);
            log.contains(&format!("feed release {} failed to load", r3.name))
                .then_some(())
        },
    );
    eventually("the portal to see release 2 again", SCAN, || {
        (live_at_portal(&lab).as_deref() == Some(r2.name.as_str())).then_some(())
    });
    let declined = format!(
        "the portal offers feed release {}, which failed to load on this sensor",
        r3.name
    );
    eventually("the sensor to decline release 3", SCAN, || {
        lab.vm.console().contains(&declined).then_some(())
    });
    assert_eq!(boot_id(&mut lab), boot, "rolled back without a reboot");

    // --- a script altered on the card is refused by openvas ---------------------------
    let altered = format!("/data/feeds/current/plugins/{NEW_SCRIPT}");
    let out = lab
        .vm
        .run(&format!(
            "echo '# altered on the card' >> {altered} && echo ok"
        ))
        .unwrap();
    assert!(out.stdout.contains("ok"), "{}", out.stdout);
    let job = lab.queue_demo_scan(DEMO_TARGET);
    let done = lab.wait_job_final(job, SCAN);
    assert_eq!(done["state"], "completed", "{done}");
    let xml = report_xml(&lab, job);
    assert!(
        !xml.contains(NEW_OID),
        "the altered script must not run: {xml}"
    );
    assert!(
        xml.contains("1.3.6.1.4.1.25623.1.0.990004"),
        "the untouched scripts still run: {xml}"
    );
    let log = lab
        .vm
        .run("cat /var/log/gvm/openvas.log 2>&1")
        .unwrap()
        .stdout;
    assert!(
        log.contains(&format!("checksum for {altered} not matching")),
        "openvas names the altered script: {log}"
    );
    // Minutes of heartbeats offering release 3 later: declined, and said once.
    assert_eq!(
        lab.vm.console().matches(&declined).count(),
        1,
        "the declined release is named once"
    );
}
