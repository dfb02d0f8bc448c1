//! Device side, step 2: stream the parts into the inactive slot.
//!
//! Order, and why:
//! 1. The rootfs must fit the slot's partition: checked before any write.
//! 2. Boot files (kernel, initramfs, device trees) are written as `*.new` next to the
//!    slot's files, hashed while streaming, synced and read back. A bad one is deleted
//!    again, so the slot is untouched.
//! 3. The rootfs (always the last part) goes to the partition. Its first 4 KiB (the
//!    squashfs / erofs superblock) is zeroed before anything else is written and only
//!    written for real after the rest has been hashed, synced and read back. So the
//!    partition holds either the old filesystem, nothing mountable, or the complete new
//!    one, never a new superblock over a half-written image.
//! 4. The `*.new` files are renamed over the old ones and the directories synced.
//!
//! The bootloader is not touched: after `Ok`, the caller runs
//! `BootControl::mark_active(slot)`; after `Err`, it must not.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use outpost_bootctl::Slot;
use semver::Version;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::error::{InstallError, Refusal, SlotState};
use crate::manifest::{Part, PartKind, Sha256Digest, DTB_DIR};
use crate::verify::{expect_digest, hash_exact, HashError, VerifiedManifest, CHUNK};

/// Covers the squashfs superblock (offset 0) and the erofs one (offset 1024).
pub const SUPERBLOCK_HOLD: u64 = 4096;

/// Where the inactive slot lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTarget {
    /// The slot's root filesystem partition (a block device, or a file in tests).
    pub rootfs: PathBuf,
    /// The slot's directory on the mounted FAT partition, e.g. `/boot/slot-b`.
    pub boot_dir: PathBuf,
}

impl SlotTarget {
    pub fn new(rootfs: impl Into<PathBuf>, boot_dir: impl Into<PathBuf>) -> Self {
        SlotTarget {
            rootfs: rootfs.into(),
            boot_dir: boot_dir.into(),
        }
    }

    /// The device layout: partition 2 or 3 of `disk` (e.g. `/dev/mmcblk0`) and
    /// `slot-a` / `slot-b` under `boot_mount` (e.g. `/boot`). Pass the slot that is
    /// not running: `boot_control.booted()?.other()`.
    pub fn for_slot(slot: Slot, disk: &Path, boot_mount: &Path) -> Self {
        SlotTarget {
            rootfs: partition_device(disk, slot.rootfs_partition()),
            boot_dir: boot_mount.join(slot.boot_dir()),
        }
    }
}

/// Linux partition naming: `/dev/vda` -> `/dev/vda3`, `/dev/mmcblk0` -> `/dev/mmcblk0p3`
/// (a `p` goes between when the disk name ends in a digit).
pub fn partition_device(disk: &Path, number: u8) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    if disk
        .to_str()
        .and_then(|d| d.chars().last())
        .is_some_and(|c| c.is_ascii_digit())
    {
        s.push("p");
    }
    s.push(number.to_string());
    PathBuf::from(s)
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub version: Version,
    pub rootfs: PathBuf,
    pub boot_dir: PathBuf,
    pub parts: Vec<InstalledPart>,
    /// Device trees from the previous contents that the bundle no longer carries.
    pub removed: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstalledPart {
    pub name: String,
    pub kind: PartKind,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub destination: PathBuf,
}

/// Streams the parts from `reader` (positioned at the first part, as
/// [`crate::verify_header`] leaves it) into `target`. See the module documentation for
/// the order of writes.
pub fn install<R: Read>(
    reader: &mut R,
    manifest: &VerifiedManifest,
    target: &SlotTarget,
) -> Result<InstallReport, InstallError> {
    let mut job = Job {
        target,
        staged: Vec::new(),
        created_dirs: Vec::new(),
        slot: SlotState::Untouched,
    };
    let result = job.run(reader, manifest);
    if result.is_err() {
        job.clean_up();
    }
    result
}

struct Job<'a> {
    target: &'a SlotTarget,
    /// (`X.new`, `X`) pairs, renamed on commit, deleted on failure.
    staged: Vec<(PathBuf, PathBuf)>,
    /// Directories this install created (deleted on failure if still empty).
    created_dirs: Vec<PathBuf>,
    slot: SlotState,
}

impl Job<'_> {
    fn run<R: Read>(
        &mut self,
        reader: &mut R,
        m: &VerifiedManifest,
    ) -> Result<InstallReport, InstallError> {
        let rootfs_part = m.rootfs().ok_or_else(|| {
            self.refused(Refusal::BadManifest {
                reason: "no rootfs part".into(),
            })
        })?;
        let mut dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.target.rootfs)
            .map_err(|e| self.io("open", &self.target.rootfs, e))?;
        // Works for block devices as well as files: seeking to the end gives the size.
        let capacity = dev
            .seek(SeekFrom::End(0))
            .map_err(|e| self.io("measure", &self.target.rootfs, e))?;
        if rootfs_part.size > capacity {
            return Err(self.refused(Refusal::TooLarge {
                part: rootfs_part.name.clone(),
                size: rootfs_part.size,
                target: self.target.rootfs.display().to_string(),
                capacity,
            }));
        }
        if !self.target.boot_dir.is_dir() {
            let e = io::Error::new(io::ErrorKind::NotFound, "not a directory");
            return Err(self.io("use", &self.target.boot_dir, e));
        }

        let mut buf = vec![0u8; CHUNK];
        let mut at = m.payload_offset();
        let mut installed = Vec::new();
        for part in &m.parts {
            let destination = match part.boot_path() {
                Some(rel) => self.stage_boot_file(reader, part, &rel, at, &mut buf)?,
                None => {
                    self.write_rootfs(reader, &mut dev, part, capacity, at, &mut buf)?;
                    self.target.rootfs.clone()
                }
            };
            installed.push(InstalledPart {
                name: part.name.clone(),
                kind: part.kind,
                size: part.size,
                sha256: part.sha256,
                destination,
            });
            at += part.size;
        }
        self.commit()?;
        let removed = self.prune_dtbs(m)?;
        info!(
            version = %m.version,
            rootfs = %self.target.rootfs.display(),
            boot_dir = %self.target.boot_dir.display(),
            "slot written and verified"
        );
        Ok(InstallReport {
            version: m.version.clone(),
            rootfs: self.target.rootfs.clone(),
            boot_dir: self.target.boot_dir.clone(),
            parts: installed,
            removed,
        })
    }

    fn stage_boot_file<R: Read>(
        &mut self,
        reader: &mut R,
        part: &Part,
        rel: &Path,
        at: u64,
        buf: &mut [u8],
    ) -> Result<PathBuf, InstallError> {
        let dest = self.target.boot_dir.join(rel);
        let new = with_suffix(&dest, ".new");
        if let Some(parent) = new.parent() {
            self.create_dirs(parent)?;
        }
        let mut f = File::create(&new).map_err(|e| self.io("create", &new, e))?;
        // Registered before writing, so a failure part-way deletes it too.
        self.staged.push((new.clone(), dest.clone()));
        let got = hash_exact(reader, part.size, buf, at, &part.name, |chunk| {
            f.write_all(chunk)
        })
        .map_err(|e| self.stream_error(e, &new))?;
        expect_digest(&part.name, &part.sha256, &got).map_err(|r| self.refused(r))?;
        f.sync_all().map_err(|e| self.io("sync", &new, e))?;
        drop(f);
        let back =
            hash_file_prefix(&new, None, part.size).map_err(|e| self.io("read back", &new, e))?;
        if back != part.sha256 {
            return Err(self.read_back(part, &new, back));
        }
        Ok(dest)
    }

    fn write_rootfs<R: Read>(
        &mut self,
        reader: &mut R,
        dev: &mut File,
        part: &Part,
        capacity: u64,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), InstallError> {
        let path = &self.target.rootfs;
        // From here on the old filesystem is gone: every error says so.
        self.slot = SlotState::Invalidated;
        let zeros = vec![0u8; SUPERBLOCK_HOLD.min(capacity) as usize];
        write_at(dev, 0, &zeros).map_err(|e| self.io("invalidate", path, e))?;
        dev.sync_all().map_err(|e| self.io("sync", path, e))?;

        let hold = SUPERBLOCK_HOLD.min(part.size) as usize;
        let mut head: Vec<u8> = Vec::with_capacity(hold);
        dev.seek(SeekFrom::Start(hold as u64))
            .map_err(|e| self.io("seek", path, e))?;
        let got = hash_exact(reader, part.size, buf, at, &part.name, |chunk| {
            let take = (hold - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            dev.write_all(&chunk[take..])
        })
        .map_err(|e| self.stream_error(e, path))?;
        expect_digest(&part.name, &part.sha256, &got).map_err(|r| self.refused(r))?;
        dev.sync_all().map_err(|e| self.io("sync", path, e))?;

        // Read back what the device stored. After the sync the page cache may still
        // answer, but a short or failing device shows here.
        let back = hash_file_prefix(path, Some(&head), part.size)
            .map_err(|e| self.io("read back", path, e))?;
        if back != part.sha256 {
            return Err(self.read_back(part, path, back));
        }
        write_at(dev, 0, &head).map_err(|e| self.io("write the superblock of", path, e))?;
        dev.sync_all().map_err(|e| self.io("sync", path, e))?;
        let mut check = vec![0u8; head.len()];
        dev.seek(SeekFrom::Start(0))
            .and_then(|_| dev.read_exact(&mut check))
            .map_err(|e| self.io("read back", path, e))?;
        if check != head {
            let actual = Sha256Digest(Sha256::digest(&check).into());
            return Err(self.read_back(part, path, actual));
        }
        Ok(())
    }

    /// Renames every `X.new` over `X`, then syncs the directories.
    fn commit(&mut self) -> Result<(), InstallError> {
        let mut dirs = HashSet::new();
        for (new, dest) in std::mem::take(&mut self.staged) {
            if let Err(e) = fs::rename(&new, &dest) {
                self.invalidate_after_commit_failure();
                return Err(self.io("rename into place", &dest, e));
            }
            if let Some(d) = dest.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        self.created_dirs.clear();
        for d in dirs {
            sync_dir(&d).map_err(|e| self.io("sync", &d, e))?;
        }
        Ok(())
    }

    /// A rename failed half-way: old and new boot files are mixed, so the complete new
    /// rootfs is made unmountable again rather than left bootable with the wrong kernel.
    fn invalidate_after_commit_failure(&mut self) {
        self.slot = SlotState::Invalidated;
        let zeroed = OpenOptions::new()
            .write(true)
            .open(&self.target.rootfs)
            .and_then(|mut f| {
                write_at(&mut f, 0, &[0u8; SUPERBLOCK_HOLD as usize])?;
                f.sync_all()
            });
        if let Err(e) = zeroed {
            warn!(rootfs = %self.target.rootfs.display(), error = %e, "cannot invalidate the slot rootfs");
        }
    }

    /// Removes device trees under `dtbs/` that the new contents do not have, so an old
    /// tree is never booted with a new kernel.
    fn prune_dtbs(&self, m: &VerifiedManifest) -> Result<Vec<PathBuf>, InstallError> {
        let keep: HashSet<PathBuf> = m
            .parts
            .iter()
            .filter_map(Part::boot_path)
            .map(|p| self.target.boot_dir.join(p))
            .collect();
        let mut removed = Vec::new();
        let mut stack = vec![self.target.boot_dir.join(DTB_DIR)];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io("list", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io("list", &dir, e))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| self.io("stat", &path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if !keep.contains(&path) {
                    fs::remove_file(&path).map_err(|e| self.io("remove", &path, e))?;
                    removed.push(path);
                }
            }
        }
        for path in &removed {
            if let Some(d) = path.parent() {
                sync_dir(d).map_err(|e| self.io("sync", d, e))?;
            }
        }
        Ok(removed)
    }

    fn create_dirs(&mut self, dir: &Path) -> Result<(), InstallError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        fs::create_dir(dir).map_err(|e| self.io("create", dir, e))?;
        self.created_dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// After a failure: delete staged files and the directories made for them. The
    /// slot's own boot files were never touched.
    fn clean_up(&mut self) {
        for (new, _) in self.staged.drain(..) {
            if let Err(e) = fs::remove_file(&new) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(file = %new.display(), error = %e, "cannot remove staged file");
                }
            }
        }
        for dir in self.created_dirs.drain(..).rev() {
            // Only empty directories go; anything else was not ours.
            let _ = fs::remove_dir(&dir);
        }
        if self.slot == SlotState::Invalidated {
            warn!(rootfs = %self.target.rootfs.display(), "slot rootfs invalidated; it must not be made active");
        }
    }

    fn refused(&self, refusal: Refusal) -> InstallError {
        InstallError::Refused {
            refusal,
            slot: self.slot,
        }
    }

    fn io(&self, step: &'static str, path: &Path, source: io::Error) -> InstallError {
        InstallError::Io {
            step,
            path: path.to_path_buf(),
            source,
            slot: self.slot,
        }
    }

    fn stream_error(&self, e: HashError<io::Error>, dest: &Path) -> InstallError {
        match e {
            HashError::Refused(r) => self.refused(r),
            HashError::Sink(source) => self.io("write", dest, source),
        }
    }

    fn read_back(&self, part: &Part, path: &Path, actual: Sha256Digest) -> InstallError {
        InstallError::ReadBack {
            part: part.name.clone(),
            path: path.to_path_buf(),
            expected: part.sha256.to_string(),
            actual: actual.to_string(),
            slot: self.slot,
        }
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_at(f: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

/// SHA-256 of the first `len` bytes of `path`; with `head`, those bytes stand in for
/// the file's first `head.len()` bytes (the superblock not yet written).
fn hash_file_prefix(path: &Path, head: Option<&[u8]>, len: u64) -> io::Result<Sha256Digest> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    if let Some(h) = head {
        hasher.update(h);
        done = h.len() as u64;
        f.seek(SeekFrom::Start(done))?;
    }
    let mut buf = vec![0u8; CHUNK];
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("only {done} of {len} bytes could be read back"),
            ));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_linux() {
        assert_eq!(
            partition_device(Path::new("/dev/vda"), 3),
            PathBuf::from("/dev/vda3")
        );
        assert_eq!(
            partition_device(Path::new("/dev/mmcblk0"), 2),
            PathBuf::from("/dev/mmcblk0p2")
        );
        assert_eq!(
            partition_device(Path::new("/dev/nvme0n1"), 3),
            PathBuf::from("/dev/nvme0n1p3")
        );
        let t = SlotTarget::for_slot(Slot::B, Path::new("/dev/mmcblk0"), Path::new("/boot"));
        assert_eq!(t.rootfs, PathBuf::from("/dev/mmcblk0p3"));
        assert_eq!(t.boot_dir, PathBuf::from("/boot/slot-b"));
    }
}
