//! Shared helpers for the portal's integration tests: a fresh database on each backend,
//! a running portal over TLS, an HTTPS client pinned to its CA, and a full dump of the
//! database so a test can prove that a refused request changed nothing.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use outpost_portal::{Portal, Settings};
use rand::Rng;

pub mod device;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL for a brand-new, empty database.
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => dir.join("portal.sqlite").display().to_string(),
        Backend::Postgres => {
            let admin = std::env::var("OUTPOST_TEST_PG_URL").expect(
                "OUTPOST_TEST_PG_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
            );
            let name = format!("outpost_t{}", rand::thread_rng().gen::<u64>());
            let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL server");
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            let base = admin.rsplit_once('/').expect("database URL has a path").0;
            format!("{base}/{name}")
        }
    }
}

/// Every row of every table, as text, in a stable order.
pub async fn dump(url: &str) -> String {
    const TABLES: [&str; 7] = [
        "tokens",
        "sensors",
        "jobs",
        "reports",
        "report_chunks",
        "sensor_log",
        "bundles",
    ];
    let mut out = String::new();
    if url.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect for dump");
        tokio::spawn(conn);
        for t in TABLES {
            let rows = client
                .query(
                    &format!("SELECT CAST(x AS TEXT) FROM {t} x ORDER BY 1"),
                    &[],
                )
                .await
                .expect("dump table");
            for r in rows {
                out.push_str(&format!("{t}: {}\n", r.get::<_, String>(0)));
            }
        }
    } else {
        let conn = rusqlite::Connection::open(url).expect("open sqlite for dump");
        for t in TABLES {
            let mut st = conn
                .prepare(&format!("SELECT * FROM {t} ORDER BY 1"))
                .expect("prepare");
            let n = st.column_count();
            let mut rows = st.query([]).expect("query");
            while let Some(r) = rows.next().expect("row") {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).expect("column")))
                    .collect();
                out.push_str(&format!("{t}: {}\n", cols.join("|")));
            }
        }
    }
    out
}

pub struct TestPortal {
    pub portal: Portal,
    pub dir: tempfile::TempDir,
    pub database: String,
    pub admin_token: String,
    pub ca_pem: Vec<u8>,
}

pub async fn start_portal(backend: Backend, tune: impl FnOnce(&mut Settings)) -> TestPortal {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = fresh_database(backend, dir.path()).await;
    let mut s = Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse().expect("addr"));
    s.database = Some(database.clone());
    tune(&mut s);
    let portal = Portal::start(s).await.expect("portal starts");
    let admin_token = std::fs::read_to_string(dir.path().join("admin.token"))
        .expect("admin token")
        .trim()
        .to_owned();
    let ca_pem = std::fs::read(dir.path().join("ca.pem")).expect("ca.pem");
    TestPortal {
        portal,
        dir,
        database,
        admin_token,
        ca_pem,
    }
}

/// A scan of 10.9.0.2's `ports` (e.g. `T:22`) with the defaults an operator gets.
pub fn scan_spec(ports: &str) -> outpost_wire::sensor::JobSpec {
    use outpost_wire::sensor::{JobSpec, ScanSpec};
    JobSpec::Scan(ScanSpec {
        deadline_s: 600,
        ..ScanSpec::new(vec!["10.9.0.2".into()], ports)
    })
}

/// An idle sensor's heartbeat, listing `running_jobs` when given (older agents do not).
pub fn idle_heartbeat(running_jobs: Option<Vec<i64>>) -> outpost_wire::sensor::HeartbeatRequest {
    outpost_wire::sensor::HeartbeatRequest {
        activity: outpost_wire::sensor::Activity::Idle,
        uptime_s: 1,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Default::default(),
        running_jobs,
        feed_release: None,
    }
}

/// What a test sensor named `name` at `site` sends to register, with WireGuard key `key`.
pub fn register_request(
    name: &str,
    site: &str,
    caps: &[outpost_wire::sensor::Capability],
    key: &outpost_tunnel::PublicKey,
) -> outpost_wire::sensor::RegisterRequest {
    outpost_wire::sensor::RegisterRequest {
        name: name.into(),
        site: site.into(),
        hostname: name.into(),
        os: "test".into(),
        board: "test".into(),
        hardware_serial: "0".into(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: caps.to_vec(),
        wg_public_key: key.to_base64(),
    }
}

/// A plain HTTPS client trusting only the portal's CA; it never turns statuses into errors.
pub fn https(ca_pem: &[u8]) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let cert = Certificate::from_pem(ca_pem).expect("CA is PEM");
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

// ---- update bundles ----

/// The board every test bundle is built for.
pub const BOARD: &str = "outpost,rpi4";

/// Deterministic bytes that differ per `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The key the test portal trusts when a test installs `bundle-keys.pub`.
pub fn release_key() -> outpost_bundle::SecretKey {
    outpost_bundle::SecretKey::from_seed(&[11; 32])
}

pub fn other_key() -> outpost_bundle::SecretKey {
    outpost_bundle::SecretKey::from_seed(&[22; 32])
}

/// A real bundle file, as `outpostctl bundle build` (and `sign`) would make it.
pub struct TestBundle {
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// Builds a bundle of `version` in `dir` (replaces `1.0.0` or later), signed with `key`
/// when given. The root filesystem is 2.5 MiB, past axum's default 2 MiB body limit.
pub fn build_bundle(
    dir: &std::path::Path,
    version: &str,
    key: Option<&outpost_bundle::SecretKey>,
) -> TestBundle {
    let seed = version.bytes().map(u64::from).sum::<u64>();
    let input = |name: &str, i: u64, len: usize| {
        let p = dir.join(format!("{version}-{name}"));
        std::fs::write(&p, pattern(seed * 10 + i, len)).expect("write bundle input");
        p
    };
    let spec = outpost_bundle::BuildSpec {
        board: BOARD.into(),
        version: outpost_bundle::Version::parse(version).expect("semver"),
        min_version: Some(outpost_bundle::Version::new(1, 0, 0)),
        rootfs: input("rootfs", 1, 2 * 1024 * 1024 + 512 * 1024 + 123),
        kernel: input("Image", 2, 150_000),
        initrd: input("initrd.img", 3, 60_001),
        dtbs: vec![(
            "broadcom/bcm2711-rpi-4-b.dtb".into(),
            input("dtb", 4, 4_000),
        )],
    };
    let path = dir.join(format!("outpost-{version}.bundle"));
    outpost_bundle::build_bundle(&spec, &path).expect("build bundle");
    if let Some(key) = key {
        outpost_bundle::sign_bundle(&path, key).expect("sign bundle");
    }
    let bytes = std::fs::read(&path).expect("read bundle");
    let sha256 = sha256_hex(&bytes);
    TestBundle {
        path,
        bytes,
        sha256,
    }
}

// ---- a small HTTP client for the tests ----

pub struct Resp {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    pub fn error(&self) -> outpost_wire::ErrorBody {
        self.json()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

pub struct Api {
    pub agent: ureq::Agent,
    pub base: String,
}

impl Api {
    pub fn new(tp: &TestPortal) -> Api {
        Api {
            agent: https(&tp.ca_pem),
            base: tp.portal.url.clone(),
        }
    }

    fn finish(resp: ureq::http::Response<ureq::Body>) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn post_bytes(&self, path: &str, bearer: &str, content_type: &str, body: &[u8]) -> Resp {
        let resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {bearer}"))
            .header("content-type", content_type)
            .send(body)
            .expect("request sent");
        Api::finish(resp)
    }

    pub fn post<T: serde::Serialize>(&self, path: &str, bearer: &str, body: &T) -> Resp {
        let body = serde_json::to_vec(body).expect("serialise");
        self.post_bytes(path, bearer, "application/json", &body)
    }

    pub fn get_with(&self, path: &str, bearer: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {bearer}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Api::finish(req.call().expect("request sent"))
    }

    pub fn get(&self, path: &str, bearer: &str) -> Resp {
        self.get_with(path, bearer, &[])
    }
}
