//! Recovery paths, on both backends: a registration whose answer was lost, registrations
//! racing on one token, a key registered twice, a gateway that refuses the peer, a
//! database an older portal left with duplicate keys and damaged rows; and running jobs
//! a sensor lost (restarted without them, or silent past its lease), and the partial
//! report such a sensor sends back once it is up again.

mod common;

use std::sync::Arc;

use common::{dump, fresh_database, start_portal, Api, Backend, TestPortal};
use outpost_portal::settings::TunnelSettings;
use outpost_portal::store::{Heartbeat, JobRefusal, LossRules, SensorAuth, Store};
use outpost_portal::{Portal, Settings};
use outpost_tunnel::{GatewayPeer, PrivateKey, PublicKey};
use outpost_wire::admin::{CreateToken, JobState, TokenCreated};
use outpost_wire::sensor::{
    Capability, HeartbeatRequest, JobSpec, JobStatusUpdate, RegisterRequest, RegisterResponse,
    ReportOutcome, ReportUpload,
};
use outpost_wire::{ErrorBody, ErrorCode};

fn with_gateway(s: &mut Settings) {
    let mut t = TunnelSettings::new("127.0.0.1:0".parse().unwrap(), String::new());
    // The API is also served outside the tunnel, so these tests can use it directly.
    t.require = false;
    s.tunnel = Some(t);
}

fn token(api: &Api, tp: &TestPortal, uses: u32) -> String {
    let r = api.post(
        "/api/admin/tokens",
        &tp.admin_token,
        &CreateToken {
            site: "berlin".into(),
            uses,
            ttl_s: 3600,
        },
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json::<TokenCreated>().token
}

fn request(key: &PublicKey) -> RegisterRequest {
    RegisterRequest {
        name: "branch".into(),
        site: "berlin".into(),
        hostname: "h".into(),
        os: "test".into(),
        board: "test".into(),
        hardware_serial: "0".into(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: vec![Capability::Scan],
        wg_public_key: key.to_base64(),
    }
}

fn register(api: &Api, token: &str, key: &PublicKey) -> common::Resp {
    api.post("/api/sensor/register", token, &request(key))
}

fn heartbeat_req(jobs: Option<Vec<i64>>) -> HeartbeatRequest {
    common::idle_heartbeat(jobs)
}

fn sensor_count(dump: &str) -> usize {
    dump.lines().filter(|l| l.starts_with("sensors:")).count()
}

/// Runs blocking HTTP calls off the runtime's workers (the portal runs on them).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn lost_registration_answer(backend: Backend) {
    let tp = Arc::new(start_portal(backend, with_gateway).await);
    let t = tp.clone();
    blocking(move || {
        let api = Api::new(&t);
        let tok = token(&api, &t, 2);
        let key = PrivateKey::generate().public_key();
        let first = register(&api, &tok, &key);
        assert_eq!(first.status, 201, "{}", first.text());
        // The answer is lost on the way; the device retries with the same token and key.
        let retry = register(&api, &tok, &key);
        assert_eq!(retry.status, 201, "{}", retry.text());
        let (a, b): (RegisterResponse, RegisterResponse) = (first.json(), retry.json());
        assert_eq!(a, b, "the retry gets the same sensor, API key and tunnel");
        assert!(b.tunnel.is_some());
        // The key from the retry works.
        let r = api.post(
            "/api/sensor/heartbeat",
            b.api_key.expose(),
            &heartbeat_req(None),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // The retry spent no use: the second use still enrolls another device ...
        let other = register(&api, &tok, &PrivateKey::generate().public_key());
        assert_eq!(other.status, 201, "{}", other.text());
        // ... and then the token is used up.
        let third = register(&api, &tok, &PrivateKey::generate().public_key());
        assert_eq!(third.status, 403, "{}", third.text());
        assert_eq!(third.error().error, ErrorCode::TokenUsedUp);
    })
    .await;
    assert_eq!(sensor_count(&dump(&tp.database).await), 2);
}

async fn concurrent_registrations(backend: Backend) {
    let tp = Arc::new(start_portal(backend, with_gateway).await);
    let t = tp.clone();
    let (same, distinct) = blocking(move || {
        let api = Api::new(&t);
        let one_use = token(&api, &t, 1);
        let another = token(&api, &t, 1);
        let key = PrivateKey::generate().public_key();
        let race = |tok: String, keys: Vec<PublicKey>| {
            let threads: Vec<_> = keys
                .into_iter()
                .map(|k| {
                    let (api, tok) = (Api::new(&t), tok.clone());
                    std::thread::spawn(move || {
                        let r = register(&api, &tok, &k);
                        (r.status, r.text())
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        };
        // One device retrying in parallel: one sensor, every answer the same.
        let same = race(one_use, vec![key; 8]);
        // Eight devices on one one-use token: exactly one gets in.
        let keys = (0..8)
            .map(|_| PrivateKey::generate().public_key())
            .collect();
        let distinct = race(another, keys);
        (same, distinct)
    })
    .await;
    assert!(same.iter().all(|(s, _)| *s == 201), "{same:?}");
    let answers: Vec<RegisterResponse> = same
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    let ok = distinct.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(ok, 1, "{distinct:?}");
    for (s, body) in distinct.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*s, 403, "{body}");
        let e: ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(e.error, ErrorCode::TokenUsedUp);
    }
    assert_eq!(sensor_count(&dump(&tp.database).await), 2);
}

async fn duplicate_key(backend: Backend) {
    let tp = Arc::new(start_portal(backend, with_gateway).await);
    let t = tp.clone();
    let (before_tok, key) = blocking(move || {
        let api = Api::new(&t);
        let (t1, t2) = (token(&api, &t, 1), token(&api, &t, 1));
        let key = PrivateKey::generate().public_key();
        assert_eq!(register(&api, &t1, &key).status, 201);
        (t2, key)
    })
    .await;
    let before = dump(&tp.database).await;
    let t = tp.clone();
    let r = blocking(move || register(&Api::new(&t), &before_tok, &key)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error().error, ErrorCode::Conflict);
    assert!(
        r.error().message.contains("already registered"),
        "{}",
        r.text()
    );
    assert_eq!(
        dump(&tp.database).await,
        before,
        "the refused registration changed nothing (the second token is unused)"
    );
}

async fn failing_peer_add(backend: Backend) {
    let tp = start_portal(backend, with_gateway).await;
    let gw = tp.portal.state.gateway.clone().expect("a gateway");
    if backend == Backend::Postgres {
        // The database follower's first re-read would drop the stray peer below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while tp
            .portal
            .state
            .peer_syncs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the peer sync never ran"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // A stray peer holds the address the next sensor would get, so adding its peer fails.
    let squatter = PrivateKey::generate().public_key();
    gw.add_peer(GatewayPeer {
        public_key: squatter,
        allowed_ip: "100.96.0.2".parse().unwrap(),
        preshared_key: None,
    })
    .unwrap();
    let tp = Arc::new(tp);
    let t = tp.clone();
    let (tok, key) = blocking(move || {
        let api = Api::new(&t);
        (token(&api, &t, 1), PrivateKey::generate().public_key())
    })
    .await;
    let before = dump(&tp.database).await;
    let (t, tk) = (tp.clone(), tok.clone());
    let r = blocking(move || register(&Api::new(&t), &tk, &key)).await;
    // 5xx: the agent retries with backoff.
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.error().error, ErrorCode::Internal);
    assert_eq!(
        dump(&tp.database).await,
        before,
        "no sensor row, the token not spent"
    );
    assert!(gw.peer_status(&key).is_none(), "no peer left behind");

    // Once the gateway takes peers again, the same one-use token enrolls the device.
    gw.remove_peer(&squatter);
    let t = tp.clone();
    let reg: RegisterResponse = blocking(move || {
        let r = register(&Api::new(&t), &tok, &key);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    })
    .await;
    assert_eq!(reg.tunnel.unwrap().sensor_address, "100.96.0.2");
    assert!(gw.peer_status(&key).is_some());

    // And the portal starts again on this database with the sensor's peer loaded.
    let tp = Arc::into_inner(tp).expect("no other holder");
    let (dir, database) = (tp.dir, tp.database);
    tp.portal.stop().await;
    let mut s = Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    s.database = Some(database);
    with_gateway(&mut s);
    let again = Portal::start(s).await.expect("the portal restarts");
    let gw = again.state.gateway.clone().unwrap();
    assert!(gw.peer_status(&key).is_some());
    again.stop().await;
}

/// Runs SQL on either backend, as an older portal or a damaged disk could have left it.
async fn exec(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
    } else {
        let conn = rusqlite::Connection::open(url).unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

async fn restart_over_duplicates_and_bad_rows(backend: Backend) {
    let tp = Arc::new(start_portal(backend, with_gateway).await);
    let t = tp.clone();
    let (a, key_a, key_b) = blocking(move || {
        let api = Api::new(&t);
        let tok = token(&api, &t, 2);
        let (ka, kb) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let a: RegisterResponse = register(&api, &tok, &ka).json();
        assert_eq!(register(&api, &tok, &kb).status, 201);
        (a, ka, kb)
    })
    .await;
    let tp = Arc::into_inner(tp).expect("no other holder");
    let (dir, database) = (tp.dir, tp.database);
    tp.portal.stop().await;

    // The database as an older portal (schema 5) left it: no unique key, one key registered twice
    // (the older row first), a key that is not base64 and an address that is not one.
    let older = format!(
        "DROP TABLE report_chunks;
         DROP TABLE portal_secrets;
         DROP TABLE feed_channels;
         ALTER TABLE sensors DROP COLUMN feed_release;
         ALTER TABLE sensors DROP COLUMN feed_off_since;
         DROP INDEX sensors_wg_public_key;
         DROP INDEX sensors_wg_pending_key;
         DROP INDEX jobs_claimable;
         ALTER TABLE sensors DROP COLUMN wg_pending_key;
         ALTER TABLE jobs DROP COLUMN lost_by;
         DROP TABLE feed_releases;
         ALTER TABLE sensors DROP COLUMN board_serial;
         DELETE FROM schema_version WHERE version >= 6;
         INSERT INTO sensors (id, name, site, hostname, os, board, hardware_serial, agent_version,
           capabilities, wg_public_key, api_key_hash, registered_at, tunnel_address)
         VALUES ('sn_older', 'old', 'berlin', '', '', '', '', '', '[]', '{ka}', 'h1', 1, '100.96.0.9'),
                ('sn_badkey', 'bad', 'berlin', '', '', '', '', '', '[]', 'not a key', 'h2', 2, '100.96.0.10'),
                ('sn_badaddr', 'bad', 'berlin', '', '', '', '', '', '[]', '{kc}', 'h3', 3, 'nowhere');",
        ka = key_a.to_base64(),
        kc = PrivateKey::generate().public_key().to_base64(),
    );
    exec(&database, &older).await;

    let mut s = Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    s.database = Some(database.clone());
    with_gateway(&mut s);
    let portal = Portal::start(s)
        .await
        .expect("the portal starts over bad rows");
    let gw = portal.state.gateway.clone().unwrap();
    let sensors = portal.state.store.sensors().await.unwrap();
    let ids: Vec<&str> = sensors.iter().map(|s| s.info.id.as_str()).collect();
    assert!(
        !ids.contains(&"sn_older"),
        "the older duplicate is gone: {ids:?}"
    );
    assert!(
        ids.contains(&a.sensor_id.as_str()),
        "the newest is kept: {ids:?}"
    );
    assert_eq!(
        gw.peer_status(&key_a)
            .map(|p| p.identity.tunnel_addr.to_string()),
        Some("100.96.0.2".to_owned()),
        "the kept sensor has its own tunnel"
    );
    assert!(
        gw.peer_status(&key_b).is_some(),
        "other sensors keep theirs"
    );
    // The key is unique from now on, in the database itself.
    let dup = format!(
        "INSERT INTO sensors (id, name, site, hostname, os, board, hardware_serial, agent_version,
           capabilities, wg_public_key, api_key_hash, registered_at)
         VALUES ('sn_dup', 'd', 'berlin', '', '', '', '', '', '[]', '{}', 'h4', 5)",
        key_a.to_base64()
    );
    let refused = if database.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(&dup).await.is_err()
    } else {
        rusqlite::Connection::open(&database)
            .unwrap()
            .execute_batch(&dup)
            .is_err()
    };
    assert!(refused, "a second row with the same key is refused");
    portal.stop().await;
}

// ---- jobs a sensor lost ----

fn scan() -> JobSpec {
    common::scan_spec("T:22")
}

fn me() -> SensorAuth {
    SensorAuth {
        id: "sn_one".into(),
        name: "one".into(),
        site: "berlin".into(),
        wg_public_key: String::new(),
    }
}

const LEASE: i64 = 600;
const GRACE: i64 = 60;

async fn beat(store: &Store, jobs: Option<Vec<i64>>, now: i64) -> Vec<(i64, JobState)> {
    let req = heartbeat_req(jobs);
    let out = store
        .heartbeat(&Heartbeat {
            sensor: &me().id,
            req: &req,
            now,
            lease_s: LEASE,
            grace_s: GRACE,
            rules: LossRules { max_attempts: 3 },
            feed_wanted: None,
        })
        .await
        .unwrap();
    out.lost.into_iter().map(|j| (j.id, j.state)).collect()
}

async fn claim(store: &Store, now: i64) -> Option<outpost_wire::sensor::Job> {
    store
        .claim(&me(), &[Capability::Scan], now, LEASE)
        .await
        .unwrap()
}

async fn open_store(backend: Backend) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    (dir, Store::open(&url).await.unwrap())
}

async fn restarted_without_the_job(backend: Backend) {
    let (_dir, store) = open_store(backend).await;
    let t0 = outpost_wire::unix_now();
    let id = store.create_job("berlin", &scan(), t0).await.unwrap();
    assert_eq!(claim(&store, t0).await.map(|j| j.id), Some(id));

    // A heartbeat that may have crossed the claim's answer takes nothing.
    assert!(beat(&store, Some(vec![]), t0 + 1).await.is_empty());
    // Listed: the lease is extended, from this heartbeat on.
    assert!(beat(&store, Some(vec![id]), t0 + 100).await.is_empty());
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.lease_expires_at),
        (JobState::Running, Some(t0 + 100 + LEASE))
    );

    // The agent restarted and no longer has it: back to the queue, once.
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 200).await,
        vec![(id, JobState::Queued)]
    );
    assert!(beat(&store, Some(vec![]), t0 + 201).await.is_empty());
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempts, j.sensor_id),
        (JobState::Queued, 1, None)
    );

    // Lost twice more, it fails with a reason naming the limit instead of going round.
    let again = claim(&store, t0 + 300).await.unwrap();
    assert_eq!((again.id, again.attempt), (id, 1));
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 400).await,
        vec![(id, JobState::Queued)]
    );
    claim(&store, t0 + 500).await.unwrap();
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 600).await,
        vec![(id, JobState::Failed)]
    );
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Failed, 3));
    let reason = j.failure_reason.unwrap_or_default();
    assert!(reason.contains("restarted without it"), "{reason}");
    assert!(reason.contains("3 attempts"), "{reason}");
    assert!(
        claim(&store, t0 + 700).await.is_none(),
        "a failed job is not handed out"
    );
    assert!(store
        .requeue_expired(t0 + 10_000, LossRules::default())
        .await
        .unwrap()
        .is_empty());
}

async fn older_agent_keeps_every_lease(backend: Backend) {
    let (_dir, store) = open_store(backend).await;
    let t0 = outpost_wire::unix_now();
    let id = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0).await.unwrap();
    // No list (an older agent, or one still taking stock): nothing is taken away.
    assert!(beat(&store, None, t0 + 1000).await.is_empty());
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.lease_expires_at),
        (JobState::Running, Some(t0 + 1000 + LEASE))
    );
}

async fn cancelled_job_stays_cancelled(backend: Backend) {
    let (_dir, store) = open_store(backend).await;
    let t0 = outpost_wire::unix_now();
    // Restart path: the operator cancelled, then the agent restarted without the job.
    let a = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0).await.unwrap();
    assert_eq!(
        store.cancel_job(a, t0 + 1).await.unwrap(),
        Some(JobState::Running)
    );
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 100).await,
        vec![(a, JobState::Cancelled)]
    );
    // Lease path: cancelled, then the sensor went silent.
    let b = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0 + 101).await.unwrap();
    store.cancel_job(b, t0 + 102).await.unwrap();
    let lost = store
        .requeue_expired(t0 + 101 + LEASE + 1, LossRules::default())
        .await
        .unwrap();
    assert_eq!(
        lost.iter().map(|j| (j.id, j.state)).collect::<Vec<_>>(),
        vec![(b, JobState::Cancelled)]
    );
    for id in [a, b] {
        let j = store.job(id).await.unwrap().unwrap();
        assert_eq!((j.state, j.attempts), (JobState::Cancelled, 0), "job {id}");
    }
    assert!(claim(&store, t0 + 2000).await.is_none(), "never re-queued");
}

async fn lease_expiry_respects_the_cap(backend: Backend) {
    let (_dir, store) = open_store(backend).await;
    let t0 = outpost_wire::unix_now();
    let id = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0).await.unwrap();
    let lost = store
        .requeue_expired(t0 + LEASE + 1, LossRules { max_attempts: 1 })
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    let reason = j.failure_reason.unwrap_or_default();
    assert!(
        reason.contains("lease expired") && reason.contains("the limit is 1"),
        "{reason}"
    );
}

fn partial(request_id: &str) -> ReportUpload {
    ReportUpload {
        request_id: request_id.into(),
        outcome: ReportOutcome::Failed,
        partial: true,
        content_type: "application/xml".into(),
        content: r#"<get_scans_response status="200" status_text="OK"><scan id="x" status="interrupted"><results/></scan></get_scans_response>"#.into(),
        summary: Default::default(),
    }
}

async fn partial_report_after_loss(backend: Backend) {
    let (_dir, store) = open_store(backend).await;
    let t0 = outpost_wire::unix_now();
    let mine = me().id;
    // The sensor crashed mid-scan and stayed down past its lease: the job went back to
    // the queue. Back up, it tells what happened and sends what it had collected.
    let id = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0).await.unwrap();
    assert_eq!(
        store
            .requeue_expired(t0 + LEASE + 1, LossRules::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let failed = JobStatusUpdate::Failed {
        reason: "interrupted: outpostd stopped during the scan".into(),
    };
    assert_eq!(
        store
            .job_status(&mine, id, &failed, t0 + LEASE + 2, LEASE)
            .await
            .unwrap(),
        Ok(false)
    );
    let j = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.sensor_id.as_deref()),
        (JobState::Failed, Some(mine.as_str()))
    );
    let ack = store
        .store_report(&mine, id, &partial("recovered-1"), t0 + LEASE + 3)
        .await
        .unwrap()
        .unwrap();
    assert!(ack.created);
    // A repeat of the same upload gets the same answer; any other report is refused.
    let again = store
        .store_report(&mine, id, &partial("recovered-1"), t0 + LEASE + 4)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.report_id, again.created), (ack.report_id, false));
    assert_eq!(
        store
            .store_report(&mine, id, &partial("another"), t0 + LEASE + 5)
            .await
            .unwrap(),
        Err(JobRefusal::AlreadyReported)
    );
    let r = store.report(id).await.unwrap().unwrap();
    assert!(r.partial);
    assert_eq!(r.outcome, ReportOutcome::Failed);
    // Finished as failed with the partial report: not handed out again.
    assert!(claim(&store, t0 + LEASE + 6).await.is_none());

    // Without the failed status first (it was lost), the partial report alone ends it.
    let id2 = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0 + 10).await.unwrap();
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 200).await,
        vec![(id2, JobState::Queued)]
    );
    // A complete report is no recovery: refused for a job no longer leased.
    let mut complete = partial("complete");
    complete.partial = false;
    complete.outcome = ReportOutcome::Completed;
    assert_eq!(
        store
            .store_report(&mine, id2, &complete, t0 + 201)
            .await
            .unwrap(),
        Err(JobRefusal::LeaseLost(JobState::Queued))
    );
    assert!(
        store
            .store_report(&mine, id2, &partial("recovered-2"), t0 + 202)
            .await
            .unwrap()
            .unwrap()
            .created
    );
    let j = store.job(id2).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert!(j
        .failure_reason
        .unwrap_or_default()
        .contains("partial report"));

    // Claimed again by another sensor before the partial arrived: the re-run has it.
    let id3 = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0 + 300).await.unwrap();
    assert_eq!(
        beat(&store, Some(vec![]), t0 + 500).await,
        vec![(id3, JobState::Queued)]
    );
    let other = SensorAuth {
        id: "sn_two".into(),
        ..me()
    };
    assert_eq!(
        store
            .claim(&other, &[Capability::Scan], t0 + 501, LEASE)
            .await
            .unwrap()
            .map(|j| j.id),
        Some(id3)
    );
    assert_eq!(
        store
            .store_report(&mine, id3, &partial("recovered-3"), t0 + 502)
            .await
            .unwrap(),
        Err(JobRefusal::NotYours)
    );
    assert_eq!(
        store
            .job_status(&mine, id3, &failed, t0 + 503, LEASE)
            .await
            .unwrap(),
        Err(JobRefusal::NotYours)
    );
    let j = store.job(id3).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.sensor_id.as_deref()),
        (JobState::Running, Some("sn_two"))
    );
}

/// A report stored by a portal from before the chunk table (schema 12: its text in
/// `reports.content`) reads the same after the migration, as one chunk.
async fn report_from_before_chunks(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let store = Store::open(&url).await.unwrap();
    let t0 = outpost_wire::unix_now();
    let id = store.create_job("berlin", &scan(), t0).await.unwrap();
    claim(&store, t0).await.unwrap();
    let mut up = partial("before");
    up.content = "<results>é ✓</results>\n".repeat(1000);
    let ack = store
        .store_report(&me().id, id, &up, t0 + 1)
        .await
        .unwrap()
        .unwrap();
    drop(store);
    exec(
        &url,
        "UPDATE reports SET content = (SELECT data FROM report_chunks k \
           WHERE k.report_id = reports.id AND k.seq = 0);
         DROP TABLE report_chunks;
         ALTER TABLE portal_secrets DROP COLUMN storage_id;
         DELETE FROM schema_version WHERE version >= 13;",
    )
    .await;

    let store = Store::open(&url).await.unwrap();
    let (head, chunks) = store.report_head(id).await.unwrap().unwrap();
    assert_eq!(
        (head.id, head.content.as_str(), chunks),
        (ack.report_id, "", 1)
    );
    let r = store.report(id).await.unwrap().unwrap();
    assert!(r.content == up.content, "the text survives the migration");
    assert_eq!((r.outcome, r.partial), (ReportOutcome::Failed, true));
}

macro_rules! both {
    ($name:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            $name(Backend::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $pg() {
            $name(Backend::Postgres).await
        }
    };
}

both!(
    lost_registration_answer,
    lost_registration_answer_gets_the_same_sensor_sqlite,
    lost_registration_answer_gets_the_same_sensor_postgres
);
both!(
    concurrent_registrations,
    concurrent_registrations_make_one_sensor_sqlite,
    concurrent_registrations_make_one_sensor_postgres
);
both!(
    duplicate_key,
    a_key_enrolled_with_another_token_is_refused_sqlite,
    a_key_enrolled_with_another_token_is_refused_postgres
);
both!(
    failing_peer_add,
    a_failed_peer_add_leaves_nothing_behind_sqlite,
    a_failed_peer_add_leaves_nothing_behind_postgres
);
both!(
    restart_over_duplicates_and_bad_rows,
    portal_starts_over_duplicate_keys_and_bad_rows_sqlite,
    portal_starts_over_duplicate_keys_and_bad_rows_postgres
);
both!(
    restarted_without_the_job,
    a_job_the_sensor_no_longer_runs_is_requeued_then_failed_sqlite,
    a_job_the_sensor_no_longer_runs_is_requeued_then_failed_postgres
);
both!(
    older_agent_keeps_every_lease,
    a_heartbeat_without_a_job_list_keeps_every_lease_sqlite,
    a_heartbeat_without_a_job_list_keeps_every_lease_postgres
);
both!(
    cancelled_job_stays_cancelled,
    a_cancelled_job_stays_cancelled_when_lost_sqlite,
    a_cancelled_job_stays_cancelled_when_lost_postgres
);
both!(
    lease_expiry_respects_the_cap,
    lease_expiry_fails_a_job_at_the_attempt_cap_sqlite,
    lease_expiry_fails_a_job_at_the_attempt_cap_postgres
);
both!(
    partial_report_after_loss,
    a_partial_report_from_the_sensor_that_lost_the_job_finishes_it_once_sqlite,
    a_partial_report_from_the_sensor_that_lost_the_job_finishes_it_once_postgres
);
both!(
    report_from_before_chunks,
    a_report_from_before_chunks_reads_the_same_after_the_migration_sqlite,
    a_report_from_before_chunks_reads_the_same_after_the_migration_postgres
);
