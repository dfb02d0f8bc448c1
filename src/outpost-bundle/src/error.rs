//! Errors. [`Refusal`] is "this bundle must not be installed here" (or could not be
//! read); [`InstallError`] adds what can go wrong on the device's own storage.

use std::io;
use std::path::PathBuf;

use semver::Version;

/// Why a bundle is not accepted. Each variant is a reason a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not an Outpost bundle (bad magic)")]
    NotABundle,
    #[error("bundle container version {version} is not supported (this build reads 1)")]
    UnsupportedContainer { version: u16 },
    #[error("malformed bundle header: {reason}")]
    MalformedHeader { reason: String },
    #[error("truncated: the bundle ends at byte {at}, inside {what}")]
    Truncated { at: u64, what: String },
    #[error("{extra} unexpected bytes after the last part")]
    TrailingData { extra: u64 },
    #[error(
        "the bundle is {manifest} bytes by its manifest, but the server announced {announced}"
    )]
    SizeMismatch { manifest: u64, announced: u64 },
    #[error("unsigned bundle")]
    Unsigned,
    #[error("signed by {key}, which is not a trusted key")]
    UntrustedKey { key: String },
    #[error(
        "bad signature (claimed signer {key}): the manifest was altered or the signature is forged"
    )]
    BadSignature { key: String },
    #[error("invalid manifest: {reason}")]
    BadManifest { reason: String },
    #[error("bundle is for board {bundle:?}, this device is {device:?}")]
    WrongBoard { bundle: String, device: String },
    #[error("downgrade refused: bundle version {bundle} is not newer than the running {current}")]
    NotNewer { bundle: Version, current: Version },
    #[error("downgrade refused: bundle version {bundle} is below this device's floor {floor}")]
    BelowFloor { bundle: Version, floor: Version },
    #[error("this bundle may only replace {min_version} or later; this device runs {current}")]
    CurrentTooOld {
        min_version: Version,
        current: Version,
    },
    #[error("part {part:?} is tampered or corrupt: sha256 {actual}, manifest says {expected}")]
    PartMismatch {
        part: String,
        expected: String,
        actual: String,
    },
    #[error("part {part:?} is {size} bytes; the slot's {target} holds only {capacity}")]
    TooLarge {
        part: String,
        size: u64,
        target: String,
        capacity: u64,
    },
    #[error("cannot read the bundle: {source}")]
    Read { source: io::Error },
}

/// What an install left in the target slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Nothing in the slot was changed (staged `*.new` files were removed again).
    Untouched,
    /// The rootfs partition was partly overwritten; its first block is zeroed, so
    /// it cannot be mounted and the slot cannot boot. Do not `mark_active` it.
    Invalidated,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("bundle refused: {refusal}")]
    Refused { refusal: Refusal, slot: SlotState },
    #[error("cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
        slot: SlotState,
    },
    #[error("read-back of {part:?} from {path} gives sha256 {actual}, expected {expected}: the storage did not keep what was written")]
    ReadBack {
        part: String,
        path: PathBuf,
        expected: String,
        actual: String,
        slot: SlotState,
    },
}

impl InstallError {
    /// Whether the slot still holds what it held before the install started.
    pub fn slot_state(&self) -> SlotState {
        match self {
            InstallError::Refused { slot, .. }
            | InstallError::Io { slot, .. }
            | InstallError::ReadBack { slot, .. } => *slot,
        }
    }

    /// The bundle's fault (as opposed to the device's storage).
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            InstallError::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// Key files: generating, reading, parsing.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no keys in the file")]
    Empty { path: PathBuf },
    #[error("no random numbers from the operating system: {0}")]
    Random(String),
}

/// Host-side tooling: building and signing bundles.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path} changed while the bundle was being written")]
    InputChanged { path: PathBuf },
    #[error("refusing to sign {path}: {refusal}")]
    NotSignable { path: PathBuf, refusal: Refusal },
}
