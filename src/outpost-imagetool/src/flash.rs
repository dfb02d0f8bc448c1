//! Writing an image to a card: refuse anything in use, write in large blocks, sync,
//! then read back and compare.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use crate::mounts::{self, DevNum, DeviceTree};

/// Where the system tables are read from; tests point these at their own files.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    pub mountinfo: PathBuf,
    pub swaps: PathBuf,
    pub sys: PathBuf,
    /// Bytes per write (and per progress report).
    pub block_size: usize,
}

impl Default for FlashOptions {
    fn default() -> Self {
        FlashOptions {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
            sys: PathBuf::from("/sys"),
            block_size: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashPhase {
    Write,
    Verify,
}

/// Reported after every block and once at the start of each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashProgress {
    pub phase: FlashPhase,
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashReport {
    pub device: PathBuf,
    pub bytes: u64,
}

/// What the target is, once it passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical path (symlinks such as /dev/disk/by-id resolved).
    pub path: PathBuf,
    pub block_device: bool,
    pub size: u64,
    pub image_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    #[error("image {path} is empty or not a regular file")]
    BadImage { path: PathBuf },
    #[error(
        "{device} does not exist (refusing to create it: a mistyped device would become a file)"
    )]
    NoDevice { device: PathBuf },
    #[error("{device} is neither a block device nor a regular file")]
    NotADevice { device: PathBuf },
    #[error("{device} is the image itself")]
    SameAsImage { device: PathBuf },
    #[error("{device} holds the running system's root file system")]
    HoldsRoot { device: PathBuf },
    #[error("{device} is mounted ({source_name} on {mount_point}); unmount it first")]
    Mounted {
        device: PathBuf,
        source_name: String,
        mount_point: PathBuf,
    },
    #[error("{device} is in use as swap ({swap})")]
    Swap { device: PathBuf, swap: String },
    #[error("{device} is attached to loop device {loop_dev}")]
    LoopBacked { device: PathBuf, loop_dev: String },
    #[error("{device} is busy (the kernel holds it open exclusively)")]
    Busy { device: PathBuf },
    #[error("{device} is {device_size} bytes, smaller than the image ({image_size} bytes)")]
    TooSmall {
        device: PathBuf,
        device_size: u64,
        image_size: u64,
    },
    #[error("reading {path}: {source}")]
    SystemTable { path: PathBuf, source: io::Error },
    #[error("{device}: {step}: {source}")]
    Device {
        device: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "{device}: read-back differs from the image at byte {offset}; the card may be failing"
    )]
    VerifyMismatch { device: PathBuf, offset: u64 },
}

/// Flashes `image` to `device` with the system's tables.
pub fn flash(
    image: &Path,
    device: &Path,
    progress: impl FnMut(FlashProgress),
) -> Result<FlashReport, FlashError> {
    flash_with(&FlashOptions::default(), image, device, progress)
}

/// Every refusal check, without writing anything.
pub fn check_target(
    opts: &FlashOptions,
    image: &Path,
    device: &Path,
) -> Result<Target, FlashError> {
    let image_meta = fs::metadata(image).map_err(|source| FlashError::Image {
        path: image.to_path_buf(),
        source,
    })?;
    if !image_meta.is_file() || image_meta.len() == 0 {
        return Err(FlashError::BadImage {
            path: image.to_path_buf(),
        });
    }
    let dev_meta = match fs::metadata(device) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FlashError::NoDevice {
                device: device.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(FlashError::Device {
                device: device.to_path_buf(),
                step: "stat",
                source,
            })
        }
    };
    let path = fs::canonicalize(device).map_err(|source| FlashError::Device {
        device: device.to_path_buf(),
        step: "resolve path",
        source,
    })?;
    let block_device = dev_meta.file_type().is_block_device();
    if !block_device && !dev_meta.is_file() {
        return Err(FlashError::NotADevice { device: path });
    }
    if dev_meta.dev() == image_meta.dev() && dev_meta.ino() == image_meta.ino() {
        return Err(FlashError::SameAsImage { device: path });
    }

    let mounts_text = read_table(&opts.mountinfo)?;
    let mounts = mounts::parse_mountinfo(&mounts_text);
    let swaps = mounts::parse_swaps(&read_table(&opts.swaps)?);

    // Block device: it, its partitions and anything stacked on them. Regular file:
    // only its own path (it may be a mount source, or back a loop device).
    let tree = if block_device {
        mounts::device_tree(&opts.sys, DevNum::from_dev_t(dev_meta.rdev()))
    } else {
        DeviceTree::default()
    };
    let in_use = |source: &str| names_device(source, &path, &tree);

    if let Some(root) = mounts.iter().find(|m| m.mount_point == Path::new("/")) {
        if tree.devs.contains(&root.dev) || in_use(&root.source) {
            return Err(FlashError::HoldsRoot { device: path });
        }
    }
    if let Some(m) = mounts
        .iter()
        .find(|m| tree.devs.contains(&m.dev) || in_use(&m.source))
    {
        return Err(FlashError::Mounted {
            device: path,
            source_name: m.source.clone(),
            mount_point: m.mount_point.clone(),
        });
    }
    if let Some(swap) = swaps.iter().find(|s| in_use(s)) {
        return Err(FlashError::Swap {
            device: path,
            swap: swap.clone(),
        });
    }
    if !block_device {
        if let Some(loop_dev) = loop_backing(&opts.sys, &path) {
            return Err(FlashError::LoopBacked {
                device: path,
                loop_dev,
            });
        }
    }

    let size = if block_device {
        File::open(&path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(|source| FlashError::Device {
                device: path.clone(),
                step: "read size",
                source,
            })?
    } else {
        dev_meta.len()
    };
    if size < image_meta.len() {
        return Err(FlashError::TooSmall {
            device: path,
            device_size: size,
            image_size: image_meta.len(),
        });
    }
    Ok(Target {
        path,
        block_device,
        size,
        image_size: image_meta.len(),
    })
}

/// Flashes with explicit options. The target must already exist (a card's device
/// node, or a pre-sized file standing in for one) and be at least as large as the
/// image; bytes past the image are left as they were.
pub fn flash_with(
    opts: &FlashOptions,
    image: &Path,
    device: &Path,
    mut progress: impl FnMut(FlashProgress),
) -> Result<FlashReport, FlashError> {
    let target = check_target(opts, image, device)?;
    let dev = target.path.clone();
    let dev_err = |step: &'static str| {
        let dev = dev.clone();
        move |source| FlashError::Device {
            device: dev,
            step,
            source,
        }
    };
    let image_err = |source| FlashError::Image {
        path: image.to_path_buf(),
        source,
    };

    let mut open = OpenOptions::new();
    open.read(true).write(true);
    if target.block_device {
        // On Linux, O_EXCL on a block device fails with EBUSY while it is mounted or
        // claimed by the kernel: a last guard against races with the checks above.
        open.custom_flags(libc::O_EXCL);
    }
    let mut out = match open.open(&dev) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(FlashError::Busy { device: dev })
        }
        Err(e) => return Err(dev_err("open for writing")(e)),
    };
    let mut input = File::open(image).map_err(image_err)?;
    let total = target.image_size;
    let block = opts.block_size.max(4096);
    let mut buf = vec![0u8; block];

    info!(image = %image.display(), device = %dev.display(), bytes = total, "flashing");
    progress(FlashProgress {
        phase: FlashPhase::Write,
        done: 0,
        total,
    });
    let mut done = 0u64;
    while done < total {
        let n = read_block(&mut input, &mut buf, total - done).map_err(image_err)?;
        out.write_all(&buf[..n]).map_err(dev_err("write"))?;
        done += n as u64;
        progress(FlashProgress {
            phase: FlashPhase::Write,
            done,
            total,
        });
    }
    out.sync_all().map_err(dev_err("sync"))?;
    drop_cache(&out);
    debug!(device = %dev.display(), "written and synced; verifying");

    progress(FlashProgress {
        phase: FlashPhase::Verify,
        done: 0,
        total,
    });
    input.seek(SeekFrom::Start(0)).map_err(image_err)?;
    out.seek(SeekFrom::Start(0)).map_err(dev_err("seek"))?;
    let mut back = vec![0u8; block];
    let mut done = 0u64;
    while done < total {
        let n = read_block(&mut input, &mut buf, total - done).map_err(image_err)?;
        out.read_exact(&mut back[..n])
            .map_err(dev_err("read back"))?;
        if let Some(i) = buf[..n].iter().zip(&back[..n]).position(|(a, b)| a != b) {
            return Err(FlashError::VerifyMismatch {
                device: dev,
                offset: done + i as u64,
            });
        }
        done += n as u64;
        progress(FlashProgress {
            phase: FlashPhase::Verify,
            done,
            total,
        });
    }
    info!(device = %dev.display(), bytes = total, "flashed and verified");
    Ok(FlashReport {
        device: dev,
        bytes: total,
    })
}

/// Fills up to `buf.len()` (or `left`) bytes; a short image is an error.
fn read_block(input: &mut File, buf: &mut [u8], left: u64) -> io::Result<usize> {
    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
    input.read_exact(&mut buf[..n])?;
    Ok(n)
}

/// Asks the kernel to forget cached pages so the read-back comes from the medium.
/// Best effort: if it fails, the compare still checks the write path.
fn drop_cache(file: &File) {
    // SAFETY: the descriptor is valid for the lifetime of `file`; fadvise only reads it.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        debug!(rc, "posix_fadvise(DONTNEED) failed; verifying from cache");
    }
}

fn read_table(path: &Path) -> Result<String, FlashError> {
    fs::read_to_string(path).map_err(|source| FlashError::SystemTable {
        path: path.to_path_buf(),
        source,
    })
}

/// Does a mount or swap source name the target (or one of its partitions/holders)?
fn names_device(source: &str, target: &Path, tree: &DeviceTree) -> bool {
    if !source.starts_with('/') {
        return false; // "proc", "overlay", "tmpfs", ...
    }
    let resolved = fs::canonicalize(source).unwrap_or_else(|_| PathBuf::from(source));
    if resolved == target {
        return true;
    }
    resolved
        .strip_prefix("/dev")
        .ok()
        .and_then(|rest| rest.to_str())
        .is_some_and(|name| tree.names.contains(name))
}

/// The loop device backed by `file`, if any.
fn loop_backing(sys: &Path, file: &Path) -> Option<String> {
    let entries = fs::read_dir(sys.join("block")).ok()?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(backing.trim_end()) == file {
                return Some(format!("/dev/{name}"));
            }
        }
    }
    None
}
