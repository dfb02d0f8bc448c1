//! Restarting into an activated slot, as the boot backend asks
//! ([`outpost_bootctl::BootControl::reboot_action`]).
//!
//! A plain restart is busybox `reboot`: init runs its shutdown action (stops the
//! scanner, lets redis save, unmounts `/data` and `/boot`) and restarts. The Pi 5's
//! tryboot needs `reboot(2)` with `LINUX_REBOOT_CMD_RESTART2` and the argument
//! `0 tryboot`; busybox's `reboot` cannot pass one, and calling `reboot(2)` from the
//! daemon would skip that shutdown. So the daemon leaves the argument in
//! [`REBOOT_ARG_FILE`] (tmpfs: gone after the restart) and asks init for the usual
//! reboot; the shutdown action, once everything is flushed and unmounted, runs
//! `outpostd --restart2 ARG` ([`restart2`]), which makes the call. Should that fail,
//! init's own plain reboot follows: the firmware boots the default (old) slot, and the
//! update is reported as rolled back.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use outpost_bootctl::RebootAction;

/// Where the reboot argument waits for init's shutdown action
/// (`/usr/libexec/outpost/shutdown`).
pub const REBOOT_ARG_FILE: &str = "/run/outpost/reboot-arg";

/// The kernel copies at most 255 bytes of the argument (`reboot(2)`).
const MAX_ARG: usize = 255;

/// Asks init to reboot (busybox `reboot`; a recorder in tests).
pub type InitReboot = Box<dyn Fn() -> io::Result<()> + Send + Sync>;

/// How the device restarts.
pub struct Rebooter {
    arg_file: PathBuf,
    init_reboot: InitReboot,
}

impl Rebooter {
    /// The device: [`REBOOT_ARG_FILE`] and busybox `/sbin/reboot`.
    pub fn device() -> Rebooter {
        Rebooter::new(REBOOT_ARG_FILE, Box::new(busybox_reboot))
    }

    pub fn new(arg_file: impl Into<PathBuf>, init_reboot: InitReboot) -> Rebooter {
        Rebooter {
            arg_file: arg_file.into(),
            init_reboot,
        }
    }

    /// Restarts the way `action` says (returns once init has the request).
    pub fn reboot(&self, action: RebootAction) -> io::Result<()> {
        match action {
            RebootAction::Plain => {
                // A leftover argument (an earlier request that did not take the board
                // down) must not turn this restart into another kind.
                match std::fs::remove_file(&self.arg_file) {
                    Ok(()) => {
                        tracing::info!(file = %self.arg_file.display(), "stale reboot argument removed")
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(with_path(&self.arg_file, e)),
                }
            }
            RebootAction::WithArg(arg) => {
                check_arg(arg)?;
                write_replacing(&self.arg_file, arg.as_bytes())?;
                tracing::info!(arg, file = %self.arg_file.display(), "restart argument left for init's shutdown action");
            }
        }
        (self.init_reboot)()
    }
}

/// busybox `reboot`: init runs its shutdown action and restarts.
fn busybox_reboot() -> io::Result<()> {
    let status = std::process::Command::new("/sbin/reboot").status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("/sbin/reboot: {status}")))
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Printable ASCII (what the firmware and the kernel's restart handlers parse), at most
/// 255 bytes, not empty.
pub fn check_arg(arg: &str) -> io::Result<CString> {
    let ok = !arg.is_empty()
        && arg.len() <= MAX_ARG
        && arg.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("reboot argument {arg:?} is not 1..={MAX_ARG} printable characters"),
        ));
    }
    CString::new(arg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Temporary file and rename, so init's shutdown action reads all of it or nothing.
fn write_replacing(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    }
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).map_err(|e| with_path(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| with_path(path, e))
}

/// `outpostd --restart2 ARG`: flushes the file systems and restarts the machine at once
/// with `reboot(2)` `LINUX_REBOOT_CMD_RESTART2` and `arg`. Only init's shutdown action
/// calls this, after it has stopped everything; returns only on failure.
pub fn restart2(arg: &str) -> io::Result<()> {
    let arg = check_arg(arg)?;
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: the magic numbers and command are the kernel's; `arg` is a valid
    // NUL-terminated string that outlives the call (which does not return on success).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_reboot,
            libc::LINUX_REBOOT_MAGIC1,
            libc::LINUX_REBOOT_MAGIC2,
            libc::LINUX_REBOOT_CMD_RESTART2,
            arg.as_ptr(),
        )
    };
    if rc == 0 {
        // Not reached on a restart; a kernel that returned anyway did not restart.
        return Err(io::Error::other("reboot(2) returned without restarting"));
    }
    Err(io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A rebooter whose init request records what the shutdown action would read.
    fn recorder(dir: &Path) -> (Rebooter, Arc<Mutex<Vec<Option<String>>>>) {
        let file = dir.join("run/outpost/reboot-arg");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (f, s) = (file.clone(), seen.clone());
        let rebooter = Rebooter::new(
            file,
            Box::new(move || {
                s.lock().unwrap().push(std::fs::read_to_string(&f).ok());
                Ok(())
            }),
        );
        (rebooter, seen)
    }

    #[test]
    fn tryboot_leaves_its_argument_for_the_shutdown_action() {
        let t = tempfile::tempdir().unwrap();
        let (r, seen) = recorder(t.path());
        r.reboot(RebootAction::WithArg("0 tryboot")).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [Some("0 tryboot".to_owned())],
            "written before init is asked"
        );
        // A later plain restart (say the first did not take the board down and the
        // update was settled otherwise) does not reuse it.
        r.reboot(RebootAction::Plain).unwrap();
        assert_eq!(seen.lock().unwrap()[1], None);
        assert!(!t.path().join("run/outpost/reboot-arg").exists());
        // No stray temporary file either.
        assert!(!t.path().join("run/outpost/reboot-arg.new").exists());
    }

    #[test]
    fn a_plain_reboot_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (r, seen) = recorder(t.path());
        r.reboot(RebootAction::Plain).unwrap();
        assert_eq!(*seen.lock().unwrap(), [None]);
    }

    #[test]
    fn a_failed_init_request_is_an_error_to_retry() {
        let t = tempfile::tempdir().unwrap();
        let r = Rebooter::new(
            t.path().join("reboot-arg"),
            Box::new(|| Err(io::Error::other("/sbin/reboot: exit status: 1"))),
        );
        let e = r.reboot(RebootAction::WithArg("0 tryboot")).unwrap_err();
        assert!(e.to_string().contains("/sbin/reboot"), "{e}");
    }

    #[test]
    fn arguments_are_checked() {
        assert!(check_arg("0 tryboot").is_ok());
        for bad in ["", "0\ntryboot", "0\0tryboot", "tryböot"] {
            assert!(check_arg(bad).is_err(), "{bad:?}");
        }
        assert!(check_arg(&"x".repeat(255)).is_ok());
        assert!(check_arg(&"x".repeat(256)).is_err());
        // A bad argument is refused before init is asked for anything.
        let t = tempfile::tempdir().unwrap();
        let (r, seen) = recorder(t.path());
        assert!(r.reboot(RebootAction::WithArg("0\ntryboot")).is_err());
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(
            restart2("bad\narg").unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "refused before any system call"
        );
    }
}
