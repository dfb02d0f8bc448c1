//! `scripts/bench update`: one A/B update in QEMU (2 vCPUs, software emulation), timed
//! from the portal's side by following the sensor's update state. Prints
//! `bundle_bytes=`, `download_s=` (downloading → installing), `install_s=` (installing →
//! rebooting: verify and slot write) and `reboot_to_committed_s=` (rebooting → committed:
//! the reboot, the trial boot to ready and the commit).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outpost_system_tests::build_image_as;
use outpost_system_tests::lab::Lab;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let next = build_image_as(
        "qemu-arm64",
        "test",
        "qemu-arm64-test-0.2.0",
        &["--version", "0.2.0"],
    )?;
    let bundle = next.bundle()?;
    let bundle_bytes = std::fs::metadata(&bundle)?.len();

    let lab = Lab::ready("bench");
    let id = lab.sensor_id();
    let published = lab
        .portal
        .ctl_json(&["bundle", "publish", &bundle.display().to_string()]);
    let bid = published["id"]
        .as_i64()
        .ok_or_else(|| format!("publish answered {published}"))?;
    lab.portal
        .ctl(&["bundle", "assign", &bid.to_string(), "--sensor", &id]);

    let t0 = Instant::now();
    let mut first_seen: HashMap<String, f64> = HashMap::new();
    loop {
        let s = lab.sensor();
        if let Some(state) = s["update"]["state"].as_str() {
            if s["update"]["version"] == "0.2.0" {
                first_seen
                    .entry(state.to_owned())
                    .or_insert_with(|| t0.elapsed().as_secs_f64());
                match state {
                    "committed" => break,
                    "refused" | "failed" | "rolled_back" => {
                        return Err(format!("the update ended {state}: {s}").into())
                    }
                    _ => {}
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err("the update did not commit in 30 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let at = |k: &str| first_seen.get(k).copied();
    let span = |a: &str, b: &str| match (at(a), at(b)) {
        (Some(x), Some(y)) => Ok(y - x),
        _ => Err(format!("states seen: {first_seen:?}")),
    };
    println!("bundle_bytes={bundle_bytes}");
    println!("download_s={:.1}", span("downloading", "installing")?);
    println!("install_s={:.1}", span("installing", "rebooting")?);
    println!(
        "reboot_to_committed_s={:.1}",
        span("rebooting", "committed")?
    );
    Ok(())
}
