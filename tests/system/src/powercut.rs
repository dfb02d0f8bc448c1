//! Power cuts during updates, in QEMU. The machine is killed at random moments during
//! the download, the slot write, the boot-state change and the first boot of the new
//! slot, and powered on again. After every cut the sensor must come back healthy on a
//! good slot, and the portal's update state must agree with the slot it runs: an update
//! still under way runs from the old slot, `committed` from the new one, `failed` or
//! `rolled_back` from the old one. The update carries on by itself after each cut
//! (a download resumes where it stopped); when it ends, the next version is published.
//!
//! The sensor runs with `[scanner] enabled = false`, so a boot is healthy once the
//! portal answers through the tunnel (seconds instead of the minute the OpenVAS stack
//! takes); the scanner's part of the health check is in tests/update.rs. The seed is
//! printed; `OUTPOST_POWERCUT_SEED=N` replays a run.
//!
//! The test suite runs a short campaign (every moment twice, tests/powercut.rs);
//! `scripts/bench powercut [CUTS]` runs a long one and prints its figures.

use std::time::Duration;

use std::collections::BTreeMap;
use std::time::Instant;

use outpost_e2e_tests::eventually;
use regex::Regex;

use crate::build_image;
use crate::lab::{slot_bundle, Lab};

const STEP: Duration = Duration::from_secs(600);

/// xorshift64*: enough randomness for cut moments, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("OUTPOST_POWERCUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("power-cut seed {seed} (OUTPOST_POWERCUT_SEED={seed} replays the choices)");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A delay between `lo` and `hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// Where the update stood when the power went: the last telling console line of this
/// boot decides (the cut is aimed at a moment, but the device may have moved on).
fn moment_at(console: &str) -> &'static str {
    let mut now = "before the update";
    for line in console.lines() {
        if line.contains(": downloading") {
            now = "download";
        } else if line.contains(": downloaded") {
            now = "download check";
        } else if line.contains(": installing into slot") {
            now = "slot write";
        } else if line.contains(" installed into slot ") {
            now = "boot-state change";
        } else if line.contains("is on trial") {
            now = "first boot";
        } else if line.contains("health check passed: slot") && now == "first boot" {
            now = "after the commit";
        }
    }
    now
}

/// Waits until the portal's update state for `version` agrees with the slot the sensor
/// runs (`slot` is the one it ran before the update) and returns `sensor show`. The only
/// failure a power cut may cause is an update cut off before its slot was made active.
fn coherent_state(lab: &Lab, version: &str, slot: &str, when: &str) -> serde_json::Value {
    let s = eventually(&format!("{when}: a coherent state"), STEP, || {
        let s = lab.sensor();
        let u = &s["update"];
        if u["version"] != version {
            return None; // the first report of this update has not come yet
        }
        let want = match u["state"].as_str()? {
            "committed" => other(slot),
            "failed" | "rolled_back" => slot,
            // still under way: from the old slot, or the new one before its commit
            // report arrived (then `committed` follows)
            "downloading" | "installing" => slot,
            "refused" => panic!("{when}: a good bundle was refused: {s}"),
            _ => return None,
        };
        (s["boot_slot"] == want).then_some(s)
    });
    let u = &s["update"];
    if u["state"] == "failed" {
        let reason = u["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("interrupted before activation"),
            "{when}: update {version} failed for a reason no power cut explains: {reason}"
        );
    }
    s
}

fn other(slot: &str) -> &'static str {
    if slot == "a" {
        "b"
    } else {
        "a"
    }
}

/// What a campaign saw.
#[derive(Debug, Clone, Default)]
pub struct Campaign {
    pub cuts: u32,
    /// Where the cuts landed (the last telling console line before each cut).
    pub by_moment: BTreeMap<&'static str, u32>,
    /// Downloads cut well into their run that resumed (or found the file complete).
    pub resumed: u32,
    /// How each update ended: committed, failed, rolled_back.
    pub outcomes: BTreeMap<String, u32>,
    pub elapsed: Duration,
}

/// Cuts the power `trials` times during updates (over as many updates as that takes)
/// and checks every cut comes back healthy on a good slot with the portal agreeing.
/// Panics, naming the cut, on the first that does not.
pub fn run(trials: u32) -> Campaign {
    let started = Instant::now();
    let built = build_image("qemu-arm64", "test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::seeded();
    let mut lab = Lab::boot_with(
        "cut",
        "[scanner]\nenabled = false\n\n[update]\nhealth_deadline_s = 120\n",
    );
    lab.wait_ready();
    let id = lab.sensor_id();
    // The bundles all carry this build's slot (their manifests differ in version), so
    // the slot the sensor runs is what tells the outcomes apart.
    let mut slot = lab.sensor()["boot_slot"]
        .as_str()
        .expect("the sensor reports its slot")
        .to_owned();
    let mut cuts = 0;
    let mut seen = BTreeMap::<&'static str, u32>::new();
    let mut cycle = 0;
    let mut resumed = 0;
    let mut outcomes = BTreeMap::<String, u32>::new();
    while cuts < trials {
        cycle += 1;
        let version = format!("0.2.{cycle}");
        let file = slot_bundle(&built, "outpost,qemu-arm64", &version, true, dir.path());
        let published = lab
            .portal
            .ctl_json(&["bundle", "publish", &file.display().to_string()]);
        let bid = published["id"].as_i64().expect("bundle id");
        lab.portal
            .ctl(&["bundle", "assign", &bid.to_string(), "--sensor", &id]);
        let v = version.replace('.', r"\.");
        let line = format!(r"job \d+: update to {v}[ :]");
        // how the job's end reads on the console (the job's own line, or the verdict a
        // later boot gives: "update 0.2.1 failed: interrupted before activation ...")
        let ended = format!(r"update (?:to )?{v} (?:failed|refused|rolled back): ");
        let outcome = loop {
            // The cuts take turns aiming at the four moments; each waits for its marker
            // in this boot's console (a resumed job prints them again in order).
            let aim =
                ["download", "slot write", "boot-state change", "first boot"][(cuts % 4) as usize];
            let marker = match aim {
                // (a job whose download was complete says "downloaded before")
                "download" => "download",
                "slot write" => "installing into slot",
                _ => "installed into slot",
            };
            // ... or for the job's end, if it ends before that moment comes
            let at = lab
                .vm
                .wait_for(&format!("{line}.*{marker}|{ended}"), STEP)
                .unwrap();
            if Regex::new(&ended).unwrap().is_match(&at) {
                println!("update {version} ended before a cut at the {aim}: {at}");
                let s = coherent_state(&lab, &version, &slot, "the end of the update");
                break s["update"]["state"].as_str().unwrap_or_default().to_owned();
            }
            let (moment, delay) = match aim {
                "download" => ("download", rng.ms(1000, 30000)),
                "slot write" => ("slot write", rng.ms(0, 15000)),
                "boot-state change" => {
                    if rng.next() % 2 == 0 {
                        // around the boot-state write and the reboot it starts
                        ("boot-state change", rng.ms(0, 1500))
                    } else {
                        // while U-Boot's script counts the new slot's try down
                        lab.vm
                            .wait_for("outpost-boot: boot script started", STEP)
                            .unwrap();
                        ("boot-state change (U-Boot)", rng.ms(0, 2500))
                    }
                }
                _ => {
                    lab.vm
                        .wait_for("outpost-boot: boot script started", STEP)
                        .unwrap();
                    ("first boot", rng.ms(2000, 30000))
                }
            };
            std::thread::sleep(delay);
            let landed = moment_at(&lab.vm.console());
            lab.power_cycle();
            cuts += 1;
            *seen.entry(landed).or_default() += 1;
            println!(
                "cut {cuts}: aimed at {moment}, landed in {landed}, {delay:?} after `{at}` \
                 (slot {slot}, {version})"
            );

            // Back on a good slot: outpostd marked the running slot good in this boot.
            eventually(&format!("cut {cuts}: a healthy boot"), STEP, || {
                let h = lab
                    .vm
                    .run("test -e /run/outpost/healthy && echo good")
                    .ok()?;
                h.stdout.contains("good").then_some(())
            });
            // A download cut well into its run (several synced MiB) continues after what
            // reached the disk, or finds it complete: it never starts over.
            if landed == "download" && delay >= Duration::from_secs(15) {
                let job = format!("update to {version} (bundle ");
                let line = eventually(&format!("cut {cuts}: the job to resume"), STEP, || {
                    lab.vm
                        .console()
                        .lines()
                        .find(|l| l.contains(&job))
                        .map(str::to_owned)
                });
                println!("cut {cuts}: {line}");
                assert!(
                    line.contains("(resuming at byte ") || line.contains("downloaded before"),
                    "cut {cuts}: the download started over: {line}"
                );
                resumed += 1;
            }
            // And the portal agrees with what runs.
            let s = coherent_state(&lab, &version, &slot, &format!("cut {cuts}"));
            let state = s["update"]["state"].as_str().unwrap_or_default().to_owned();
            println!(
                "cut {cuts}: healthy on slot {}, update {state}",
                s["boot_slot"]
            );
            if matches!(state.as_str(), "committed" | "failed" | "rolled_back") {
                break state;
            }
            if cuts >= trials {
                // let the last update finish so the end state is checked too
                let s = eventually("the last update to end", STEP * 2, || {
                    let s = lab.sensor();
                    let st = s["update"]["state"].as_str()?.to_owned();
                    matches!(st.as_str(), "committed" | "failed" | "rolled_back").then_some(s)
                });
                break s["update"]["state"].as_str().unwrap_or_default().to_owned();
            }
        };
        *outcomes.entry(outcome.clone()).or_default() += 1;
        if outcome == "committed" {
            slot = other(&slot).to_owned();
        }
        let s = eventually("the sensor on the expected slot", STEP, || {
            let s = lab.sensor();
            (s["boot_slot"] == slot.as_str()).then_some(s)
        });
        println!(
            "update {version}: {outcome}; running slot {}",
            s["boot_slot"]
        );
    }
    println!("cuts by moment: {seen:?}; downloads resumed after a cut: {resumed}");
    lab.vm.kill();
    Campaign {
        cuts,
        by_moment: seen,
        resumed,
        outcomes,
        elapsed: started.elapsed(),
    }
}
