//! Image tools used by `outpostctl` on the host:
//! - [`provision`]: write `outpost.toml` into an image's FAT boot partition in user
//!   space (MBR parsing plus `fatfs` over a partition slice; no mount, no root);
//!   [`read_boot_file`] / [`write_boot_file`] for other files there.
//! - [`flash`]: write an image to a card with safety checks, progress and read-back.

pub mod bootfs;
pub mod error;
pub mod flash;
pub mod mbr;
pub mod mounts;
pub mod slice;

pub use bootfs::{provision, read_boot_file, write_boot_file, BOOT_PARTITION, PROVISION_FILE};
pub use error::ImageError;
pub use flash::{
    check_target, flash, flash_with, FlashError, FlashOptions, FlashPhase, FlashProgress,
    FlashReport, Target,
};
