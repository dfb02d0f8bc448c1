//! `scripts/bench claims`: 200 concurrent claimers drain a queue on each backend.
//! Prints `claims_per_s_sqlite=`, `claims_per_s_postgres=` and `duplicates=` (must be 0).
//! PostgreSQL comes from OUTPOST_TEST_PG_URL (scripts/bench starts a server).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use outpost_portal::store::{SensorAuth, Store};
use outpost_wire::sensor::{Capability, JobSpec, ScanSpec};

const CLAIMERS: usize = 200;
const JOBS: usize = 20_000;

async fn run(url: &str) -> Result<(f64, usize)> {
    let store = Arc::new(Store::open(url).await?);
    let now = outpost_wire::unix_now();
    let spec = JobSpec::Scan(ScanSpec {
        targets: vec!["10.0.0.1".into()],
        ports: "T:80".into(),
        exclude_hosts: vec![],
        families: vec![],
        oids: vec![],
        alive_test: Default::default(),
        credentials: vec![],
        deadline_s: 60,
    });
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
    println!("claims_per_s_postgres={pg:.0}");
    println!("claims_per_s_sqlite={sqlite:.0}");
    println!("duplicates={}", d1 + d2);
    Ok(())
}
