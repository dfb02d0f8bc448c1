//! The HTTP API over TLS against a running portal, on both backends: enrollment, the
//! sensor calls, and bad input — each refused with the right status and a readable
//! error, and the database left exactly as it was.

mod common;

use common::{dump, https, start_portal, Backend, TestPortal};
use outpost_wire::admin::{
    CreateJob, CreateToken, JobInfo, JobState, ReportInfo, SensorInfo, StoredLogEvent, TokenCreated,
};
use outpost_wire::log::{
    to_ndjson, EventKind, Level, LogEvent, Phase, PhaseOutcome, PhaseProgress,
};
use outpost_wire::sensor::{
    Activity, Capability, HeartbeatRequest, Job, JobSpec, JobStatusUpdate, Metrics,
    RegisterRequest, RegisterResponse, ReportOutcome, ReportSummary, ReportUpload,
};
use outpost_wire::{ErrorBody, ErrorCode};
use serde_json::Value;

struct Api {
    agent: ureq::Agent,
    base: String,
}

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn error(&self) -> ErrorBody {
        self.json()
    }
}

impl Api {
    fn new(tp: &TestPortal) -> Api {
        Api {
            agent: https(&tp.ca_pem),
            base: tp.portal.url.clone(),
        }
    }

    fn post_raw(&self, path: &str, bearer: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let mut req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {bearer}"))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send(&body[..]).expect("request sent");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(100 << 20)
            .read_to_string()
            .unwrap_or_default();
        Resp { status, body }
    }

    fn post<T: serde::Serialize>(&self, path: &str, bearer: &str, body: &T) -> Resp {
        self.post_raw(path, bearer, &[], serde_json::to_vec(body).unwrap())
    }

    fn get(&self, path: &str, bearer: &str) -> Resp {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {bearer}"))
            .call()
            .expect("request sent");
        let status = resp.status().as_u16();
        Resp {
            status,
            body: resp.into_body().read_to_string().unwrap_or_default(),
        }
    }
}

fn register_req(name: &str, site: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.into(),
        site: site.into(),
        hostname: format!("{name}.local"),
        os: "Outpost test".into(),
        board: "qemu-arm64".into(),
        hardware_serial: "0000".into(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: vec![Capability::Scan],
        // Every device has its own key; the portal registers a key once.
        wg_public_key: outpost_tunnel::PrivateKey::generate()
            .public_key()
            .to_base64(),
    }
}

fn scan_spec() -> JobSpec {
    common::scan_spec("T:22,80")
}

fn token(api: &Api, tp: &TestPortal, site: &str, uses: u32, ttl_s: u64) -> String {
    let r = api.post(
        "/api/admin/tokens",
        &tp.admin_token,
        &CreateToken {
            site: site.into(),
            uses,
            ttl_s,
        },
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json::<TokenCreated>().token
}

fn register(api: &Api, tok: &str, name: &str) -> RegisterResponse {
    let r = api.post("/api/sensor/register", tok, &register_req(name, "berlin"));
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn queue(api: &Api, tp: &TestPortal) -> i64 {
    let r = api.post(
        "/api/admin/jobs",
        &tp.admin_token,
        &CreateJob {
            site: "berlin".into(),
            spec: scan_spec(),
            sensor_id: None,
        },
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json::<JobInfo>().id
}

/// Every upload file (the body, the decoded text) is gone once its report is answered.
fn no_upload_files(tp: &TestPortal) {
    let left: Vec<_> = std::fs::read_dir(tp.dir.path().join("uploads"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "upload files left behind: {left:?}");
}

/// A sensor `a` at `berlin` that has claimed a scan job: the sensor and the job.
fn sensor_with_a_job(api: &Api, tp: &TestPortal) -> (RegisterResponse, i64) {
    let tok = token(api, tp, "berlin", 1, 3600);
    let a = register(api, &tok, "a");
    let job = queue(api, tp);
    let claimed = api.post(
        "/api/sensor/claim",
        a.api_key.expose(),
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    (a, job)
}

fn upload(request_id: &str) -> ReportUpload {
    ReportUpload {
        request_id: request_id.into(),
        outcome: ReportOutcome::Completed,
        partial: false,
        content_type: "application/xml".into(),
        content: "<results/>".into(),
        summary: ReportSummary::default(),
    }
}

/// Runs `f` and asserts it left every table untouched.
async fn unchanged<F: FnOnce()>(tp: &TestPortal, what: &str, f: F) {
    let before = dump(&tp.database).await;
    f();
    let after = dump(&tp.database).await;
    assert_eq!(before, after, "{what} changed the database");
}

async fn enrollment_and_tokens(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let good = token(&api, &tp, "berlin", 1, 3600);
    let expired = token(&api, &tp, "berlin", 5, 0);
    let paris = token(&api, &tp, "paris", 5, 3600);

    let cases = [
        ("otk_doesnotexist0000000000", 401, ErrorCode::TokenInvalid),
        (expired.as_str(), 403, ErrorCode::TokenExpired),
        (paris.as_str(), 403, ErrorCode::TokenSiteMismatch),
    ];
    for (tok, status, code) in cases {
        unchanged(&tp, "a refused enrollment", || {
            let r = api.post("/api/sensor/register", tok, &register_req("s1", "berlin"));
            assert_eq!(r.status, status, "{}", r.body);
            let e = r.error();
            assert_eq!(e.error, code);
            assert!(!e.message.is_empty());
        })
        .await;
    }

    let reg = register(&api, &good, "s1");
    assert!(reg.sensor_id.starts_with("sn_"));
    assert!(reg.api_key.expose().starts_with("osk_"));
    assert_eq!(reg.heartbeat_interval_s, 30);
    assert_eq!(reg.claim_interval_s, 5);

    unchanged(&tp, "an enrollment with a used-up token", || {
        let r = api.post("/api/sensor/register", &good, &register_req("s2", "berlin"));
        assert_eq!(r.status, 403);
        assert_eq!(r.error().error, ErrorCode::TokenUsedUp);
    })
    .await;

    // The stored key is a hash: the plain key appears nowhere in the database.
    assert!(!dump(&tp.database).await.contains(reg.api_key.expose()));
    assert!(!dump(&tp.database).await.contains(&good));
    tp.portal.stop().await;
}

async fn bad_input(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 2, 3600);
    let a = register(&api, &tok, "a");
    let b = register(&api, &tok, "b");
    let job = queue(&api, &tp);
    let claimed = api.post(
        "/api/sensor/claim",
        a.api_key.expose(),
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(claimed.status, 200, "{}", claimed.body);
    assert_eq!(claimed.json::<Job>().id, job);

    unchanged(&tp, "bad requests", || {
        // Malformed JSON names the problem.
        let r = api.post_raw("/api/sensor/heartbeat", a.api_key.expose(), &[], b"{\"activity\": ".to_vec());
        assert_eq!(r.status, 400);
        assert_eq!(r.error().error, ErrorCode::BadRequest);
        assert!(r.error().message.contains("not valid"), "{}", r.body);

        // A missing field is named.
        let r = api.post_raw("/api/sensor/heartbeat", a.api_key.expose(), &[], b"{\"activity\":\"idle\"}".to_vec());
        assert_eq!(r.status, 400);
        assert!(r.error().message.contains("uptime_s"), "{}", r.body);

        // Oversized bodies are refused with 413.
        let big = vec![b' '; outpost_wire::MAX_JSON_BODY + 1];
        let r = api.post_raw("/api/sensor/claim", a.api_key.expose(), &[], big);
        assert_eq!(r.status, 413, "{}", r.body);
        assert_eq!(r.error().error, ErrorCode::PayloadTooLarge);
        let big_log = vec![b'\n'; outpost_wire::MAX_LOG_BODY + 1];
        let r = api.post_raw("/api/sensor/log", a.api_key.expose(), &[], big_log);
        assert_eq!(r.status, 413);

        // Wrong API key, no key, and the admin API with a sensor key.
        let r = api.post("/api/sensor/claim", "osk_wrong", &serde_json::json!({"capabilities": ["scan"]}));
        assert_eq!((r.status, r.error().error), (401, ErrorCode::Unauthorized));
        let r = api.get("/api/admin/sensors", a.api_key.expose());
        assert_eq!(r.status, 401);

        // Another sensor's job: 403 for status and report.
        let upd = JobStatusUpdate::Running { progress_percent: 10, message: String::new() };
        let r = api.post(&format!("/api/sensor/jobs/{job}/status"), b.api_key.expose(), &upd);
        assert_eq!((r.status, r.error().error), (403, ErrorCode::Forbidden), "{}", r.body);
        let r = api.post(&format!("/api/sensor/jobs/{job}/report"), b.api_key.expose(), &upload("r1"));
        assert_eq!(r.status, 403);
        let r = api.post(&format!("/api/sensor/jobs/{}/report", job + 1000), a.api_key.expose(), &upload("r1"));
        assert_eq!(r.status, 404);
        let r = api.post("/api/sensor/jobs/notanumber/status", a.api_key.expose(), &upd);
        assert_eq!(r.status, 404);

        // A bad NDJSON line rejects the whole batch.
        let body = b"{\"seq\":1,\"ts_ms\":1,\"level\":\"info\",\"event\":\"message\",\"message\":\"ok\"}\nnot json\n";
        let r = api.post_raw("/api/sensor/log", a.api_key.expose(), &[], body.to_vec());
        assert_eq!(r.status, 400);
        assert!(r.error().message.contains("line 2"), "{}", r.body);

        // A future API version is refused by name.
        let r = api.post_raw("/api/sensor/claim", a.api_key.expose(), &[("outpost-api-version", "99")], b"{}".to_vec());
        assert_eq!((r.status, r.error().error), (400, ErrorCode::UnsupportedApiVersion));

        // Registration with a malformed WireGuard key.
        let tok2 = "otk_irrelevant_because_body_fails_first";
        let mut req = register_req("c", "berlin");
        req.wg_public_key = "not-base64".into();
        let r = api.post("/api/sensor/register", tok2, &req);
        assert_eq!(r.status, 400);
        assert!(r.error().message.contains("wg_public_key"));
    })
    .await;
    tp.portal.stop().await;
}

async fn job_lifecycle(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 1, 3600);
    let s = register(&api, &tok, "a");
    let key = s.api_key.expose();

    let none = api.post(
        "/api/sensor/claim",
        key,
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(none.status, 204);

    let job = queue(&api, &tp);
    let r = api.post(
        "/api/sensor/claim",
        key,
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(r.json::<Job>().id, job);

    let hb = HeartbeatRequest {
        activity: Activity::Scanning,
        uptime_s: 5,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: None,
    };
    let r = api.post("/api/sensor/heartbeat", key, &hb);
    assert_eq!(r.status, 200);
    assert!(r.json::<Value>()["cancel_jobs"]
        .as_array()
        .unwrap()
        .is_empty());
    let sensors: Value = api.get("/api/admin/sensors", &tp.admin_token).json();
    assert_eq!(sensors[0]["status"], "scanning");

    // Operator cancels: the heartbeat and the status answer both say so.
    let r = api.post(
        &format!("/api/admin/jobs/{job}/cancel"),
        &tp.admin_token,
        &serde_json::json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.post("/api/sensor/heartbeat", key, &hb);
    assert_eq!(r.json::<Value>()["cancel_jobs"], serde_json::json!([job]));
    let upd = JobStatusUpdate::Running {
        progress_percent: 50,
        message: String::new(),
    };
    let r = api.post(&format!("/api/sensor/jobs/{job}/status"), key, &upd);
    assert_eq!(r.json::<Value>()["cancel_requested"], true);
    let r = api.post(
        &format!("/api/sensor/jobs/{job}/status"),
        key,
        &JobStatusUpdate::Cancelled,
    );
    assert_eq!(r.status, 200);

    // The partial report arrives once, however often it is retried.
    let mut up = upload("req-1");
    up.outcome = ReportOutcome::Cancelled;
    up.partial = true;
    let path = format!("/api/sensor/jobs/{job}/report");
    let first = api.post_raw(
        &path,
        key,
        &[("idempotency-key", "req-1")],
        serde_json::to_vec(&up).unwrap(),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let again = api.post_raw(
        &path,
        key,
        &[("idempotency-key", "req-1")],
        serde_json::to_vec(&up).unwrap(),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.json::<Value>()["created"], false);
    assert_eq!(
        first.json::<Value>()["report_id"],
        again.json::<Value>()["report_id"]
    );
    let other = api.post(&path, key, &upload("req-2"));
    assert_eq!(
        (other.status, other.error().error),
        (409, ErrorCode::Conflict)
    );

    let info: JobInfo = api
        .get(&format!("/api/admin/jobs/{job}"), &tp.admin_token)
        .json();
    assert_eq!(info.state, JobState::Cancelled);
    let report: Value = api
        .get(&format!("/api/admin/jobs/{job}/report"), &tp.admin_token)
        .json();
    assert_eq!(report["partial"], true);
    assert_eq!(report["outcome"], "cancelled");
    tp.portal.stop().await;
}

/// The board serial a sensor sends at registration is kept and shown to operators;
/// a sensor without one shows none, and a serial that is not short printable text is
/// refused before anything is stored.
async fn board_serial(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 2, 3600);

    let mut bad = register_req("pi", "berlin");
    for serial in ["10000000\nabcdef01".to_owned(), "1".repeat(65)] {
        bad.board_serial = Some(serial);
        unchanged(&tp, "a registration with a bad board serial", || {
            let r = api.post("/api/sensor/register", &tok, &bad);
            assert_eq!(r.status, 400, "{}", r.body);
            assert!(r.error().message.contains("board_serial"), "{}", r.body);
        })
        .await;
    }

    let mut pi = register_req("pi", "berlin");
    pi.board_serial = Some("10000000abcdef01".into());
    let r = api.post("/api/sensor/register", &tok, &pi);
    assert_eq!(r.status, 201, "{}", r.body);
    let pi_id = r.json::<RegisterResponse>().sensor_id;
    let vm_id = register(&api, &tok, "vm").sensor_id;

    let r = api.get("/api/admin/sensors", &tp.admin_token);
    assert_eq!(r.status, 200, "{}", r.body);
    let sensors: Vec<SensorInfo> = r.json();
    let serial = |id: &str| {
        sensors
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("{id} listed: {}", r.body))
            .board_serial
            .clone()
    };
    assert_eq!(serial(&pi_id).as_deref(), Some("10000000abcdef01"));
    assert_eq!(serial(&vm_id), None);
    // Absent, not null, for a sensor without one (older clients parse both ways).
    let raw: Value = r.json();
    let vm = raw
        .as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == vm_id.as_str()))
        .unwrap();
    assert!(vm.get("board_serial").is_none(), "{vm}");

    let r = api.get(&format!("/api/admin/sensors/{pi_id}"), &tp.admin_token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json::<SensorInfo>().board_serial.as_deref(),
        Some("10000000abcdef01")
    );
    tp.portal.stop().await;
}

/// Scan credentials: stored sealed (no trace of the password or key in any table),
/// shown to no admin after entry, handed in clear only to the sensor that claims the job.
async fn credentials_at_rest(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 1, 3600);
    let s = register(&api, &tok, "a");
    // Markers long enough that no random byte string (sealed data, keys, hashes in the
    // dump) contains them by chance: a three-letter one did, now and then.
    let (password, private_key) = (
        "Branch-ssh-pw-71c2",
        "-----BEGIN OPENSSH PRIVATE KEY-----Outpost-test-key-material-5f0c",
    );
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "kind": "scan", "targets": ["10.9.0.2"], "ports": "T:22", "families": ["General"],
        "credentials": [
            {"service": "ssh", "username": "audit", "password": password},
            {"service": "ssh", "username": "deploy", "private_key": private_key}
        ]
    }))
    .unwrap();
    let r = api.post(
        "/api/admin/jobs",
        &tp.admin_token,
        &CreateJob {
            site: "berlin".into(),
            spec,
            sensor_id: None,
        },
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(
        !r.body.contains(password) && !r.body.contains("Outpost-test-key-material"),
        "{}",
        r.body
    );
    let job = r.json::<JobInfo>().id;

    // Everything the database holds: PostgreSQL's rows as text, SQLite's file bytes
    // (the database and its write-ahead log).
    let stored = match backend {
        Backend::Postgres => dump(&tp.database).await,
        Backend::Sqlite => {
            let mut bytes = std::fs::read(&tp.database).unwrap();
            bytes.extend(std::fs::read(format!("{}-wal", tp.database)).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    assert!(stored.contains("deploy"), "the job is stored");
    assert!(
        !stored.contains(password) && !stored.contains("Outpost-test-key-material"),
        "a credential in clear in the database"
    );
    for path in [
        format!("/api/admin/jobs/{job}"),
        "/api/admin/jobs".to_owned(),
    ] {
        let r = api.get(&path, &tp.admin_token);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            !r.body.contains(password)
                && !r.body.contains("Outpost-test-key-material")
                && !r.body.contains("sealed:"),
            "{}",
            r.body
        );
        assert!(
            r.body.contains(outpost_portal::sealed::REDACTED),
            "{}",
            r.body
        );
    }

    let r = api.post(
        "/api/sensor/claim",
        s.api_key.expose(),
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let claimed: Job = r.json();
    let JobSpec::Scan(scan) = claimed.spec else {
        panic!("a scan job")
    };
    assert_eq!(
        scan.credentials[0].password.as_ref().map(|p| p.expose()),
        Some(password)
    );
    assert_eq!(
        scan.credentials[1].private_key.as_ref().map(|p| p.expose()),
        Some(private_key)
    );
    tp.portal.stop().await;
}

/// A sensor's feed sync progress, posted as a `feed_sync` phase event with `progress`,
/// is stored as sent and shown in the admin log; a phase event from an older sensor
/// (no `progress`) is stored and shown without one.
async fn phase_progress_log(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 1, 3600);
    let a = register(&api, &tok, "a");
    let progress = PhaseProgress {
        files_done: 30,
        files_total: 120,
        bytes_done: 1_500_000,
        bytes_total: 6_000_000,
    };
    let events = [LogEvent {
        seq: 1,
        ts_ms: 1_700_000_000_000,
        level: Level::Info,
        kind: EventKind::Phase {
            phase: Phase::FeedSync,
            outcome: PhaseOutcome::Started,
            reason: Some(format!("{progress} fetched")),
            progress: Some(progress),
        },
    }];
    let old = r#"{"seq":2,"ts_ms":1700000001000,"level":"info","event":"phase","phase":"feed_sync","outcome":"done","reason":"feed release x is live"}"#;
    let body = format!("{}{old}\n", to_ndjson(&events));
    let r = api.post_raw(
        "/api/sensor/log",
        a.api_key.expose(),
        &[],
        body.into_bytes(),
    );
    assert_eq!(r.status, 204, "{}", r.body);

    let r = api.get(
        &format!("/api/admin/sensors/{}/log", a.sensor_id),
        &tp.admin_token,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let log: Vec<StoredLogEvent> = r.json();
    assert_eq!(log.len(), 2, "{}", r.body);
    assert_eq!(log[0].event, events[0]);
    assert!(matches!(
        &log[1].event.kind,
        EventKind::Phase {
            outcome: PhaseOutcome::Done,
            progress: None,
            ..
        }
    ));
    // The admin JSON carries the counts as an object, and nothing for the older event.
    let raw: Value = r.json();
    assert_eq!(
        raw[0]["progress"],
        serde_json::json!({"files_done": 30, "files_total": 120, "bytes_done": 1_500_000, "bytes_total": 6_000_000})
    );
    assert_eq!(raw[0]["phase"], "feed_sync");
    assert!(raw[1].get("progress").is_none(), "{}", raw[1]);
    tp.portal.stop().await;
}

macro_rules! both {
    ($name:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $name(Backend::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            $name(Backend::Postgres).await
        }
    };
}

both!(
    enrollment_and_tokens,
    enrollment_sqlite,
    enrollment_postgres
);
both!(bad_input, bad_input_sqlite, bad_input_postgres);
both!(job_lifecycle, job_lifecycle_sqlite, job_lifecycle_postgres);
both!(board_serial, board_serial_sqlite, board_serial_postgres);
both!(
    phase_progress_log,
    phase_progress_log_sqlite,
    phase_progress_log_postgres
);
both!(
    credentials_at_rest,
    credentials_at_rest_sqlite,
    credentials_at_rest_postgres
);

/// Report uploads are streamed to a file, not buffered: the limit holds for a body that
/// declares no length (checked as the bytes arrive), a report just under it round-trips
/// whole, and no upload file is left behind.
async fn report_upload_streaming(backend: Backend) {
    const LIMIT: u64 = 256 * 1024;
    let tp = start_portal(backend, |s| s.max_report_body = LIMIT).await;
    let api = Api::new(&tp);
    let (a, job) = sensor_with_a_job(&api, &tp);
    let path = format!("/api/sensor/jobs/{job}/report");

    let mut big = upload("big");
    big.content = "x".repeat(LIMIT as usize);
    let big = serde_json::to_vec(&big).unwrap();
    unchanged(&tp, "oversized reports", || {
        // Declared too large: refused before reading.
        let r = api.post_raw(&path, a.api_key.expose(), &[], big.clone());
        assert_eq!(
            (r.status, r.error().error),
            (413, ErrorCode::PayloadTooLarge),
            "{}",
            r.body
        );
        // Chunked, no length: refused once the bytes pass the limit.
        let resp = api
            .agent
            .post(&format!("{}{path}", api.base))
            .header("authorization", &format!("Bearer {}", a.api_key.expose()))
            .header("content-type", "application/json")
            .send(ureq::SendBody::from_reader(&mut &big[..]))
            .expect("request sent");
        assert_eq!(resp.status().as_u16(), 413);
    })
    .await;

    // Just under the limit, through the same streamed path: stored whole.
    let mut fits = upload("fits");
    let overhead = serde_json::to_vec(&fits).unwrap().len();
    fits.content = "y".repeat(LIMIT as usize - overhead - 1);
    let body = serde_json::to_vec(&fits).unwrap();
    assert!(body.len() as u64 <= LIMIT);
    let r = api.post_raw(
        &path,
        a.api_key.expose(),
        &[("idempotency-key", "fits")],
        body,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let stored: Value = api
        .get(&format!("/api/admin/jobs/{job}/report"), &tp.admin_token)
        .json();
    assert_eq!(stored["content"].as_str(), Some(fits.content.as_str()));
    no_upload_files(&tp);
    tp.portal.stop().await;
}

both!(
    report_upload_streaming,
    report_upload_streaming_sqlite,
    report_upload_streaming_postgres
);

/// A report many chunks long is stored chunk by chunk and read back byte-identical
/// through the admin API (streamed); a repeat or another report for the job changes
/// nothing, and a malformed one is refused with the same error as before.
async fn report_in_chunks(backend: Backend) {
    const CHUNK: usize = 64 * 1024;
    let tp = start_portal(backend, |s| s.report_chunk = CHUNK).await;
    let api = Api::new(&tp);
    let (a, job) = sensor_with_a_job(&api, &tp);
    let key = a.api_key.expose();
    let path = format!("/api/sensor/jobs/{job}/report");

    // Malformed bodies: refused by the streaming parser as serde refused them.
    unchanged(&tp, "malformed reports", || {
        let mut bad = serde_json::to_value(upload("bad")).unwrap();
        bad["content"] = serde_json::json!(5);
        for (body, expect) in [
            (serde_json::to_vec(&bad).unwrap(), "`content`"),
            (b"{\"request_id\":\"x\"".to_vec(), "EOF"),
            (
                {
                    let mut v = serde_json::to_value(upload("bad")).unwrap();
                    v.as_object_mut().unwrap().remove("summary");
                    serde_json::to_vec(&v).unwrap()
                },
                "missing field `summary`",
            ),
        ] {
            let r = api.post_raw(&path, key, &[], body);
            assert_eq!((r.status, r.error().error), (400, ErrorCode::BadRequest));
            let msg = r.error().message;
            assert!(msg.starts_with("request body is not valid: "), "{msg}");
            assert!(msg.contains(expect), "{msg}");
        }
    })
    .await;

    // A partial report of some 1.3 MiB: XML with quotes, newlines, tabs and characters
    // of 2 to 4 bytes, so chunk edges fall inside characters and escapes.
    let line = "<result host=\"10.9.0.2\" port=\"22/tcp\">naïve ✓ 😀\t\\ ok</result>\n";
    let text = line.repeat(1_300_000 / line.len() + 1);
    let mut up = upload("big-1");
    up.outcome = ReportOutcome::Failed;
    up.partial = true;
    up.content = text.clone();
    let body = serde_json::to_vec(&up).unwrap();
    let first = api.post_raw(&path, key, &[("idempotency-key", "big-1")], body.clone());
    assert_eq!(first.status, 201, "{}", first.body);

    // Stored in chunks of at most CHUNK bytes that add up to the text.
    let store = &tp.portal.state.store;
    let (head, chunks) = store.report_head(job).await.unwrap().expect("stored");
    assert_eq!(head.content, "");
    assert!(
        chunks as usize >= text.len().div_ceil(CHUNK),
        "{chunks} chunks for {} bytes",
        text.len()
    );
    let mut joined = String::new();
    for seq in 0..chunks {
        let c = store
            .report_chunk(head.id, seq)
            .await
            .unwrap()
            .expect("chunk");
        assert!(
            !c.is_empty() && c.len() <= CHUNK,
            "chunk {seq}: {} bytes",
            c.len()
        );
        joined.push_str(&c);
    }
    assert!(joined == text, "the chunks are the text");

    // Read back through the admin API, byte for byte.
    let got = api.get(&format!("/api/admin/jobs/{job}/report"), &tp.admin_token);
    assert_eq!(got.status, 200);
    let report: ReportInfo = got.json();
    assert!(
        report.content == text,
        "the served report is the uploaded one"
    );
    assert_eq!(report.job_id, job);
    assert_eq!(report.sensor_id, a.sensor_id);
    assert_eq!(
        (report.outcome, report.partial),
        (ReportOutcome::Failed, true)
    );
    assert_eq!(report.content_type, "application/xml");
    let info: JobInfo = api
        .get(&format!("/api/admin/jobs/{job}"), &tp.admin_token)
        .json();
    assert_eq!(info.state, JobState::Failed);

    // The same upload again stores nothing; another report for the job is refused.
    unchanged(&tp, "repeated reports", || {
        let again = api.post_raw(&path, key, &[("idempotency-key", "big-1")], body.clone());
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.json::<Value>()["created"], false);
        assert_eq!(
            again.json::<Value>()["report_id"],
            first.json::<Value>()["report_id"]
        );
        let mut other = up.clone();
        other.request_id = "big-2".into();
        let r = api.post(&path, key, &other);
        assert_eq!((r.status, r.error().error), (409, ErrorCode::Conflict));
    })
    .await;
    no_upload_files(&tp);
    tp.portal.stop().await;
}

both!(
    report_in_chunks,
    report_in_chunks_sqlite,
    report_in_chunks_postgres
);
