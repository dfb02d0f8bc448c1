//! What is running: the image's release file and the boot slot.
//!
//! `/etc/outpost-release` is written by `scripts/build-image` into the read-only root
//! filesystem, one `KEY=VALUE` per line (os-release style; values may be quoted):
//!
//! ```text
//! VERSION=1.2.0
//! BOARD=outpost,rpi4
//! ```
//!
//! `VERSION` is the semver of the slot's contents (what a bundle's manifest calls
//! `version`), `BOARD` the bundle `compatible` this image accepts. A file whose first
//! line is a bare version (no `=`) is read as `VERSION` too. The slot comes from the
//! kernel command line (`outpost.slot=A|B`, set by the boot script), as does whether
//! this boot is a trial of a freshly installed slot (`outpost.trial=1`).

use std::path::Path;

use outpost_bootctl::{cmdline, Slot};
use outpost_bundle::Version;

pub const DEFAULT_RELEASE_FILE: &str = "/etc/outpost-release";
pub const DEFAULT_CMDLINE: &str = "/proc/cmdline";

/// The release file's contents; fields are `None` when absent (e.g. a development
/// build without the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub version: Option<String>,
    pub board: Option<String>,
}

impl Release {
    /// A missing or unreadable file is an empty release: the sensor still runs, it just
    /// cannot say its version or take updates.
    pub fn load(path: &Path) -> Release {
        match std::fs::read_to_string(path) {
            Ok(text) => Release::parse(&text),
            Err(e) => {
                tracing::info!(file = %path.display(), error = %e, "no release file");
                Release::default()
            }
        }
    }

    pub fn parse(text: &str) -> Release {
        let mut r = Release::default();
        let mut first_bare = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some(("VERSION", v)) => r.version = non_empty(unquote(v)),
                Some(("BOARD", v)) => r.board = non_empty(unquote(v)),
                Some(_) => {}
                None if i == 0 => first_bare = non_empty(line),
                None => {}
            }
        }
        if r.version.is_none() {
            r.version = first_bare;
        }
        r
    }

    /// The version as semver, for the update policy.
    pub fn semver(&self) -> Result<Version, String> {
        let v = self
            .version
            .as_deref()
            .ok_or("the release file names no VERSION")?;
        Version::parse(v).map_err(|e| format!("VERSION={v:?} is not a semantic version: {e}"))
    }
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
        .unwrap_or(v)
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

/// The boot as the boot script described it on the kernel command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// `None` when not booted by the Outpost boot script (development, tests).
    pub slot: Option<Slot>,
    /// A trial boot of a slot that was made active and not marked good since.
    pub trial: bool,
}

impl BootInfo {
    pub fn load(cmdline_path: &Path) -> BootInfo {
        std::fs::read_to_string(cmdline_path)
            .map(|t| BootInfo::parse(&t))
            .unwrap_or_default()
    }

    pub fn parse(cmdline: &str) -> BootInfo {
        BootInfo {
            slot: cmdline::booted_slot(cmdline).ok(),
            trial: cmdline::trial_boot(cmdline),
        }
    }
}

/// Slot name as the wire carries it (`a` / `b`).
pub fn wire_slot(slot: Slot) -> String {
    slot.letter().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_file() {
        let r =
            Release::parse("# built 2025-01-01\nVERSION=\"1.2.0\"\nBOARD=outpost,rpi4\nBUILD=x\n");
        assert_eq!(r.version.as_deref(), Some("1.2.0"));
        assert_eq!(r.board.as_deref(), Some("outpost,rpi4"));
        assert_eq!(r.semver().unwrap(), Version::new(1, 2, 0));
    }

    #[test]
    fn bare_first_line_is_the_version() {
        let r = Release::parse("1.0.0-rc.1\n");
        assert_eq!(r.version.as_deref(), Some("1.0.0-rc.1"));
        assert_eq!(r.board, None);
        // An explicit VERSION= wins over a bare first line.
        let r = Release::parse("0.9\nVERSION=1.0.0\n");
        assert_eq!(r.version.as_deref(), Some("1.0.0"));
    }

    #[test]
    fn missing_or_bad_version_is_said() {
        let r = Release::load(Path::new("/nonexistent/outpost-release"));
        assert_eq!(r, Release::default());
        assert!(r.semver().unwrap_err().contains("no VERSION"));
        let e = Release::parse("VERSION=banana\n").semver().unwrap_err();
        assert!(e.contains("banana"), "{e}");
    }

    #[test]
    fn boot_info_from_the_command_line() {
        let b = BootInfo::parse("console=ttyAMA0 outpost.slot=B outpost.trial=1\n");
        assert_eq!(b.slot, Some(Slot::B));
        assert!(b.trial);
        assert_eq!(wire_slot(Slot::B), "b");
        assert_eq!(BootInfo::parse("console=ttyAMA0"), BootInfo::default());
    }
}
