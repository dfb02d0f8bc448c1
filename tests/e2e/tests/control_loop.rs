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
    // Two phases: the portal keeps the old key until the new one has been used.
    assert_eq!(stored_wg_key(&portal, &id), old_key);

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
    let new_key = stored_wg_key(&portal, &id);
    assert_ne!(
        new_key, old_key,
        "the first request with the new key ends the rotation"
    );
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

/// A UDP relay between the agent and the gateway that holds the gateway's datagrams back
/// for a moment, so a test can decide to drop them after seeing what the portal did.
struct HoldingRelay {
    addr: std::net::SocketAddr,
    /// 0: pass (after the hold), 1: drop everything the gateway sends.
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HoldingRelay {
    const HOLD: Duration = Duration::from_millis(300);

    fn start(gateway: std::net::SocketAddr) -> HoldingRelay {
        use std::sync::atomic::Ordering;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, st) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut agent = None;
            let mut held: std::collections::VecDeque<(std::time::Instant, Vec<u8>)> =
                Default::default();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if from == gateway {
                        held.push_back((std::time::Instant::now() + Self::HOLD, buf[..n].to_vec()));
                    } else {
                        agent = Some(from);
                        let _ = sock.send_to(&buf[..n], gateway);
                    }
                }
                if m.load(Ordering::Relaxed) == 1 {
                    held.clear();
                }
                while held
                    .front()
                    .is_some_and(|(t, _)| *t <= std::time::Instant::now())
                {
                    if let (Some((_, d)), Some(to)) = (held.pop_front(), agent) {
                        let _ = sock.send_to(&d, to);
                    }
                }
            }
        });
        HoldingRelay { addr, mode, stop }
    }

    fn set_dropping(&self, drop: bool) {
        self.mode
            .store(u8::from(drop), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for HoldingRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_key_rotation_whose_answer_is_lost_completes_later() {
    // The sensor reaches the gateway through the relay; the portal tells it so.
    let wg_port = outpost_e2e_tests::free_udp_port();
    let relay = HoldingRelay::start(format!("127.0.0.1:{wg_port}").parse().unwrap());
    let endpoint = relay.addr.to_string();
    let mut portal = Portal::start_with(120, &["--wg-endpoint", &endpoint]);
    // start_with picked its own gateway port: restart on the relay's.
    portal.stop();
    portal.wg_port = wg_port;
    portal.restart();
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-6", "berlin", &token);
    let mut agent = sensor.start(&[]);
    let id = registered_id(&agent.out.wait_for("registered as sn_", T));
    agent
        .out
        .wait_for(r"outpost\[branch-6\]: phase wg_up done", T);
    let old_key = stored_wg_key(&portal, &id);

    // The portal takes the new key; everything it sends from then on is lost, the
    // answer included (it is still held in the relay when the key shows up).
    portal.ctl(&["sensor", "rotate-key", &id]);
    let conn = rusqlite::Connection::open(portal.sqlite()).unwrap();
    let pending: String = {
        let deadline = std::time::Instant::now() + T;
        loop {
            let p: Option<String> = conn
                .query_row(
                    "SELECT wg_pending_key FROM sensors WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .unwrap();
            if let Some(p) = p {
                relay.set_dropping(true);
                break p;
            }
            assert!(std::time::Instant::now() < deadline, "no pending key");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    agent.out.wait_for(
        r"outpost\[branch-6\]: WireGuard key rotation failed, keeping the current key",
        T,
    );
    assert_eq!(stored_wg_key(&portal, &id), old_key);

    // The network comes back: the old key still works, and the next heartbeat's request
    // for a rotation is met with the same key, this time answered.
    relay.set_dropping(false);
    agent.out.wait_for(
        r"outpost\[branch-6\]: WireGuard key rotated; reconnecting",
        T,
    );
    assert_eq!(agent.wait_exit(T).code(), Some(3));
    let agent2 = sensor.start(&[]);
    agent2
        .out
        .wait_for(r"outpost\[branch-6\]: phase wg_up done", T);
    let new_key = eventually("the portal to switch to the new key", T, || {
        let k = stored_wg_key(&portal, &id);
        (k != old_key).then_some(k)
    });
    assert_eq!(new_key, pending, "the key sent first is the key in use");
    let before = sensor_status(&portal, &id)["last_heartbeat"]
        .as_i64()
        .unwrap_or(0);
    eventually("a heartbeat through the new tunnel", T, || {
        let s = sensor_status(&portal, &id);
        (s["last_heartbeat"].as_i64().unwrap_or(0) > before).then_some(())
    });
}

fn job_show(portal: &Portal, job: &str) -> Value {
    portal.ctl_json(&["job", "show", job])
}

#[test]
fn a_job_lost_in_an_agent_restart_is_requeued_then_failed_at_the_cap() {
    // Two attempts at most; a claim older than a second counts once a heartbeat omits it.
    let portal = Portal::start_with(120, &["--max-attempts", "2", "--claim-grace", "1"]);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-5", "berlin", &token);
    let long = ["--dry-run-duration", "600s"];
    let mut agent = sensor.start(&long);
    agent.out.wait_for("registered as sn_", T);
    let job = portal.ctl(&["job", "scan", "--site", "berlin", "--target", "10.9.0.5"]);
    let job = job.trim().to_owned();
    eventually("the job to be claimed", T, || {
        let j = job_show(&portal, &job);
        (j["state"] == "running" && j["attempts"] == 0).then_some(())
    });

    // The agent dies mid-scan and comes back without the job: its heartbeat no longer
    // lists it, so the job goes back to the queue (and this agent claims it again).
    agent.kill();
    let mut agent = sensor.start(&long);
    let j = eventually("the job to run again as a second attempt", T, || {
        let j = job_show(&portal, &job);
        (j["state"] == "running" && j["attempts"] == 1).then_some(j)
    });
    assert!(j["failure_reason"].is_null(), "{j}");
    assert!(
        agent.out.all().iter().all(|l| !l.contains("registered as"))
            || agent
                .out
                .all()
                .iter()
                .any(|l| l.contains("stored identity")),
        "the restarted agent kept its identity"
    );

    // Lost a second time: the limit is reached, it fails with the reason, once.
    agent.kill();
    let _agent = sensor.start(&long);
    let j = eventually("the job to fail at the attempt limit", T, || {
        let j = job_show(&portal, &job);
        (j["state"] == "failed").then_some(j)
    });
    let reason = j["failure_reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("restarted without it"), "{reason}");
    assert!(reason.contains("given up after 2 attempts"), "{reason}");
    std::thread::sleep(Duration::from_secs(3));
    let j = job_show(&portal, &job);
    assert_eq!(
        (j["state"].as_str(), j["attempts"].as_i64()),
        (Some("failed"), Some(2))
    );
}

#[test]
fn a_job_of_an_agent_gone_for_good_returns_to_the_queue_once_at_lease_end() {
    let portal = Portal::start_with(120, &["--lease", "3"]);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-6", "berlin", &token);
    let mut agent = sensor.start(&["--dry-run-duration", "600s"]);
    agent.out.wait_for("registered as sn_", T);
    let job = portal.ctl(&["job", "scan", "--site", "berlin", "--target", "10.9.0.6"]);
    let job = job.trim().to_owned();
    eventually("the job to be claimed", T, || {
        (job_show(&portal, &job)["state"] == "running").then_some(())
    });
    // Heartbeats renew the lease while the agent runs the job.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(job_show(&portal, &job)["state"], "running");

    agent.kill();
    eventually("the job to return to the queue", T, || {
        let j = job_show(&portal, &job);
        (j["state"] == "queued").then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let j = job_show(&portal, &job);
    assert_eq!(
        (j["state"].as_str(), j["attempts"].as_i64()),
        (Some("queued"), Some(1)),
        "re-queued exactly once: {j}"
    );
    assert!(j["sensor_id"].is_null(), "{j}");
}

#[test]
fn a_scan_cut_short_by_a_kill_is_reported_partial_once_and_not_run_again() {
    // A short lease: the sensor stays down past it and the job goes back to the queue.
    let portal = Portal::start_with(120, &["--lease", "2"]);
    let token = portal.token("berlin", 1);
    let sensor = Sensor::new(&portal, "branch-4", "berlin", &token);
    let mut agent = sensor.start(&["--dry-run-duration", "600s"]);
    let id = registered_id(&agent.out.wait_for("registered as sn_", T));
    let job = portal.ctl(&[
        "job",
        "scan",
        "--site",
        "berlin",
        "--target",
        "10.9.0.0/24",
        "--alive-test",
        "icmp+arp",
    ]);
    let job = job.trim().to_owned();
    eventually("the job to be claimed", T, || {
        (portal.ctl_json(&["job", "show", &job])["state"] == "running").then_some(())
    });

    // The daemon is killed mid-scan. The dry run keeps no results, so the result log is
    // written here as the openvas executor leaves it: the header, one result popped
    // from ospd-openvas, and a line torn by the power going.
    agent.kill();
    let inflight = sensor.data_dir().join("spool/inflight");
    assert!(inflight.is_dir(), "the daemon made {}", inflight.display());
    let log = inflight.join(format!("{job}.jsonl"));
    std::fs::write(
        &log,
        format!(
            concat!(
                r#"{{"rec":"start","job":{job},"scan_id":"2f616d53-595f-4785-9b97-4395116ca118","started_unix":1700000000,"targets":["10.9.0.0/24"],"exclude_hosts":[]}}"#,
                "\n",
                r#"{{"rec":"result","result_type":"Alarm","name":"OpenSSH before 9.3p2","severity":9.8,"host":"10.9.0.2","hostname":"","port":"22/tcp","test_id":"1.3.6.1.4.1.25623.1.0.104870","qod":80,"uri":"","description":"Installed version: 8.9p1"}}"#,
                "\n",
                r#"{{"rec":"result","result_type":"Al"#
            ),
            job = job
        ),
    )
    .unwrap();
    eventually("the lost job to go back to the queue", T, || {
        (portal.ctl_json(&["job", "show", &job])["state"] == "queued").then_some(())
    });

    // Back up: the job ends failed with the partial report instead of running again.
    let mut agent = sensor.start(&["--dry-run-duration", "600s"]);
    agent
        .out
        .wait_for(&format!(r"job {job}: interrupted: outpostd stopped"), T);
    let j = eventually("the job to end failed", T, || {
        let j = portal.ctl_json(&["job", "show", &job]);
        (j["state"] == "failed").then_some(j)
    });
    assert_eq!(j["sensor_id"], id.as_str());
    let reason = j["failure_reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.starts_with("interrupted: "), "{reason}");
    let report = eventually("the partial report", T, || {
        let (ok, out, _) = portal.ctl_status(&["--json", "report", &job]);
        ok.then(|| serde_json::from_str::<Value>(&out).unwrap())
    });
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["partial"], true);
    assert_eq!(
        report["summary"]["live_hosts"],
        serde_json::json!(["10.9.0.2"])
    );
    assert_eq!(report["summary"]["findings"]["high"], 1);
    let xml = portal.ctl(&["report", &job]);
    assert!(xml.contains(r#"status="interrupted""#), "{xml}");
    assert_eq!(xml.matches("<result ").count(), 1, "{xml}");
    eventually("the result log to be gone", T, || {
        (!log.exists()).then_some(())
    });

    // Another restart sends nothing more, and the job is not handed out again.
    agent.kill();
    let _agent = sensor.start(&["--dry-run-duration", "600s"]);
    std::thread::sleep(Duration::from_secs(5));
    let conn = rusqlite::Connection::open(portal.sqlite()).unwrap();
    let reports: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM reports WHERE job_id = ?1",
            [job.parse::<i64>().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reports, 1, "exactly one report");
    assert_eq!(portal.ctl_json(&["job", "show", &job])["state"], "failed");
}
