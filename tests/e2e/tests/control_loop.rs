//! The agent and the portal end to end on loopback over TLS, as an operator sees them
//! through `outpostctl`.

use std::time::Duration;

use outpost_e2e_tests::{eventually, Portal, Sensor};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn sensor_status(portal: &Portal, id: &str) -> Value {
    portal.ctl_json(&["sensor", "show", id])
}

fn registered_id(line: &str) -> String {
    let re = regex::Regex::new(r"registered as (sn_[0-9a-f]+)").unwrap();
    re.captures(line).expect("sensor id in line")[1].to_owned()
}

#[test]
fn enroll_heartbeat_scan_report_and_offline() {
    let portal = Portal::start(3);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-1", "berlin", &token);
    let mut agent = sensor.start(&["--dry-run-duration", "2s"]);
    let id = registered_id(
        &agent
            .out
            .wait_for(r"outpost\[branch-1\]: registered as sn_", T),
    );

    // Heartbeats make it online at the portal, with its metrics.
    let s = eventually("the sensor to be online", T, || {
        let s = sensor_status(&portal, &id);
        (s["status"] == "online").then_some(s)
    });
    assert_eq!(s["site"], "berlin");
    assert!(s["last_heartbeat"].as_i64().is_some());
    assert!(
        s["metrics"]["mem_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );

    // The token is never printed by the agent.
    assert!(agent.out.all().iter().all(|l| !l.contains(&token)));

    // A queued job is claimed, run and its report uploaded; outpostctl fetches it.
    let job = portal.ctl(&[
        "job", "scan", "--site", "berlin", "--target", "10.9.0.2", "--ports", "T:22",
    ]);
    let job = job.trim().to_owned();
    let done = eventually("the job to complete", T, || {
        let j = portal.ctl_json(&["job", "show", &job]);
        (j["state"] == "completed").then_some(j)
    });
    assert_eq!(done["sensor_id"], id.as_str());
    assert_eq!(done["progress_percent"], 100);
    let report = portal.ctl_json(&["report", &job]);
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["partial"], false);
    assert_eq!(report["summary"]["hosts"], serde_json::json!(["10.9.0.2"]));
    let xml = portal.ctl(&["report", &job]);
    assert!(xml.contains("10.9.0.2"), "{xml}");

    // Phase events reached the portal's log.
    let log = portal.ctl_json(&["sensor", "log", &id]);
    let phases: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| {
            (
                e["phase"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        phases.contains(&("provision".into(), "done".into())),
        "{phases:?}"
    );

    // Stopped agent: offline once the (test) threshold of 3 s has passed.
    agent.kill();
    eventually("the sensor to go offline", T, || {
        (sensor_status(&portal, &id)["status"] == "offline").then_some(())
    });
}

#[test]
fn report_spooled_before_a_crash_arrives_exactly_once() {
    let mut portal = Portal::start(120);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-2", "berlin", &token);
    let mut agent = sensor.start(&["--dry-run-duration", "3s"]);
    let id = registered_id(&agent.out.wait_for("registered as sn_", T));
    let job = portal.ctl(&["job", "scan", "--site", "berlin", "--target", "10.9.0.3"]);
    let job = job.trim().to_owned();
    eventually("the job to be claimed", T, || {
        (portal.ctl_json(&["job", "show", &job])["state"] == "running").then_some(())
    });

    // The portal goes away while the scan runs: the report can only be spooled.
    portal.stop();
    let spool = sensor.data_dir().join("spool");
    eventually("the report to be spooled", T, || {
        std::fs::read_dir(&spool)
            .ok()?
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "json"))
            .then_some(())
    });
    // Power cut on the sensor, then everything comes back.
    agent.kill();
    portal.restart();
    let agent2 = sensor.start(&[]);
    eventually("the job to complete after the restart", T, || {
        (portal.ctl_json(&["job", "show", &job])["state"] == "completed").then_some(())
    });
    // Give any duplicate upload a chance to show up, then count.
    std::thread::sleep(Duration::from_secs(3));
    let conn = rusqlite::Connection::open(portal.sqlite()).unwrap();
    let reports: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM reports WHERE job_id = ?1",
            [job.parse::<i64>().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reports, 1, "exactly one report");
    let sensors: i64 = conn
        .query_row("SELECT COUNT(*) FROM sensors", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        sensors, 1,
        "the restart reused the identity instead of enrolling again"
    );
    assert!(
        agent2
            .out
            .all()
            .iter()
            .all(|l| !l.contains("registered as"))
            || agent2.out.all().iter().any(|l| l.contains(&id)),
        "the restarted agent kept sensor {id}"
    );
    let left = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(left, 0, "the spool is empty once the portal acknowledged");
}

#[test]
fn bad_provisioning_is_named_and_changes_nothing() {
    let portal = Portal::start(120);
    let _unused = portal.token("berlin", 1);
    let before = portal.dump();

    // No file at all.
    let sensor = Sensor::new(&portal, "branch-3", "berlin", "otk_0000000000000000000000");
    std::fs::remove_file(sensor.config()).unwrap();
    let mut agent = sensor.start(&[]);
    assert!(!agent.wait_exit(T).success());
    agent
        .out
        .wait_for(r"outpost.toml.*(No such file|cannot read)", T);

    // Malformed TOML.
    std::fs::write(sensor.config(), "[portal\nurl = ").unwrap();
    let mut agent = sensor.start(&[]);
    assert!(!agent.wait_exit(T).success());
    agent.out.wait_for("not valid TOML", T);

    // A missing field is named.
    let good = Sensor::new(&portal, "branch-3", "berlin", "otk_0000000000000000000000");
    let text = std::fs::read_to_string(good.config()).unwrap();
    let without_site: String = text
        .lines()
        .filter(|l| !l.starts_with("site"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(sensor.config(), without_site).unwrap();
    let mut agent = sensor.start(&[]);
    assert!(!agent.wait_exit(T).success());
    agent.out.wait_for("missing field `sensor.site`", T);

    // A token the portal does not know: the portal's reason is shown, the agent keeps trying.
    let mut agent = good.start(&["--auth-retry-interval", "1s"]);
    agent.out.wait_for("not known to this portal", T);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent keeps retrying"
    );
    agent.kill();

    assert_eq!(
        before,
        portal.dump(),
        "invalid attempts left the portal's database untouched"
    );
}

fn stored_wg_key(portal: &Portal, id: &str) -> String {
    let conn = rusqlite::Connection::open(portal.sqlite()).unwrap();
    conn.query_row(
        "SELECT wg_public_key FROM sensors WHERE id = ?1",
        [id],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn operator_rotates_the_wireguard_key() {
    let portal = Portal::start(120);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-4", "berlin", &token);
    let mut agent = sensor.start(&[]);
    let id = registered_id(&agent.out.wait_for("registered as sn_", T));
    agent
        .out
        .wait_for(r"outpost\[branch-4\]: phase wg_up done", T);
    let old_key = stored_wg_key(&portal, &id);

    portal.ctl(&["sensor", "rotate-key", &id]);
    agent.out.wait_for(
        r"outpost\[branch-4\]: WireGuard key rotated; reconnecting",
        T,
    );
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(3), "the distinct rotation exit code");
    let new_key = stored_wg_key(&portal, &id);
    assert_ne!(new_key, old_key, "the portal stores the new key");

    // Init's respawn: the same data directory, now holding the new key.
    let agent2 = sensor.start(&[]);
    agent2.out.wait_for(
        &format!(r"outpost\[branch-4\]: registered as {id} \(stored identity reused\)"),
        T,
    );
    agent2
        .out
        .wait_for(r"outpost\[branch-4\]: phase wg_up done", T);
    // Control traffic flows through the new tunnel: heartbeats keep arriving.
    let before = sensor_status(&portal, &id)["last_heartbeat"]
        .as_i64()
        .unwrap_or(0);
    eventually("a heartbeat through the new tunnel", T, || {
        let s = sensor_status(&portal, &id);
        (s["last_heartbeat"].as_i64().unwrap_or(0) > before).then_some(())
    });
    assert!(
        agent2
            .out
            .all()
            .iter()
            .all(|l| !l.contains("rotation failed")),
        "{:?}",
        agent2.out.all()
    );
    assert_eq!(stored_wg_key(&portal, &id), new_key, "no second rotation");
    let conn = rusqlite::Connection::open(portal.sqlite()).unwrap();
    let sensors: i64 = conn
        .query_row("SELECT COUNT(*) FROM sensors", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sensors, 1, "no second registration");
}
