use std::io;
use std::path::PathBuf;

use crate::cmdline::CmdlineError;
use crate::state::StateError;
use crate::store::WriteError;
use crate::tryboot::TrybootError;

/// Errors from a boot-control backend; each names the file and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum BootCtlError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot flush {path} to disk: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot tell the running slot from {path}: {source}")]
    BootedSlot { path: PathBuf, source: CmdlineError },
    #[error("boot state in {dir}: {source}")]
    State { dir: PathBuf, source: StateError },
    #[error("cannot write {path}: {source}")]
    Plan { path: PathBuf, source: WriteError },
    #[error("{path}: {source}")]
    Tryboot { path: PathBuf, source: TrybootError },
}
