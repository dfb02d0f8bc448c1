//! What the feed sync's tests (`outpost-feedsync/tests/sync.rs`) and its benchmark
//! (`outpost-feedsync/examples/feed_bench.rs`) share: a real portal in-process on loopback
//! (SQLite) with an upstream keyring, a feed key and one registered sensor, imports into
//! it, and the sensor API over HTTPS as `outpostd` speaks it (without the tunnel) as a
//! [`FeedSource`] that records what it was asked for. Test-only: it panics on setup errors.

pub mod trees;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_bundle::{SecretKey, TrustedKeys};
use outpost_feedsync::{FeedSource, SourceError, SyncConfig};
use outpost_portal::feeds::{import, ImportError, ImportOptions, ImportReport};
use outpost_portal::{Portal, Settings};
use outpost_wire::feed::{
    FeedBlobsRequest, FeedDeltaPair, FeedDeltasRequest, FeedReleaseInfo, BLOBS_PATH, DELTAS_PATH,
    RELEASE_PATH,
};

/// A portal serving feed releases, with one sensor registered at `site`.
pub struct TestPortal {
    pub rt: tokio::runtime::Runtime,
    pub portal: Portal,
    /// The portal's data directory.
    pub data: PathBuf,
    pub opts: ImportOptions,
    /// The feed key's `.pub` (what a sensor's image carries).
    pub feed_pub: PathBuf,
    pub ca_pem: Vec<u8>,
    pub api_key: String,
    timeout: Duration,
}

impl TestPortal {
    /// Starts a portal in `data`, trusting `keyring` (armoured OpenPGP public keys) for
    /// upstream feeds, with a new feed key; registers a sensor named `site` at `site`.
    /// `timeout` bounds each HTTP request.
    pub fn start(data: &Path, keyring: &[u8], site: &str, timeout: Duration) -> TestPortal {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        let mut s = Settings::new(data.to_path_buf(), "127.0.0.1:0".parse().expect("address"));
        s.database = Some(
            data.join("portal.sqlite")
                .to_str()
                .expect("utf-8 path")
                .to_owned(),
        );
        let portal = rt.block_on(Portal::start(s)).expect("portal starts");
        let opts = ImportOptions::in_data_dir(data);
        std::fs::write(&opts.keyring, keyring).expect("keyring written");
        let feed_pub = SecretKey::generate()
            .expect("feed key")
            .write_new(&opts.signing_key, "feed test")
            .expect("feed key written");
        let ca_pem = std::fs::read(data.join("ca.pem")).expect("portal CA");
        let admin = std::fs::read_to_string(data.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        let mut p = TestPortal {
            rt,
            portal,
            data: data.to_path_buf(),
            opts,
            feed_pub,
            ca_pem,
            api_key: String::new(),
            timeout,
        };
        p.api_key = p.register(&admin, site);
        p
    }

    pub fn url(&self) -> &str {
        &self.portal.url
    }

    /// An HTTPS agent trusting the portal's CA; statuses are not errors.
    pub fn agent(&self) -> ureq::Agent {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let cert = Certificate::from_pem(&self.ca_pem).expect("CA certificate");
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .build()
            .new_agent()
    }

    fn register(&self, admin: &str, site: &str) -> String {
        let agent = self.agent();
        let tok: serde_json::Value = agent
            .post(format!("{}/api/admin/tokens", self.url()))
            .header("authorization", format!("Bearer {admin}"))
            .send_json(serde_json::json!({"site": site, "uses": 1, "ttl_s": 3600}))
            .expect("token request")
            .body_mut()
            .read_json()
            .expect("token answer");
        let tok = tok["token"].as_str().expect("token").to_owned();
        let reg: serde_json::Value = agent
            .post(format!("{}/api/sensor/register", self.url()))
            .header("authorization", format!("Bearer {tok}"))
            .send_json(serde_json::json!({
                "name": site, "site": site, "hostname": site, "os": "test",
                "board": "qemu-arm64", "hardware_serial": "0", "agent_version": "0.1.0",
                "capabilities": ["scan"],
                "wg_public_key": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
            }))
            .expect("register request")
            .body_mut()
            .read_json()
            .expect("register answer");
        reg["api_key"].as_str().expect("api key").to_owned()
    }

    /// Imports `tree` and publishes it (`now`: the import's clock).
    pub fn import(&self, tree: &Path, now: i64) -> ImportReport {
        self.try_import(tree, now).expect("import")
    }

    /// [`TestPortal::import`], refusals returned.
    pub fn try_import(&self, tree: &Path, now: i64) -> Result<ImportReport, ImportError> {
        self.rt.block_on(import(
            &self.portal.state.store,
            &self.data,
            tree,
            &self.opts,
            now,
        ))
    }

    /// The manifest digests of the published releases.
    pub fn releases(&self) -> Vec<String> {
        self.rt
            .block_on(self.portal.state.store.feed_releases())
            .expect("releases")
            .into_iter()
            .map(|r| r.manifest_sha256)
            .collect()
    }

    /// The registered sensor's view of the sensor API.
    pub fn source(&self) -> Http {
        Http {
            agent: self.agent(),
            url: self.url().to_owned(),
            key: self.api_key.clone(),
            asked: Mutex::new(Vec::new()),
            asked_deltas: Mutex::new(Vec::new()),
        }
    }

    /// A sync of a sensor feed root at `root`, trusting this portal's feed key.
    pub fn config(&self, root: &Path) -> SyncConfig {
        SyncConfig::new(
            root,
            TrustedKeys::load(&self.feed_pub).expect("feed key .pub"),
        )
    }

    /// Where the portal stores blob `sha256`.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.data
            .join("feeds/blobs")
            .join(&sha256[..2])
            .join(sha256)
    }
}

/// The sensor API over HTTPS; each answer is read whole, then handed out.
pub struct Http {
    agent: ureq::Agent,
    url: String,
    key: String,
    asked: Mutex<Vec<String>>,
    asked_deltas: Mutex<Vec<FeedDeltaPair>>,
}

impl Http {
    /// Every digest asked for whole, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Every delta asked for, in order.
    pub fn asked_deltas(&self) -> Vec<FeedDeltaPair> {
        self.asked_deltas
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    fn post(&self, path: &str, body: impl serde::Serialize) -> Result<Vec<u8>, SourceError> {
        let mut r = self
            .agent
            .post(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .send_json(body)
            .map_err(|e| SourceError(e.to_string()))?;
        if r.status() != 200 {
            let body = r.body_mut().read_to_string().unwrap_or_default();
            return Err(SourceError(format!("status {}: {body}", r.status())));
        }
        r.body_mut()
            .with_config()
            .limit(128 << 20)
            .read_to_vec()
            .map_err(|e| SourceError(e.to_string()))
    }
}

impl FeedSource for Http {
    fn release(&self) -> Result<Option<FeedReleaseInfo>, SourceError> {
        let mut r = self
            .agent
            .get(format!("{}{RELEASE_PATH}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .call()
            .map_err(|e| SourceError(e.to_string()))?;
        match r.status().as_u16() {
            204 => Ok(None),
            200 => r
                .body_mut()
                .read_json()
                .map(Some)
                .map_err(|e| SourceError(e.to_string())),
            s => Err(SourceError(format!("status {s}"))),
        }
    }

    fn blobs(&self, sha256: &[String]) -> Result<Box<dyn Read + Send>, SourceError> {
        if let Ok(mut a) = self.asked.lock() {
            a.extend(sha256.iter().cloned());
        }
        let body = self.post(
            BLOBS_PATH,
            FeedBlobsRequest {
                sha256: sha256.to_vec(),
            },
        )?;
        Ok(Box::new(std::io::Cursor::new(body)))
    }

    fn deltas(&self, pairs: &[FeedDeltaPair]) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        if let Ok(mut a) = self.asked_deltas.lock() {
            a.extend(pairs.iter().cloned());
        }
        let body = self.post(
            DELTAS_PATH,
            FeedDeltasRequest {
                deltas: pairs.to_vec(),
            },
        )?;
        Ok(Some(Box::new(std::io::Cursor::new(body))))
    }
}

/// A deltas answer (`body`) with its first delta replaced by a valid delta from the same
/// base to other bytes of the same length: only the rebuilt file's hash can tell. The
/// base is read from the portal's blob store `blobs` (`<data>/feeds/blobs`).
pub fn tamper_first_delta(body: &[u8], blobs: &Path) -> Vec<u8> {
    use outpost_feed::batch::{encode, BatchReader};
    use outpost_feed::delta;
    let mut r = BatchReader::new(body).expect("a batch");
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry().expect("a batch entry") {
        let mut b = Vec::new();
        r.content().read_to_end(&mut b).expect("entry content");
        entries.push((e.sha256, b));
    }
    if let Some((_, d)) = entries.first_mut() {
        let mut rest = &d[..];
        let h = delta::read_header(&mut rest).expect("a delta header");
        let base = std::fs::read(blobs.join(&h.base_sha256[..2]).join(&h.base_sha256))
            .expect("the delta's base");
        let mut target = Vec::new();
        delta::apply_ops(&mut rest, &&base[..], h.target_len, &mut target).expect("a delta");
        let mid = target.len() / 2;
        target[mid] ^= 0x20;
        let mut digest = [0u8; 32];
        for (i, o) in digest.iter_mut().enumerate() {
            *o = u8::from_str_radix(&h.base_sha256[2 * i..2 * i + 2], 16).expect("hex");
        }
        *d = delta::encode(&digest, &base, &target);
    }
    encode(entries.iter().map(|(s, b)| (s.as_str(), b.as_slice()))).expect("a batch")
}
