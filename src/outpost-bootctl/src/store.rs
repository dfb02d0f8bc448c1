//! Two copies of the boot state: which one counts, and which one the next write goes to.
//! Pure functions over byte slices so every power-cut case can be tested in memory.

use serde::Serialize;

use crate::envblob::{self, BlobError, EnvVars};
use crate::state::{BootState, StateError};

/// File names of the two copies in the FAT root.
pub const COPY_NAMES: [&str; 2] = ["bootstate.0", "bootstate.1"];

/// Why a copy does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyProblem {
    #[error("missing")]
    Missing,
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("{0}")]
    State(#[from] StateError),
}

/// One copy after reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    Valid { state: BootState, vars: EnvVars },
    Invalid(CopyProblem),
}

impl Copy {
    /// Decodes raw bytes; `None` is a missing file.
    pub fn decode(raw: Option<&[u8]>) -> Copy {
        let Some(raw) = raw else {
            return Copy::Invalid(CopyProblem::Missing);
        };
        let vars = match envblob::decode(raw) {
            Ok(vars) => vars,
            Err(e) => return Copy::Invalid(e.into()),
        };
        match BootState::from_vars(&vars) {
            Ok(state) => Copy::Valid { state, vars },
            Err(e) => Copy::Invalid(e.into()),
        }
    }

    pub fn state(&self) -> Option<&BootState> {
        match self {
            Copy::Valid { state, .. } => Some(state),
            Copy::Invalid(_) => None,
        }
    }
}

/// Both copies and the outcome of the reader rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub copies: [Copy; 2],
    /// Index of the copy in force, `None` when neither is valid.
    pub winner: Option<usize>,
    /// The winner's state, or the defaults.
    pub state: BootState,
}

impl Loaded {
    /// Reader rule: invalid copies are ignored; the higher `BOOT_SEQ` wins; on a tie
    /// copy 0 wins (the U-Boot script must break ties the same way); none valid means
    /// defaults.
    pub fn from_raw(raw: [Option<&[u8]>; 2]) -> Loaded {
        let copies = [Copy::decode(raw[0]), Copy::decode(raw[1])];
        let winner = match (copies[0].state(), copies[1].state()) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { 1 } else { 0 }),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        };
        let state = winner
            .and_then(|i| copies[i].state().cloned())
            .unwrap_or_default();
        Loaded {
            copies,
            winner,
            state,
        }
    }

    /// Writer rule: the copy that is not the winner (copy 0 when there is none).
    pub fn write_target(&self) -> usize {
        match self.winner {
            Some(0) => 1,
            _ => 0,
        }
    }

    /// Encodes `next` for the write target. `next` must carry a higher sequence than the
    /// state in force, or the write would not win and would be silently lost.
    pub fn plan_write(&self, next: &BootState) -> Result<PlannedWrite, WriteError> {
        if next.seq <= self.state.seq {
            return Err(WriteError::StaleSequence {
                next: next.seq,
                current: self.state.seq,
            });
        }
        // Carry over variables we do not own, so a later backend or tool can add some.
        let mut vars = match self.winner.map(|i| &self.copies[i]) {
            Some(Copy::Valid { vars, .. }) => vars.clone(),
            _ => EnvVars::new(),
        };
        next.to_vars(&mut vars);
        let bytes = envblob::encode(&vars)?;
        Ok(PlannedWrite {
            target: self.write_target(),
            bytes,
        })
    }

    /// Per-copy summary for status output.
    pub fn report(&self) -> [CopyReport; 2] {
        [0, 1].map(|i| CopyReport {
            file: COPY_NAMES[i].to_string(),
            seq: self.copies[i].state().map(|s| s.seq),
            problem: match &self.copies[i] {
                Copy::Valid { .. } => None,
                Copy::Invalid(p) => Some(p.to_string()),
            },
            in_force: self.winner == Some(i),
        })
    }
}

/// The bytes to write and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    pub target: usize,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("new BOOT_SEQ {next} is not above the current {current}")]
    StaleSequence { next: u32, current: u32 },
    #[error("cannot encode boot state: {0}")]
    Encode(#[from] BlobError),
}

/// What `status` shows for one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub file: String,
    pub seq: Option<u32>,
    pub problem: Option<String>,
    pub in_force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::Slot;

    fn blob(state: &BootState) -> Vec<u8> {
        let mut vars = EnvVars::new();
        state.to_vars(&mut vars);
        envblob::encode(&vars).unwrap()
    }

    fn st(seq: u32) -> BootState {
        BootState {
            seq,
            ..BootState::default()
        }
    }

    fn corrupt(mut b: Vec<u8>, at: usize) -> Vec<u8> {
        b[at] ^= 0x55;
        b
    }

    #[test]
    fn higher_sequence_wins_either_way_round() {
        let (old, new) = (blob(&st(4)), blob(&st(5)));
        let l = Loaded::from_raw([Some(&old), Some(&new)]);
        assert_eq!((l.winner, l.state.seq, l.write_target()), (Some(1), 5, 0));
        let l = Loaded::from_raw([Some(&new), Some(&old)]);
        assert_eq!((l.winner, l.state.seq, l.write_target()), (Some(0), 5, 1));
    }

    #[test]
    fn corrupt_first_copy_falls_back_to_second() {
        let l = Loaded::from_raw([Some(&corrupt(blob(&st(9)), 100)), Some(&blob(&st(3)))]);
        assert_eq!(l.winner, Some(1));
        assert_eq!(l.state.seq, 3);
        assert!(matches!(
            l.copies[0],
            Copy::Invalid(CopyProblem::Blob(BlobError::BadCrc { .. }))
        ));
        // The next write replaces the corrupt copy, never the valid one.
        assert_eq!(l.write_target(), 0);
    }

    #[test]
    fn corrupt_second_copy_falls_back_to_first() {
        let l = Loaded::from_raw([Some(&blob(&st(3))), Some(&corrupt(blob(&st(9)), 3))]);
        assert_eq!(l.winner, Some(0));
        assert_eq!(l.state.seq, 3);
        assert_eq!(l.write_target(), 1);
    }

    #[test]
    fn both_corrupt_or_missing_gives_defaults() {
        for raw in [
            [
                Some(corrupt(blob(&st(1)), 0)),
                Some(corrupt(blob(&st(2)), 4095)),
            ],
            [None, None],
            [Some(vec![0u8; 4096]), Some(Vec::new())],
        ] {
            let l = Loaded::from_raw([raw[0].as_deref(), raw[1].as_deref()]);
            assert_eq!(l.winner, None);
            assert_eq!(l.state, BootState::default());
            assert_eq!(l.write_target(), 0);
        }
    }

    #[test]
    fn tie_goes_to_copy_zero() {
        let mut other = st(5);
        other.order = vec![Slot::B, Slot::A];
        let l = Loaded::from_raw([Some(&blob(&st(5))), Some(&blob(&other))]);
        assert_eq!(l.winner, Some(0));
        assert_eq!(l.state.order, vec![Slot::A, Slot::B]);
    }

    #[test]
    fn plan_write_refuses_stale_sequence_and_keeps_foreign_vars() {
        let mut vars = EnvVars::new();
        st(5).to_vars(&mut vars);
        vars.insert("TRYBOOT_HINT".into(), "x".into());
        let raw = envblob::encode(&vars).unwrap();
        let l = Loaded::from_raw([None, Some(&raw)]);
        assert_eq!(
            l.plan_write(&st(5)),
            Err(WriteError::StaleSequence {
                next: 5,
                current: 5
            })
        );
        let w = l.plan_write(&st(6)).unwrap();
        assert_eq!(w.target, 0);
        let written = envblob::decode(&w.bytes).unwrap();
        assert_eq!(written["TRYBOOT_HINT"], "x");
        assert_eq!(written["BOOT_SEQ"], "6");
    }

    #[test]
    fn report_names_files_and_problems() {
        let l = Loaded::from_raw([None, Some(&blob(&st(2)))]);
        let r = l.report();
        assert_eq!(r[0].file, "bootstate.0");
        assert_eq!(r[0].problem.as_deref(), Some("missing"));
        assert!(!r[0].in_force);
        assert_eq!((r[1].seq, r[1].in_force), (Some(2), true));
    }
}
