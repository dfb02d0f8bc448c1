//! The one seam between the daemon and the network. Everything above speaks
//! [`Transport`]; today [`UreqTransport`] dials the portal directly over TLS, and the
//! WireGuard tunnel slots in by handing [`UreqTransport::with_parts`] its own ureq
//! `Connector` (the TLS layer stays on top, so the pinned CA still applies).
//! JSON calls are `POST`s with a small answer; update bundles come by `GET`, streamed.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use outpost_wire::{Secret, API_VERSION, API_VERSION_HEADER, IDEMPOTENCY_HEADER};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{DefaultResolver, Resolver};
use ureq::unversioned::transport::{Connector, DefaultConnector};

/// Largest answer the daemon reads from the portal; the biggest is a job spec.
const MAX_RESPONSE_BODY: u64 = 1024 * 1024;
/// A download whose connection delivers nothing for this long is given up (and resumed
/// by the caller). The agent's total body and call budgets do not apply to downloads:
/// a 300 MB bundle on a slow branch uplink takes longer than any sensible total.
const DOWNLOAD_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One `POST` to the sensor API.
#[derive(Debug)]
pub struct Request<'a> {
    /// Path below the portal base URL, e.g. `/api/sensor/claim`.
    pub path: &'a str,
    pub bearer: Option<&'a Secret>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub idempotency_key: Option<&'a str>,
}

/// The portal's answer, whatever its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One streamed `GET` (update bundles), optionally from a byte offset on.
#[derive(Debug)]
pub struct GetRequest<'a> {
    pub path: &'a str,
    pub bearer: Option<&'a Secret>,
    /// Sends `Range: bytes=<from>-`.
    pub range_from: Option<u64>,
}

/// The answer to a `GET`, whatever its status; the body is read by the caller.
pub struct Download {
    pub status: u16,
    /// The `Content-Range` header, e.g. `bytes 100-999/1000`.
    pub content_range: Option<String>,
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("status", &self.status)
            .field("content_range", &self.content_range)
            .finish_non_exhaustive()
    }
}

/// The request never got an HTTP answer: DNS, connect, TLS, timeout, reset.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

pub trait Transport: Send + Sync {
    fn post(&self, req: &Request<'_>) -> Result<Response, TransportError>;
    /// Starts a streamed download; the body is read (and may fail) afterwards.
    fn get(&self, req: &GetRequest<'_>) -> Result<Download, TransportError>;
    /// A `POST` whose answer is streamed like a download (feed blob batches, larger than
    /// the JSON answer limit). By default the whole answer is read by [`Transport::post`].
    fn post_stream(&self, req: &Request<'_>) -> Result<Download, TransportError> {
        let resp = self.post(req)?;
        Ok(Download {
            status: resp.status,
            content_range: None,
            body: Box::new(std::io::Cursor::new(resp.body)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("outpost.toml: field `portal.ca_cert` holds no usable certificate: {0}")]
    BadCa(String),
}

/// HTTPS to the portal with ureq + rustls (ring), trusting only the provisioned CA.
pub struct UreqTransport {
    agent: ureq::Agent,
    base_url: String,
}

impl UreqTransport {
    /// Dials the portal directly over TCP.
    pub fn new(base_url: &str, ca_pem: &str) -> Result<UreqTransport, TlsSetupError> {
        Self::with_parts(
            base_url,
            ca_pem,
            DefaultConnector::new(),
            DefaultResolver::default(),
        )
    }

    /// Dials through `connector` (e.g. the WireGuard tunnel's). The connector chain
    /// must end in ureq's rustls connector for the pinned CA to be enforced.
    pub fn with_parts(
        base_url: &str,
        ca_pem: &str,
        connector: impl Connector,
        resolver: impl Resolver,
    ) -> Result<UreqTransport, TlsSetupError> {
        let config = ureq::Agent::config_builder()
            .tls_config(pinned_tls(ca_pem)?)
            // 4xx/5xx carry an ErrorBody the caller wants to read.
            .http_status_as_error(false)
            .max_redirects(0)
            // Per-step limits: a portal that vanished mid-connection (a pooled connection
            // into a dead tunnel) must not stall the job loop for long, while a large report
            // on a slow branch uplink still gets time to go up.
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_send_request(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(20)))
            .timeout_recv_body(Some(Duration::from_secs(30)))
            .timeout_send_body(Some(Duration::from_secs(600)))
            .timeout_global(Some(Duration::from_secs(900)))
            .max_idle_age(Duration::from_secs(20))
            .user_agent(format!("outpostd/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(UreqTransport {
            agent: ureq::Agent::with_parts(config, connector, resolver),
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }
}

/// TLS settings that trust the certificates in `ca_pem` and nothing else.
fn pinned_tls(ca_pem: &str) -> Result<TlsConfig, TlsSetupError> {
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(ca_pem.as_bytes()) {
        match item {
            Ok(PemItem::Certificate(c)) => {
                // Parse it as a trust anchor now, so a garbled PEM block fails at start-up
                // with the field named, not later as a puzzling handshake error.
                rustls::RootCertStore::empty()
                    .add(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
                    .map_err(|e| TlsSetupError::BadCa(e.to_string()))?;
                certs.push(c)
            }
            Ok(_) => {}
            Err(e) => return Err(TlsSetupError::BadCa(e.to_string())),
        }
    }
    if certs.is_empty() {
        return Err(TlsSetupError::BadCa("no PEM certificate found".into()));
    }
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(certs)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

impl Transport for UreqTransport {
    fn post(&self, req: &Request<'_>) -> Result<Response, TransportError> {
        let url = format!("{}{}", self.base_url, req.path);
        let mut builder = self
            .agent
            .post(&url)
            .header(API_VERSION_HEADER, API_VERSION.to_string())
            .header("content-type", req.content_type);
        if let Some(token) = req.bearer {
            builder = builder.header("authorization", format!("Bearer {}", token.expose()));
        }
        if let Some(key) = req.idempotency_key {
            builder = builder.header(IDEMPOTENCY_HEADER, key);
        }
        let mut resp = builder
            .send(&req.body[..])
            .map_err(|e| TransportError(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BODY)
            .read_to_vec()
            .map_err(|e| TransportError(format!("reading the answer: {e}")))?;
        Ok(Response { status, body })
    }

    fn post_stream(&self, req: &Request<'_>) -> Result<Download, TransportError> {
        let url = format!("{}{}", self.base_url, req.path);
        let mut builder = self
            .agent
            .post(&url)
            .header(API_VERSION_HEADER, API_VERSION.to_string())
            .header("content-type", req.content_type);
        if let Some(token) = req.bearer {
            builder = builder.header("authorization", format!("Bearer {}", token.expose()));
        }
        // Download timeouts: a batch of feed blobs on a slow uplink outlasts the JSON budget.
        let resp = builder
            .config()
            .timeout_global(None)
            .timeout_recv_body(None)
            .timeout_per_read(Some(DOWNLOAD_READ_TIMEOUT))
            .build()
            .send(&req.body[..])
            .map_err(|e| TransportError(e.to_string()))?;
        let status = resp.status().as_u16();
        // Unlimited reader: the caller bounds what it stores by the signed manifest.
        Ok(Download {
            status,
            content_range: None,
            body: Box::new(resp.into_body().into_reader()),
        })
    }

    fn get(&self, req: &GetRequest<'_>) -> Result<Download, TransportError> {
        let url = format!("{}{}", self.base_url, req.path);
        let mut builder = self
            .agent
            .get(&url)
            .header(API_VERSION_HEADER, API_VERSION.to_string());
        if let Some(token) = req.bearer {
            builder = builder.header("authorization", format!("Bearer {}", token.expose()));
        }
        if let Some(from) = req.range_from {
            builder = builder.header("range", format!("bytes={from}-"));
        }
        let resp = builder
            .config()
            .timeout_global(None)
            .timeout_recv_body(None)
            .timeout_per_read(Some(DOWNLOAD_READ_TIMEOUT))
            .build()
            .call()
            .map_err(|e| TransportError(e.to_string()))?;
        let status = resp.status().as_u16();
        let content_range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Unlimited reader: the caller writes at most the announced size to disk.
        let body = resp.into_body().into_reader();
        Ok(Download {
            status,
            content_range,
            body: Box::new(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbled_certificate_is_refused() {
        let err = pinned_tls("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("portal.ca_cert"), "{err}");
    }

    #[test]
    fn a_ca_without_certificates_is_refused() {
        let err = pinned_tls("-----BEGIN NOTHING-----\n-----END NOTHING-----\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("portal.ca_cert"), "{err}");
    }
}

/// The real transport against a loopback TLS server: pinning and headers.
#[cfg(test)]
mod tls_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A CA and a server certificate for 127.0.0.1 signed by it.
    struct Pki {
        ca_pem: String,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: Vec<u8>,
    }

    fn pki() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            server_chain: vec![cert.der().clone()],
            server_key: key.serialize_der(),
        }
    }

    /// Serves one HTTPS request on loopback; sends the raw request text back.
    fn serve_once(pki: &Pki, answer: &'static str) -> (String, mpsc::Receiver<String>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki.server_chain.clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then as much body as content-length says.
            loop {
                let n = match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if req.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&req).to_string());
            let resp = format!(
                "HTTP/1.1 {answer}\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{{\"ok\":true}}"
            );
            let _ = tls.write_all(resp.as_bytes());
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        });
        (url, rx)
    }

    #[test]
    fn talks_to_a_portal_signed_by_the_pinned_ca() {
        let pki = pki();
        let (url, seen) = serve_once(&pki, "201 Created");
        let t = UreqTransport::new(&url, &pki.ca_pem).unwrap();
        let key = Secret::new("osk_abc");
        let resp = t
            .post(&Request {
                path: "/api/sensor/jobs/3/report",
                bearer: Some(&key),
                content_type: "application/json",
                body: b"{\"x\":1}".to_vec(),
                idempotency_key: Some("req-9"),
            })
            .unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.body, b"{\"ok\":true}");
        let req = seen.recv().unwrap().to_ascii_lowercase();
        assert!(
            req.starts_with("post /api/sensor/jobs/3/report http/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\noutpost-api-version: 1\r\n"), "{req}");
        assert!(
            req.contains("\r\nauthorization: bearer osk_abc\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nidempotency-key: req-9\r\n"), "{req}");
        assert!(req.ends_with("{\"x\":1}"), "{req}");
    }

    #[test]
    fn refuses_a_server_from_another_ca() {
        let pinned = pki();
        let other = pki();
        let (url, _seen) = serve_once(&other, "200 OK");
        let t = UreqTransport::new(&url, &pinned.ca_pem).unwrap();
        let err = t
            .post(&Request {
                path: "/api/sensor/claim",
                bearer: None,
                content_type: "application/json",
                body: b"{}".to_vec(),
                idempotency_key: None,
            })
            .unwrap_err();
        assert!(err.0.to_lowercase().contains("certificate"), "{err}");
    }
}
