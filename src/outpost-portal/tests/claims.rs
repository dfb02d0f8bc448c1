//! The claim race: many sensors claiming at once must never get the same job, on either
//! backend, and an expired lease puts a job back in the queue exactly once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{fresh_database, Backend};
use outpost_portal::store::{SensorAuth, Store};
use outpost_wire::admin::JobState;
use outpost_wire::sensor::{Capability, JobSpec, ScanSpec};

const CLAIMERS: usize = 32;
const JOBS: usize = 10_000;

fn spec(i: usize) -> JobSpec {
    let target = format!("10.77.{}.{}", i / 250, i % 250 + 1);
    JobSpec::Scan(ScanSpec {
        deadline_s: 60,
        ..ScanSpec::new(vec![target], "T:80")
    })
}

fn sensor(i: usize, site: &str) -> SensorAuth {
    SensorAuth {
        id: format!("sn_claimer{i}"),
        name: format!("claimer{i}"),
        site: site.into(),
        wg_public_key: String::new(),
    }
}

async fn claim_race(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let store = Store::open(&url).await.unwrap();
    let now = outpost_wire::unix_now();
    for i in 0..JOBS {
        store.create_job("berlin", &spec(i), now).await.unwrap();
    }
    // A job of another site must never reach these sensors.
    let foreign = store.create_job("paris", &spec(0), now).await.unwrap();

    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for c in 0..CLAIMERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let me = sensor(c, "berlin");
            let mut got = Vec::new();
            while let Some(job) = store
                .claim(&me, &[Capability::Scan], now, 600)
                .await
                .unwrap()
            {
                got.push(job.id);
            }
            (me.id, got)
        }));
    }
    let mut seen = HashSet::new();
    let mut owners = Vec::new();
    for t in tasks {
        let (who, got) = t.await.unwrap();
        for id in &got {
            assert!(
                seen.insert(*id),
                "job {id} was handed out twice ({backend:?})"
            );
        }
        owners.push((who, got));
    }
    assert_eq!(
        seen.len(),
        JOBS,
        "every job claimed exactly once ({backend:?})"
    );
    assert!(
        !seen.contains(&foreign),
        "a paris job reached a berlin sensor"
    );
    let busy = owners.iter().filter(|(_, g)| !g.is_empty()).count();
    assert!(
        busy > 1,
        "claims were spread over several claimers ({busy})"
    );

    // The database agrees: each job is running and leased to the sensor that got it.
    let jobs = store.jobs(JOBS as i64 + 10).await.unwrap();
    let by_id: std::collections::HashMap<i64, _> = jobs.iter().map(|j| (j.id, j)).collect();
    for (who, got) in &owners {
        for id in got {
            let j = by_id[id];
            assert_eq!(j.state, JobState::Running);
            assert_eq!(j.sensor_id.as_deref(), Some(who.as_str()));
        }
    }
    assert_eq!(by_id[&foreign].state, JobState::Queued);
}

async fn lease_expiry(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let store = Arc::new(Store::open(&url).await.unwrap());
    let now = outpost_wire::unix_now();
    let id = store.create_job("berlin", &spec(1), now).await.unwrap();
    let first = sensor(1, "berlin");
    let job = store
        .claim(&first, &[Capability::Scan], now, 10)
        .await
        .unwrap()
        .expect("job claimed");
    assert_eq!((job.id, job.attempt), (id, 0));

    // Before the lease ends nothing moves.
    assert!(store
        .requeue_expired(now + 5, Default::default())
        .await
        .unwrap()
        .is_empty());

    // Eight reapers race after the lease ended: exactly one re-queues it.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .requeue_expired(now + 11, Default::default())
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }));
    }
    let mut requeued = Vec::new();
    for t in tasks {
        requeued.extend(t.await.unwrap());
    }
    assert_eq!(requeued, vec![id], "re-queued exactly once ({backend:?})");
    let info = store.job(id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Queued);
    assert_eq!(info.attempts, 1);
    assert_eq!(info.sensor_id, None);

    // Another sensor gets it, marked as a second attempt; the first may no longer act on it.
    let second = sensor(2, "berlin");
    let again = store
        .claim(&second, &[Capability::Scan], now + 12, 600)
        .await
        .unwrap()
        .expect("re-claimed");
    assert_eq!((again.id, again.attempt), (id, 1));
    let upd = outpost_wire::sensor::JobStatusUpdate::Running {
        progress_percent: 5,
        message: String::new(),
    };
    let refused = store
        .job_status(&first.id, id, &upd, now + 12, 600)
        .await
        .unwrap();
    assert!(refused.is_err(), "the old lease holder was refused");
    assert!(store
        .requeue_expired(now + 13, Default::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_race_sqlite() {
    claim_race(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_race_postgres() {
    claim_race(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_expiry_requeues_once_sqlite() {
    lease_expiry(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_expiry_requeues_once_postgres() {
    lease_expiry(Backend::Postgres).await;
}

/// The claim must walk `jobs_claimable` (the queued jobs only), also when the statistics
/// say nearly every job is queued: written with `site = $4 ... ORDER BY id`, the planner
/// then took `jobs_pkey` and every claim read all the jobs claimed before it
/// (`CLAIM_SQL`'s comment). Both the custom plan and the generic one a prepared
/// statement may switch to are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_plan_walks_the_queue_index_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Postgres, dir.path()).await;
    let store = Store::open(&url).await.unwrap();
    let now = outpost_wire::unix_now();
    store.create_job("berlin", &spec(0), now).await.unwrap();
    drop(store);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // A batch just queued and analysed: 10,000 jobs, every one queued.
    client
        .batch_execute(
            "INSERT INTO jobs (site, kind, spec, state, created_at) \
             SELECT site, kind, spec, state, created_at FROM jobs, generate_series(1, 9999); \
             ANALYZE jobs;",
        )
        .await
        .unwrap();
    let plan = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    client
        .batch_execute(&format!(
            "PREPARE claim (text, bigint, bigint, text, text[]) AS {}",
            outpost_portal::store::CLAIM_SQL
        ))
        .await
        .unwrap();
    let explain = "EXPLAIN EXECUTE claim ('sn_x', 1, 2, 'berlin', '{scan}')";
    for mode in ["force_custom_plan", "force_generic_plan"] {
        client
            .batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .unwrap();
        let p = plan(client.simple_query(explain).await.unwrap());
        assert!(
            p.contains("using jobs_claimable"),
            "{mode}: the claim does not walk jobs_claimable:\n{p}"
        );
    }
}
