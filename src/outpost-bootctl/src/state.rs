//! The boot state and its transitions: the pure core shared in meaning with
//! `board/common/boot.cmd`.

use serde::{Deserialize, Serialize};

use crate::envblob::EnvVars;
use crate::slot::Slot;

/// Tries a slot gets when it is marked good or made active, and the default.
pub const DEFAULT_TRIES: u32 = 3;
/// Largest `BOOT_SEQ` ever written. U-Boot's `test -gt` compares signed `long`s, which
/// are 32 bits on 32-bit boards, so the sequence stays below 2^31. At one write per boot
/// this is never reached; if it were, writes fail rather than wrap (a wrapped sequence
/// would make the stale copy win).
pub const MAX_SEQ: u32 = i32::MAX as u32;

pub const VAR_ORDER: &str = "BOOT_ORDER";
pub const VAR_SEQ: &str = "BOOT_SEQ";
/// `BOOT_TRIAL`: the slot made active for an update and not marked good since (`A` or
/// `B`), or [`NO_TRIAL`]. The boot script adds `outpost.trial=1` to the kernel command
/// line when it boots that slot, which arms the trial watchdog.
pub const VAR_TRIAL: &str = "BOOT_TRIAL";
/// The value written when no slot is on trial. U-Boot cannot hold an empty variable, and
/// a listed variable missing from an imported copy makes `env import` print a warning,
/// so "no trial" is spelled out rather than left out.
pub const NO_TRIAL: &str = "none";

/// The decoded contents of one boot-state copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// Slots in the order the boot script tries them.
    pub order: Vec<Slot>,
    /// `BOOT_A_LEFT`
    pub tries_a: u32,
    /// `BOOT_B_LEFT`
    pub tries_b: u32,
    /// `BOOT_SEQ`: the copy with the higher value is the current one.
    pub seq: u32,
    /// `BOOT_TRIAL`: the slot on trial, i.e. made active and not marked good since.
    /// Missing or anything but `A`/`B` reads as none (older copies have no such variable).
    #[serde(default)]
    pub trial: Option<Slot>,
}

impl Default for BootState {
    /// What both the script and Linux assume when no copy is valid.
    fn default() -> Self {
        BootState {
            order: vec![Slot::A, Slot::B],
            tries_a: DEFAULT_TRIES,
            tries_b: DEFAULT_TRIES,
            seq: 0,
            trial: None,
        }
    }
}

/// A copy whose CRC is fine but whose variables are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("variable {name} is missing")]
    Missing { name: &'static str },
    #[error("{name}={value:?} is not a decimal number in range")]
    BadNumber { name: &'static str, value: String },
    #[error("BOOT_ORDER={value:?} must list A and/or B, each once")]
    BadOrder { value: String },
    #[error("BOOT_SEQ is {seq}, at its limit of {MAX_SEQ}; refusing to wrap")]
    SequenceExhausted { seq: u32 },
}

/// What the boot script does with a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "slot")]
pub enum BootDecision {
    /// Boot this slot (its tries were decremented first).
    Boot(Slot),
    /// No slot had tries left: both counters were reset and the board resets.
    ResetAndReboot,
}

impl BootState {
    pub fn tries(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.tries_a,
            Slot::B => self.tries_b,
        }
    }

    pub fn set_tries(&mut self, slot: Slot, tries: u32) {
        match slot {
            Slot::A => self.tries_a = tries,
            Slot::B => self.tries_b = tries,
        }
    }

    /// The slot the next boot will start, without changing anything.
    pub fn primary(&self) -> Option<Slot> {
        self.order
            .iter()
            .copied()
            .find(|&s| self.tries(s) > 0)
            // After a reset every listed slot has tries again, so the first one boots.
            .or_else(|| self.order.first().copied())
    }

    /// The running slot passed its health check: give it full tries again and make
    /// sure it is first, so a failed update tried before it is not retried after a
    /// later counter reset. Its trial, if it was on one, is over. (Another slot's trial
    /// stays: that slot never proved itself, so if it is ever booted again after a
    /// counter reset it is watched again.)
    pub fn mark_good(&self, booted: Slot) -> Result<BootState, StateError> {
        let mut next = self.successor()?;
        next.put_first(booted);
        next.set_tries(booted, DEFAULT_TRIES);
        if next.trial == Some(booted) {
            next.trial = None;
        }
        Ok(next)
    }

    /// A freshly written and verified slot becomes the one to try next, on trial until
    /// it is marked good.
    pub fn mark_active(&self, slot: Slot) -> Result<BootState, StateError> {
        let mut next = self.successor()?;
        next.put_first(slot);
        next.set_tries(slot, DEFAULT_TRIES);
        next.trial = Some(slot);
        Ok(next)
    }

    /// Whether booting `slot` is a trial boot (the script adds `outpost.trial=1`).
    pub fn on_trial(&self, slot: Slot) -> bool {
        self.trial == Some(slot)
    }

    /// What the U-Boot script does: walk `BOOT_ORDER` and take the first slot with tries
    /// left; if none has tries left, reset both to 3 and reboot. Only a slot on trial
    /// spends a try: the returned state is what the script writes back (sequence + 1),
    /// or `None` when it writes nothing (an ordinary boot of a committed slot, which
    /// must keep booting however often the board restarts).
    pub fn simulate_boot(&self) -> Result<(BootDecision, Option<BootState>), StateError> {
        for slot in self.order.iter().copied() {
            let tries = self.tries(slot);
            if tries > 0 {
                if !self.on_trial(slot) {
                    return Ok((BootDecision::Boot(slot), None));
                }
                let mut next = self.successor()?;
                next.set_tries(slot, tries - 1);
                return Ok((BootDecision::Boot(slot), Some(next)));
            }
        }
        let mut next = self.successor()?;
        next.tries_a = DEFAULT_TRIES;
        next.tries_b = DEFAULT_TRIES;
        Ok((BootDecision::ResetAndReboot, Some(next)))
    }

    /// Same state, next sequence number: every write goes through here.
    fn successor(&self) -> Result<BootState, StateError> {
        if self.seq >= MAX_SEQ {
            return Err(StateError::SequenceExhausted { seq: self.seq });
        }
        let mut next = self.clone();
        next.seq += 1;
        Ok(next)
    }

    fn put_first(&mut self, slot: Slot) {
        self.order.retain(|&s| s != slot);
        self.order.insert(0, slot);
    }

    /// Reads the four contract variables from a decoded blob.
    pub fn from_vars(vars: &EnvVars) -> Result<BootState, StateError> {
        let order_text = get(vars, VAR_ORDER)?;
        let order = parse_order(order_text).ok_or_else(|| StateError::BadOrder {
            value: order_text.to_string(),
        })?;
        let state = BootState {
            order,
            tries_a: parse_number(vars, Slot::A.tries_var())?,
            tries_b: parse_number(vars, Slot::B.tries_var())?,
            seq: parse_number(vars, VAR_SEQ)?,
            trial: parse_trial(vars),
        };
        Ok(state)
    }

    /// Writes the four contract variables into `vars`, leaving any others alone.
    pub fn to_vars(&self, vars: &mut EnvVars) {
        let order: Vec<&str> = self.order.iter().map(|s| s.letter()).collect();
        vars.insert(VAR_ORDER.to_string(), order.join(" "));
        vars.insert(Slot::A.tries_var().to_string(), self.tries_a.to_string());
        vars.insert(Slot::B.tries_var().to_string(), self.tries_b.to_string());
        vars.insert(VAR_SEQ.to_string(), self.seq.to_string());
        let trial = self.trial.map_or(NO_TRIAL, Slot::letter);
        vars.insert(VAR_TRIAL.to_string(), trial.to_string());
    }
}

/// Exactly `A` or `B`, as the script compares it with the chosen slot; anything else
/// (missing in copies written before the variable existed, `none`) is no trial.
fn parse_trial(vars: &EnvVars) -> Option<Slot> {
    match vars.get(VAR_TRIAL).map(String::as_str) {
        Some("A") => Some(Slot::A),
        Some("B") => Some(Slot::B),
        _ => None,
    }
}

fn get<'a>(vars: &'a EnvVars, name: &'static str) -> Result<&'a str, StateError> {
    vars.get(name)
        .map(String::as_str)
        .ok_or(StateError::Missing { name })
}

/// Strict decimal: U-Boot's `test` reads these in base 10, so "0x3" or "+3" would mean
/// something else to it than to us.
fn parse_number(vars: &EnvVars, name: &'static str) -> Result<u32, StateError> {
    let text = get(vars, name)?;
    let bad = || StateError::BadNumber {
        name,
        value: text.to_string(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: u32 = text.parse().map_err(|_| bad())?;
    if value > MAX_SEQ {
        return Err(bad());
    }
    Ok(value)
}

/// Space-separated slot letters, at least one, no repeats.
fn parse_order(text: &str) -> Option<Vec<Slot>> {
    let mut order = Vec::new();
    for word in text.split_ascii_whitespace() {
        let slot = match word {
            "A" => Slot::A,
            "B" => Slot::B,
            _ => return None,
        };
        if order.contains(&slot) {
            return None;
        }
        order.push(slot);
    }
    if order.is_empty() {
        None
    } else {
        Some(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(order: &[Slot], a: u32, b: u32, seq: u32) -> BootState {
        BootState {
            order: order.to_vec(),
            tries_a: a,
            tries_b: b,
            seq,
            trial: None,
        }
    }

    fn on_trial(mut s: BootState, slot: Slot) -> BootState {
        s.trial = Some(slot);
        s
    }

    fn vars(pairs: &[(&str, &str)]) -> EnvVars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn vars_round_trip_and_keep_unrelated_variables() {
        let s = state(&[Slot::B, Slot::A], 1, 3, 41);
        let mut v = vars(&[("OTHER", "kept")]);
        s.to_vars(&mut v);
        assert_eq!(v["BOOT_ORDER"], "B A");
        assert_eq!(v["BOOT_A_LEFT"], "1");
        assert_eq!(v["BOOT_SEQ"], "41");
        assert_eq!(v["OTHER"], "kept");
        assert_eq!(v["BOOT_TRIAL"], "none");
        assert_eq!(BootState::from_vars(&v).unwrap(), s);
        let t = on_trial(s, Slot::B);
        t.to_vars(&mut v);
        assert_eq!(v["BOOT_TRIAL"], "B");
        assert_eq!(BootState::from_vars(&v).unwrap(), t);
    }

    #[test]
    fn trial_is_read_leniently_like_the_script() {
        let mut v = vars(&[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
            ("BOOT_SEQ", "1"),
        ]);
        // Copies written before the variable existed: no trial, and still valid.
        assert_eq!(BootState::from_vars(&v).unwrap().trial, None);
        for junk in ["", "none", "a", "AB", "C"] {
            v.insert("BOOT_TRIAL".into(), junk.into());
            assert_eq!(BootState::from_vars(&v).unwrap().trial, None, "{junk:?}");
        }
        v.insert("BOOT_TRIAL".into(), "A".into());
        assert_eq!(BootState::from_vars(&v).unwrap().trial, Some(Slot::A));
    }

    #[test]
    fn a_trial_ends_only_when_that_slot_is_marked_good() {
        let active = state(&[Slot::A, Slot::B], 3, 3, 1)
            .mark_active(Slot::B)
            .unwrap();
        // Booting does not end it: every boot of B is a trial until B proves itself.
        let (_, booted) = active.simulate_boot().unwrap();
        let booted = booted.expect("a trial boot writes its try back");
        assert!(booted.on_trial(Slot::B));
        // The fallback slot being marked good leaves B's trial standing.
        let back_on_a = on_trial(state(&[Slot::B, Slot::A], 2, 0, 9), Slot::B)
            .mark_good(Slot::A)
            .unwrap();
        assert_eq!(back_on_a.trial, Some(Slot::B));
        assert!(!back_on_a.on_trial(Slot::A));
        // B marked good: committed.
        let good = booted.mark_good(Slot::B).unwrap();
        assert_eq!(good, state(&[Slot::B, Slot::A], 3, 3, 4));
    }

    #[test]
    fn rejects_unusable_variables() {
        let good = [
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
            ("BOOT_SEQ", "1"),
        ];
        assert!(BootState::from_vars(&vars(&good)).is_ok());
        for (name, value) in [
            ("BOOT_ORDER", ""),
            ("BOOT_ORDER", "A A"),
            ("BOOT_ORDER", "A C"),
            ("BOOT_A_LEFT", "-1"),
            ("BOOT_A_LEFT", "0x3"),
            ("BOOT_B_LEFT", ""),
            ("BOOT_SEQ", "a"),
            ("BOOT_SEQ", "4294967296"),
            ("BOOT_SEQ", "2147483648"),
        ] {
            let mut v = vars(&good);
            v.insert(name.to_string(), value.to_string());
            assert!(
                BootState::from_vars(&v).is_err(),
                "{name}={value:?} was accepted"
            );
        }
        let mut v = vars(&good);
        v.remove("BOOT_B_LEFT");
        assert_eq!(
            BootState::from_vars(&v),
            Err(StateError::Missing {
                name: "BOOT_B_LEFT"
            })
        );
    }

    #[test]
    fn single_slot_order_is_allowed() {
        let v = vars(&[
            ("BOOT_ORDER", "B"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "3"),
            ("BOOT_SEQ", "1"),
        ]);
        assert_eq!(BootState::from_vars(&v).unwrap().order, vec![Slot::B]);
    }

    #[test]
    fn only_a_trial_boot_spends_a_try() {
        // Committed A: boots without a write, however many times.
        let s = state(&[Slot::A, Slot::B], 3, 3, 5);
        assert_eq!(
            s.simulate_boot().unwrap(),
            (BootDecision::Boot(Slot::A), None)
        );
        let s = state(&[Slot::A, Slot::B], 1, 3, 5);
        assert_eq!(
            s.simulate_boot().unwrap(),
            (BootDecision::Boot(Slot::A), None)
        );
        // B on trial: each boot takes one of its tries and writes it back.
        let s = on_trial(state(&[Slot::B, Slot::A], 3, 3, 5), Slot::B);
        let (d, n) = s.simulate_boot().unwrap();
        assert_eq!(d, BootDecision::Boot(Slot::B));
        assert_eq!(
            n,
            Some(on_trial(state(&[Slot::B, Slot::A], 3, 2, 6), Slot::B))
        );
    }

    #[test]
    fn boot_skips_exhausted_slot() {
        // B's trial used up its tries: A boots, and A (committed) spends nothing.
        let s = on_trial(state(&[Slot::B, Slot::A], 2, 0, 5), Slot::B);
        let (d, n) = s.simulate_boot().unwrap();
        assert_eq!(d, BootDecision::Boot(Slot::A));
        assert_eq!(n, None);
    }

    #[test]
    fn boot_with_no_tries_resets_both() {
        let s = state(&[Slot::B, Slot::A], 0, 0, 9);
        let (d, n) = s.simulate_boot().unwrap();
        assert_eq!(d, BootDecision::ResetAndReboot);
        assert_eq!(n, Some(state(&[Slot::B, Slot::A], 3, 3, 10)));
        // A slot missing from BOOT_ORDER is never booted, even with tries left.
        let s = state(&[Slot::B], 3, 0, 1);
        assert_eq!(s.simulate_boot().unwrap().0, BootDecision::ResetAndReboot);
    }

    #[test]
    fn mark_active_puts_slot_first_with_full_tries() {
        let s = state(&[Slot::A, Slot::B], 3, 0, 7);
        let n = s.mark_active(Slot::B).unwrap();
        assert_eq!(n, on_trial(state(&[Slot::B, Slot::A], 3, 3, 8), Slot::B));
        assert_eq!(n.primary(), Some(Slot::B));
        assert!(n.on_trial(Slot::B) && !n.on_trial(Slot::A));
        // Works from a single-slot order too.
        let n = state(&[Slot::A], 3, 0, 1).mark_active(Slot::B).unwrap();
        assert_eq!(n.order, vec![Slot::B, Slot::A]);
    }

    #[test]
    fn mark_good_restores_tries_and_moves_running_slot_first() {
        // B failed all its tries and the board fell back to A.
        let s = state(&[Slot::B, Slot::A], 2, 0, 12);
        let n = s.mark_good(Slot::A).unwrap();
        assert_eq!(n, state(&[Slot::A, Slot::B], 3, 0, 13));
        // Already first: only the counter changes.
        let n = state(&[Slot::A, Slot::B], 1, 3, 2)
            .mark_good(Slot::A)
            .unwrap();
        assert_eq!(n, state(&[Slot::A, Slot::B], 3, 3, 3));
    }

    #[test]
    fn primary_matches_simulated_boot() {
        for order in [
            vec![Slot::A, Slot::B],
            vec![Slot::B, Slot::A],
            vec![Slot::B],
        ] {
            for a in 0..=3 {
                for b in 0..=3 {
                    let s = state(&order, a, b, 1);
                    let (d, _) = s.simulate_boot().unwrap();
                    let expected = match d {
                        BootDecision::Boot(slot) => slot,
                        BootDecision::ResetAndReboot => {
                            s.simulate_boot().unwrap().1.unwrap().primary().unwrap()
                        }
                    };
                    assert_eq!(s.primary(), Some(expected), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn sequence_does_not_wrap() {
        let s = state(&[Slot::A, Slot::B], 3, 3, MAX_SEQ - 1);
        let n = s.mark_good(Slot::A).unwrap();
        assert_eq!(n.seq, MAX_SEQ);
        assert_eq!(
            n.mark_good(Slot::A),
            Err(StateError::SequenceExhausted { seq: MAX_SEQ })
        );
        // A committed slot still boots (nothing is written), a trial boot cannot count.
        assert_eq!(
            n.simulate_boot().unwrap(),
            (BootDecision::Boot(Slot::A), None)
        );
        assert!(on_trial(n.clone(), Slot::A).simulate_boot().is_err());
        assert!(n.mark_active(Slot::B).is_err());
    }
}
