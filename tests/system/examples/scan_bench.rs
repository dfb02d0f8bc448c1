//! `scripts/bench scan`: the demo scans in QEMU (test image, the guest's demo lab).
//! Prints `scan_s=` (one host, the demo target: job queued to completed at the portal),
//! the agent's resident memory, `outpostd_rss_kib_idle=` (ready, no job) and
//! `outpostd_rss_kib_scanning=` (highest sample while that scan ran), then
//! `lan_scan_24_s=` (the lab's whole /24 with ICMP and ARP alive detection, queued to
//! completed) and `lan_hosts_found=` (live hosts in its report; the lab has
//! `lan_hosts_live=` of them).

use std::time::{Duration, Instant};

use outpost_system_tests::lab::Lab;

fn outpostd_rss_kib(lab: &mut Lab) -> Result<u64, Box<dyn std::error::Error>> {
    let out = lab.vm.run(
        "for p in $(pidof outpostd); do awk '/^VmRSS:/ {print $2}' /proc/$p/status; done | sort -n | tail -n1",
    )?;
    Ok(out
        .stdout
        .trim()
        .parse()
        .map_err(|e| format!("VmRSS of outpostd: {:?}: {e}", out.stdout))?)
}

/// Polls the portal until the job ends; its final state.
fn wait_end(
    lab: &mut Lab,
    job: i64,
    mut each: impl FnMut(&mut Lab, &str),
) -> Result<String, String> {
    let t0 = Instant::now();
    loop {
        let j = lab.job(job);
        let state = j["state"].as_str().unwrap_or_default().to_owned();
        if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
            return Ok(state);
        }
        each(lab, &state);
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(format!("job {job} did not end in 30 minutes"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut lab = Lab::ready("bench");
    lab.demo_lab_up();
    std::thread::sleep(Duration::from_secs(10));
    let idle = outpostd_rss_kib(&mut lab)?;

    let t0 = Instant::now();
    let job = lab.queue_demo_scan("10.9.0.10");
    let mut scanning = 0;
    let mut rss_err = None;
    let state = wait_end(&mut lab, job, |lab, state| {
        if state == "running" {
            match outpostd_rss_kib(lab) {
                Ok(k) => scanning = scanning.max(k),
                Err(e) => rss_err = Some(e.to_string()),
            }
        }
    })?;
    let scan = t0.elapsed().as_secs_f64();
    if let Some(e) = rss_err {
        return Err(e.into());
    }
    if state != "completed" {
        return Err(format!("the demo scan ended {state}").into());
    }

    let live = lab.vm.run("/usr/libexec/outpost/demo-lab hosts")?.stdout;
    let live = live.lines().filter(|l| !l.trim().is_empty()).count();
    let t0 = Instant::now();
    let job = lab.queue_lan_scan();
    let state = wait_end(&mut lab, job, |_, _| {})?;
    let lan = t0.elapsed().as_secs_f64();
    if state != "completed" {
        return Err(format!("the /24 scan ended {state}").into());
    }
    let found = lab.report(job)["summary"]["live_hosts"]
        .as_array()
        .map_or(0, Vec::len);
    lab.vm.kill();
    println!("scan_s={scan:.1}");
    println!("outpostd_rss_kib_idle={idle}");
    println!("outpostd_rss_kib_scanning={scanning}");
    println!("lan_scan_24_s={lan:.1}");
    println!("lan_hosts_found={found}");
    println!("lan_hosts_live={live}");
    Ok(())
}
