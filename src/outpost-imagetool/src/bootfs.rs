//! Files on the boot (FAT) partition of a raw disk image, read and written in user
//! space with `fatfs`: no mount, no loop device, no root.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FsOptions};
use tracing::info;

use crate::error::ImageError;
use crate::mbr::{Mbr, SECTOR};
use crate::slice::Slice;

/// The FAT boot partition's number in the MBR.
pub const BOOT_PARTITION: u8 = 1;
/// The provisioning file a person edits, in the FAT root.
pub const PROVISION_FILE: &str = "outpost.toml";

type BootFs = FileSystem<Slice<File>>;

/// Writes the provisioning file into the image's boot partition, replacing any
/// previous one. The text must be valid TOML; its meaning is checked by the agent.
pub fn provision(image: &Path, toml_text: &str) -> Result<(), ImageError> {
    toml_text
        .parse::<toml::Table>()
        .map_err(|source| ImageError::Toml {
            message: source.to_string(),
        })?;
    write_boot_file(image, PROVISION_FILE, toml_text.as_bytes())?;
    info!(image = %image.display(), "provisioning file written");
    Ok(())
}

/// Reads a file from the boot partition (`name` may contain `/`, e.g. `slot-a/Image`).
pub fn read_boot_file(image: &Path, name: &str) -> Result<Vec<u8>, ImageError> {
    let name = check_name(name)?;
    let fs = open_boot_fs(image, false)?;
    let file_err = |source| ImageError::BootFile {
        image: image.to_path_buf(),
        name: name.to_string(),
        source,
    };
    let mut file = match fs.root_dir().open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::NotFound {
                image: image.to_path_buf(),
                name: name.to_string(),
            })
        }
        Err(e) => return Err(file_err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(file_err)?;
    Ok(bytes)
}

/// Creates or replaces a file on the boot partition. Parent directories must exist:
/// fatfs 0.3's directory creation writes `.`/`..` entries that fsck.fat rejects (an
/// LFN entry before `.`, and `..` pointing at the FAT32 root cluster instead of 0), so
/// directories are left to the image build (mtools).
pub fn write_boot_file(image: &Path, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let name = check_name(name)?;
    let fs = open_boot_fs(image, true)?;
    let file_err = |source| ImageError::BootFile {
        image: image.to_path_buf(),
        name: name.to_string(),
        source,
    };
    {
        let root = fs.root_dir();
        let mut file = match root.create_file(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NoParentDir {
                    image: image.to_path_buf(),
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(file_err(e)),
        };
        // create_file opens an existing file as is: cut it before writing.
        file.truncate().map_err(file_err)?;
        file.write_all(bytes).map_err(file_err)?;
        file.flush().map_err(file_err)?;
    }
    close_boot_fs(image, fs)
}

/// `/outpost.toml` and `outpost.toml` mean the same; `..`, `.`, empty components
/// and backslashes are refused so a name can never leave the partition's tree.
fn check_name(name: &str) -> Result<&str, ImageError> {
    let trimmed = name.trim_start_matches('/');
    let bad = |reason: &'static str| ImageError::BadName {
        name: name.to_string(),
        reason,
    };
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.contains('\\') {
        return Err(bad("backslash"));
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad("empty, '.' or '..' path component"));
    }
    Ok(trimmed)
}

/// Locates partition 1 through the MBR and opens its FAT file system.
fn open_boot_fs(image: &Path, writable: bool) -> Result<BootFs, ImageError> {
    let io_err = |source| ImageError::Io {
        path: image.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(image)
        .map_err(io_err)?;
    // Seeking works for block devices too, where metadata().len() is 0.
    let disk_len = file.seek(SeekFrom::End(0)).map_err(io_err)?;
    let mut sector = [0u8; SECTOR as usize];
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    file.read_exact(&mut sector).map_err(io_err)?;
    let mbr = Mbr::parse(&sector, disk_len).map_err(|source| ImageError::Mbr {
        path: image.to_path_buf(),
        source,
    })?;
    let part = *mbr
        .partition(BOOT_PARTITION)
        .ok_or_else(|| ImageError::NoPartition {
            path: image.to_path_buf(),
            number: BOOT_PARTITION,
        })?;
    if !part.is_fat() {
        return Err(ImageError::NotFat {
            path: image.to_path_buf(),
            number: part.number,
            kind: part.kind,
        });
    }
    let range = part.byte_range();
    let slice = Slice::new(file, range.start, range.end - range.start);
    FileSystem::new(slice, FsOptions::new()).map_err(|source| ImageError::Fat {
        path: image.to_path_buf(),
        number: part.number,
        source,
    })
}

/// Unmounts (writes FSInfo and clears the dirty flag) and syncs the image to disk.
fn close_boot_fs(image: &Path, fs: BootFs) -> Result<(), ImageError> {
    let path: PathBuf = image.to_path_buf();
    // `unmount` consumes the file system; the File inside is flushed by it, so sync
    // through a fresh handle afterwards.
    fs.unmount().map_err(|source| ImageError::Io {
        path: path.clone(),
        source,
    })?;
    File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|source| ImageError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("/outpost.toml").unwrap(), "outpost.toml");
        assert_eq!(check_name("slot-a/Image").unwrap(), "slot-a/Image");
        for bad in ["", "/", "a/../b", "./x", "a//b", "a\\b", "dir/"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
