use serde::{Deserialize, Serialize};

/// Machine-readable reason carried in every non-2xx response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not valid JSON or misses a field.
    BadRequest,
    /// 400: the client speaks an API version this portal does not serve.
    UnsupportedApiVersion,
    /// 401: no or unknown credential.
    Unauthorized,
    /// 401: the enrollment token does not exist.
    TokenInvalid,
    /// 403: the enrollment token has expired.
    TokenExpired,
    /// 403: the enrollment token has no uses left.
    TokenUsedUp,
    /// 403: the enrollment token belongs to another site than the sensor asked for.
    TokenSiteMismatch,
    /// 403: the credential is valid but may not act on this object.
    Forbidden,
    /// 404
    NotFound,
    /// 409: the job is no longer leased to this sensor, or is in a final state.
    Conflict,
    /// 413
    PayloadTooLarge,
    /// 500
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnsupportedApiVersion => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenInvalid => 401,
            ErrorCode::TokenExpired
            | ErrorCode::TokenUsedUp
            | ErrorCode::TokenSiteMismatch
            | ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
        }
    }
}

/// JSON body of every error response: `{"error":"token_expired","message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// A sentence for a human: what was wrong and, where useful, what to do.
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.error)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{code}: {}", self.message)
    }
}
