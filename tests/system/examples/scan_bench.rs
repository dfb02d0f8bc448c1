//! `scripts/bench scan`: the demo scan in QEMU (test image, demo target in the guest's
//! demo lab). Prints `scan_s=` (job queued to completed at the portal) and the agent's
//! resident memory, `outpostd_rss_kib_idle=` (ready, no job) and
//! `outpostd_rss_kib_scanning=` (highest sample while the scan ran).

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut lab = Lab::ready("bench");
    lab.demo_lab_up();
    std::thread::sleep(Duration::from_secs(10));
    let idle = outpostd_rss_kib(&mut lab)?;

    let t0 = Instant::now();
    let job = lab.queue_demo_scan("10.9.0.10");
    let mut scanning = 0;
    let state = loop {
        let j = lab.job(job);
        let state = j["state"].as_str().unwrap_or_default().to_owned();
        if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
            break state;
        }
        if state == "running" {
            scanning = scanning.max(outpostd_rss_kib(&mut lab)?);
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err("the demo scan did not end in 30 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let scan = t0.elapsed().as_secs_f64();
    lab.vm.kill();
    if state != "completed" {
        return Err(format!("the demo scan ended {state}").into());
    }
    println!("scan_s={scan:.1}");
    println!("outpostd_rss_kib_idle={idle}");
    println!("outpostd_rss_kib_scanning={scanning}");
    Ok(())
}
