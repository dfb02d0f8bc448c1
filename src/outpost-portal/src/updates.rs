//! A/B updates over the API: publishing and assigning bundles (admin), downloading them
//! with HTTP ranges and reporting update progress (sensor). Format and device flow:
//! `docs/updates.md`; wire contract: `docs/protocol.md`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use outpost_wire::admin::{AssignBundle, AssignResult};
use outpost_wire::sensor::UpdateStateReport;
use outpost_wire::{ErrorCode, MAX_JSON_BODY};

use crate::api::{admin_auth, check_field, drain, now, read_json, sensor_auth, St, Via};
use crate::bundles::{self, PublishError, RangeRequest, MAX_BUNDLE_BODY};
use crate::error::{job_refusal, ApiError};
use crate::store::{AssignRefusal, NewBundle, UpdateRefusal};

fn bundle_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("{raw:?} is not a bundle id")))
}

fn no_bundle(id: i64) -> ApiError {
    ApiError::not_found(format!("bundle {id} does not exist"))
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        match e {
            PublishError::Refused(_) | PublishError::Body(_) => {
                ApiError::bad_request(e.to_string())
            }
            PublishError::TooLarge => ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()),
            PublishError::Internal(msg) => {
                tracing::error!(error = %msg, "publishing a bundle failed");
                ApiError::new(
                    ErrorCode::Internal,
                    format!("the portal could not store the bundle: {msg}"),
                )
            }
        }
    }
}

/// `POST /api/admin/bundles`, the bundle file as the raw body.
pub async fn publish(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    if let Err(e) = admin_auth(&st, &headers) {
        drain(body).await;
        return Err(e);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BUNDLE_BODY) {
        return Err(PublishError::TooLarge.into());
    }
    let storage = st.settings.storage_dir().to_owned();
    let received = bundles::receive(body, &bundles::dir(&storage), MAX_BUNDLE_BODY).await?;
    // The trusted keys are configuration: each replica's own data directory.
    let trusted = bundles::trusted_keys(&st.settings.data_dir)?;
    let (path, size) = (received.file.path().to_owned(), received.size);
    let (manifest, signer) =
        tokio::task::spawn_blocking(move || bundles::inspect(&path, size, trusted.as_ref()))
            .await
            .map_err(|e| PublishError::Internal(e.to_string()))??;
    // Publishing the same file again is answered with the bundle already stored, so a
    // retry after a lost answer creates nothing.
    if let Some(existing) = st.store.bundle_by_sha256(&received.sha256).await? {
        return Ok(Json(existing).into_response());
    }
    let sha256 = received.sha256.clone();
    received
        .file
        .persist(&bundles::path(&storage, &sha256))
        .await
        .map_err(|e| PublishError::Internal(format!("storing the bundle file: {e}")))?;
    let (info, created) = st
        .store
        .publish_bundle(&NewBundle {
            version: manifest.version.to_string(),
            compatible: manifest.compatible.clone(),
            min_version: manifest.min_version.as_ref().map(ToString::to_string),
            size,
            sha256,
            published_at: now(),
        })
        .await?;
    tracing::info!(bundle = info.id, version = %info.version, compatible = %info.compatible,
        size, signer = signer.as_deref().unwrap_or("-"), "bundle published");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

pub async fn list(State(st): St, headers: HeaderMap) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    Ok(Json(st.store.bundles().await?).into_response())
}

pub async fn show(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let id = bundle_id(&id)?;
    let b = st.store.bundle(id).await?.ok_or_else(|| no_bundle(id))?;
    Ok(Json(b).into_response())
}

/// `POST /api/admin/bundles/{id}/assign`: one update job per sensor, all or none.
pub async fn assign(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let id = bundle_id(&id)?;
    let req: AssignBundle = read_json(&headers, body, MAX_JSON_BODY).await?;
    if req.site.is_none() && req.sensors.is_empty() {
        return Err(ApiError::bad_request(
            "give `site` (every sensor of it) or `sensors` (sensor ids)",
        ));
    }
    if let Some(site) = &req.site {
        check_field(site, "site", 63)?;
    }
    for s in &req.sensors {
        check_field(s, "sensors", 63)?;
    }
    let bundle = st.store.bundle(id).await?.ok_or_else(|| no_bundle(id))?;
    let jobs = st
        .store
        .assign_bundle(&bundle, req.site.as_deref(), &req.sensors, now())
        .await?
        .map_err(|r| match r {
            AssignRefusal::UnknownSensor(s) => {
                ApiError::not_found(format!("sensor {s} does not exist"))
            }
            AssignRefusal::EmptySite(s) => {
                ApiError::not_found(format!("site {s} has no registered sensor"))
            }
        })?;
    tracing::info!(bundle = id, version = %bundle.version, jobs = ?jobs, "bundle assigned");
    Ok((StatusCode::CREATED, Json(AssignResult { jobs })).into_response())
}

/// `GET /api/sensor/bundles/{id}`: the file, whole or from a byte range, so an
/// interrupted download resumes where it stopped.
pub async fn download(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    via: Via,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let id = bundle_id(&id)?;
    let bundle = st.store.bundle(id).await?.ok_or_else(|| no_bundle(id))?;
    if !st.store.may_download(&sensor.id, id).await? {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("bundle {id} is not assigned to this sensor"),
        ));
    }
    let path = bundles::path(st.settings.storage_dir(), &bundle.sha256);
    let missing = |e: std::io::Error| {
        tracing::error!(bundle = id, path = %path.display(), error = %e, "bundle file unreadable");
        ApiError::new(
            ErrorCode::Internal,
            format!("the portal cannot read the file of bundle {id}"),
        )
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(missing)?;
    let len = file.metadata().await.map_err(missing)?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, count) = match bundles::parse_range(range, len) {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = ApiError::new(
                ErrorCode::BadRequest,
                format!("range {range:?} lies outside bundle {id} ({len} bytes)"),
            )
            .into_response();
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(format!("bytes */{len}")),
            );
            return Ok(resp);
        }
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(missing)?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 64 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    // The content never changes under an id: its hash is a strong validator.
    h.insert(header::ETAG, header_value(format!("\"{}\"", bundle.sha256)));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            header_value(format!("bytes {start}-{}/{len}", start + count - 1)),
        );
    }
    Ok(resp)
}

fn header_value(s: String) -> HeaderValue {
    // Only ever digits, hex, quotes and ASCII words.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn validate_report(r: &UpdateStateReport) -> Result<(), ApiError> {
    if r.version.is_empty() {
        return Err(ApiError::bad_request("`version` is empty"));
    }
    check_field(&r.version, "version", 64)?;
    if r.reason.len() > 4096 {
        return Err(ApiError::bad_request("`reason` must be at most 4096 bytes"));
    }
    if r.progress_percent > 100 {
        return Err(ApiError::bad_request(
            "`progress_percent` must be between 0 and 100",
        ));
    }
    if let Some(slot) = &r.slot {
        if slot != "a" && slot != "b" {
            return Err(ApiError::bad_request("`slot` must be \"a\" or \"b\""));
        }
    }
    Ok(())
}

/// `POST /api/sensor/update-state`: progress and outcome of an update (rules in
/// [`crate::store::update_effect`]).
pub async fn report_state(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let report: UpdateStateReport = read_json(&headers, body, MAX_JSON_BODY).await?;
    validate_report(&report)?;
    if st.store.bundle(report.bundle_id).await?.is_none() {
        return Err(no_bundle(report.bundle_id));
    }
    let lease = st.settings.lease.as_secs() as i64;
    let job = report.job_id.unwrap_or_default();
    st.store
        .update_state(&sensor.id, &report, now(), lease)
        .await?
        .map_err(|r| match r {
            UpdateRefusal::Job(r) => job_refusal(job, r),
            UpdateRefusal::NotAnUpdate => {
                ApiError::bad_request(format!("job {job} is not an update job"))
            }
            UpdateRefusal::OtherBundle(b) => ApiError::bad_request(format!(
                "job {job} installs bundle {}, not bundle {}",
                b.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                report.bundle_id
            )),
        })?;
    tracing::info!(sensor = %sensor.id, bundle = report.bundle_id, job = ?report.job_id,
        state = report.state.as_str(), reason = %report.reason, "update state");
    Ok(StatusCode::NO_CONTENT)
}
