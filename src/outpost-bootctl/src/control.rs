//! The interface the daemon uses, independent of the boot mechanism.

use serde::Serialize;

use crate::error::BootCtlError;
use crate::slot::Slot;
use crate::state::BootState;
use crate::store::CopyReport;

/// Boot control for one mechanism: U-Boot state files ([`crate::UbootFileEnv`], QEMU and
/// Pi 4) or the Pi 5 firmware's tryboot ([`crate::RpiTryboot`]).
pub trait BootControl {
    /// The slot the bootloader will start next time.
    fn primary(&self) -> Result<Slot, BootCtlError>;
    /// The slot that is running now.
    fn booted(&self) -> Result<Slot, BootCtlError>;
    /// The running system is healthy: stop counting its tries down to a fallback.
    fn mark_good(&self) -> Result<(), BootCtlError>;
    /// A newly written and verified slot becomes the one to try next.
    fn mark_active(&self, slot: Slot) -> Result<(), BootCtlError>;
    /// Everything known, for logs and the portal.
    fn status(&self) -> Result<BootStatus, BootCtlError>;
    /// How the device must restart so the bootloader does what `mark_active` set up.
    /// U-Boot reads its state at every start: a plain reboot.
    fn reboot_action(&self) -> Result<RebootAction, BootCtlError> {
        Ok(RebootAction::Plain)
    }
}

/// The restart the device must do after `mark_active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RebootAction {
    /// An ordinary reboot.
    Plain,
    /// `reboot(2)` with `LINUX_REBOOT_CMD_RESTART2` and this argument (busybox/systemd
    /// `reboot "<arg>"`), e.g. `0 tryboot` for the Pi firmware's one-shot trial.
    WithArg(&'static str),
}

/// A snapshot of the boot state, serialisable for the portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootStatus {
    /// Name of the backend, e.g. `uboot-file-env`.
    pub backend: &'static str,
    /// `None` when the command line has no `outpost.slot=` (not booted by our script).
    pub booted: Option<Slot>,
    pub primary: Option<Slot>,
    /// The state in force (the defaults when no copy is valid).
    pub state: BootState,
    /// One entry per stored copy.
    pub copies: Vec<CopyReport>,
}
