//! OSP (Open Scanner Protocol) client for ospd-openvas.
//!
//! The daemon talks to ospd-openvas over its unix socket, one XML command
//! per connection. This crate keeps the protocol sans-IO —
//! [`Request::to_xml`] builds a command, the `parse_*` functions (or
//! [`Request::parse_response`]) read an answer from any [`std::io::BufRead`]
//! — and adds a thin blocking transport, [`OspClient`].
//!
//! ```no_run
//! use outpost_osp::{OspClient, Request, Response, StartScan, Target, Credential, VtSelection};
//!
//! # fn main() -> Result<(), outpost_osp::OspError> {
//! let osp = OspClient::new(outpost_osp::DEFAULT_SOCKET);
//! let mut target = Target::new(["192.0.2.0/24"], "T:1-1024");
//! target.credentials.push(Credential::ssh_password("scan", "secret"));
//! let scan = StartScan::new(target)
//!     .with_vts(VtSelection::default().family("Debian Local Security Checks"));
//! if let Response::ScanStarted { scan_id } = osp.send(&scan.into())? {
//!     println!("started {scan_id}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Parsers never panic: malformed, truncated, oversized, deeply nested or
//! otherwise hostile input yields an [`OspError`]. Credentials are held in
//! [`Secret`], whose `Debug` output is redacted.

mod error;
mod request;
pub mod response;
mod scan;
mod secret;
mod summary;
mod transport;
mod xml;

pub use error::{OspError, Result};
pub use request::{GetScans, GetVts, Request};
pub use response::{
    FeedInfo, FeedStatus, HostProgress, Response, ResultType, Scan, ScanProgress, ScanResult,
    ScanStatus, VersionInfo, Vt, VtList, VtsCount,
};
pub use scan::{
    AliveTestMethods, Credential, CredentialAuth, CredentialService, StartScan, Target,
    VtSelection, VtSingle,
};
pub use secret::Secret;
pub use summary::{summarize, HostSummary, ReportSummary, SeverityClass, SeverityCounts};
pub use transport::{OspClient, DEFAULT_SOCKET};
