//! The vulnerability feed on disk: what is there, and whether it is good
//! enough to scan with.
//!
//! [`inspect`] walks a feed (NASL plugins plus Notus products and
//! advisories) and returns a [`FeedStatus`]: counts, feed version and age,
//! and any integrity problem. [`feed_ready`] and [`sync_decision`] turn a
//! status and the operator's [`FeedThresholds`] into the `feed_ready` and
//! `feed_sync` boot-phase decisions, each with reasons in plain words.
//!
//! ```no_run
//! use outpost_feed::{inspect, feed_ready, FeedPaths};
//! use outpost_wire::provision::FeedThresholds;
//!
//! let status = inspect(&FeedPaths::under("/data/feeds"), std::time::SystemTime::now())?;
//! match feed_ready(&status, &FeedThresholds::default()) {
//!     Ok(()) => println!("feed ready: {} NASL", status.nasl_count),
//!     Err(refusal) => eprintln!("feed_ready refused: {refusal}"),
//! }
//! # Ok::<(), outpost_feed::FeedError>(())
//! ```

pub mod batch;
mod checksum;
mod decide;
pub mod delta;
mod error;
mod nasl;
mod notus;
pub mod release;
mod status;
mod time;

pub use checksum::{verify_sha256sums, ChecksumProblem};
pub use decide::{feed_ready, sync_decision, FeedRefusal, SyncDecision};
pub use error::FeedError;
pub use nasl::{count_nasl, parse_feed_info, read_feed_info, PluginFeedInfo};
pub use notus::{count_notus_advisories, count_notus_products, NotusCount};
pub use outpost_wire::provision::FeedThresholds;
pub use release::{
    sign_manifest, verify_manifest, FeedFile, FeedManifest, ManifestSignature, ReleaseError,
    MANIFEST_FORMAT,
};
pub use status::ReleaseFacts;
pub use status::{inspect, inspect_verified, FeedPaths, FeedStatus};
pub use time::{civil_from_unix, parse_plugin_set, unix_from_civil};
