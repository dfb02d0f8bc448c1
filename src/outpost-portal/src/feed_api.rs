//! Feed releases for sensors (docs/feeds.md, "Serving releases"): the current release's
//! signed manifest reference, and blobs in batches, compressed, in one answer per
//! request. Authenticated like every sensor endpoint (API key, own tunnel).

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_feed::batch;
use outpost_wire::feed::{
    FeedBlobsRequest, FeedReleaseInfo, BATCH_CONTENT_TYPE, MAX_BATCH_BLOBS, MAX_BATCH_BYTES,
};
use outpost_wire::ErrorCode;

use crate::api::{read_json, sensor_auth, St, Via};
use crate::error::ApiError;
use crate::feeds::blobs::BlobStore;
use crate::feeds::DIR;

/// Room for 2048 digests in JSON and then some.
const MAX_REQUEST: usize = 256 * 1024;

fn internal(what: String) -> ApiError {
    tracing::error!(error = %what, "serving feed content failed");
    ApiError::new(
        ErrorCode::Internal,
        "the portal cannot read its feed store; try again later",
    )
}

/// `GET /api/sensor/feed/release`: the newest published release, or 204.
pub async fn release(State(st): St, headers: HeaderMap, via: Via) -> Result<Response, ApiError> {
    sensor_auth(&st, &headers, &via).await?;
    let Some(r) = st.store.feed_releases().await?.into_iter().next() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let blobs = BlobStore::open(&st.settings.data_dir.join(DIR))
        .map_err(|e| internal(format!("opening the feed store: {e}")))?;
    let manifest_size = tokio::fs::metadata(blobs.path(&r.manifest_sha256))
        .await
        .map_err(|e| internal(format!("manifest of release {}: {e}", r.id)))?
        .len();
    Ok(Json(FeedReleaseInfo {
        release_id: r.id,
        plugin_set: r.plugin_set,
        vt_count: r.vt_count,
        files: r.files,
        bytes: r.bytes,
        manifest_sha256: r.manifest_sha256,
        manifest_size,
        signature: r.signature,
    })
    .into_response())
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `POST /api/sensor/feed/blobs`: the asked-for blobs in one zstd batch. Any blob in the
/// store may be asked for: it holds only the kept releases' files and manifests, all
/// content-addressed, and the sensor checks everything against its signed manifest.
pub async fn blobs(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let req: FeedBlobsRequest = read_json(&headers, body, MAX_REQUEST).await?;
    if req.sha256.is_empty() {
        return Err(ApiError::bad_request("`sha256` is empty"));
    }
    if req.sha256.len() > MAX_BATCH_BLOBS {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("at most {MAX_BATCH_BLOBS} blobs per batch"),
        ));
    }
    let mut seen = BTreeSet::new();
    for s in &req.sha256 {
        if !is_digest(s) {
            return Err(ApiError::bad_request(format!(
                "{s:?} is not a lowercase hex sha256"
            )));
        }
        if !seen.insert(s.as_str()) {
            return Err(ApiError::bad_request(format!("{s} is asked for twice")));
        }
    }
    let store = BlobStore::open(&st.settings.data_dir.join(DIR))
        .map_err(|e| internal(format!("opening the feed store: {e}")))?;
    let paths: Vec<PathBuf> = req.sha256.iter().map(|s| store.path(s)).collect();
    let wanted = req.sha256.clone();
    let built = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let mut total = 0u64;
        let mut missing = Vec::new();
        for (sha, p) in wanted.iter().zip(&paths) {
            match std::fs::metadata(p) {
                Ok(m) => total += m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(sha.as_str()),
                Err(e) => return Err(internal(format!("{}: {e}", p.display()))),
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::not_found(format!(
                "the portal holds no blob {} (the release may have been collected: fetch the current release again)",
                missing.join(", ")
            )));
        }
        // A single blob may exceed the byte bound (it cannot be split); several may not.
        if wanted.len() > 1 && total > MAX_BATCH_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{total} bytes asked for; at most {MAX_BATCH_BYTES} per batch of several blobs"),
            ));
        }
        let mut contents = Vec::with_capacity(paths.len());
        for p in &paths {
            contents.push(std::fs::read(p).map_err(|e| internal(format!("{}: {e}", p.display())))?);
        }
        batch::encode(
            wanted
                .iter()
                .map(String::as_str)
                .zip(contents.iter().map(Vec::as_slice)),
        )
        .map_err(|e| internal(e.to_string()))
    })
    .await
    .map_err(|e| internal(format!("batch worker: {e}")))??;
    tracing::debug!(sensor = %sensor.id, blobs = req.sha256.len(), wire_bytes = built.len(), "feed blobs served");
    let mut resp = Response::new(Body::from(built));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(BATCH_CONTENT_TYPE),
    );
    Ok(resp)
}
