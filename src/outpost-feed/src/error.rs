//! The crate's one error type: a feed directory that cannot be read.

use std::io;
use std::path::PathBuf;

/// Reading the feed failed in a way that is not "the feed is absent or
/// small" (those are reported in [`crate::FeedStatus`] instead).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A directory or file of the feed could not be read.
    #[error("cannot read feed path {path}: {source}")]
    Read {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl FeedError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        FeedError::Read {
            path: path.into(),
            source,
        }
    }
}
