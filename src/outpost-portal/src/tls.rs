//! TLS material. On first start the portal makes its own CA and a server certificate
//! signed by it (the CA certificate is what sensors pin in `outpost.toml`); an operator
//! can pass their own chain and key instead.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use tokio_rustls::rustls;

use crate::Settings;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// Writes a file readable only by its owner, atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn sans(extra: &[String]) -> Result<Vec<SanType>> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra.iter().cloned());
    names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => {
                Ok(SanType::DnsName(n.clone().try_into().map_err(|e| {
                    anyhow!("invalid certificate name {n:?}: {e}")
                })?))
            }
        })
        .collect()
}

/// 00:00 UTC of the day before `now`.
fn start_of_yesterday_utc(now: std::time::SystemTime) -> time::OffsetDateTime {
    let days = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
        .saturating_sub(1);
    time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(days as i64)
}

fn ca_params(not_before: time::OffsetDateTime) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Outpost portal CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = rcgen::date_time_ymd(2046, 1, 1);
    ca
}

/// A new CA: its certificate and private key, PEM.
pub fn generate_ca() -> Result<(String, String)> {
    let ca_key = KeyPair::generate()?;
    // Valid from the start of yesterday (UTC), not from rcgen's 1975: a sensor takes
    // the pinned CA's notBefore as a lower bound for the time when it has no clock,
    // and a day's margin covers hosts whose clocks run a little behind.
    let ca_cert =
        ca_params(start_of_yesterday_utc(std::time::SystemTime::now())).self_signed(&ca_key)?;
    Ok((ca_cert.pem(), ca_key.serialize_pem()))
}

/// Creates the server certificate in `dir` unless it exists, signed by the CA there
/// (made first when there is none: a replica finds the shared one written by `shared`).
pub fn ensure_generated(dir: &Path, extra_sans: &[String]) -> Result<()> {
    if dir.join(SERVER_CERT).exists() && dir.join(SERVER_KEY).exists() {
        return Ok(());
    }
    let (ca_pem, ca_key_pem, not_before) = match (
        fs::read_to_string(dir.join(CA_CERT)),
        fs::read_to_string(dir.join(CA_KEY)),
    ) {
        (Ok(cert), Ok(key)) => {
            // The CA's own notBefore is not known here (no certificate parser): an
            // early one is always within the CA's, so a sensor that knows no better
            // time than the CA's birth still accepts the server certificate.
            (
                cert,
                key,
                time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(10_957),
            )
        }
        _ => {
            let (cert, key) = generate_ca()?;
            write_private(&dir.join(CA_KEY), key.as_bytes())?;
            write_private(&dir.join(CA_CERT), cert.as_bytes())?;
            (
                cert,
                key,
                start_of_yesterday_utc(std::time::SystemTime::now()),
            )
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("reading {}", dir.join(CA_KEY).display()))?;
    // rcgen signs with an issuer certificate object: the same name and key as the stored
    // CA give the same issuer name and key identifier, so the stored ca.pem verifies it.
    let issuer = ca_params(not_before).self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "outpost-portal");
    params.subject_alt_names = sans(extra_sans)?;
    // Not after the CA's notBefore: a sensor that knows no better time than the CA's
    // birth must still accept the server certificate.
    params.not_before = not_before;
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer, &ca_key)?;

    write_private(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes())?;
    let chain = format!("{}{}", cert.pem(), ca_pem.trim_end());
    write_private(&dir.join(SERVER_CERT), format!("{chain}\n").as_bytes())?;
    Ok(())
}

pub fn server_config(settings: &Settings) -> Result<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            ensure_generated(&settings.data_dir, &settings.extra_sans)?;
            (
                settings.data_dir.join(SERVER_CERT),
                settings.data_dir.join(SERVER_KEY),
            )
        }
        _ => return Err(anyhow!("--tls-cert and --tls-key must be given together")),
    };
    let certs = rustls_pemfile::certs(&mut fs::read(&cert_path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", cert_path.display()));
    }
    let key = rustls_pemfile::private_key(&mut fs::read(&key_path)?.as_slice())
        .with_context(|| format!("reading key from {}", key_path.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_start_the_day_before() {
        // 2026-12-04T15:01:02Z
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_396_462);
        let nb = start_of_yesterday_utc(now);
        assert_eq!(
            nb,
            time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_796_256_000)
        );
        assert_eq!((nb.year(), u8::from(nb.month()), nb.day()), (2026, 12, 3));
    }
}
