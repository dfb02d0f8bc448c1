use std::io;
use std::path::PathBuf;

use crate::mbr::MbrError;

/// Errors working on an image's boot partition; each names the image and the step.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: bad partition table: {source}")]
    Mbr { path: PathBuf, source: MbrError },
    #[error("{path}: has no partition {number}")]
    NoPartition { path: PathBuf, number: u8 },
    #[error("{path}: partition {number} has type {kind:#04x}, not FAT")]
    NotFat { path: PathBuf, number: u8, kind: u8 },
    #[error("{path}: partition {number} is not a usable FAT file system: {source}")]
    Fat {
        path: PathBuf,
        number: u8,
        source: io::Error,
    },
    #[error("{image}: boot partition file {name}: {source}")]
    BootFile {
        image: PathBuf,
        name: String,
        source: io::Error,
    },
    #[error("{image}: cannot write {name}: its directory does not exist on the boot partition")]
    NoParentDir { image: PathBuf, name: String },
    #[error("{image}: no file {name} on the boot partition")]
    NotFound { image: PathBuf, name: String },
    #[error("boot partition file name {name:?} is not allowed ({reason})")]
    BadName { name: String, reason: &'static str },
    #[error("provisioning file is not valid TOML: {message}")]
    Toml { message: String },
}
