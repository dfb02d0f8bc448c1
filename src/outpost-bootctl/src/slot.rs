//! The two boot slots.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two A/B slots. Each slot owns a rootfs partition and a kernel directory
/// on the FAT partition (`/slot-a/`, `/slot-b/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot an update would be written to while this one runs.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The letter used in `BOOT_ORDER`, `BOOT_x_LEFT` and `outpost.slot=`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// Directory on the FAT partition holding this slot's kernel, initramfs and dtbs.
    pub fn boot_dir(self) -> &'static str {
        match self {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        }
    }

    /// MBR partition number of this slot's root filesystem.
    pub fn rootfs_partition(self) -> u8 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }

    /// Name of the tries-left variable in the boot state.
    pub(crate) fn tries_var(self) -> &'static str {
        match self {
            Slot::A => "BOOT_A_LEFT",
            Slot::B => "BOOT_B_LEFT",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

/// A string that is not `A` or `B`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a slot name (expected A or B)")]
pub struct UnknownSlot(pub String);

impl FromStr for Slot {
    type Err = UnknownSlot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(UnknownSlot(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_cases_and_rejects_others() {
        assert_eq!("A".parse::<Slot>(), Ok(Slot::A));
        assert_eq!("b".parse::<Slot>(), Ok(Slot::B));
        assert!("C".parse::<Slot>().is_err());
        assert!("".parse::<Slot>().is_err());
        assert!("AB".parse::<Slot>().is_err());
    }

    #[test]
    fn other_and_layout() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        assert_eq!(Slot::A.boot_dir(), "slot-a");
        assert_eq!(Slot::B.rootfs_partition(), 3);
        assert_eq!(Slot::B.to_string(), "B");
    }
}
