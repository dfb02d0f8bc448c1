//! `outpost.toml`: the provisioning file a person edits on the boot partition.
//!
//! ```toml
//! [portal]
//! url = "https://portal.example.net:8443"
//! ca_cert = """-----BEGIN CERTIFICATE-----
//! ...
//! -----END CERTIFICATE-----"""     # or: ca_cert_file = "portal-ca.pem"
//!
//! [sensor]
//! name = "branch-17"
//! site = "berlin"
//! token = "otk_..."
//!
//! [scope]
//! allowed = ["192.168.10.0/24"]
//!
//! [feed]                          # optional; production defaults shown
//! min_nasl = 2000
//! min_notus = 500
//! max_age_hours = 12
//! max_kbit_per_s = 2000           # cap on the feed sync's download; absent or 0: none
//!
//! [update]                        # optional
//! health_deadline_s = 600         # a freshly updated slot must be healthy within this
//!
//! [scanner]                       # optional
//! enabled = true                  # false: no OpenVAS stack, no scan jobs; the sensor
//!                                 # stays enrolled, reachable and updatable
//! ```
//!
//! `feed.max_kbit_per_s` caps the rate at which the sensor downloads a feed release
//! from the portal (kilobits, 1,000 bits, per second of compressed bytes on the wire), so
//! a sync does not saturate a branch's link: 0 or absent means no cap, otherwise it must
//! be between 64 and 10,000,000.
//!
//! `update.health_deadline_s` is read by the trial watchdog on the device (a shell
//! script, so it works even when the new slot's daemon does not); it is validated here
//! so a bad value is named at start-up rather than silently ignored.
//!
//! Everything is validated before the daemon touches the network; an error names the
//! field (`sensor.token`) so the person at the branch knows what to fix.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Secret;

#[derive(Debug, Clone, PartialEq)]
pub struct Provision {
    pub portal_url: String,
    /// PEM text of the CA certificate the daemon pins for the portal.
    pub ca_cert_pem: String,
    pub name: String,
    pub site: String,
    pub token: Secret,
    pub scope: Vec<String>,
    pub feed: FeedThresholds,
    /// `feed.max_kbit_per_s`: the feed sync's download cap; 0 is none.
    pub feed_max_kbit_per_s: u32,
    /// `scanner.enabled` (default true). An operator turns scanning off at a site (a
    /// change freeze, a sensor parked for maintenance) without unenrolling the sensor;
    /// it keeps its tunnel, heartbeats and updates.
    pub scanner_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedThresholds {
    pub min_nasl: u32,
    pub min_notus: u32,
    pub max_age_hours: u32,
}

impl Default for FeedThresholds {
    fn default() -> Self {
        FeedThresholds {
            min_nasl: 2000,
            min_notus: 500,
            max_age_hours: 12,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProvisionError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("outpost.toml is not valid TOML: {0}")]
    Syntax(String),
    #[error("outpost.toml: missing field `{0}`")]
    Missing(&'static str),
    #[error("outpost.toml: field `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    portal: Option<RawPortal>,
    sensor: Option<RawSensor>,
    scope: Option<RawScope>,
    feed: Option<RawFeed>,
    update: Option<RawUpdate>,
    scanner: Option<RawScanner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanner {
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    url: Option<String>,
    ca_cert: Option<String>,
    ca_cert_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    name: Option<String>,
    site: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    allowed: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    health_deadline_s: Option<u32>,
}

/// Bounds for `update.health_deadline_s`: long enough for the scanner to load its VTs,
/// short enough that a broken slot does not sit for days before it falls back.
pub const HEALTH_DEADLINE_RANGE: std::ops::RangeInclusive<u32> = 60..=86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    min_nasl: Option<u32>,
    min_notus: Option<u32>,
    max_age_hours: Option<u32>,
    // Read as any TOML value so a bad one is refused naming the key, not as a bare
    // "invalid type" from the parser.
    max_kbit_per_s: Option<toml::Value>,
}

/// Bounds for a non-zero `feed.max_kbit_per_s`: below 64 kbit/s a full feed would take
/// weeks; above 10 Gbit/s no link needs a cap.
pub const FEED_KBIT_RANGE: std::ops::RangeInclusive<u32> = 64..=10_000_000;

fn feed_kbit(v: &toml::Value) -> Result<u32, ProvisionError> {
    let bad = |shown: String| ProvisionError::Invalid {
        field: "feed.max_kbit_per_s",
        reason: format!(
            "is {shown}; it must be 0 (no cap) or a whole number of kbit/s between {} and {}",
            FEED_KBIT_RANGE.start(),
            FEED_KBIT_RANGE.end()
        ),
    };
    let n = match v {
        toml::Value::Integer(n) => *n,
        other => return Err(bad(other.to_string())),
    };
    match u32::try_from(n) {
        Ok(0) => Ok(0),
        Ok(k) if FEED_KBIT_RANGE.contains(&k) => Ok(k),
        _ => Err(bad(n.to_string())),
    }
}

impl Provision {
    /// Reads and validates the file; `ca_cert_file` is resolved next to it.
    pub fn load(path: &Path) -> Result<Provision, ProvisionError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProvisionError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Provision::parse(&text, |name| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        })
    }

    /// Parses and validates; `read_file` loads `ca_cert_file` when that form is used.
    pub fn parse(
        text: &str,
        read_file: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Provision, ProvisionError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ProvisionError::Syntax(one_line(&e)))?;
        let portal = raw.portal.ok_or(ProvisionError::Missing("portal"))?;
        let sensor = raw.sensor.ok_or(ProvisionError::Missing("sensor"))?;

        let portal_url = required(portal.url, "portal.url")?;
        validate_url(&portal_url)?;

        let ca_cert_pem = match (portal.ca_cert, portal.ca_cert_file) {
            (Some(_), Some(_)) => {
                return Err(ProvisionError::Invalid {
                    field: "portal.ca_cert",
                    reason: "and `portal.ca_cert_file` are both set; use one".into(),
                })
            }
            (Some(pem), None) => pem,
            (None, Some(file)) => read_file(&file).map_err(|reason| ProvisionError::Invalid {
                field: "portal.ca_cert_file",
                reason: format!("cannot be read: {reason}"),
            })?,
            (None, None) => return Err(ProvisionError::Missing("portal.ca_cert")),
        };
        if !ca_cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ProvisionError::Invalid {
                field: "portal.ca_cert",
                reason: "is not a PEM certificate (no BEGIN CERTIFICATE line)".into(),
            });
        }

        let name = required(sensor.name, "sensor.name")?;
        validate_label(&name, "sensor.name")?;
        let site = required(sensor.site, "sensor.site")?;
        validate_label(&site, "sensor.site")?;
        let token = required(sensor.token, "sensor.token")?;
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // Do not echo the token: it is a credential.
            return Err(ProvisionError::Invalid {
                field: "sensor.token",
                reason: "is not a well-formed enrollment token".into(),
            });
        }

        let scope = raw.scope.and_then(|s| s.allowed).unwrap_or_default();
        for cidr in &scope {
            if parse_cidr(cidr).is_none() {
                return Err(ProvisionError::Invalid {
                    field: "scope.allowed",
                    reason: format!("entry {cidr:?} is not an IPv4 CIDR such as 192.168.1.0/24"),
                });
            }
        }

        if let Some(d) = raw.update.and_then(|u| u.health_deadline_s) {
            if !HEALTH_DEADLINE_RANGE.contains(&d) {
                return Err(ProvisionError::Invalid {
                    field: "update.health_deadline_s",
                    reason: format!(
                        "is {d}; it must be between {} and {} seconds",
                        HEALTH_DEADLINE_RANGE.start(),
                        HEALTH_DEADLINE_RANGE.end()
                    ),
                });
            }
        }

        let mut feed = FeedThresholds::default();
        let mut feed_max_kbit_per_s = 0;
        if let Some(f) = raw.feed {
            feed.min_nasl = f.min_nasl.unwrap_or(feed.min_nasl);
            feed.min_notus = f.min_notus.unwrap_or(feed.min_notus);
            feed.max_age_hours = f.max_age_hours.unwrap_or(feed.max_age_hours);
            if let Some(v) = &f.max_kbit_per_s {
                feed_max_kbit_per_s = feed_kbit(v)?;
            }
        }

        Ok(Provision {
            portal_url: portal_url.trim_end_matches('/').to_owned(),
            ca_cert_pem,
            name,
            site,
            token: Secret::new(token),
            scope,
            feed,
            feed_max_kbit_per_s,
            scanner_enabled: raw.scanner.and_then(|s| s.enabled).unwrap_or(true),
        })
    }

    /// Renders the file as a person would write it (used by `outpostctl image provision`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# Outpost sensor provisioning. Edit and keep on the boot partition.\n");
        s.push_str("[portal]\n");
        s.push_str(&format!("url = {}\n", toml_str(&self.portal_url)));
        s.push_str(&format!(
            "ca_cert = \"\"\"\n{}\"\"\"\n\n",
            self.ca_cert_pem.trim_end().to_owned() + "\n"
        ));
        s.push_str("[sensor]\n");
        s.push_str(&format!("name = {}\n", toml_str(&self.name)));
        s.push_str(&format!("site = {}\n", toml_str(&self.site)));
        s.push_str(&format!("token = {}\n", toml_str(self.token.expose())));
        if !self.scope.is_empty() {
            let list: Vec<String> = self.scope.iter().map(|c| toml_str(c)).collect();
            s.push_str(&format!("\n[scope]\nallowed = [{}]\n", list.join(", ")));
        }
        if self.feed != FeedThresholds::default() || self.feed_max_kbit_per_s != 0 {
            s.push_str(&format!(
                "\n[feed]\nmin_nasl = {}\nmin_notus = {}\nmax_age_hours = {}\n",
                self.feed.min_nasl, self.feed.min_notus, self.feed.max_age_hours
            ));
            if self.feed_max_kbit_per_s != 0 {
                s.push_str(&format!("max_kbit_per_s = {}\n", self.feed_max_kbit_per_s));
            }
        }
        if !self.scanner_enabled {
            s.push_str("\n[scanner]\nenabled = false\n");
        }
        s
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn one_line(e: &toml::de::Error) -> String {
    let mut msg = e.message().to_owned();
    if let Some(span) = e.span() {
        msg = format!("{msg} (at byte {})", span.start);
    }
    msg
}

fn required(v: Option<String>, field: &'static str) -> Result<String, ProvisionError> {
    match v {
        None => Err(ProvisionError::Missing(field)),
        Some(s) if s.trim().is_empty() => Err(ProvisionError::Invalid {
            field,
            reason: "is empty".into(),
        }),
        Some(s) => Ok(s.trim().to_owned()),
    }
}

fn validate_url(url: &str) -> Result<(), ProvisionError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or(ProvisionError::Invalid {
            field: "portal.url",
            reason: format!("{url:?} must start with https://"),
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(ProvisionError::Invalid {
            field: "portal.url",
            reason: format!("{url:?} has no host"),
        });
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if !host.ends_with(']') && port.parse::<u16>().is_err() {
            return Err(ProvisionError::Invalid {
                field: "portal.url",
                reason: format!("{url:?} has an invalid port"),
            });
        }
    }
    Ok(())
}

fn validate_label(v: &str, field: &'static str) -> Result<(), ProvisionError> {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Invalid {
            field,
            reason: format!("{v:?} may hold only letters, digits, '-', '_', '.' (at most 63)"),
        })
    }
}

/// Parses `a.b.c.d/n` into (network address, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (s, 32),
    };
    if len > 32 {
        return None;
    }
    Some((addr.parse().ok()?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn good() -> String {
        format!(
            "[portal]\nurl = \"https://10.0.2.100:443/\"\nca_cert = \"\"\"\n{PEM}\"\"\"\n\
             [sensor]\nname = \"branch-1\"\nsite = \"berlin\"\ntoken = \"otk_0123456789abcdef\"\n"
        )
    }

    fn no_files(_: &str) -> Result<String, String> {
        Err("no files in this test".into())
    }

    #[test]
    fn parses_a_good_file() {
        let p = Provision::parse(&good(), no_files).unwrap();
        assert_eq!(p.portal_url, "https://10.0.2.100:443");
        assert_eq!(p.site, "berlin");
        assert_eq!(p.feed, FeedThresholds::default());
        assert!(!format!("{p:?}").contains("otk_0123"));
    }

    #[test]
    fn scanner_can_be_turned_off_and_round_trips() {
        let on = Provision::parse(&good(), no_files).unwrap();
        assert!(
            on.scanner_enabled,
            "scanning is on unless the file says otherwise"
        );
        let off = format!("{}[scanner]\nenabled = false\n", good());
        let p = Provision::parse(&off, no_files).unwrap();
        assert!(!p.scanner_enabled);
        let again = Provision::parse(&p.render(), no_files).unwrap();
        assert_eq!(again, p);
        let bad = format!("{}[scanner]\nenabled = \"no\"\n", good());
        let e = Provision::parse(&bad, no_files).unwrap_err().to_string();
        assert!(e.contains("expected a boolean"), "{e}");
    }

    #[test]
    fn update_section_is_accepted_and_checked() {
        let ok = format!("{}[update]\nhealth_deadline_s = 900\n", good());
        assert!(Provision::parse(&ok, no_files).is_ok());
        let bad = format!("{}[update]\nhealth_deadline_s = 5\n", good());
        let e = Provision::parse(&bad, no_files).unwrap_err().to_string();
        assert!(e.contains("update.health_deadline_s"), "{e}");
        let unknown = format!("{}[update]\ndeadline = 5\n", good());
        assert!(Provision::parse(&unknown, no_files).is_err());
    }

    #[test]
    fn feed_bandwidth_cap_is_read_and_checked() {
        let p = Provision::parse(&good(), no_files).unwrap();
        assert_eq!(p.feed_max_kbit_per_s, 0, "no cap unless the file sets one");
        let capped = format!("{}[feed]\nmax_kbit_per_s = 2000\n", good());
        let p = Provision::parse(&capped, no_files).unwrap();
        assert_eq!(p.feed_max_kbit_per_s, 2000);
        assert_eq!(p.feed, FeedThresholds::default());
        assert_eq!(Provision::parse(&p.render(), no_files).unwrap(), p);
        let zero = format!("{}[feed]\nmax_kbit_per_s = 0\n", good());
        assert_eq!(
            Provision::parse(&zero, no_files)
                .unwrap()
                .feed_max_kbit_per_s,
            0
        );
        for bad in ["-5", "10", "\"2 Mbit\"", "1.5", "20000000000"] {
            let text = format!("{}[feed]\nmax_kbit_per_s = {bad}\n", good());
            match Provision::parse(&text, no_files) {
                Err(e @ ProvisionError::Invalid { field, .. }) => {
                    assert_eq!(field, "feed.max_kbit_per_s", "{bad}");
                    assert!(e.to_string().contains("between 64 and 10000000"), "{e}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn render_round_trips() {
        let mut p = Provision::parse(&good(), no_files).unwrap();
        p.scope = vec!["10.9.0.0/24".into()];
        p.feed.min_nasl = 3;
        let back = Provision::parse(&p.render(), no_files).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn names_the_missing_field() {
        let text = good().replace("token = \"otk_0123456789abcdef\"\n", "");
        assert_eq!(
            Provision::parse(&text, no_files),
            Err(ProvisionError::Missing("sensor.token"))
        );
        let err = Provision::parse("[sensor]\n", no_files).unwrap_err();
        assert_eq!(err.to_string(), "outpost.toml: missing field `portal`");
    }

    #[test]
    fn malformed_toml_is_a_syntax_error() {
        let err = Provision::parse("[portal\nurl=", no_files).unwrap_err();
        assert!(matches!(err, ProvisionError::Syntax(_)), "{err}");
    }

    #[test]
    fn rejects_bad_values_by_field() {
        let cases = [
            (good().replace("https://", "http://"), "portal.url"),
            (good().replace("branch-1", "branch 1"), "sensor.name"),
            (
                good().replace("otk_0123456789abcdef", "short"),
                "sensor.token",
            ),
            (
                good().replace("BEGIN CERTIFICATE", "BEGIN NOTHING"),
                "portal.ca_cert",
            ),
            (
                good() + "[scope]\nallowed = [\"10.0.0.0/40\"]\n",
                "scope.allowed",
            ),
        ];
        for (text, field) in cases {
            match Provision::parse(&text, no_files) {
                Err(ProvisionError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Provision::parse(&(good() + "[sensor2]\n"), no_files).unwrap_err();
        assert!(err.to_string().contains("sensor2"), "{err}");
    }

    #[test]
    fn token_is_never_echoed_in_errors() {
        let text = good().replace("otk_0123456789abcdef", "otk secret with spaces");
        let err = Provision::parse(&text, no_files).unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn ca_cert_file_is_read() {
        let text = good().replace(
            &format!("ca_cert = \"\"\"\n{PEM}\"\"\"\n"),
            "ca_cert_file = \"ca.pem\"\n",
        );
        let p = Provision::parse(&text, |n| {
            assert_eq!(n, "ca.pem");
            Ok(PEM.to_owned())
        })
        .unwrap();
        assert_eq!(p.ca_cert_pem, PEM);
    }
}
