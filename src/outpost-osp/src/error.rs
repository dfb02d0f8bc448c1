//! One error type for the whole crate: what went wrong talking OSP.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can fail while building a command, talking to the
/// daemon or reading its answer.
#[derive(Debug, thiserror::Error)]
pub enum OspError {
    /// The daemon answered, but with a non-2xx `status`.
    #[error("ospd answered {command} with status {code}: {text}")]
    Status {
        /// The command the daemon says it is answering (`osp` or `error`
        /// for the generic failures, e.g. an unknown command or a daemon
        /// still loading its VTs).
        command: String,
        /// The OSP status code (400, 404, 500, ...).
        code: u16,
        /// The daemon's `status_text`.
        text: String,
    },

    /// The bytes are not well-formed XML (or use a feature we refuse,
    /// such as a DOCTYPE).
    #[error("malformed XML at byte {position}: {reason}")]
    Xml {
        /// Byte offset in the response where the problem was seen.
        position: u64,
        /// What the parser complained about.
        reason: String,
    },

    /// Well-formed XML that is not the OSP answer we expected.
    #[error("unexpected OSP response: {0}")]
    Unexpected(String),

    /// A response nests elements deeper than any real OSP answer does.
    #[error("XML nesting deeper than {limit} levels")]
    TooDeep {
        /// The depth limit that was exceeded.
        limit: usize,
    },

    /// A single tag, attribute or text run is larger than we accept.
    #[error("XML token larger than {limit} bytes")]
    TokenTooLarge {
        /// The per-token limit in bytes.
        limit: usize,
    },

    /// The whole response is larger than the configured cap.
    #[error("response larger than {limit} bytes")]
    ResponseTooLarge {
        /// The response size cap in bytes.
        limit: u64,
    },

    /// The daemon closed the connection without sending anything.
    #[error("ospd closed the connection without answering")]
    EmptyResponse,

    /// The command cannot be built from the given input.
    #[error("invalid OSP request: {0}")]
    InvalidRequest(String),

    /// Connecting to the daemon's socket failed.
    #[error("cannot connect to ospd at {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A connect, read, write or overall deadline passed.
    #[error("ospd {phase} timed out after {after:?}")]
    Timeout {
        /// Which step ran out of time: `connect`, `write`, `read` or `total`.
        phase: &'static str,
        /// The limit that applied.
        after: Duration,
    },

    /// Any other I/O failure on the socket.
    #[error("ospd I/O error: {0}")]
    Io(#[from] io::Error),
}

impl OspError {
    /// The OSP status code, when the daemon answered with an error status.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            OspError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for OSP 404: the scan or VT asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// True for OSP 400: the daemon refused the command as malformed or
    /// not possible now (e.g. "is still starting", queue full).
    pub fn is_bad_request(&self) -> bool {
        self.status_code() == Some(400)
    }

    /// True for OSP 5xx: the daemon failed internally.
    pub fn is_internal(&self) -> bool {
        matches!(self.status_code(), Some(500..=599))
    }

    /// True when waiting longer or retrying later may help: timeouts and
    /// a daemon that is not up (yet).
    pub fn is_transient(&self) -> bool {
        match self {
            OspError::Timeout { .. } | OspError::EmptyResponse => true,
            OspError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
            ),
            OspError::Status { text, .. } => text.contains("still starting"),
            _ => false,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = OspError> = std::result::Result<T, E>;
