//! Credentials: enrollment tokens, per-sensor API keys and the admin token. All are long
//! random strings, so the portal stores a SHA-256 of each (a slow password hash buys
//! nothing against 256 bits of entropy) and compares digests.

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

use outpost_wire::ErrorCode;

use crate::error::ApiError;

pub fn random_secret(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    format!("{prefix}{}", hex::encode(buf))
}

/// A sensor's API key: HMAC-SHA256 keyed with the enrollment token over a random salt the
/// portal stores. The token reaches the portal in every registration attempt, so a retry
/// after a lost answer can be given the same key, while the database alone (token hash,
/// salt, key hash) does not give the key away.
pub fn derive_api_key(token: &str, salt: &str) -> String {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"outpost sensor api key v1\0");
    mac.update(salt.as_bytes());
    format!("osk_{}", hex::encode(mac.finalize().into_bytes()))
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The Bearer credential of a request, or a 401 naming what is missing.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing Authorization header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::Unauthorized, "Authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "Authorization header must be `Bearer <credential>`",
            )
        })?;
    Ok(token)
}

/// Compares two digests without an early exit.
pub fn digest_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_err());
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert("authorization", "Bearer osk_1".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "osk_1");
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = random_secret("otk_", 24);
        let b = random_secret("otk_", 24);
        assert_ne!(a, b);
        assert!(a.starts_with("otk_") && a.len() == 4 + 48);
        assert!(digest_eq(&hash(&a), &hash(&a)));
        assert!(!digest_eq(&hash(&a), &hash(&b)));
    }
}
