use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_wire::{ErrorBody, ErrorCode};

use crate::store::{JobRefusal, StoreError, TokenRefusal};

/// Every failure the API answers with: a status and a JSON [`ErrorBody`] a person can read.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(ErrorBody::new(code, message))
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.error.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.0)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        // The details go to the portal's log, not to the client.
        tracing::error!(error = %e, "database error");
        ApiError::new(
            ErrorCode::Internal,
            "internal error in the portal's database",
        )
    }
}

impl From<TokenRefusal> for ApiError {
    fn from(r: TokenRefusal) -> ApiError {
        match r {
            TokenRefusal::Invalid => ApiError::new(
                ErrorCode::TokenInvalid,
                "the enrollment token is not known to this portal",
            ),
            TokenRefusal::Expired => ApiError::new(
                ErrorCode::TokenExpired,
                "the enrollment token has expired; ask for a new one",
            ),
            TokenRefusal::UsedUp => ApiError::new(
                ErrorCode::TokenUsedUp,
                "the enrollment token has no uses left",
            ),
            TokenRefusal::SiteMismatch => ApiError::new(
                ErrorCode::TokenSiteMismatch,
                "the enrollment token belongs to another site than sensor.site",
            ),
        }
    }
}

pub fn job_refusal(job: i64, r: JobRefusal) -> ApiError {
    match r {
        JobRefusal::NotFound => ApiError::not_found(format!("job {job} does not exist")),
        JobRefusal::NotYours => ApiError::new(
            ErrorCode::Forbidden,
            format!("job {job} is not leased to this sensor"),
        ),
        JobRefusal::LeaseLost(state) => ApiError::new(
            ErrorCode::Conflict,
            format!(
                "job {job} is no longer leased to this sensor (it is {})",
                state.as_str()
            ),
        ),
        JobRefusal::AlreadyReported => ApiError::new(
            ErrorCode::Conflict,
            format!("job {job} already has a different report"),
        ),
    }
}
