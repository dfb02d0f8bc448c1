//! Feed releases for sensors (docs/feeds.md, "Serving releases"): the current release's
//! signed manifest reference, and blobs (or in-file deltas of them) in batches,
//! compressed, in one answer per request. Authenticated like every sensor endpoint (API key, own tunnel).

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_feed::batch;
use outpost_wire::feed::{
    FeedBlobsRequest, FeedDeltasRequest, FeedReleaseInfo, BATCH_CONTENT_TYPE, MAX_BATCH_BLOBS,
    MAX_BATCH_BYTES, MAX_DELTA_BATCH_BYTES,
};
use outpost_wire::ErrorCode;

use outpost_wire::admin::{FeedChannel, FeedReleases, SetFeedChannel};
use outpost_wire::MAX_JSON_BODY;

use crate::api::{admin_auth, check_field, now, read_json, sensor_auth, AppState, St, Via};
use crate::error::ApiError;
use crate::feeds::blobs::BlobStore;
use crate::feeds::channels::{self, Channels};
use crate::feeds::DIR;
use crate::store::{
    ChannelRefusal, ChannelWrite, FeedRelease, SensorAuth, SCOPE_SENSOR, SCOPE_SITE,
};

/// Room for 2048 digests in JSON and then some.
const MAX_REQUEST: usize = 256 * 1024;

fn internal(what: String) -> ApiError {
    tracing::error!(error = %what, "serving feed content failed");
    ApiError::new(
        ErrorCode::Internal,
        "the portal cannot read its feed store; try again later",
    )
}

/// The release a sensor's channel serves (its own channel, else its site's, else the
/// newest); `None` when nothing is published (or a pin names a vanished release).
pub(crate) async fn wanted_for(
    st: &AppState,
    sensor: &SensorAuth,
) -> Result<Option<FeedRelease>, ApiError> {
    let releases = st.store.feed_releases().await?;
    let channels = Channels::new(&st.store.feed_channels().await?);
    let (channel, _) = channels.of(&sensor.id, &sensor.site);
    let r = channels::wanted(channel, &releases).cloned();
    if r.is_none() && !releases.is_empty() {
        tracing::warn!(sensor = %sensor.id, %channel, "the sensor's channel names no published release");
    }
    Ok(r)
}

/// `GET /api/sensor/feed/release`: the release of the sensor's channel, or 204.
pub async fn release(State(st): St, headers: HeaderMap, via: Via) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let Some(r) = wanted_for(&st, &sensor).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let blobs = BlobStore::open(&st.settings.storage_dir().join(DIR))
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
    check_batch(req.sha256.len(), "`sha256`", "blobs per batch")?;
    let mut seen = BTreeSet::new();
    for s in &req.sha256 {
        check_digest(s)?;
        if !seen.insert(s.as_str()) {
            return Err(ApiError::bad_request(format!("{s} is asked for twice")));
        }
    }
    let store = BlobStore::open(&st.settings.storage_dir().join(DIR))
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

/// `POST /api/sensor/feed/deltas`: in-file deltas from blobs the sensor holds to blobs it
/// lacks, in one blob batch named by target (docs/feeds.md, "Deltas"). A pair the portal
/// declines (base collected, too large, delta not smaller) is left out; the sensor then
/// fetches that file whole. Each delta is checked on the sensor like a blob: the rebuilt
/// file must match the signed manifest's SHA-256.
pub async fn deltas(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let req: FeedDeltasRequest = read_json(&headers, body, 2 * MAX_REQUEST).await?;
    check_batch(req.deltas.len(), "`deltas`", "deltas per request")?;
    let mut seen = BTreeSet::new();
    for p in &req.deltas {
        check_digest(&p.base)?;
        check_digest(&p.target)?;
        if !seen.insert(p.target.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{} is asked for twice",
                p.target
            )));
        }
    }
    let store = BlobStore::open(&st.settings.storage_dir().join(DIR))
        .map_err(|e| internal(format!("opening the feed store: {e}")))?;
    let pairs = req.deltas.clone();
    let built = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, usize), ApiError> {
        let mut total = 0u64;
        for p in &pairs {
            match std::fs::metadata(store.path(&p.target)) {
                Ok(m) => total += m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ApiError::not_found(format!(
                        "the portal holds no blob {} (the release may have been collected: fetch the current release again)",
                        p.target
                    )))
                }
                Err(e) => return Err(internal(format!("{}: {e}", p.target))),
            }
        }
        if pairs.len() > 1 && total > MAX_DELTA_BATCH_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("{total} target bytes asked for; at most {MAX_DELTA_BATCH_BYTES} per request of several deltas"),
            ));
        }
        let mut out = Vec::new();
        for p in &pairs {
            match crate::feeds::deltas::delta(&store, &p.base, &p.target) {
                Ok(Some(d)) => out.push((p.target.as_str(), d)),
                Ok(None) => {}
                // Collected since the check above: as for a missing target.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ApiError::not_found(format!(
                        "the portal holds no blob {} (the release may have been collected: fetch the current release again)",
                        p.target
                    )))
                }
                Err(e) => return Err(internal(format!("delta {} -> {}: {e}", p.base, p.target))),
            }
        }
        let sent = out.len();
        batch::encode(out.iter().map(|(t, d)| (*t, d.as_slice())))
            .map(|b| (b, sent))
            .map_err(|e| internal(e.to_string()))
    })
    .await
    .map_err(|e| internal(format!("delta worker: {e}")))??;
    let (built, sent) = built;
    tracing::debug!(sensor = %sensor.id, asked = req.deltas.len(), sent, wire_bytes = built.len(), "feed deltas served");
    let mut resp = Response::new(Body::from(built));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(BATCH_CONTENT_TYPE),
    );
    Ok(resp)
}

/// `GET /api/admin/feed/releases`: the published releases, newest first, the channels
/// pinned to each, and whether the upstream is stale by the portal's clock.
pub async fn admin_releases(State(st): St, headers: HeaderMap) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let releases = st.store.feed_releases().await?;
    let rows = st.store.feed_channels().await?;
    let stale_after_s = st.settings.feed_stale_after.as_secs() as i64;
    let (stale, newest_age_s) = channels::upstream_stale(&releases, now(), stale_after_s);
    Ok(Json(FeedReleases {
        releases: channels::summaries(&releases, &rows),
        stale,
        stale_after_s,
        newest_age_s,
    })
    .into_response())
}

/// `GET /api/admin/feed/channels`: every channel setting.
pub async fn admin_channels(State(st): St, headers: HeaderMap) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let rows = st.store.feed_channels().await?;
    Ok(Json(channels::infos(&rows)).into_response())
}

/// `POST /api/admin/feed/channels`: sets (or clears) one site's or sensor's channel;
/// answers with every channel setting.
pub async fn set_channel(
    State(st): St,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let req: SetFeedChannel = read_json(&headers, body, MAX_JSON_BODY).await?;
    let (scope, name) = match (req.site, req.sensor) {
        (Some(site), None) => (SCOPE_SITE, site),
        (None, Some(sensor)) => (SCOPE_SENSOR, sensor),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `site` and `sensor`",
            ))
        }
    };
    check_field(&name, scope, 63)?;
    let pinned = match req.channel {
        Some(FeedChannel::Pinned(id)) => Some(id),
        _ => None,
    };
    let clear = req.channel.is_none();
    let changed = st
        .store
        .set_feed_channel(ChannelWrite {
            scope,
            name: name.clone(),
            pinned,
            clear,
            now: now(),
        })
        .await?
        .map_err(|r| match r {
            ChannelRefusal::UnknownRelease(id) => ApiError::not_found(format!(
                "feed release {id} is not published on this portal (see `outpostctl feed list`)"
            )),
            ChannelRefusal::UnknownSensor(s) => {
                ApiError::not_found(format!("sensor {s} does not exist"))
            }
        })?;
    if clear && !changed {
        return Err(ApiError::not_found(format!(
            "{scope} {name} has no feed channel of its own"
        )));
    }
    match req.channel {
        Some(c) => tracing::info!(%scope, %name, channel = %c, "feed channel set"),
        None => tracing::info!(%scope, %name, "feed channel cleared"),
    }
    let rows = st.store.feed_channels().await?;
    Ok(Json(channels::infos(&rows)).into_response())
}

/// A batch request names at least one and at most [`MAX_BATCH_BLOBS`] items.
fn check_batch(len: usize, field: &str, per: &str) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    if len > MAX_BATCH_BLOBS {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("at most {MAX_BATCH_BLOBS} {per}"),
        ));
    }
    Ok(())
}

fn check_digest(s: &str) -> Result<(), ApiError> {
    if is_digest(s) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{s:?} is not a lowercase hex sha256"
        )))
    }
}
