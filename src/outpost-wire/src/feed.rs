//! Feed releases served to sensors (docs/feeds.md, "Serving releases"): the current
//! release's signed manifest, and blobs fetched in batches by SHA-256.

use serde::{Deserialize, Serialize};

/// `GET`: the release the sensor should run, as [`FeedReleaseInfo`]; 204 when the portal
/// has published none.
pub const RELEASE_PATH: &str = "/api/sensor/feed/release";
/// `POST` a [`FeedBlobsRequest`]: the blobs back in one zstd-compressed batch
/// (`outpost_feed::batch`).
pub const BLOBS_PATH: &str = "/api/sensor/feed/blobs";
/// Content type of a blob batch.
pub const BATCH_CONTENT_TYPE: &str = "application/x-outpost-feed-batch+zstd";

/// Most blobs asked for in one batch.
pub const MAX_BATCH_BLOBS: usize = 2048;
/// Most content bytes in one batch. A single blob larger than this (the `sha256sums`
/// lists, the Notus advisory files) is asked for alone.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Largest manifest a sensor reads (the full feed's is about 18 MB).
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedReleaseInfo {
    pub release_id: i64,
    pub plugin_set: String,
    pub vt_count: u64,
    pub files: u64,
    /// Content bytes of every file.
    pub bytes: u64,
    /// The manifest is itself a blob: fetch it with [`BLOBS_PATH`] by this digest.
    pub manifest_sha256: String,
    pub manifest_size: u64,
    /// `outpost-feed-signature <key> <signature>` over the manifest.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBlobsRequest {
    /// Lowercase hex digests, each at most once.
    pub sha256: Vec<String>,
}
