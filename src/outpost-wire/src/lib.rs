//! The Outpost sensor protocol: every type that crosses the wire between `outpostd` and
//! `outpost-portal`, plus the provisioning file. Both sides depend on this crate so they
//! cannot drift; `docs/protocol.md` describes the same contract for humans.

pub mod admin;
pub mod error;
pub mod feed;
pub mod json_stream;
pub mod log;
pub mod provision;
pub mod secret;
pub mod sensor;

pub use error::{ErrorBody, ErrorCode};
pub use secret::Secret;

/// Version of the sensor API spoken by this build. Sent by both sides in
/// [`API_VERSION_HEADER`]; the portal serves every version from 1 up to this one.
pub const API_VERSION: u32 = 1;
/// Header carrying the API version on requests and responses.
pub const API_VERSION_HEADER: &str = "outpost-api-version";
/// Header carrying the client-chosen request id that makes report uploads idempotent.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Body limit for ordinary JSON requests.
pub const MAX_JSON_BODY: usize = 256 * 1024;
/// Body limit for an NDJSON log batch.
pub const MAX_LOG_BODY: usize = 1024 * 1024;
/// Body limit for a report upload (OSP XML plus summary).
pub const MAX_REPORT_BODY: usize = 64 * 1024 * 1024;
/// Most events accepted in one log batch.
pub const MAX_LOG_EVENTS: usize = 2048;

/// Sensor API paths, relative to the portal base URL.
pub mod paths {
    pub const REGISTER: &str = "/api/sensor/register";
    pub const HEARTBEAT: &str = "/api/sensor/heartbeat";
    pub const CLAIM: &str = "/api/sensor/claim";
    pub const LOG: &str = "/api/sensor/log";
    /// Replaces the sensor's WireGuard public key (key rotation) without a new identity.
    pub const WG_KEY: &str = "/api/sensor/wg-key";
    /// Update progress and outcome ([`crate::sensor::UpdateStateReport`]).
    pub const UPDATE_STATE: &str = "/api/sensor/update-state";

    /// `GET /api/sensor/bundles/{id}`: the bundle file; honours `Range: bytes=N-`.
    pub fn bundle(id: i64) -> String {
        format!("/api/sensor/bundles/{id}")
    }

    /// `POST /api/sensor/jobs/{id}/report`
    pub fn report(job: i64) -> String {
        format!("/api/sensor/jobs/{job}/report")
    }
    /// `POST /api/sensor/jobs/{id}/status`
    pub fn job_status(job: i64) -> String {
        format!("/api/sensor/jobs/{job}/status")
    }
}

/// Current time as Unix seconds (0 if the clock is before 1970, which only a broken RTC gives).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current time as Unix milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
