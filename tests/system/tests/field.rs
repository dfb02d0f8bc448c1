//! What a branch site does to a sensor that QEMU's `virt` machine hides, in one machine
//! that lives through all of it (each boot serves several checks):
//! - it powers on with its clock at 1970 (a Pi has no battery-backed clock): it
//!   registers, reaches `ready`, and its clock ends within seconds of the host's;
//! - `outpostd` stopped (SIGSTOP): the hardware watchdog resets the board, and the
//!   sensor comes back with its clock behind again (the RTC still counts from 1970)
//!   and reaches `ready` without registering again;
//! - a kernel panic resets the board (`panic=`), on the same committed slot, which
//!   spends no try;
//! - the sensor's address on the tunnel NIC changes while it runs: the tunnel takes a
//!   new socket and heartbeats flow again without a restart;
//! - a slot on trial whose kernel panics, with the portal out of reach: each panic
//!   resets the board and spends one of the slot's tries, then the board falls back to
//!   the committed slot;
//! - five power cycles with the portal out of reach: still on the same slot and
//!   version, and `ready` once the portal is back;
//! - a data partition damaged beyond repair: the board does not reboot in a loop, the
//!   console names the problem, and with a new token the sensor enrolls again and tells
//!   the portal what happened.
//!
//! The sensor runs with `[scanner] enabled = false`: these are boot and control-plane
//! checks, and each boot then reaches `ready` in seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use outpost_bootctl::store::COPY_NAMES;
use outpost_bootctl::{BootControl, Slot, UbootFileEnv};
use outpost_e2e_tests::eventually;
use outpost_system_tests::lab::Lab;

const STEP: Duration = Duration::from_secs(300);

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The guest's clock minus the host's, in seconds.
fn guest_skew(lab: &mut Lab) -> Option<i64> {
    let out = lab.vm.run("date +%s").ok()?;
    let guest: i64 = out.stdout.trim().parse().ok()?;
    Some(guest - host_now())
}

/// Makes `slot` active and on trial in the running guest's boot state, as an installed
/// update would (the two slots of the test image hold the same build): the copies are
/// read out, changed with the product's own boot-state code and written back in place.
fn put_on_trial(lab: &mut Lab, running: Slot, slot: Slot) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempfile::tempdir().expect("temp dir");
    let boot = tmp.path().join("boot");
    std::fs::create_dir(&boot).expect("boot dir");
    for name in COPY_NAMES {
        let out = lab
            .vm
            .run(&format!("base64 /boot/{name} | tr -d '\\n'"))
            .expect("read a boot-state copy");
        if out.success() && !out.stdout.trim().is_empty() {
            let bytes = b64
                .decode(out.stdout.trim())
                .expect("base64 from the guest");
            std::fs::write(boot.join(name), bytes).expect("copy");
        }
    }
    let cmdline = tmp.path().join("cmdline");
    std::fs::write(&cmdline, format!("ro outpost.slot={running}\n")).expect("cmdline");
    UbootFileEnv::new(&boot)
        .with_cmdline(&cmdline)
        .mark_active(slot)
        .expect("mark the slot active");
    for name in COPY_NAMES {
        let Ok(bytes) = std::fs::read(boot.join(name)) else {
            continue;
        };
        // In pieces: the console's line discipline takes at most 4095 bytes a line.
        let text = b64.encode(bytes);
        lab.vm.run("rm -f /tmp/bootstate.b64").expect("shell");
        for piece in text.as_bytes().chunks(1024) {
            let piece = std::str::from_utf8(piece).expect("base64 is ASCII");
            lab.vm
                .run(&format!("printf %s {piece} >>/tmp/bootstate.b64"))
                .expect("shell");
        }
        let out = lab
            .vm
            .run(&format!(
                "base64 -d /tmp/bootstate.b64 | dd of=/boot/{name} conv=notrunc 2>/dev/null && sync && echo written"
            ))
            .expect("write a boot-state copy");
        assert!(out.stdout.contains("written"), "{}", out.stdout);
    }
}

/// Waits until the guest's test shell answers (after a reset).
fn shell_up(lab: &mut Lab) {
    eventually("the test shell", STEP, || {
        lab.vm
            .run_timeout("echo up", Duration::from_secs(10))
            .ok()
            .filter(|o| o.stdout.contains("up"))
    });
}

#[test]
fn a_sensor_without_clock_watchdog_or_portal_comes_back_by_itself() {
    let mut lab = Lab::boot_at(
        "field",
        "[scanner]\nenabled = false\n",
        Some("1970-01-01T00:00:00"),
    );
    let name = regex::escape(&lab.name);

    // --- first boot at 1970 ----------------------------------------------------------
    let line = lab
        .vm
        .wait_for(
            r"clock was 1970-01-01T.*behind the time floor: set to",
            STEP,
        )
        .expect("outpostd raises a 1970 clock to its time floor");
    println!("{line}");
    lab.vm
        .wait_for(&format!(r"outpost\[{name}\]: registered as "), STEP)
        .expect("the sensor registers with its clock at 1970");
    lab.wait_ready();
    let skew = eventually("the guest clock near the host's", STEP, || {
        guest_skew(&mut lab).filter(|s| s.abs() <= 5)
    });
    println!("guest clock {skew:+} s from the host's after the first boot");
    let console = lab.vm.console();
    assert!(
        console.contains("clock set from the portal's time"),
        "the portal's time was not taken"
    );
    assert!(
        !console.contains("not valid yet"),
        "a certificate was judged against a wrong clock"
    );
    assert!(
        console.contains("watchdog /dev/watchdog armed"),
        "the hardware watchdog was not armed"
    );
    let id = lab.sensor_id();

    // --- a new address on the tunnel NIC (a new DHCP lease) ---------------------------
    let changed = host_now();
    let out = lab
        .vm
        .run("ip addr flush dev eth1 && ip addr add 10.0.3.3/24 dev eth1 && echo moved")
        .expect("the address changes");
    assert!(out.stdout.contains("moved"), "{}", out.stdout);
    lab.vm
        .wait_for(r"tunnel socket rebound", STEP)
        .expect("the tunnel takes a new socket from the new address");
    eventually("heartbeats through the tunnel again", STEP, || {
        let last = lab.sensor()["last_heartbeat"].as_i64()?;
        (last > changed + 2).then_some(())
    });

    let slot = lab.sensor()["boot_slot"]
        .as_str()
        .expect("the sensor reports its slot")
        .to_owned();

    // --- a stuck outpostd: the watchdog resets the board -----------------------------
    let at = lab
        .vm
        .run_until_reset("kill -STOP $(pidof outpostd)", STEP)
        .expect("the watchdog resets the board when outpostd stops");
    println!("after SIGSTOP: {at}");
    lab.vm
        .wait_for(
            &format!("outpost-boot: booting slot {}", slot.to_uppercase()),
            STEP,
        )
        .expect("U-Boot boots the same slot");
    // The clock is behind again (the RTC counts from 1970): the kept floor is applied
    // before the tunnel starts, so the gateway takes the handshake (no replay).
    lab.vm
        .wait_for(r"clock was 1970-01-01T.*behind the time floor", STEP)
        .expect("the second boot starts behind its time floor too");
    lab.vm
        .wait_for(
            &format!(r"outpost\[{name}\]: registered as .*\(stored identity reused\)"),
            STEP,
        )
        .expect("no second registration");
    lab.wait_ready();
    let sensors = lab.portal.ctl_json(&["sensor", "list"]);
    assert_eq!(sensors.as_array().map(Vec::len), Some(1), "{sensors}");
    eventually("the guest clock near the host's again", STEP, || {
        guest_skew(&mut lab).filter(|s| s.abs() <= 5)
    });

    // --- a kernel panic resets the board; a committed slot spends no try -------------
    let at = lab
        .vm
        .run_until_reset("echo c > /proc/sysrq-trigger", STEP)
        .expect("a kernel panic resets the board (panic=)");
    println!("after the panic: {at}");
    let state = lab
        .vm
        .wait_for(r"outpost-boot: BOOT_ORDER=", STEP)
        .expect("U-Boot reads the boot state");
    assert!(
        state.contains("BOOT_A_LEFT=3") && state.contains("BOOT_B_LEFT=3"),
        "a committed slot spent tries: {state}"
    );
    lab.vm
        .wait_for(
            &format!("outpost-boot: booting slot {}", slot.to_uppercase()),
            STEP,
        )
        .expect("the same slot after the panic");
    lab.wait_ready();
    // outpostd marks the boot good once the portal answers, which can be just after
    // `ready`: a late mark would undo the trial set up below.
    lab.vm
        .wait_for(
            &format!(
                "health check passed: slot {} marked good",
                slot.to_uppercase()
            ),
            STEP,
        )
        .expect("this boot is committed before the next slot is put on trial");

    // --- a new slot whose kernel panics, the portal out of reach ---------------------
    let version = lab.sensor()["firmware_version"].clone();
    let running = if slot == "a" { Slot::A } else { Slot::B };
    let trial = if slot == "a" { Slot::B } else { Slot::A };
    put_on_trial(&mut lab, running, trial);
    let relay = lab.opts.udp_relay.take();
    lab.power_cycle();
    for attempt in 1..=3 {
        lab.vm
            .wait_for(&format!("outpost-boot: slot {trial} is on trial"), STEP)
            .unwrap_or_else(|e| panic!("trial boot {attempt} of slot {trial}: {e}"));
        lab.vm
            .wait_for(r"outpost: starting outpostd", STEP)
            .expect("the trial slot comes up");
        shell_up(&mut lab);
        lab.vm
            .run_until_reset("echo c > /proc/sysrq-trigger", STEP)
            .expect("the panic resets the board");
        println!("trial boot {attempt} of slot {trial}: kernel panic, reset");
    }
    lab.vm
        .wait_for(
            &format!("outpost-boot: slot {trial} has no tries left, skipped"),
            STEP,
        )
        .expect("the panicking slot used up its tries");
    lab.vm
        .wait_for(&format!("outpost-boot: booting slot {running}"), STEP)
        .expect("the board falls back to the committed slot");

    // --- four power cycles with the portal out of reach (more than a slot's tries) ---
    const CYCLES: u32 = 4;
    for cycle in 1..=CYCLES {
        lab.power_cycle();
        let state = lab
            .vm
            .wait_for(r"outpost-boot: BOOT_ORDER=", STEP)
            .expect("U-Boot reads the boot state");
        lab.vm
            .wait_for(
                &format!("outpost-boot: booting slot {}", slot.to_uppercase()),
                STEP,
            )
            .unwrap_or_else(|e| panic!("cycle {cycle}: not on slot {slot}: {e}"));
        lab.vm
            .wait_for(r"outpost: starting outpostd", STEP)
            .expect("outpostd starts");
        println!("power cycle {cycle} without the portal: {state}");
    }
    // No uplink at all (no second NIC, so no route to the gateway): outpostd waits in
    // wg_up with the watchdog armed, past the watchdog's timeout, and neither exits
    // nor gets the board reset.
    lab.vm
        .wait_for(r"watchdog /dev/watchdog armed", STEP)
        .expect("the watchdog is armed before the network waits");
    for _ in 0..4 {
        lab.vm
            .wait_for(
                r"phase wg_up failed: no WireGuard handshake with the portal gateway",
                STEP,
            )
            .expect("wg_up keeps waiting for a route and says so");
    }
    let console = lab.vm.console();
    assert_eq!(
        console.matches("outpost: starting outpostd").count(),
        1,
        "outpostd exited while there was no route to the portal"
    );
    assert_eq!(
        console.matches("outpost-boot: boot script started").count(),
        1,
        "the board reset while outpostd waited for the uplink"
    );
    lab.opts.udp_relay = relay;
    lab.power_cycle();
    lab.wait_ready();
    let s = eventually("the sensor back at the portal", STEP, || {
        let s = lab.sensor();
        (s["boot_slot"] == slot.as_str()).then_some(s)
    });
    assert_eq!(s["firmware_version"], version, "{s}");
    assert_eq!(lab.sensor_id(), id);

    // --- a data partition damaged beyond repair ---------------------------------------
    // Every superblock copy (the primary and the backups) and the group descriptors
    // after it overwritten: nothing for e2fsck to start from.
    let out = lab
        .vm
        .run(
            "for b in $(dumpe2fs /dev/vda4 2>/dev/null | sed -n 's/.*uperblock at \\([0-9]*\\).*/\\1/p'); do \
               dd if=/dev/urandom of=/dev/vda4 bs=4096 seek=$b count=4 conv=notrunc,fsync 2>/dev/null; \
             done; sync; echo wiped",
        )
        .expect("the data partition is damaged");
    assert!(out.stdout.contains("wiped"), "{}", out.stdout);
    lab.power_cycle();
    let line = lab
        .vm
        .wait_for(
            r"DEGRADED: the data file system .* damaged beyond repair",
            STEP,
        )
        .expect("the console names the damage");
    println!("{line}");
    lab.vm
        .wait_for(r"outpost: starting outpostd", STEP)
        .expect("the sensor boots on with a new data partition");
    let console = lab.vm.console();
    for bad in ["mke2fs on /dev/vda4 failed", "running with data in RAM"] {
        assert!(
            !console.contains(bad),
            "the data partition was not recreated ({bad})"
        );
    }
    // The one-use token was used: enrollment waits for a new one (and says so)...
    lab.vm
        .wait_for(
            &format!(r"outpost\[{name}\]: phase provision failed: "),
            STEP,
        )
        .expect("the used token is refused, in plain words");
    // ...and the board did not reboot meanwhile.
    // (this power cycle's console: U-Boot's script ran once)
    assert_eq!(
        lab.vm
            .console()
            .matches("outpost-boot: boot script started")
            .count(),
        1,
        "the board rebooted after the data partition was recreated"
    );
    let token = lab.portal.token("berlin", 1);
    let out = lab
        .vm
        .run(&format!(
            "sed -i 's/^token = .*/token = \"{token}\"/' /boot/outpost.toml && kill $(pidof outpostd) && echo retoken"
        ))
        .expect("a new token");
    assert!(out.stdout.contains("retoken"), "{}", out.stdout);
    lab.vm
        .wait_for(&format!(r"outpost\[{name}\]: registered as "), STEP)
        .expect("the sensor enrolls again with the new token");
    lab.wait_ready();
    let sensors = lab.portal.ctl_json(&["sensor", "list"]);
    let new_id = sensors
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] != id.as_str()))
        .and_then(|s| s["id"].as_str())
        .expect("a second sensor record")
        .to_owned();
    eventually(
        "the portal hears of the recreated data partition",
        STEP,
        || {
            let log = lab.portal.ctl_json(&["sensor", "log", &new_id]);
            log.to_string()
                .contains("data partition recreated at boot: e2fsck -p exit 4")
                .then_some(())
        },
    );
    let mounted = lab
        .vm
        .run("grep ' /data ' /proc/mounts")
        .expect("the mount table")
        .stdout;
    assert!(
        mounted.starts_with("/dev/vda4 /data ext4"),
        "/data is the recreated partition: {mounted}"
    );
    lab.vm.kill();
}
