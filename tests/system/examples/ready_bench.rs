//! `scripts/bench boot` (second part): power-on to `ready` of the qemu-arm64 test image
//! with the shipped demo feed, on a fresh image (cold: every VT is loaded into redis)
//! and after a reboot with the feed unchanged (warm: the VT cache comes back from the
//! data partition). The test image is the production image plus a root shell, which
//! the warm boot needs to reboot the guest. Prints `power_on_to_ready_cold_s=`,
//! `power_on_to_ready_s=` and `vt_load_s=` (ospd-openvas start to all VTs listed, cold),
//! then `power_on_to_ready_rtc1970_s=`: a fresh card's first boot with the guest clock
//! at 1970, as a board without a battery-backed clock powers on.

use std::time::{Duration, Instant};

use outpost_system_tests::lab::{Lab, READY_TIMEOUT};

/// `ospd-openvas loaded N VTs in X s` from the ready line.
fn vt_load_s(line: &str) -> Option<f64> {
    let rest = line.split(" VTs in ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut lab = Lab::boot("bench");
    let ready = r"outpost\[bench\]: phase ready done.*";
    let line = lab.vm.wait_for(ready, READY_TIMEOUT)?;
    let cold = t0.elapsed().as_secs_f64();
    let vt = vt_load_s(&line).ok_or_else(|| format!("no VT load time in {line:?}"))?;

    // The reboot is timed from U-Boot's boot script, i.e. from power-on of the next boot.
    lab.vm.reboot(Duration::from_secs(120))?;
    let t1 = Instant::now();
    lab.vm.wait_for(ready, READY_TIMEOUT)?;
    let warm = t1.elapsed().as_secs_f64();
    lab.vm.kill();
    drop(lab);

    let t2 = Instant::now();
    let mut lab = Lab::boot_at("bench", "", Some("1970-01-01T00:00:00"));
    lab.vm.wait_for(ready, READY_TIMEOUT)?;
    let rtc1970 = t2.elapsed().as_secs_f64();
    lab.vm.kill();
    println!("power_on_to_ready_cold_s={cold:.1}");
    println!("power_on_to_ready_s={warm:.1}");
    println!("vt_load_s={vt:.1}");
    println!("power_on_to_ready_rtc1970_s={rtc1970:.1}");
    Ok(())
}
