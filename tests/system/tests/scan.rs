//! The scanner in the real image, in QEMU, on one machine that lives through all of it
//! (a cold boot to `ready` in emulation costs a minute, so one boot serves every check):
//! - with the shipped demo feed and its thresholds the sensor reports all six phases at
//!   the portal, in order, ending in `ready`, and nothing listens beyond loopback;
//! - real scans of the demo lab, a small branch LAN inside the guest (hosts in network
//!   namespaces on one bridge, demo-lab), so no scan packet leaves the guest: out of
//!   scope refused before any packet; the whole /24 with ICMP and ARP alive detection
//!   finds exactly the live hosts (one ignores ICMP, one only ARP reaches), reports the
//!   rest dead and the findings per host; an authenticated scan of the SSH host reports
//!   the Notus findings for its flagged package, and its password is nowhere in clear
//!   (sensor disk, logs, console, portal database and log); the tunnel carried nothing
//!   but portal traffic;
//! - a reboot with the feed unchanged finds the VT cache current and does not reload it;
//! - cancel gives a partial report; ospd-openvas killed mid-scan fails the job and
//!   comes back; outpostd killed mid-scan reports what it had collected, once.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_e2e_tests::eventually;
use outpost_system_tests::lab::Lab;

const SCAN: Duration = Duration::from_secs(900);
const IN_SCOPE: &str = "10.9.0.10";
const OUT_OF_SCOPE: &str = "10.9.1.10";
/// The demo lab's live hosts (image/test-overlay/usr/libexec/outpost/demo-lab).
const LAB_LIVE: [&str; 5] = [
    "10.9.0.10",
    "10.9.0.11",
    "10.9.0.12",
    "10.9.0.13",
    "10.9.0.20",
];
const SSH_HOST: &str = "10.9.0.20";

/// A password for the lab's SSH host, new for every run.
fn lab_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("Outpost-lab-{nanos:x}-{}", std::process::id())
}

/// SHA-512 crypt(3) hash of `password`, as /etc/shadow holds it.
fn crypt_hash(password: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(password.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl passwd runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Addresses and `a-b` ranges as a list of addresses.
fn expand(items: &[String]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for i in items {
        let (a, b) = i.split_once('-').unwrap_or((i, i));
        let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
        out.extend((u32::from(a)..=u32::from(b)).map(Ipv4Addr::from));
    }
    out
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// TCP sockets in LISTEN state that are not bound to loopback, from /proc/net/tcp{,6}.
fn non_loopback_listeners(proc_net_tcp: &str) -> Vec<String> {
    proc_net_tcp
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ...; st 0A is LISTEN
            (f.len() > 3 && f[3] == "0A").then(|| f[1].to_owned())
        })
        .filter(|local| {
            let ip = local.split(':').next().unwrap_or_default();
            // 127.0.0.0/8 (little-endian hex, so the last byte is 7F) and ::1
            !(ip.len() == 8 && ip.ends_with("7F")) && ip != "00000000000000000000000001000000"
        })
        .collect()
}

/// The phases the portal saw end (done or skipped), in the order it saw them.
fn phases_done(lab: &Lab, id: &str) -> Option<Vec<String>> {
    let log = lab.portal.ctl_json(&["sensor", "log", id]);
    let done: Vec<String> = log
        .as_array()?
        .iter()
        .filter(|e| e["event"] == "phase" && (e["outcome"] == "done" || e["outcome"] == "skipped"))
        .map(|e| e["phase"].as_str().unwrap_or("").to_owned())
        .collect();
    done.contains(&"ready".to_string()).then_some(done)
}

#[test]
fn the_scanner_reaches_ready_scans_in_scope_only_keeps_its_vt_cache_and_recovers() {
    let mut lab = Lab::ready("scan");
    let id = lab.sensor_id();

    // --- cold boot: six phases in order, the VTs loaded into redis --------------------
    let order = eventually("the ready event at the portal", SCAN, || {
        phases_done(&lab, &id)
    });
    let expected = [
        "provision",
        "wg_up",
        "feed_sync",
        "feed_ready",
        "scanner_boot",
        "ready",
    ];
    let positions: Vec<Option<usize>> = expected
        .iter()
        .map(|p| order.iter().position(|o| o == p))
        .collect();
    assert!(
        positions.iter().all(Option::is_some),
        "all six phases reported: {order:?}"
    );
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in order: {order:?}"
    );
    let ospd_log = "/var/log/gvm/ospd-openvas.log";
    let cold = lab.vm.run(&format!("cat {ospd_log}")).unwrap().stdout;
    assert!(
        cold.contains("The VT cache has been updated"),
        "the first boot loads the VTs: {cold}"
    );

    // --- scans ------------------------------------------------------------------------
    // Ready, the whole OpenVAS stack up: nothing listens on the LAN side.
    let tcp = lab
        .vm
        .run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")
        .unwrap()
        .stdout;
    assert!(tcp.contains("local_address"), "{tcp}");
    let open = non_loopback_listeners(&tcp);
    assert!(
        open.is_empty(),
        "TCP listeners beyond loopback: {open:?}\n{tcp}"
    );
    // The lab's SSH host gets a fresh password; only its crypt hash enters the guest.
    let password = lab_password();
    lab.demo_lab_up_with(&crypt_hash(&password));
    let dump = "stat -c %Y /data/redis/openvas-dump.rdb 2>/dev/null || echo none";
    let dump_before = lab.vm.run(dump).unwrap().stdout;

    // Out of scope: the job fails with the scope reason and nothing reaches the lab.
    let before = lab.lab_packets();
    let job = lab.queue_demo_scan(OUT_OF_SCOPE);
    let done = lab.wait_job_final(job, SCAN);
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("outside the allowed scope") && reason.contains(OUT_OF_SCOPE),
        "reason names the scope: {reason}"
    );
    assert_eq!(
        lab.lab_packets(),
        before,
        "no packet was sent toward the out-of-scope target"
    );

    // The branch LAN: the whole /24 but the sensor's own address, hosts found by ICMP
    // and ARP, which needs raw sockets: openvas holds CAP_NET_RAW and CAP_NET_ADMIN
    // (file capabilities), ospd-openvas none.
    let job = lab.queue_lan_scan();
    eventually("the scan to run", SCAN, || {
        (lab.job(job)["state"] == "running").then_some(())
    });
    let caps = lab
        .vm
        .run(
            // openvas forks per host and its children come and go: the first one
            // still there
            "for i in $(seq 120); do for p in $(pidof openvas); do \
               grep CapEff /proc/$p/status 2>/dev/null && break 2; done; sleep 0.5; done; \
             grep CapEff /proc/$(cat /run/ospd/ospd-openvas.pid)/status",
        )
        .expect("the scanner's capabilities")
        .stdout;
    let eff: Vec<&str> = caps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    // bit 12 CAP_NET_ADMIN, bit 13 CAP_NET_RAW
    assert_eq!(
        eff,
        vec!["0000000000003000", "0000000000000000"],
        "openvas then ospd-openvas: {caps}"
    );
    let done = lab.wait_job_final(job, SCAN);
    if done["state"] != "completed" {
        panic!("the scan did not complete: {done}\n{}", lab.scanner_logs());
    }
    let report = lab.report(job);
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["partial"], false);
    let summary = &report["summary"];
    // Exactly the lab's live hosts: the ones answering ICMP, the one with ICMP
    // dropped and the one only ARP reaches.
    assert_eq!(strs(&summary["live_hosts"]), LAB_LIVE, "{summary}");
    let dead = expand(&strs(&summary["dead_hosts"]));
    for last in (2..=9).chain(14..=19).chain(21..=254) {
        let a = Ipv4Addr::new(10, 9, 0, last);
        assert!(dead.contains(&a), "{a} reported dead: {summary}");
    }
    for a in LAB_LIVE.iter().chain(&["10.9.0.1"]) {
        let a: Ipv4Addr = a.parse().unwrap();
        assert!(!dead.contains(&a), "{a} not dead: {summary}");
    }
    let ports = strs(&summary["ports"]);
    for p in [
        "10.9.0.10:2121/tcp",
        "10.9.0.10:8080/tcp",
        "10.9.0.11:8080/tcp",
        "10.9.0.12:2121/tcp",
    ] {
        assert!(ports.iter().any(|x| x == p), "{p} in {ports:?}");
    }
    assert!(
        !ports.iter().any(|p| p.starts_with("10.9.0.13:")),
        "no IP reply comes back from the ARP-only host: {ports:?}"
    );
    let per_host = |h: &str| -> serde_json::Value {
        summary["per_host"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["host"] == h))
            .cloned()
            .unwrap_or_else(|| panic!("{h} in per_host: {summary}"))
    };
    for (host, high) in [("10.9.0.10", 2), ("10.9.0.11", 1), ("10.9.0.12", 1)] {
        let h = per_host(host);
        if h["findings"]["high"].as_u64().unwrap_or(0) < high {
            panic!(
                "the vulnerable-version check fires on {host}: {h}\n{}",
                lab.scanner_logs()
            );
        }
        assert_eq!(h["complete"], true, "{h}");
    }
    let xml = report["content"].as_str().unwrap_or_default();
    for (oid, what) in [
        ("1.3.6.1.4.1.25623.1.0.990002", "banner"),
        ("1.3.6.1.4.1.25623.1.0.990003", "HTTP Server header"),
        ("1.3.6.1.4.1.25623.1.0.990004", "vulnerable version"),
    ] {
        assert!(xml.contains(oid), "the {what} VT ({oid}) reported");
    }
    assert!(
        xml.contains("OutpostDemo/1.0"),
        "the banner text is in the report"
    );
    assert!(lab.lab_packets() > before, "the scan did reach the lab");

    // An authenticated scan of the SSH host: the demo gatherer logs in, hands the
    // installed packages to notus-scanner, which flags outpost-demo-daemon 1.0-1
    // (DEMO-2024-0001 and -0003) but not outpost-demo-tools 1.0.2-1 (-0002, fixed).
    let secret_dir = tempfile::tempdir().unwrap();
    let pw_file = secret_dir.path().join("ssh-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let job = lab.queue_scan(&[
        "--target",
        SSH_HOST,
        "--ports",
        "T:22",
        "--family",
        "Port scanners",
        "--family",
        "Outpost Demo Local Security Checks",
        "--alive-test",
        "icmp+arp",
        "--ssh-user",
        "labadmin",
        "--ssh-password-file",
        pw_file.to_str().unwrap(),
    ]);
    let done = lab.wait_job_final(job, SCAN);
    if done["state"] != "completed" {
        panic!(
            "the authenticated scan did not complete: {done}\n{}",
            lab.scanner_logs()
        );
    }
    let report = lab.report(job);
    let xml = report["content"].as_str().unwrap_or_default();
    assert!(
        xml.contains("installed packages handed to Notus"),
        "the login worked: {}\n{}",
        xml,
        lab.scanner_logs()
    );
    for oid in [
        "1.3.6.1.4.1.25623.1.1.990.2024.1",
        "1.3.6.1.4.1.25623.1.1.990.2024.3",
    ] {
        if !xml.contains(oid) {
            let console = lab.vm.console();
            let notus: Vec<&str> = console
                .lines()
                .filter(|l| {
                    let l = l.to_lowercase();
                    l.contains("notus") || l.contains("mosquitto") || l.contains("lsc")
                })
                .collect();
            panic!(
                "the Notus finding {oid} for outpost-demo-daemon: {xml}\n{}\n{}",
                lab.scanner_logs(),
                notus.join("\n")
            );
        }
    }
    assert!(
        !xml.contains("1.3.6.1.4.1.25623.1.1.990.2024.2"),
        "outpost-demo-tools is at the fixed version: {xml}"
    );
    assert!(
        report["summary"]["findings"]["high"].as_u64().unwrap_or(0) >= 1,
        "{}",
        report["summary"]
    );

    // The credential is nowhere in clear: not on the sensor's card, in its logs or
    // on its console; not in the portal's database or log. (The guest searches for it
    // in two halves, so the command itself does not carry it.)
    let (p1, p2) = password.split_at(password.len() / 2);
    let found = lab
        .vm
        .run(&format!(
            "p1='{p1}'; p2='{p2}'; grep -rlF \"$p1$p2\" /data /var/log /etc /tmp /root 2>/dev/null; echo searched"
        ))
        .unwrap()
        .stdout;
    assert_eq!(
        found.trim(),
        "searched",
        "files holding the SSH password: {found}"
    );
    assert_eq!(
        lab.vm.run(dump).unwrap().stdout,
        dump_before,
        "redis did not write its dump (scan knowledge bases hold credentials) during scans"
    );
    assert!(
        !lab.vm.console().contains(&password),
        "the console shows the password"
    );
    for f in walk(lab.portal.dir.path()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "{} holds the SSH password in clear",
            f.display()
        );
    }
    let portal_log = lab
        .portal
        .proc
        .as_ref()
        .map(|p| p.out.all())
        .unwrap_or_default();
    assert!(!portal_log.is_empty());
    assert!(
        !portal_log.iter().any(|l| l.contains(&password)),
        "the portal logged the password"
    );

    // The tunnel only ever carried traffic for the portal.
    let sensor = lab.portal.ctl_json(&["sensor", "show", &id]);
    let tunnel = &sensor["tunnel"];
    assert!(tunnel["rx_packets"].as_u64().unwrap_or(0) > 0, "{sensor}");
    assert_eq!(tunnel["dropped_not_for_us"], 0, "{sensor}");
    assert_eq!(tunnel["dropped_spoofed_source"], 0, "{sensor}");

    // --- warm boot, feed unchanged: redis brings its dump back from /data, so
    // ospd-openvas finds the cache at the feed's version ------------------------------
    lab.vm.run(&format!(": > {ospd_log}")).unwrap();
    lab.vm.reboot(SCAN).unwrap();
    lab.wait_ready();
    let warm = lab.vm.run(&format!("cat {ospd_log}")).unwrap().stdout;
    assert!(
        warm.contains("VTs were up to date"),
        "a warm boot finds the VT cache current: {warm}"
    );
    assert!(
        !warm.contains("The VT cache has been updated"),
        "and does not reload it: {warm}"
    );

    // --- scans cut short --------------------------------------------------------------
    lab.demo_lab_up();
    // Cancel while it runs: a partial report marked cancelled.
    let job = lab.queue_demo_scan(IN_SCOPE);
    eventually("the scan to run", SCAN, || {
        (lab.job(job)["state"] == "running").then_some(())
    });
    lab.portal.ctl(&["job", "cancel", &job.to_string()]);
    let done = lab.wait_job_final(job, SCAN);
    assert_eq!(done["state"], "cancelled", "{done}");
    let report = lab.report(job);
    assert_eq!(report["outcome"], "cancelled");
    assert_eq!(report["partial"], true);

    // Kill ospd-openvas mid-scan: the job fails with the reason, the agent restarts
    // the scanner and the sensor is ready again.
    let job = lab.queue_demo_scan(IN_SCOPE);
    eventually("the second scan to run", SCAN, || {
        (lab.job(job)["state"] == "running").then_some(())
    });
    let killed = lab
        .vm
        .run("pid=$(cat /run/ospd/ospd-openvas.pid) && kill -9 \"$pid\" && echo killed")
        .expect("kill runs");
    assert!(
        killed.stdout.contains("killed"),
        "ospd-openvas was running: {killed:?}"
    );
    let done = lab.wait_job_final(job, SCAN);
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("ospd-openvas"),
        "the reason names the scanner: {done}"
    );
    lab.wait_ready();
    eventually("the portal to see ready again", SCAN, || {
        let s = lab.portal.ctl_json(&["sensor", "show", &id]);
        (s["phase"] == "ready").then_some(())
    });

    // outpostd killed mid-scan, once results are on the card: the restarted daemon
    // reports the job interrupted and uploads what it had collected, marked partial,
    // once; the job is not run again.
    let job = lab.queue_demo_scan(IN_SCOPE);
    let log = format!("/data/outpost/spool/inflight/{job}.jsonl");
    let lines = eventually("results of the scan on the card", SCAN, || {
        let out = lab.vm.run(&format!("wc -l < {log}")).ok()?;
        let n: u64 = out.stdout.trim().parse().ok()?;
        // the header line, then one line per batch of results
        (n >= 2).then_some(n)
    });
    let killed = lab
        .vm
        .run("kill -9 $(pidof outpostd) && echo killed")
        .expect("kill runs");
    assert!(killed.stdout.contains("killed"), "{killed:?}");
    println!("outpostd killed with {lines} lines in {log}");
    let done = lab.wait_job_final(job, SCAN);
    assert_eq!(done["state"], "failed", "{done}");
    let reason = done["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("interrupted"), "{done}");
    // (the job's end is posted before the spooled report goes out)
    let report = eventually("the partial report at the portal", SCAN, || {
        let (ok, out, _) = lab
            .portal
            .ctl_status(&["--json", "report", &job.to_string()]);
        ok.then(|| serde_json::from_str::<serde_json::Value>(&out).ok())
            .flatten()
    });
    assert_eq!(report["partial"], true, "{report}");
    let xml = report["content"].as_str().unwrap_or_default();
    assert!(
        xml.contains("<result "),
        "the results collected before the kill are in the report: {report}"
    );
    lab.wait_ready();
    // Not run again, and no second report: the job stays as it ended.
    let again = lab.job(job);
    assert_eq!(again["state"], "failed", "{again}");
    assert_eq!(
        lab.vm
            .console()
            .matches(&format!("job {job}: interrupted"))
            .count(),
        1,
        "the job was recovered once"
    );
    lab.vm.kill();
}
