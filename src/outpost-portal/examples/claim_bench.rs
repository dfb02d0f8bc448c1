//! `scripts/bench claims`: 200 concurrent claimers drain a queue on each backend through
//! the store, then sensors claim through the portal's HTTPS API (TLS, HTTP, auth, JSON)
//! on PostgreSQL. Prints `claims_per_s_sqlite=`, `claims_per_s_postgres=`,
//! `claims_per_s_http=` and `duplicates=` (must be 0). PostgreSQL comes from
//! OUTPOST_TEST_PG_URL (scripts/bench starts a server with its durable defaults).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use outpost_portal::store::{SensorAuth, Store};
use outpost_portal::{Portal, Settings};
use outpost_tunnel::PrivateKey;
use outpost_wire::admin::{CreateToken, TokenCreated};
use outpost_wire::sensor::{
    Capability, ClaimRequest, Job, JobSpec, RegisterRequest, RegisterResponse, ScanSpec,
};

const CLAIMERS: usize = 200;
const JOBS: usize = 20_000;
/// Sensors claiming over HTTPS at once, each on its own kept-alive TLS connection. The
/// clients run in this process, on the same two cores as the portal.
const HTTP_SENSORS: usize = 64;
const HTTP_JOBS: usize = 10_000;
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn scan_spec() -> JobSpec {
    JobSpec::Scan(ScanSpec {
        deadline_s: 60,
        ..ScanSpec::new(vec!["10.0.0.1".into()], "T:80")
    })
}

fn https(ca_pem: &[u8]) -> Result<ureq::Agent> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let cert = Certificate::from_pem(ca_pem).context("portal CA")?;
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![cert])))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        // Per phase, not `timeout_global`: with a global (or resolve) timeout, ureq resolves
        // every request's host on a thread of its own (even an IP literal, even on a
        // kept-alive connection), one thread started and ended per claim on the two
        // cores the portal is measured on.
        .timeout_connect(Some(TIMEOUT))
        .timeout_send_request(Some(TIMEOUT))
        .timeout_send_body(Some(TIMEOUT))
        .timeout_recv_response(Some(TIMEOUT))
        .timeout_recv_body(Some(TIMEOUT))
        .build()
        .new_agent())
}

/// Claims per second through the portal's HTTPS API, and duplicates (must be 0).
async fn run_http(database: &str) -> Result<(f64, usize)> {
    let dir = tempfile::tempdir()?;
    let mut s = Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse()?);
    s.database = Some(database.to_owned());
    let portal = Portal::start(s).await?;
    let admin = std::fs::read_to_string(dir.path().join("admin.token"))?
        .trim()
        .to_owned();
    let ca = std::fs::read(dir.path().join("ca.pem"))?;
    let url = portal.url.clone();
    let store = portal.state.store.clone();
    let now = outpost_wire::unix_now();
    let spec = scan_spec();
    for _ in 0..HTTP_JOBS {
        store.create_job("bench", &spec, now).await?;
    }
    // Enroll the sensors (not timed), then every one claims until the queue is empty.
    let (secs, ids) = tokio::task::spawn_blocking(move || -> Result<(f64, Vec<i64>)> {
        let agent = https(&ca)?;
        let created: TokenCreated = agent
            .post(&format!("{url}/api/admin/tokens"))
            .header("authorization", &format!("Bearer {admin}"))
            .send_json(CreateToken {
                site: "bench".into(),
                uses: HTTP_SENSORS as u32,
                ttl_s: 600,
            })?
            .body_mut()
            .read_json()?;
        let mut keys = Vec::new();
        for i in 0..HTTP_SENSORS {
            let req = RegisterRequest {
                name: format!("bench-{i}"),
                site: "bench".into(),
                hostname: format!("bench-{i}"),
                os: "bench".into(),
                board: "bench".into(),
                hardware_serial: i.to_string(),
                board_serial: None,
                agent_version: "0.1.0".into(),
                capabilities: vec![Capability::Scan],
                wg_public_key: PrivateKey::generate().public_key().to_base64(),
            };
            let mut resp = agent
                .post(&format!("{url}/api/sensor/register"))
                .header("authorization", &format!("Bearer {}", created.token))
                .send_json(&req)?;
            anyhow::ensure!(resp.status() == 201, "registration: {}", resp.status());
            let reg: RegisterResponse = resp.body_mut().read_json()?;
            keys.push(reg.api_key.expose().to_owned());
        }
        let start = Instant::now();
        let workers: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let (url, agent) = (url.clone(), https(&ca));
                std::thread::spawn(move || -> Result<Vec<i64>> {
                    let agent = agent?;
                    let body = ClaimRequest {
                        capabilities: vec![Capability::Scan],
                    };
                    let mut got = Vec::new();
                    loop {
                        let mut resp = agent
                            .post(&format!("{url}/api/sensor/claim"))
                            .header("authorization", &format!("Bearer {key}"))
                            .send_json(&body)?;
                        match resp.status().as_u16() {
                            200 => got.push(resp.body_mut().read_json::<Job>()?.id),
                            204 => return Ok(got),
                            s => anyhow::bail!("claim answered {s}"),
                        }
                    }
                })
            })
            .collect();
        let mut ids = Vec::new();
        for w in workers {
            ids.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a claimer panicked"))??,
            );
        }
        Ok((start.elapsed().as_secs_f64(), ids))
    })
    .await??;
    portal.stop().await;
    let unique: HashSet<i64> = ids.iter().copied().collect();
    let duplicates = (ids.len() - unique.len()) + HTTP_JOBS.saturating_sub(unique.len());
    Ok((HTTP_JOBS as f64 / secs, duplicates))
}

async fn run(url: &str) -> Result<(f64, usize)> {
    let store = Arc::new(Store::open(url).await?);
    let now = outpost_wire::unix_now();
    let spec = scan_spec();
    for _ in 0..JOBS {
        store.create_job("bench", &spec, now).await?;
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLAIMERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let me = SensorAuth {
                id: format!("sn_{i}"),
                name: format!("b{i}"),
                site: "bench".into(),
                wg_public_key: String::new(),
            };
            let mut got = Vec::new();
            while let Some(j) = store.claim(&me, &[Capability::Scan], now, 600).await? {
                got.push(j.id);
            }
            anyhow::Ok(got)
        }));
    }
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for t in tasks {
        for id in t.await?? {
            if !seen.insert(id) {
                duplicates += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    duplicates += JOBS.saturating_sub(seen.len());
    Ok((JOBS as f64 / secs, duplicates))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (sqlite, d1) = run(&dir.path().join("bench.sqlite").display().to_string()).await?;
    let admin = std::env::var("OUTPOST_TEST_PG_URL").context("OUTPOST_TEST_PG_URL not set")?;
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let name = format!("outpost_bench_{}", std::process::id());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = admin.rsplit_once('/').context("URL has no database")?.0;
    let (pg, d2) = run(&format!("{base}/{name}")).await?;
    client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    let http_db = format!("{name}_http");
    client
        .batch_execute(&format!("CREATE DATABASE {http_db}"))
        .await?;
    let (http, d3) = run_http(&format!("{base}/{http_db}")).await?;
    client
        .batch_execute(&format!("DROP DATABASE {http_db} WITH (FORCE)"))
        .await?;
    println!("claims_per_s_postgres={pg:.0}");
    println!("claims_per_s_sqlite={sqlite:.0}");
    println!("claims_per_s_http={http:.0}");
    println!("duplicates={}", d1 + d2 + d3);
    Ok(())
}
