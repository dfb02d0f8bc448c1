//! A/B boot control for Outpost.
//!
//! The contract with the U-Boot script (`board/common/boot.cmd`): two 4096-byte copies
//! of a U-Boot environment blob, `bootstate.0` and `bootstate.1`, in the FAT partition,
//! holding `BOOT_ORDER`, `BOOT_A_LEFT`, `BOOT_B_LEFT` and `BOOT_SEQ`. The valid copy with
//! the higher `BOOT_SEQ` is in force; every write goes to the other copy, so a power cut
//! leaves either the old or the new state, never a mix.
//!
//! Pure core: [`envblob`] (the blob format), [`state`] (transitions and the boot-script
//! decision), [`store`] (the two-copy rules). I/O shell: the [`BootControl`] trait and
//! its backends, one per boot mechanism: [`UbootFileEnv`] (the U-Boot script's state
//! files: QEMU, Pi 4) and [`RpiTryboot`] (the Pi 5 firmware's `autoboot.txt` and
//! one-shot tryboot flag).

pub mod cmdline;
pub mod control;
pub mod envblob;
pub mod error;
pub mod slot;
pub mod state;
pub mod store;
pub mod tryboot;
pub mod uboot_file;

pub use control::{BootControl, BootStatus, RebootAction};
pub use error::BootCtlError;
pub use slot::Slot;
pub use state::{BootDecision, BootState, DEFAULT_TRIES};
pub use store::Loaded;
pub use tryboot::{Autoboot, RpiTryboot, SlotPartitions};
pub use uboot_file::UbootFileEnv;
