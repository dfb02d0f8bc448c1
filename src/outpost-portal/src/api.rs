//! HTTP handlers for the sensor API (`/api/sensor/*`) and the admin API (`/api/admin/*`).
//! Bodies are read with explicit limits and parsed here, so every bad request gets a JSON
//! error that names the problem, before anything touches the database.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use http_body_util::BodyExt;
use outpost_tunnel::{Gateway, GatewayPeer, PeerIdentity, PublicKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use outpost_wire::admin::{
    CreateJob, CreateToken, JobState, SensorInfo, SensorStatus, TokenCreated, TunnelCounters,
};
use outpost_wire::json_stream;
use outpost_wire::log::from_ndjson;
use outpost_wire::sensor::{
    Activity, ClaimRequest, HeartbeatRequest, HeartbeatResponse, JobSpec, JobStatusResponse,
    JobStatusUpdate, RegisterRequest, RegisterResponse, ReportUpload, RotateKeyRequest,
    TunnelConfig, MAX_HEARTBEAT_JOBS,
};
use outpost_wire::{
    paths, ErrorCode, Secret, API_VERSION, API_VERSION_HEADER, IDEMPOTENCY_HEADER, MAX_JSON_BODY,
    MAX_LOG_BODY, MAX_LOG_EVENTS,
};
use tokio::io::AsyncWriteExt;

use crate::error::{job_refusal, ApiError};
use crate::store::{
    Heartbeat, NewSensor, PeerInstall, RegisterRefusal, ReportChunks, RotationBegun, SensorAuth,
    SensorRow, Store,
};
use crate::Settings;
use crate::{auth, updates};

pub struct AppState {
    pub store: Store,
    pub settings: Settings,
    pub admin_hash: String,
    /// Seals scan credentials before they reach the database (sealed.rs).
    pub sealer: crate::sealed::Sealer,
    /// The WireGuard gateway, when the portal runs one.
    pub gateway: Option<Arc<Gateway>>,
    /// Times the database follower started listening (PostgreSQL; peer_sync.rs), each
    /// with a full re-read of the gateway's peers when there is a gateway: tests wait for
    /// the first before changing the gateway by hand.
    pub peer_syncs: Arc<std::sync::atomic::AtomicU64>,
}

/// Set on requests that arrived through the WireGuard gateway.
pub(crate) type Via = Option<Extension<PeerIdentity>>;

pub(crate) type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let sensor = Router::new()
        .route(paths::REGISTER, post(register))
        .route(paths::HEARTBEAT, post(heartbeat))
        .route(paths::CLAIM, post(claim))
        .route(paths::LOG, post(log))
        .route(paths::WG_KEY, post(rotate_key))
        .route("/api/sensor/jobs/{id}/report", post(report))
        .route("/api/sensor/jobs/{id}/status", post(job_status))
        .route(paths::UPDATE_STATE, post(updates::report_state))
        .route("/api/sensor/bundles/{id}", get(updates::download))
        .route(
            outpost_wire::feed::RELEASE_PATH,
            get(crate::feed_api::release),
        )
        .route(outpost_wire::feed::BLOBS_PATH, post(crate::feed_api::blobs))
        .route(
            outpost_wire::feed::DELTAS_PATH,
            post(crate::feed_api::deltas),
        );
    let admin = Router::new()
        .route("/api/admin/tokens", post(create_token))
        .route("/api/admin/jobs", post(create_job).get(list_jobs))
        .route("/api/admin/jobs/{id}", get(get_job))
        .route("/api/admin/jobs/{id}/cancel", post(cancel_job))
        .route("/api/admin/jobs/{id}/report", get(get_report))
        .route("/api/admin/sensors", get(list_sensors))
        .route(
            "/api/admin/sensors/{id}",
            get(get_sensor).delete(delete_sensor),
        )
        .route("/api/admin/sensors/{id}/log", get(sensor_log))
        .route("/api/admin/sensors/{id}/rotate-key", post(request_rotation))
        // The upload streams to disk with its own limit (`bundles::MAX_BUNDLE_BODY`).
        .route(
            "/api/admin/bundles",
            post(updates::publish).get(updates::list),
        )
        .route("/api/admin/bundles/{id}", get(updates::show))
        .route("/api/admin/bundles/{id}/assign", post(updates::assign))
        .route(
            outpost_wire::admin::paths::FEED_RELEASES,
            get(crate::feed_api::admin_releases),
        )
        .route(
            outpost_wire::admin::paths::FEED_CHANNELS,
            get(crate::feed_api::admin_channels).post(crate::feed_api::set_channel),
        );
    Router::new()
        .merge(sensor)
        .merge(admin)
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn(api_version))
        .with_state(state)
}

/// Refuses API versions this portal does not serve and stamps its own on every answer.
/// A missing header means version 1, so the first sensors keep working.
async fn api_version(req: Request<Body>, next: Next) -> Response {
    if let Some(v) = req.headers().get(API_VERSION_HEADER) {
        let ok = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_some_and(|v| (1..=API_VERSION).contains(&v));
        if !ok {
            return ApiError::new(
                ErrorCode::UnsupportedApiVersion,
                format!("this portal serves API versions 1 to {API_VERSION}"),
            )
            .into_response();
        }
    }
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from(API_VERSION));
    resp
}

/// Reads a body up to `limit` bytes (413 beyond it). An oversized body is still drained up
/// to [`DRAIN_CAP`] so the client reads the 413 instead of a reset connection.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit + DRAIN_CAP) as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit + DRAIN_CAP {
                return Err(too_large());
            }
            if seen <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(buf)
}

/// How far past the limit a body is read (and dropped) before the connection is cut.
const DRAIN_CAP: usize = 4 * 1024 * 1024;

/// Reads and drops up to [`DRAIN_CAP`] bytes of a body the handler refuses without reading,
/// so a client still sending it reads the answer instead of a reset connection.
pub(crate) async fn drain(body: Body) {
    let mut body = body;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_CAP {
                return;
            }
        }
    }
}

pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))
}

/// Authenticates a sensor by its API key and, for requests through the tunnel, checks that
/// the tunnel is that sensor's own. With a gateway that is required, the sensor API is not
/// served outside the tunnel.
pub(crate) async fn sensor_auth(
    state: &AppState,
    headers: &HeaderMap,
    via: &Via,
) -> Result<SensorAuth, ApiError> {
    let key_hash = auth::hash(auth::bearer(headers)?);
    let unknown = || ApiError::new(ErrorCode::Unauthorized, "unknown sensor API key");
    let mut sensor = state
        .store
        .sensor_by_key(&key_hash)
        .await?
        .ok_or_else(unknown)?;
    match via {
        Some(Extension(peer)) => {
            let key = peer.public_key.to_base64();
            if key != sensor.wg_public_key {
                // A cached identity may predate a rotation another replica finished (its
                // notification not heard yet): the database decides.
                sensor = state
                    .store
                    .sensor_by_key_uncached(&key_hash)
                    .await?
                    .ok_or_else(unknown)?;
            }
            if key != sensor.wg_public_key {
                // The second phase of a key rotation: the first request through a
                // tunnel keyed with the sensor's pending key proves the sensor has it.
                let Some(old) = state.store.finish_rotation(&sensor.id, &key).await? else {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "this API key belongs to another sensor's tunnel",
                    ));
                };
                if let (Some(gw), Ok(old)) = (&state.gateway, old.parse::<PublicKey>()) {
                    gw.remove_peer(&old);
                }
                tracing::info!(sensor = %sensor.id, "WireGuard key rotation complete; the old key is no longer accepted");
                sensor.wg_public_key = key;
            }
        }
        None => {
            if state.settings.tunnel.as_ref().is_some_and(|t| t.require) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this portal serves the sensor API only through the WireGuard tunnel",
                ));
            }
        }
    }
    Ok(sensor)
}

pub(crate) fn admin_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = auth::bearer(headers)?;
    if auth::digest_eq(&auth::hash(token), &state.admin_hash) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, "wrong admin token"))
    }
}

fn job_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("{raw:?} is not a job id")))
}

pub(crate) fn now() -> i64 {
    outpost_wire::unix_now()
}

pub(crate) fn check_field(value: &str, field: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be at most {max} printable characters"
        )));
    }
    Ok(())
}

fn validate_register(req: &RegisterRequest) -> Result<(), ApiError> {
    for (v, f) in [(&req.name, "name"), (&req.site, "site")] {
        if v.is_empty() {
            return Err(ApiError::bad_request(format!("`{f}` is empty")));
        }
        check_field(v, f, 63)?;
    }
    for (v, f) in [
        (&req.hostname, "hostname"),
        (&req.os, "os"),
        (&req.board, "board"),
        (&req.hardware_serial, "hardware_serial"),
        (&req.agent_version, "agent_version"),
    ] {
        check_field(v, f, 256)?;
    }
    if let Some(serial) = &req.board_serial {
        check_field(serial, "board_serial", 64)?;
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(req.wg_public_key.trim())
        .ok()
        .filter(|k| k.len() == 32);
    if key.is_none() {
        return Err(ApiError::bad_request(
            "`wg_public_key` must be a base64 X25519 public key (32 bytes)",
        ));
    }
    if req.capabilities.is_empty() {
        return Err(ApiError::bad_request("`capabilities` is empty"));
    }
    Ok(())
}

async fn register(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let token = auth::bearer(&headers)?.to_owned();
    let mut req: RegisterRequest = read_json(&headers, body, MAX_JSON_BODY).await?;
    validate_register(&req)?;
    let wg_key: PublicKey = req
        .wg_public_key
        .trim()
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`wg_public_key`: {e}")))?;
    // One spelling per key, so a retry finds the row and the unique index holds.
    req.wg_public_key = wg_key.to_base64();
    let name = req.name.clone();
    let salt = auth::random_secret("", 32);
    let new = NewSensor {
        id: auth::random_secret("sn_", 8),
        api_key_hash: auth::hash(&auth::derive_api_key(&token, &salt)),
        api_key_salt: salt,
        req,
        now: now(),
        tunnel_pool: st.settings.tunnel.as_ref().map(crate::gateway::pool),
    };
    let gw = st.gateway.clone();
    let install: PeerInstall = Box::new(move |addr| match (gw, addr) {
        (Some(gw), Some(addr)) => ensure_peer(&gw, wg_key, addr),
        _ => Ok(()),
    });
    let reg = match st.store.register(&auth::hash(&token), new, install).await {
        Ok(Ok(reg)) => reg,
        Ok(Err(RegisterRefusal::Token(r))) => return Err(r.into()),
        Ok(Err(RegisterRefusal::KeyInUse)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this WireGuard key is already registered to a sensor enrolled with another \
                 token; delete that sensor first, or give the device a new key",
            ))
        }
        Ok(Err(RegisterRefusal::Peer(e))) => {
            tracing::error!(error = %e, "adding the tunnel peer failed; registration rolled back");
            // 5xx: the agent retries with backoff; nothing was stored, so the retry is clean.
            return Err(ApiError::new(
                ErrorCode::Internal,
                "the portal could not add the tunnel peer; nothing was registered, try again",
            ));
        }
        Err(e) => {
            // The transaction may have failed after the peer went in: take it out again
            // unless a stored sensor owns it.
            if let Some(gw) = &st.gateway {
                let owned = st
                    .store
                    .tunnel_peers()
                    .await
                    .map(|rows| rows.iter().any(|r| r.wg_public_key == wg_key.to_base64()));
                if matches!(owned, Ok(false)) {
                    gw.remove_peer(&wg_key);
                }
            }
            return Err(e.into());
        }
    };
    let tunnel = match (&st.gateway, &st.settings.tunnel, reg.tunnel_address) {
        (Some(gw), Some(t), Some(addr)) => Some(tunnel_config(gw, t, addr)),
        _ => None,
    };
    if reg.created {
        tracing::info!(sensor = %reg.sensor_id, %name, site = %reg.site, tunnel = ?reg.tunnel_address, "sensor registered");
    } else {
        tracing::info!(sensor = %reg.sensor_id, "registration repeated; answered with the stored sensor");
    }
    let resp = RegisterResponse {
        api_key: Secret::new(auth::derive_api_key(&token, &reg.api_key_salt)),
        sensor_id: reg.sensor_id,
        site: reg.site,
        tunnel,
        heartbeat_interval_s: st.settings.heartbeat_interval.as_secs() as u32,
        claim_interval_s: st.settings.claim_interval.as_secs() as u32,
    };
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

/// Adds the sensor's peer to the gateway unless it is there already (a retried
/// registration, or a peer loaded at start).
fn ensure_peer(gw: &Gateway, key: PublicKey, addr: std::net::Ipv4Addr) -> Result<(), String> {
    match gw.peer_status(&key) {
        Some(p) if p.identity.tunnel_addr == addr => return Ok(()),
        // A stale entry with another address (no stored sensor owns it): replace it.
        Some(_) => {
            gw.remove_peer(&key);
        }
        None => {}
    }
    match gw.add_peer(GatewayPeer {
        public_key: key,
        allowed_ip: addr,
        preshared_key: None,
    }) {
        // Added by the peer sync since the check above (it follows the database).
        Err(outpost_tunnel::TunnelError::DuplicatePeer(_))
            if gw
                .peer_status(&key)
                .is_some_and(|p| p.identity.tunnel_addr == addr) =>
        {
            Ok(())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

fn tunnel_config(
    gw: &Gateway,
    t: &crate::settings::TunnelSettings,
    addr: std::net::Ipv4Addr,
) -> TunnelConfig {
    TunnelConfig {
        sensor_address: addr.to_string(),
        portal_address: t.portal_address().to_string(),
        portal_public_key: gw.public_key().to_base64(),
        endpoint: t.endpoint.clone(),
        persistent_keepalive_s: t.keepalive_s,
    }
}

/// Key rotation, first phase: the sensor sends the new public key it has already stored
/// (authenticated by its API key, through its current tunnel). The portal keeps it as
/// pending and the gateway accepts it beside the current key, so a sensor whose answer
/// was lost keeps working with the old key and simply sends the same key again; the old
/// key goes only once a request comes through the new one (`sensor_auth`).
async fn rotate_key(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let req: RotateKeyRequest = read_json(&headers, body, MAX_JSON_BODY).await?;
    let new_key: PublicKey = req
        .wg_public_key
        .trim()
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`wg_public_key`: {e}")))?;
    let (Some(gw), Some(t)) = (&st.gateway, &st.settings.tunnel) else {
        return Err(ApiError::bad_request(
            "this portal runs no WireGuard gateway",
        ));
    };
    let row = st
        .store
        .tunnel_peers_of(std::slice::from_ref(&sensor.id))
        .await?
        .into_iter()
        .find(|r| r.sensor_id == sensor.id)
        .ok_or_else(|| ApiError::bad_request("this sensor has no tunnel address"))?;
    match st
        .store
        .begin_rotation(&sensor.id, &new_key.to_base64())
        .await?
    {
        RotationBegun::NoSensor => return Err(ApiError::not_found("this sensor is gone")),
        RotationBegun::KeyInUse => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this WireGuard key belongs to another sensor; make a new one",
            ))
        }
        RotationBegun::AlreadyCurrent => {}
        RotationBegun::Pending { replaced } => {
            // A pending key the sensor no longer has (it made another) stops counting.
            if let Some(old) = replaced.and_then(|k| k.parse::<PublicKey>().ok()) {
                gw.remove_peer(&old);
            }
            if gw.peer_status(&new_key).is_none() {
                let added = gw.add_peer_sharing_address(GatewayPeer {
                    public_key: new_key,
                    allowed_ip: row.tunnel_address,
                    preshared_key: None,
                });
                // The peer sync (which follows the database's notifications) may have
                // added the key between the check and the add: that is the goal reached.
                let added = match added {
                    Err(outpost_tunnel::TunnelError::DuplicatePeer(_))
                        if gw
                            .peer_status(&new_key)
                            .is_some_and(|p| p.identity.tunnel_addr == row.tunnel_address) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                added.map_err(|e| {
                    tracing::error!(sensor = %sensor.id, error = %e, "accepting the rotated tunnel key failed");
                    ApiError::new(
                        ErrorCode::Internal,
                        "the portal could not accept the new key yet; keep the old one and try again",
                    )
                })?;
            }
            tracing::info!(sensor = %sensor.id, "WireGuard key rotation begun: both keys accepted until the new one is used");
        }
    }
    Ok(Json(tunnel_config(gw, t, row.tunnel_address)).into_response())
}

async fn heartbeat(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let hb: HeartbeatRequest = read_json(&headers, body, MAX_JSON_BODY).await?;
    check_field(&hb.agent_version, "agent_version", 256)?;
    if let Some(v) = &hb.firmware_version {
        check_field(v, "firmware_version", 64)?;
    }
    if let Some(slot) = &hb.boot_slot {
        check_field(slot, "boot_slot", 8)?;
    }
    if let Some(r) = &hb.feed_release {
        check_field(r, "feed_release", 64)?;
    }
    if hb
        .running_jobs
        .as_ref()
        .is_some_and(|j| j.len() > MAX_HEARTBEAT_JOBS)
    {
        return Err(ApiError::bad_request(format!(
            "`running_jobs` lists more than {MAX_HEARTBEAT_JOBS} jobs"
        )));
    }
    let feed_wanted = crate::feed_api::wanted_for(&st, &sensor)
        .await?
        .map(|r| crate::feeds::channels::name(&r));
    let out = st
        .store
        .heartbeat(&Heartbeat {
            feed_wanted: feed_wanted.as_deref(),
            sensor: &sensor.id,
            req: &hb,
            now: now(),
            lease_s: st.settings.lease.as_secs() as i64,
            grace_s: st.settings.claim_grace.as_secs() as i64,
            rules: st.settings.loss_rules(),
        })
        .await?;
    for j in &out.lost {
        tracing::warn!(sensor = %sensor.id, job = j.id, now = j.state.as_str(), "the sensor no longer runs this job");
    }
    Ok(Json(HeartbeatResponse {
        server_time: now(),
        cancel_jobs: out.cancel_jobs,
        rotate_wg_key: out.rotate_wg_key,
        feed_release: feed_wanted,
    }))
}

async fn claim(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let req: ClaimRequest = read_json(&headers, body, MAX_JSON_BODY).await?;
    let lease = st.settings.lease.as_secs() as i64;
    match st
        .store
        .claim(&sensor, &req.capabilities, now(), lease)
        .await?
    {
        Some(mut job) => {
            tracing::info!(sensor = %sensor.id, job = job.id, "job claimed");
            // Only the claiming sensor ever sees the credentials again.
            st.sealer.open(&mut job.spec).map_err(|e| {
                tracing::error!(job = job.id, error = %e, "scan credentials cannot be opened");
                ApiError::new(outpost_wire::ErrorCode::Internal, e.to_string())
            })?;
            Ok(Json(job).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn log(
    State(st): St,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let bytes = read_body(&headers, body, MAX_LOG_BODY).await?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("log body is not UTF-8"))?;
    let events = from_ndjson(text, MAX_LOG_EVENTS)
        .map_err(|e| ApiError::bad_request(format!("log body is not valid NDJSON: {e}")))?;
    st.store.append_log(&sensor.id, &events, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn report(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Response, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let job = job_id(&id)?;
    let (upload, text) = receive_report(&st, &headers, body).await?;
    if upload.request_id.is_empty() || upload.request_id.len() > 128 {
        return Err(ApiError::bad_request(
            "`request_id` must be 1 to 128 characters",
        ));
    }
    if let Some(key) = headers.get(IDEMPOTENCY_HEADER) {
        if key.to_str().ok() != Some(upload.request_id.as_str()) {
            return Err(ApiError::bad_request(format!(
                "`{IDEMPOTENCY_HEADER}` header differs from `request_id`"
            )));
        }
    }
    let file = match tokio::fs::File::open(text.path()).await {
        Ok(f) => Ok(f.into_std().await),
        Err(e) => Err(e),
    }
    .map_err(|e| {
        tracing::error!(error = %e, "reading a report's text failed");
        ApiError::new(
            ErrorCode::Internal,
            "the portal could not take the report; try again",
        )
    })?;
    let chunks = ReportChunks::new(file, st.settings.report_chunk);
    let ack = st
        .store
        .store_report_chunks(&sensor.id, job, &upload, chunks, now())
        .await?
        .map_err(|r| job_refusal(job, r))?;
    drop(text);
    if ack.created {
        tracing::info!(sensor = %sensor.id, job, report = ack.report_id, "report stored");
    }
    let status = if ack.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ack)).into_response())
}

/// Directory under the data directory for report uploads being received.
const UPLOAD_DIR: &str = "uploads";

/// Receives a report upload without holding its body: the bytes go to a temporary file
/// under the data directory as they arrive, the size limit is checked on the way (before
/// anything is written past it), and the report is parsed from the file with its text
/// (`content`) decoded to a second file in pieces (`outpost_wire::json_stream`), so the
/// text is never in memory whole; the rest (the summary) is parsed as before. Returns the
/// report without its text, and the text's file. The upload file is removed whatever the
/// outcome, the text's file when the caller drops it.
async fn receive_report(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(ReportUpload, crate::bundles::TempUpload), ApiError> {
    let limit = st.settings.max_report_body;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(body).await;
        return Err(too_large());
    }
    let internal = |what: &str, e: std::io::Error| {
        tracing::error!(error = %e, "{what}");
        ApiError::new(
            ErrorCode::Internal,
            "the portal could not take the report; try again",
        )
    };
    let dir = st.settings.data_dir.join(UPLOAD_DIR);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| internal("creating the upload directory failed", e))?;
    let file = crate::bundles::TempUpload::new(
        dir.join(format!(".report-{}.tmp", auth::random_secret("", 8))),
    );
    let out = tokio::fs::File::create(file.path())
        .await
        .map_err(|e| internal("creating a report upload file failed", e))?;
    // Frames are a few KB; batch the writes (each is a blocking-pool hop).
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, out);
    let mut seen = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > limit {
            // Read (and drop) a little more, so the client reads the 413, not a reset.
            drain(body).await;
            return Err(too_large());
        }
        out.write_all(&data)
            .await
            .map_err(|e| internal("writing a report upload failed", e))?;
    }
    out.flush()
        .await
        .map_err(|e| internal("writing a report upload failed", e))?;
    drop(out);
    let text = crate::bundles::TempUpload::new(
        dir.join(format!(".text-{}.tmp", auth::random_secret("", 8))),
    );
    let (path, text_path) = (file.path().to_owned(), text.path().to_owned());
    let parsed = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let mut out = std::io::BufWriter::with_capacity(
            json_stream::PIECE,
            std::fs::File::create(&text_path)?,
        );
        let parsed = json_stream::split_string_field::<ReportUpload>(f, "content", &mut out);
        std::io::Write::flush(&mut out)?;
        Ok::<_, std::io::Error>(parsed)
    })
    .await
    .map_err(|e| internal("reading a report upload failed", std::io::Error::other(e)))?
    .map_err(|e| internal("reading a report upload failed", e))?;
    drop(file);
    match parsed {
        Ok((upload, _len)) => Ok((upload, text)),
        Err(json_stream::StreamError::Invalid(e)) => Err(ApiError::bad_request(format!(
            "request body is not valid: {e}"
        ))),
        Err(json_stream::StreamError::Io(e)) => Err(internal("reading a report upload failed", e)),
    }
}

async fn job_status(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    via: Via,
    body: Body,
) -> Result<Json<JobStatusResponse>, ApiError> {
    let sensor = sensor_auth(&st, &headers, &via).await?;
    let job = job_id(&id)?;
    let update: JobStatusUpdate = read_json(&headers, body, MAX_JSON_BODY).await?;
    let lease = st.settings.lease.as_secs() as i64;
    let cancel_requested = st
        .store
        .job_status(&sensor.id, job, &update, now(), lease)
        .await?
        .map_err(|r| job_refusal(job, r))?;
    Ok(Json(JobStatusResponse { cancel_requested }))
}

// ---- admin ----

async fn create_token(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let req: CreateToken = read_json(&headers, body, MAX_JSON_BODY).await?;
    if req.site.is_empty() {
        return Err(ApiError::bad_request("`site` is empty"));
    }
    check_field(&req.site, "site", 63)?;
    if req.uses == 0 {
        return Err(ApiError::bad_request("`uses` must be at least 1"));
    }
    let token = auth::random_secret("otk_", 24);
    let expires_at = now().saturating_add(req.ttl_s.min(i64::MAX as u64 / 2) as i64);
    st.store
        .create_token(&auth::hash(&token), &req.site, req.uses, expires_at, now())
        .await?;
    let body = TokenCreated {
        token,
        site: req.site,
        expires_at,
        uses: req.uses,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn validate_spec(spec: &JobSpec) -> Result<(), ApiError> {
    match spec {
        JobSpec::Scan(s) => {
            if s.targets.is_empty() {
                return Err(ApiError::bad_request("`targets` is empty"));
            }
            for t in s.targets.iter().chain(&s.exclude_hosts) {
                if t.is_empty()
                    || t.len() > 255
                    || t.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ApiError::bad_request(format!(
                        "target {t:?} is not a host, CIDR or range"
                    )));
                }
            }
            if s.ports.trim().is_empty() {
                return Err(ApiError::bad_request("`ports` is empty"));
            }
            Ok(())
        }
        // An update must match a published bundle byte for byte; assign makes that so.
        JobSpec::Update(_) => Err(ApiError::bad_request(
            "update jobs are made with POST /api/admin/bundles/{id}/assign",
        )),
    }
}

async fn create_job(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let req: CreateJob = read_json(&headers, body, MAX_JSON_BODY).await?;
    check_field(&req.site, "site", 63)?;
    validate_spec(&req.spec)?;
    if let Some(sensor) = &req.sensor_id {
        check_field(sensor, "sensor_id", 63)?;
        match st.store.sensor_site(sensor).await? {
            None => {
                return Err(ApiError::not_found(format!(
                    "sensor {sensor} does not exist"
                )))
            }
            Some(site) if site != req.site => {
                return Err(ApiError::bad_request(format!(
                    "sensor {sensor} belongs to site {site}, not {}",
                    req.site
                )))
            }
            Some(_) => {}
        }
    }
    let spec = st.sealer.seal(&req.spec);
    let id = st
        .store
        .create_job_for(&req.site, &spec, req.sensor_id.as_deref(), now())
        .await?;
    Ok((StatusCode::CREATED, Json(job_info(&st, id).await?)).into_response())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn list_jobs(
    State(st): St,
    headers: HeaderMap,
    q: Query<Limit>,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let mut jobs = st.store.jobs(limit).await?;
    for j in &mut jobs {
        crate::sealed::redact(&mut j.spec);
    }
    Ok(Json(jobs).into_response())
}

/// A job for the admin API, or 404 naming it.
async fn job_info(st: &AppState, id: i64) -> Result<outpost_wire::admin::JobInfo, ApiError> {
    let mut job = st
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))?;
    // Credentials are shown to nobody after entry.
    crate::sealed::redact(&mut job.spec);
    Ok(job)
}

async fn get_job(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let id = job_id(&id)?;
    Ok(Json(job_info(&st, id).await?).into_response())
}

async fn cancel_job(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let id = job_id(&id)?;
    match st.store.cancel_job(id, now()).await? {
        None => Err(ApiError::not_found(format!("job {id} does not exist"))),
        Some(state) if state.is_final() && state != JobState::Cancelled => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("job {id} already ended ({})", state.as_str()),
        )),
        Some(_) => Ok(Json(job_info(&st, id).await?).into_response()),
    }
}

async fn get_report(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let id = job_id(&id)?;
    let (head, chunks) = st
        .store
        .report_head(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no report")))?;
    // The report as JSON, its text streamed chunk by chunk: every field but `content`
    // first, then `content` as the chunks are read (each one valid text of its own).
    let mut fields = serde_json::to_value(&head).map_err(|e| {
        tracing::error!(error = %e, "encoding a report failed");
        ApiError::new(
            ErrorCode::Internal,
            "the portal could not encode the report",
        )
    })?;
    if let Some(map) = fields.as_object_mut() {
        map.remove("content");
    }
    let mut prefix = fields.to_string();
    prefix.pop(); // the closing brace; `content` goes last
    prefix.push_str(if prefix.len() > 1 {
        ",\"content\":\""
    } else {
        "\"content\":\""
    });
    // One chunk in flight: the memory per download is about two chunks.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let store = st.store.clone();
    let report = head.id;
    tokio::spawn(async move {
        if tx.send(Ok(prefix.into())).await.is_err() {
            return;
        }
        for seq in 0..chunks {
            let piece = match store.report_chunk(report, seq).await {
                Ok(Some(chunk)) => {
                    // A JSON string of the chunk, without its quotes.
                    let quoted = serde_json::Value::String(chunk).to_string();
                    Ok(quoted[1..quoted.len() - 1].to_owned().into())
                }
                Ok(None) => Err(std::io::Error::other(format!("chunk {seq} is missing"))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            if let Err(e) = &piece {
                // The answer is cut short: the client sees a broken body, never a short report.
                tracing::error!(report, job = id, error = %e, "serving a report failed");
            }
            let failed = piece.is_err();
            if tx.send(piece).await.is_err() || failed {
                return;
            }
        }
        let _ = tx.send(Ok("\"}".into())).await;
    });
    let mut resp = Response::new(Body::new(ChannelBody(rx)));
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A response body fed by a task through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<axum::body::Bytes, std::io::Error>>);

impl axum::body::HttpBody for ChannelBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|r| r.map(hyper::body::Frame::data)))
    }
}

/// online = heartbeat within the threshold; scanning = online and busy with a scan.
pub fn sensor_status(row: &SensorRow, now: i64, offline_after_s: i64) -> SensorStatus {
    let fresh = row
        .info
        .last_heartbeat
        .is_some_and(|t| now.saturating_sub(t) <= offline_after_s);
    if !fresh {
        SensorStatus::Offline
    } else if row.running_jobs > 0 || row.info.activity == Some(Activity::Scanning) {
        SensorStatus::Scanning
    } else {
        SensorStatus::Online
    }
}

async fn sensors_with_status(st: &AppState) -> Result<Vec<SensorInfo>, ApiError> {
    use crate::feeds::channels::{sensor_feed, Channels, Lag};
    let now = now();
    let threshold = st.settings.offline_after.as_secs() as i64;
    let releases = st.store.feed_releases().await?;
    let channels = Channels::new(&st.store.feed_channels().await?);
    let grace_s = st.settings.feed_grace.as_secs() as i64;
    Ok(st
        .store
        .sensors()
        .await?
        .into_iter()
        .map(|row| {
            let status = sensor_status(&row, now, threshold);
            let tunnel = tunnel_counters(st.gateway.as_deref(), &row.info.wg_public_key);
            let (channel, channel_from) = channels.of(&row.info.id, &row.info.site);
            let feed = sensor_feed(
                &Lag {
                    channel,
                    channel_from,
                    live: row.feed_live.as_deref(),
                    off_since: row.feed_off_since,
                    now,
                    grace_s,
                },
                &releases,
            );
            SensorInfo {
                status,
                tunnel,
                feed: Some(feed),
                ..row.info
            }
        })
        .collect())
}

/// The gateway's live counters for the sensor's peer; None without gateway or peer.
fn tunnel_counters(gw: Option<&Gateway>, key: &str) -> Option<TunnelCounters> {
    let key = key.parse::<PublicKey>().ok()?;
    let s = gw?.peer_status(&key)?.stats;
    Some(TunnelCounters {
        session_up: s.session_up,
        handshakes_completed: s.handshakes_completed,
        rx_packets: s.rx_packets,
        tx_packets: s.tx_packets,
        rx_bytes: s.rx_bytes,
        tx_bytes: s.tx_bytes,
        dropped_not_for_us: s.dropped.not_for_us,
        dropped_spoofed_source: s.dropped.spoofed_source,
    })
}

async fn list_sensors(State(st): St, headers: HeaderMap) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    Ok(Json(sensors_with_status(&st).await?).into_response())
}

async fn get_sensor(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let sensor = sensors_with_status(&st)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::not_found(format!("sensor {id} does not exist")))?;
    Ok(Json(sensor).into_response())
}

/// Operator request: the sensor rotates its WireGuard key when its next heartbeat answer
/// says so. Answered 202; the flag clears once the sensor's new key is stored.
async fn request_rotation(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin_auth(&st, &headers)?;
    if st.gateway.is_none() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this portal runs no WireGuard gateway; sensors have no key to rotate",
        ));
    }
    if st.store.request_key_rotation(&id).await? {
        tracing::info!(sensor = %id, "WireGuard key rotation requested");
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::not_found(format!("sensor {id} does not exist")))
    }
}

async fn delete_sensor(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin_auth(&st, &headers)?;
    // Its current key and, mid-rotation, its pending one.
    let keys: Vec<String> = st
        .store
        .tunnel_peers_of(std::slice::from_ref(&id))
        .await?
        .into_iter()
        .filter(|r| r.sensor_id == id)
        .flat_map(|r| std::iter::once(r.wg_public_key).chain(r.pending_key))
        .collect();
    if st
        .store
        .delete_sensor(&id, now(), st.settings.loss_rules())
        .await?
    {
        if let Some(gw) = &st.gateway {
            for key in keys.iter().filter_map(|k| k.parse::<PublicKey>().ok()) {
                gw.remove_peer(&key);
            }
        }
        tracing::info!(sensor = %id, "sensor deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("sensor {id} does not exist")))
    }
}

async fn sensor_log(
    State(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Query<Limit>,
) -> Result<Response, ApiError> {
    admin_auth(&st, &headers)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    Ok(Json(st.store.sensor_log(&id, limit).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_wire::admin::SensorInfo;

    fn row(last: Option<i64>, running: i64, activity: Option<Activity>) -> SensorRow {
        SensorRow {
            info: SensorInfo {
                id: "sn".into(),
                name: "n".into(),
                site: "s".into(),
                status: SensorStatus::Offline,
                hostname: String::new(),
                board: String::new(),
                board_serial: None,
                agent_version: String::new(),
                wg_public_key: String::new(),
                registered_at: 0,
                last_heartbeat: last,
                activity,
                phase: None,
                metrics: None,
                firmware_version: None,
                boot_slot: None,
                update: None,
                tunnel: None,
                feed: None,
            },
            running_jobs: running,
            feed_live: None,
            feed_off_since: None,
        }
    }

    #[test]
    fn status_follows_heartbeat_age_and_work() {
        assert_eq!(
            sensor_status(&row(None, 0, None), 1000, 120),
            SensorStatus::Offline
        );
        assert_eq!(
            sensor_status(&row(Some(880), 0, None), 1000, 120),
            SensorStatus::Online
        );
        assert_eq!(
            sensor_status(&row(Some(879), 0, None), 1000, 120),
            SensorStatus::Offline
        );
        assert_eq!(
            sensor_status(&row(Some(990), 1, None), 1000, 120),
            SensorStatus::Scanning
        );
        assert_eq!(
            sensor_status(&row(Some(990), 0, Some(Activity::Scanning)), 1000, 120),
            SensorStatus::Scanning
        );
        assert_eq!(
            sensor_status(&row(Some(10), 1, None), 1000, 120),
            SensorStatus::Offline
        );
    }
}
