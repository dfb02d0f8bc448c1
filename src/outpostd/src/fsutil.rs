//! Crash-safe file writes. The data partition may lose power at any moment, so every
//! file the daemon keeps is written to a temporary name, synced, renamed over the old
//! one and the directory synced: after a crash either the old or the new file exists.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file the daemon writes: keys, API key and reports are private.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of the data directory and its subdirectories.
pub const PRIVATE_DIR: u32 = 0o700;

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot prefix and `.tmp` suffix keep half-written files out of spool scans.
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)?;
        // `mode` only applies on creation; a stale temp file may have other bits.
        f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Makes the rename or unlink of an entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if missing and restricts it to the owner.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR))
}

/// Unix permission bits of `path`.
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_private_file_and_replaces_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(mode_of(&p).unwrap(), 0o600);
        // No temporary file is left next to it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity.json")]);
    }

    #[test]
    fn tightens_a_stale_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(".k.tmp");
        fs::write(&tmp, b"junk").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        let p = dir.path().join("k");
        atomic_write(&p, b"secret").unwrap();
        assert_eq!(mode_of(&p).unwrap(), 0o600);
        assert_eq!(fs::read(&p).unwrap(), b"secret");
    }

    #[test]
    fn private_dir_mode() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        assert_eq!(mode_of(&d).unwrap(), 0o700);
    }
}
