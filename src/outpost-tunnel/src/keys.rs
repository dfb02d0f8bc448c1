//! WireGuard key material: generation, base64 text form (as `wg genkey` /
//! `wg pubkey` print it) and parsing with errors that say what is wrong.
//!
//! Secret types never print their bytes: `Debug` shows a fixed placeholder so
//! a stray `{:?}` in a log line cannot leak a key.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::x25519;
use rand_core::{OsRng, RngCore};

/// Length of every WireGuard key (private, public, preshared) in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is not valid base64: {0}")]
    Base64(String),
    #[error(
        "key decodes to {0} bytes, a WireGuard key is exactly 32 bytes (44 base64 characters)"
    )]
    Length(usize),
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// An X25519 private key. Clamping happens inside the DH, as in `wg`.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh key from the operating system's RNG (like `wg genkey`).
    pub fn generate() -> Self {
        Self(x25519::StaticSecret::random_from_rng(OsRng))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519::StaticSecret::from(bytes))
    }

    /// The matching public key (like `wg pubkey`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// Base64 text, the form `wg genkey` prints. Handle with care: this is the secret.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    pub(crate) fn secret(&self) -> x25519::StaticSecret {
        self.0.clone()
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        // Comparing public halves avoids a non-constant-time compare of secrets.
        self.public_key() == other.public_key()
    }
}
impl Eq for PrivateKey {}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self::from_bytes)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Show the public half so logs can still tell keys apart.
        write!(f, "PrivateKey(<redacted>, public={})", self.public_key())
    }
}

/// An X25519 public key; `Display` gives the base64 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub(crate) [u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub(crate) fn x25519(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// Optional symmetric key mixed into the handshake (`wg genpsk`).
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    pub(crate) fn bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1 test vector (Alice), base64 encoded.
    const ALICE_PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const ALICE_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn public_key_matches_rfc7748_vector() {
        let private: PrivateKey = ALICE_PRIVATE.parse().unwrap();
        assert_eq!(private.public_key().to_base64(), ALICE_PUBLIC);
        assert_eq!(private.to_base64(), ALICE_PRIVATE);
    }

    #[test]
    fn generated_keys_round_trip_through_base64() {
        let key = PrivateKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let parsed: PrivateKey = text.parse().unwrap();
        assert_eq!(parsed.public_key(), key.public_key());
        assert_ne!(
            PrivateKey::generate().public_key(),
            key.public_key(),
            "two generated keys must differ"
        );
    }

    #[test]
    fn parse_errors_are_specific() {
        assert_eq!("".parse::<PublicKey>(), Err(KeyError::Empty));
        assert_eq!("   ".parse::<PublicKey>(), Err(KeyError::Empty));
        assert!(matches!(
            "not base64!!".parse::<PublicKey>(),
            Err(KeyError::Base64(_))
        ));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        let msg = "AAAA".parse::<PublicKey>().unwrap_err().to_string();
        assert!(msg.contains("exactly 32 bytes"), "{msg}");
        // Surrounding whitespace (a trailing newline from a file) is accepted.
        assert!(format!("{ALICE_PUBLIC}\n").parse::<PublicKey>().is_ok());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let key: PrivateKey = ALICE_PRIVATE.parse().unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains(ALICE_PRIVATE), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(
            shown.contains(ALICE_PUBLIC),
            "public half helps tell keys apart"
        );
        let psk = PresharedKey::generate();
        let shown = format!("{psk:?}");
        assert!(!shown.contains(&psk.to_base64()));
    }
}
