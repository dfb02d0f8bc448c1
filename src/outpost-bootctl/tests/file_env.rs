//! The `UbootFileEnv` backend on real files: round trips, corruption, power cuts at
//! every byte, and a full A/B update cycle.

use std::fs;
use std::path::Path;

use outpost_bootctl::envblob::ENV_SIZE;
use outpost_bootctl::store::COPY_NAMES;
use outpost_bootctl::{BootControl, BootDecision, BootState, Slot, UbootFileEnv};

fn env_in(dir: &Path, booted: Option<Slot>) -> UbootFileEnv {
    let cmdline = dir.join("cmdline");
    let line = match booted {
        Some(s) => format!("console=ttyAMA0 root=PARTUUID=0-02 ro rootwait outpost.slot={s}\n"),
        None => "console=ttyAMA0 ro\n".to_string(),
    };
    fs::write(&cmdline, line).unwrap();
    let boot = dir.join("boot");
    fs::create_dir_all(&boot).unwrap();
    UbootFileEnv::new(boot).with_cmdline(cmdline)
}

fn state(order: &[Slot], a: u32, b: u32, seq: u32) -> BootState {
    BootState {
        order: order.to_vec(),
        tries_a: a,
        tries_b: b,
        seq,
        trial: None,
    }
}

fn copy(env: &UbootFileEnv, i: usize) -> Vec<u8> {
    fs::read(env.dir().join(COPY_NAMES[i])).unwrap()
}

/// Both copies as they are on the card (`None`: not written yet).
fn files(env: &UbootFileEnv) -> [Option<Vec<u8>>; 2] {
    [0, 1].map(|i| fs::read(env.dir().join(COPY_NAMES[i])).ok())
}

fn put(env: &UbootFileEnv, i: usize, bytes: &[u8]) {
    fs::write(env.dir().join(COPY_NAMES[i]), bytes).unwrap();
}

/// Makes `s` (with the next sequence number) the state in force, in both copies.
fn put_state(env: &UbootFileEnv, s: &BootState) {
    let mut vars = outpost_bootctl::envblob::EnvVars::new();
    BootState {
        seq: s.seq + 1,
        ..s.clone()
    }
    .to_vars(&mut vars);
    let bytes = outpost_bootctl::envblob::encode(&vars).unwrap();
    put(env, 0, &bytes);
    put(env, 1, &bytes);
}

#[test]
fn fresh_partition_reads_defaults_and_first_write_creates_copy_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    assert_eq!(env.load().unwrap().state, BootState::default());
    assert_eq!(env.primary().unwrap(), Slot::A);

    env.mark_good().unwrap();
    assert_eq!(copy(&env, 0).len(), ENV_SIZE);
    assert!(!env.dir().join(COPY_NAMES[1]).exists());
    assert_eq!(
        env.load().unwrap().state,
        state(&[Slot::A, Slot::B], 3, 3, 1)
    );
}

#[test]
fn writes_alternate_and_never_touch_the_copy_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    env.mark_good().unwrap(); // seq 1 -> copy 0
    for round in 0..6u32 {
        let loaded = env.load().unwrap();
        let winner = loaded.winner.unwrap();
        let before = copy(&env, winner);
        env.mark_active(if round % 2 == 0 { Slot::B } else { Slot::A })
            .unwrap();
        assert_eq!(
            copy(&env, winner),
            before,
            "round {round} overwrote the winner"
        );
        let after = env.load().unwrap();
        assert_eq!(after.winner, Some(1 - winner));
        assert_eq!(after.state.seq, loaded.state.seq + 1);
    }
}

#[test]
fn corrupting_either_copy_falls_back_to_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    env.mark_good().unwrap(); // copy 0: seq 1, order A B
    env.mark_active(Slot::B).unwrap(); // copy 1: seq 2, order B A
    let older = state(&[Slot::A, Slot::B], 3, 3, 1);
    let newer = BootState {
        trial: Some(Slot::B),
        ..state(&[Slot::B, Slot::A], 3, 3, 2)
    };
    assert_eq!(env.load().unwrap().state, newer);

    let good1 = copy(&env, 1);
    let mut bad1 = good1.clone();
    bad1[20] ^= 0x01;
    put(&env, 1, &bad1);
    assert_eq!(env.load().unwrap().state, older);
    assert_eq!(env.primary().unwrap(), Slot::A);
    let status = env.status().unwrap();
    assert!(status.copies[1]
        .problem
        .as_deref()
        .unwrap()
        .contains("CRC mismatch"));
    assert!(status.copies[0].in_force);

    put(&env, 1, &good1);
    let mut bad0 = copy(&env, 0);
    bad0[0] ^= 0x80; // the stored CRC itself
    put(&env, 0, &bad0);
    assert_eq!(env.load().unwrap().state, newer);
}

#[test]
fn both_copies_corrupt_means_defaults_and_recovery_on_next_write() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::B));
    env.mark_active(Slot::B).unwrap();
    env.simulate_boot().unwrap();
    env.mark_good().unwrap();
    for i in 0..2 {
        let mut b = copy(&env, i);
        b[ENV_SIZE - 1] = 0xff;
        put(&env, i, &b);
    }
    let loaded = env.load().unwrap();
    assert_eq!(loaded.winner, None);
    assert_eq!(loaded.state, BootState::default());

    env.mark_good().unwrap();
    let loaded = env.load().unwrap();
    assert_eq!(loaded.winner, Some(0));
    assert_eq!(loaded.state, state(&[Slot::B, Slot::A], 3, 3, 1));
}

#[test]
fn oversized_copy_is_ignored_then_rewritten_at_the_exact_size() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    put(&env, 0, &vec![0u8; ENV_SIZE * 3]);
    let status = env.status().unwrap();
    assert!(status.copies[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("wrong size"));
    env.mark_good().unwrap();
    assert_eq!(copy(&env, 0).len(), ENV_SIZE);
    assert_eq!(env.load().unwrap().state.seq, 1);
}

/// A power cut while writing the target copy leaves some prefix of the new bytes on
/// disk, followed by nothing (truncated), the old bytes, or zeros. At every byte
/// offset the reader must see exactly the old state or exactly the new one.
fn assert_torn_writes_are_safe(env: &UbootFileEnv, change: impl Fn(&UbootFileEnv)) {
    let before = env.load().unwrap();
    let target = before.write_target();
    let target_path = env.dir().join(COPY_NAMES[target]);
    let old_target = fs::read(&target_path).ok();
    let winner_bytes = before.winner.map(|w| copy(env, w));

    change(env);
    let after = env.load().unwrap();
    assert_ne!(after.state, before.state);
    let new_bytes = copy(env, target);
    if let (Some(w), Some(bytes)) = (before.winner, &winner_bytes) {
        assert_eq!(&copy(env, w), bytes, "the winner was modified");
    }

    let old_tail = old_target.clone().unwrap_or_else(|| vec![0xA5; ENV_SIZE]);
    for cut in 0..=ENV_SIZE {
        let torn_variants: [Vec<u8>; 3] = [
            new_bytes[..cut].to_vec(),
            [&new_bytes[..cut], &old_tail[cut.min(old_tail.len())..]].concat(),
            [&new_bytes[..cut], &vec![0u8; ENV_SIZE - cut][..]].concat(),
        ];
        for (kind, torn) in torn_variants.iter().enumerate() {
            fs::write(&target_path, torn).unwrap();
            let seen = env.load().unwrap().state;
            assert!(
                seen == before.state || seen == after.state,
                "cut at {cut} (variant {kind}) produced {seen:?}"
            );
            if cut < ENV_SIZE && kind == 0 {
                assert_eq!(seen, before.state, "a truncated copy was accepted at {cut}");
            }
        }
    }
    fs::write(&target_path, &new_bytes).unwrap();
}

#[test]
fn torn_write_at_every_offset_yields_old_or_new_state() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    // First write ever: the target does not exist yet, the old state is the defaults.
    assert_torn_writes_are_safe(&env, |e| e.mark_active(Slot::B).unwrap());
    // Target holds an older valid state.
    assert_torn_writes_are_safe(&env, |e| {
        e.simulate_boot().unwrap();
    });
    assert_torn_writes_are_safe(&env, |e| e.mark_good().unwrap());
}

#[test]
fn full_update_cycle_with_good_update() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    // Factory image: boots A, A marks itself good.
    assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::A));
    env.mark_good().unwrap();
    assert_eq!(env.load().unwrap().state.tries_a, 3);

    // An update was written to B and verified.
    env.mark_active(Slot::B).unwrap();
    assert_eq!(env.primary().unwrap(), Slot::B);
    assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::B));
    assert_eq!(env.load().unwrap().state.tries_b, 2);
    // Until B marks itself good, booting it is a trial (the watchdog is armed).
    assert!(env.load().unwrap().state.on_trial(Slot::B));

    // B comes up healthy.
    let env_b = env_in(tmp.path(), Some(Slot::B));
    assert_eq!(env_b.booted().unwrap(), Slot::B);
    env_b.mark_good().unwrap();
    let s = env_b.load().unwrap().state;
    assert_eq!((s.order.clone(), s.tries_b), (vec![Slot::B, Slot::A], 3));
    assert_eq!(s.trial, None, "marked good: the trial is over");
    // Every later boot stays on B as long as it keeps marking good.
    for _ in 0..5 {
        assert_eq!(env_b.simulate_boot().unwrap(), BootDecision::Boot(Slot::B));
        env_b.mark_good().unwrap();
    }
}

#[test]
fn full_update_cycle_with_bad_update_falls_back_to_a() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    env.mark_good().unwrap();
    env.mark_active(Slot::B).unwrap();

    // B never gets far enough to mark itself good: three tries, then A.
    for left in (0..3).rev() {
        assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::B));
        assert_eq!(env.load().unwrap().state.tries_b, left);
    }
    assert_eq!(env.primary().unwrap(), Slot::A);
    assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::A));

    // A runs again and marks good: it goes first so B is not retried later.
    env.mark_good().unwrap();
    let s = env.load().unwrap().state;
    assert_eq!(s.order, vec![Slot::A, Slot::B]);
    assert_eq!((s.tries_a, s.tries_b), (3, 0));
    // B never proved itself: should it ever boot again, it is watched again.
    assert!(s.on_trial(Slot::B) && !s.on_trial(Slot::A));
    assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::A));
}

#[test]
fn a_committed_slot_keeps_booting_without_marking_good() {
    // A WAN outage keeps the health check from passing: the committed slot must not
    // drift to the other one, however many times the board restarts.
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), None);
    for _ in 0..10 {
        assert_eq!(env.simulate_boot().unwrap(), BootDecision::Boot(Slot::A));
    }
    // Only the first boot wrote anything (the defaults, no copy being valid).
    assert_eq!(
        env.load().unwrap().state,
        state(&[Slot::A, Slot::B], 3, 3, 1)
    );
}

#[test]
fn no_tries_left_anywhere_resets_counters_instead_of_bricking() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    env.mark_active(Slot::B).unwrap();
    // B's trial fails three times, then A boots.
    let mut booted = Vec::new();
    for _ in 0..4 {
        if let BootDecision::Boot(s) = env.simulate_boot().unwrap() {
            booted.push(s);
        }
    }
    assert_eq!(booted, [Slot::B, Slot::B, Slot::B, Slot::A]);
    // A state where no slot has tries (as older boot scripts could leave it): both
    // get their tries back and the board starts over.
    let mut s = env.load().unwrap().state;
    s.tries_a = 0;
    put_state(&env, &s);
    assert_eq!(env.simulate_boot().unwrap(), BootDecision::ResetAndReboot);
    let s = env.load().unwrap().state;
    assert_eq!((s.tries_a, s.tries_b), (3, 3));
}

#[test]
fn status_and_booted_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), None);
    let err = env.mark_good().unwrap_err().to_string();
    assert!(
        err.contains("cmdline") && err.contains("outpost.slot="),
        "{err}"
    );
    // Nothing was written by the failed mark_good.
    assert!(!env.dir().join(COPY_NAMES[0]).exists());

    let status = env.status().unwrap();
    assert_eq!(status.booted, None);
    assert_eq!(status.primary, Some(Slot::A));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["backend"], "uboot-file-env");
    assert_eq!(json["copies"][0]["file"], "bootstate.0");
    assert_eq!(json["copies"][0]["problem"], "missing");

    let env = env_in(tmp.path(), Some(Slot::B));
    assert_eq!(env.status().unwrap().booted, Some(Slot::B));
}

#[test]
fn unreadable_boot_dir_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    // A directory where a copy should be: reading it fails with a named path.
    fs::create_dir(env.dir().join(COPY_NAMES[0])).unwrap();
    let err = env.mark_good().unwrap_err().to_string();
    assert!(err.contains("bootstate.0"), "{err}");
}

#[test]
fn repeated_mark_good_does_not_rewrite_the_card() {
    let tmp = tempfile::tempdir().unwrap();
    let env = env_in(tmp.path(), Some(Slot::A));
    env.simulate_boot().unwrap();
    env.mark_good().unwrap();
    let before = files(&env);
    let seq = env.load().unwrap().state.seq;
    env.mark_good().unwrap();
    assert_eq!(env.load().unwrap().state.seq, seq);
    assert_eq!(files(&env), before);
    // The same for a second mark_active: B is already first, with full tries, on trial.
    env.mark_active(Slot::B).unwrap();
    let before = files(&env);
    env.mark_active(Slot::B).unwrap();
    assert_eq!(env.load().unwrap().state.seq, seq + 1);
    assert_eq!(files(&env), before);
    // With no valid copy at all, marking good writes even though it changes nothing,
    // so the card holds a real state afterwards.
    let fresh_dir = tmp.path().join("fresh");
    fs::create_dir(&fresh_dir).unwrap();
    let fresh = env_in(&fresh_dir, Some(Slot::A));
    fresh.mark_good().unwrap();
    assert_eq!(fresh.load().unwrap().winner, Some(0));
}
