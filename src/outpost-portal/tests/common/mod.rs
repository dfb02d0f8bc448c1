//! Shared helpers for the portal's integration tests: a fresh database on each backend,
//! a running portal over TLS, an HTTPS client pinned to its CA, and a full dump of the
//! database so a test can prove that a refused request changed nothing.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use outpost_portal::{Portal, Settings};
use rand::Rng;

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
    const TABLES: [&str; 5] = ["tokens", "sensors", "jobs", "reports", "sensor_log"];
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
