//! `scripts/bench boot`: power-on to `outpostd` of the rpi4 image in QEMU 10's `raspi4b`
//! machine (4 emulated cores on this machine, SD card at under 1 MiB/s). Prints
//! `rpi4_qemu_power_on_to_outpostd_s=`.

use std::time::{Duration, Instant};

use outpost_system_tests::build_image;
use outpost_system_tests::rpi4::Rpi4Qemu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let built = build_image("rpi4", "production")?;
    let mut pi = Rpi4Qemu::new(&built)?;
    let t0 = Instant::now();
    pi.power_on()?;
    pi.wait_for(r"outpost: starting outpostd", Duration::from_secs(600))?;
    println!(
        "rpi4_qemu_power_on_to_outpostd_s={:.1}",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
