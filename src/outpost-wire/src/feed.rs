//! Feed releases served to sensors (docs/feeds.md, "Serving releases"): the current
//! release's signed manifest, and blobs fetched in batches by SHA-256.

use serde::{Deserialize, Serialize};

/// `GET`: the release the sensor should run, as [`FeedReleaseInfo`]; 204 when the portal
/// has published none.
pub const RELEASE_PATH: &str = "/api/sensor/feed/release";
/// `POST` a [`FeedBlobsRequest`]: the blobs back in one zstd-compressed batch
/// (`outpost_feed::batch`).
pub const BLOBS_PATH: &str = "/api/sensor/feed/blobs";
/// `POST` a [`FeedDeltasRequest`]: in-file deltas (`outpost_feed::delta`) in one blob
/// batch, each entry named by its target's digest; pairs the portal declines are left out
/// (the sensor then fetches those files whole).
pub const DELTAS_PATH: &str = "/api/sensor/feed/deltas";
/// Content type of a blob batch.
pub const BATCH_CONTENT_TYPE: &str = "application/x-outpost-feed-batch+zstd";

/// Most blobs asked for in one batch.
pub const MAX_BATCH_BLOBS: usize = 2048;
/// Most content bytes in one batch. A single blob larger than this (the `sha256sums`
/// lists, the Notus advisory files) is asked for alone.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Largest base or target of an in-file delta: the portal indexes the base and holds both
/// in memory while computing one (the sensor reads the base from disk, whatever its size).
pub const MAX_DELTA_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Most target bytes (what the deltas rebuild) asked for in one deltas request.
pub const MAX_DELTA_BATCH_BYTES: u64 = 64 * 1024 * 1024;
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

/// One delta asked for: from a file the sensor holds to one it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDeltaPair {
    pub base: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedDeltasRequest {
    /// Each target at most once; at most [`MAX_BATCH_BLOBS`] pairs.
    pub deltas: Vec<FeedDeltaPair>,
}

/// The name a sensor's feed root gives a release (`releases/<name>`, the `current`
/// link's target) and the heartbeat carries: its PLUGIN_SET and the first 16 hex digits
/// of its manifest's SHA-256. The portal names its releases the same way, so the two
/// compare without the sensor knowing release ids.
pub fn release_name(plugin_set: &str, manifest_sha256: &str) -> String {
    let short = manifest_sha256.get(..16).unwrap_or(manifest_sha256);
    format!("{plugin_set}-{short}")
}

/// The PLUGIN_SET part of a release name ([`release_name`]).
pub fn release_plugin_set(name: &str) -> Option<&str> {
    name.split_once('-')
        .map(|(p, _)| p)
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_carry_the_plugin_set_and_the_manifest_digest() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let n = release_name("202509150400", sha);
        assert_eq!(n, "202509150400-0123456789abcdef");
        assert_eq!(release_plugin_set(&n), Some("202509150400"));
        assert_eq!(release_plugin_set("nodash"), None);
    }
}
