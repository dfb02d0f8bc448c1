//! `scripts/bench powercut [CUTS]`: a long power-cut campaign during updates in QEMU
//! (default 100 cuts; `OUTPOST_POWERCUT_SEED=N` replays one). Every cut must come back
//! healthy on a good slot (the run stops at the first that does not). Prints
//! `powercut_cuts=`, `powercut_cuts_<moment>=` per moment the cuts landed in,
//! `powercut_downloads_resumed=`, `powercut_updates_<outcome>=` and `powercut_s=`.

use outpost_system_tests::powercut;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cuts: u32 = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("CUTS must be a positive number, not {n:?}"))?,
        None => 100,
    };
    if cuts == 0 {
        return Err("CUTS must be a positive number".into());
    }
    let c = powercut::run(cuts);
    println!("powercut_cuts={}", c.cuts);
    for (moment, n) in &c.by_moment {
        println!("powercut_cuts_{}={n}", moment.replace([' ', '-'], "_"));
    }
    println!("powercut_downloads_resumed={}", c.resumed);
    for (outcome, n) in &c.outcomes {
        println!("powercut_updates_{outcome}={n}");
    }
    println!("powercut_s={:.0}", c.elapsed.as_secs_f64());
    Ok(())
}
