//! A string that never shows itself in `Debug` output or logs.

use std::fmt;

/// A secret value (password, private key, SNMP community).
///
/// `Debug` prints `Secret(<redacted>)`; there is deliberately no `Display`,
/// so a secret cannot slip into a `tracing` field or a format string by
/// accident. Reach the value only through [`Secret::expose`]. The buffer is
/// overwritten with zeros when dropped, so it does not linger in freed heap.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it must be written out.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

/// Overwrites a buffer with zeros before it is freed. `black_box` keeps the
/// optimiser from dropping the "dead" stores (best effort, no `unsafe`).
pub(crate) fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_value() {
        let s = Secret::new("hunter2");
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn debug_of_a_struct_holding_a_secret_hides_it() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Login {
            user: String,
            password: Secret,
        }
        let l = Login {
            user: "scan".into(),
            password: "p@ss<>&".into(),
        };
        let shown = format!("{l:?} {l:#?}");
        assert!(shown.contains("scan"));
        assert!(!shown.contains("p@ss"), "{shown}");
    }
}
