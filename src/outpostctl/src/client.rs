//! The admin API client: HTTPS with only the portal's CA trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use outpost_wire::{ErrorBody, API_VERSION, API_VERSION_HEADER};

/// Where the portal is and how to authenticate to it.
pub struct Target {
    pub url: String,
    pub ca_pem: Vec<u8>,
    pub admin_token: String,
}

impl Target {
    /// From a portal data directory (`portal.url`, `ca.pem`, `admin.token`), with explicit
    /// values taking precedence.
    pub fn resolve(
        dir: Option<&Path>,
        url: Option<String>,
        ca: Option<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> Result<Target> {
        let from_dir = |name: &str| dir.map(|d| d.join(name));
        let url = match url {
            Some(u) => u,
            None => {
                let p = from_dir("portal.url")
                    .ok_or_else(|| anyhow!("give --portal URL or --portal-dir DIR"))?;
                read_trimmed(&p)?
            }
        };
        let ca = ca
            .or_else(|| from_dir("ca.pem"))
            .ok_or_else(|| anyhow!("give --ca FILE or --portal-dir DIR"))?;
        let ca_pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        let token_file = token_file
            .or_else(|| from_dir("admin.token"))
            .ok_or_else(|| anyhow!("give --admin-token-file FILE or --portal-dir DIR"))?;
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            ca_pem,
            admin_token: read_trimmed(&token_file)?,
        })
    }
}

fn read_trimmed(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_owned())
}

pub struct Client {
    agent: ureq::Agent,
    target: Target,
}

impl Client {
    pub fn new(target: Target) -> Result<Client> {
        let cert = Certificate::from_pem(&target.ca_pem)
            .map_err(|e| anyhow!("the portal CA is not a PEM certificate: {e}"))?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Ok(Client { agent, target })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.url)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.target.admin_token)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        decode(self.call_get(path)?)
    }

    /// `GET` whose answer is read as it arrives, for answers too large to hold (a report's
    /// text is up to 64 MiB).
    pub fn get_reader(&self, path: &str) -> Result<impl std::io::Read> {
        let resp = self.call_get(path)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            bail!("{}", error_text(status, resp));
        }
        Ok(resp.into_body().into_reader())
    }

    fn call_get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>> {
        self.agent
            .get(&self.url(path))
            .header("authorization", &self.auth())
            .header(API_VERSION_HEADER, &API_VERSION.to_string())
            .call()
            .with_context(|| format!("GET {}", self.url(path)))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .agent
            .post(&self.url(path))
            .header("authorization", &self.auth())
            .header(API_VERSION_HEADER, &API_VERSION.to_string())
            .send_json(body)
            .with_context(|| format!("POST {}", self.url(path)))?;
        decode(resp)
    }

    /// `POST`s a file as the raw body, streamed from disk (bundles are hundreds of MB).
    pub fn post_file<T: DeserializeOwned>(&self, path: &str, file: &Path) -> Result<T> {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let resp = self
            .agent
            .post(&self.url(path))
            // A large upload over a branch link takes longer than any fixed limit; the
            // connection's own failure ends it instead.
            .config()
            .timeout_global(None)
            .build()
            .header("authorization", &self.auth())
            .header(API_VERSION_HEADER, &API_VERSION.to_string())
            .header("content-type", "application/octet-stream")
            .send(f)
            .with_context(|| format!("POST {} (uploading {})", self.url(path), file.display()))?;
        decode(resp)
    }

    /// `POST` without a body, for actions answered with an empty 2xx.
    pub fn post_action(&self, path: &str) -> Result<()> {
        let resp = self
            .agent
            .post(&self.url(path))
            .header("authorization", &self.auth())
            .header(API_VERSION_HEADER, &API_VERSION.to_string())
            .send_empty()
            .with_context(|| format!("POST {}", self.url(path)))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        bail!("{}", error_text(status, resp))
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        let resp = self
            .agent
            .delete(&self.url(path))
            .header("authorization", &self.auth())
            .header(API_VERSION_HEADER, &API_VERSION.to_string())
            .call()
            .with_context(|| format!("DELETE {}", self.url(path)))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        bail!("{}", error_text(status, resp))
    }
}

fn error_text(status: u16, resp: ureq::http::Response<ureq::Body>) -> String {
    let body = resp.into_body().read_to_string().unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&body) {
        Ok(e) => format!("portal answered {status}: {}", e.message),
        Err(_) => format!("portal answered {status}: {}", body.trim()),
    }
}

fn decode<T: DeserializeOwned>(resp: ureq::http::Response<ureq::Body>) -> Result<T> {
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        bail!("{}", error_text(status, resp));
    }
    resp.into_body()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_json()
        .context("portal answer is not the expected JSON")
}
