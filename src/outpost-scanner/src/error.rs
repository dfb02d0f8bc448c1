//! Error types: [`ScannerError`] for setup and control, [`ProbeError`] for
//! one failed readiness or liveness check.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Setting up or controlling the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    /// `/etc/passwd` or `/etc/group` could not be read.
    #[error("cannot read {path}: {source}")]
    Accounts {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A component's user does not exist.
    #[error("component {component}: no user {user:?} in /etc/passwd")]
    UnknownUser {
        /// The component.
        component: String,
        /// The missing user.
        user: String,
    },
    /// A component's group does not exist.
    #[error("component {component}: no group {group:?} in /etc/group")]
    UnknownGroup {
        /// The component.
        component: String,
        /// The missing group.
        group: String,
    },
    /// Two components share a name.
    #[error("two components are named {0:?}")]
    DuplicateName(String),
    /// No component has this name.
    #[error("no component named {0:?}")]
    UnknownComponent(String),
    /// Writing a rendered config failed.
    #[error("cannot write {path}: {source}")]
    Render {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The supervisor thread is gone (shut down or panicked).
    #[error("the scanner supervisor is not running")]
    NotRunning,
    /// Starting the supervisor thread failed.
    #[error("cannot start the supervisor thread: {0}")]
    Thread(#[source] io::Error),
    /// ospd-openvas did not load the whole feed in time.
    #[error("ospd-openvas has {loaded} of {expected} VTs loaded after {waited:?}{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    VtsTimeout {
        /// VTs listed at the last successful count (0 if none).
        loaded: u64,
        /// VTs expected from the feed on disk.
        expected: u64,
        /// How long it waited.
        waited: Duration,
        /// The last transient error, if the last poll failed.
        last_error: Option<String>,
    },
    /// ospd-openvas finished loading the feed version asked for, and lists fewer VTs
    /// than its manifest says: scripts failed to load (a broken or refused file).
    #[error("ospd-openvas loaded feed version {version} with {loaded} of its {expected} VTs")]
    VtsShort {
        loaded: u64,
        expected: u64,
        version: String,
    },
    /// ospd-openvas answered in a way that waiting will not fix.
    #[error("ospd-openvas get_vts failed: {0}")]
    Vts(#[source] outpost_osp::OspError),
}

/// Why one probe did not pass; the text goes into events as it is.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Could not connect.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// What was dialled.
        target: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Connected, but the exchange failed or timed out.
    #[error("{target}: {source}")]
    Io {
        /// What was dialled.
        target: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer answered, but not with what a ready service says.
    #[error("{target} answered {answer}")]
    Unexpected {
        /// What was dialled.
        target: String,
        /// What it said, made printable.
        answer: String,
    },
    /// The process is up but not (yet) in the state the probe looks for.
    #[error("{0}")]
    NotYet(String),
    /// The OSP exchange failed.
    #[error("ospd-openvas: {0}")]
    Osp(#[from] outpost_osp::OspError),
}
