//! The running slot, as the boot script wrote it on the kernel command line.

use crate::slot::{Slot, UnknownSlot};

const KEY: &str = "outpost.slot=";
/// What the boot script adds when it boots a slot that is on trial (`BOOT_TRIAL`).
pub const TRIAL_PARAM: &str = "outpost.trial=1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("no {KEY} parameter")]
    Missing,
    #[error("{KEY}: {0}")]
    Unknown(#[from] UnknownSlot),
}

/// Finds `outpost.slot=A|B`. If it appears more than once the last one counts, as with
/// other kernel parameters.
pub fn booted_slot(cmdline: &str) -> Result<Slot, CmdlineError> {
    let value = cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(KEY))
        .next_back()
        .ok_or(CmdlineError::Missing)?;
    Ok(value.parse()?)
}

/// Whether the boot script started this boot as a trial of a freshly activated slot.
pub fn trial_boot(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == TRIAL_PARAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_slot_among_other_parameters() {
        let line = "console=ttyAMA0 root=PARTUUID=4f55d001-03 ro rootwait outpost.slot=B quiet\n";
        assert_eq!(booted_slot(line), Ok(Slot::B));
    }

    #[test]
    fn trial_flag() {
        assert!(trial_boot("ro outpost.slot=B outpost.trial=1 \n"));
        assert!(!trial_boot("ro outpost.slot=B\n"));
        assert!(!trial_boot("ro outpost.trial=10 xoutpost.trial=1"));
    }

    #[test]
    fn last_occurrence_wins() {
        assert_eq!(booted_slot("outpost.slot=A outpost.slot=B"), Ok(Slot::B));
    }

    #[test]
    fn missing_or_bad_value() {
        assert_eq!(booted_slot("console=ttyS0 ro"), Err(CmdlineError::Missing));
        assert_eq!(booted_slot("xoutpost.slot=A"), Err(CmdlineError::Missing));
        assert!(matches!(
            booted_slot("outpost.slot=C"),
            Err(CmdlineError::Unknown(_))
        ));
        assert!(matches!(
            booted_slot("outpost.slot="),
            Err(CmdlineError::Unknown(_))
        ));
    }
}
