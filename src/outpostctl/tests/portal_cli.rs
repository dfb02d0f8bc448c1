//! `outpostctl bundle publish/list/assign`, the update fields of `sensor show/list` and
//! `report`, run as processes against a real portal (started in this test process, on
//! loopback).

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use outpost_bundle::{build_bundle, sign_bundle, BuildSpec, SecretKey, Version};
use outpost_portal::{Portal, Settings};
use outpost_wire::admin::{BundleInfo, FeedReleases, JobInfo, ReportInfo, SensorInfo};
use outpost_wire::sensor::{
    Activity, Capability, HeartbeatRequest, Job, Metrics, RegisterRequest, RegisterResponse,
    ReportOutcome, ReportSummary, ReportUpload, UpdateState, UpdateStateReport,
};

struct TestPortal {
    dir: tempfile::TempDir,
    url: String,
    // Kept alive for the portal's tasks; dropped at the end of the test.
    _portal: Portal,
    _rt: tokio::runtime::Runtime,
}

fn start_portal() -> TestPortal {
    start_portal_with(|_| {})
}

fn start_portal_with(tune: impl FnOnce(&mut Settings)) -> TestPortal {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    tune(&mut s);
    let portal = rt.block_on(Portal::start(s)).unwrap();
    TestPortal {
        url: portal.url.clone(),
        dir,
        _portal: portal,
        _rt: rt,
    }
}

fn ctl(tp: &TestPortal, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpostctl"))
        .arg("--portal-dir")
        .arg(tp.dir.path())
        .args(args)
        .env_remove("OUTPOST_PORTAL")
        .env_remove("OUTPOST_CA")
        .env_remove("OUTPOST_ADMIN_TOKEN_FILE")
        .output()
        .unwrap()
}

fn ok(tp: &TestPortal, args: &[&str]) -> String {
    let out = ctl(tp, args);
    assert!(
        out.status.success(),
        "outpostctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(tp: &TestPortal, args: &[&str]) -> String {
    let out = ctl(tp, args);
    assert!(!out.status.success(), "outpostctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The sensor's side, spoken directly (a plain HTTPS client trusting the portal's CA).
fn agent(tp: &TestPortal) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let pem = std::fs::read(tp.dir.path().join("ca.pem")).unwrap();
    let cert = Certificate::from_pem(&pem).unwrap();
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![cert.to_owned()])))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

fn post<T: serde::Serialize>(
    a: &ureq::Agent,
    tp: &TestPortal,
    path: &str,
    key: &str,
    body: &T,
) -> (u16, String) {
    let resp = a
        .post(&format!("{}{path}", tp.url))
        .header("authorization", &format!("Bearer {key}"))
        .send_json(body)
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().read_to_string().unwrap_or_default(),
    )
}

/// A Pi at the branch `berlin` that scans: `branch-N`, `outpost-N`, serial N.
fn request(n: u32, wg_public_key: &str) -> RegisterRequest {
    RegisterRequest {
        name: format!("branch-{n}"),
        site: "berlin".into(),
        hostname: format!("outpost-{n}"),
        os: "Outpost".into(),
        board: "Raspberry Pi 4 Model B".into(),
        hardware_serial: n.to_string(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: vec![Capability::Scan],
        wg_public_key: wg_public_key.into(),
    }
}

/// Registers `req` with a token made by `outpostctl token create`.
fn register(tp: &TestPortal, a: &ureq::Agent, req: &RegisterRequest) -> RegisterResponse {
    let tok = ok(tp, &["token", "create", "--site", "berlin"]);
    let (status, body) = post(a, tp, "/api/sensor/register", tok.trim(), req);
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn bundle(dir: &Path) -> std::path::PathBuf {
    let input = |name: &str, byte: u8, len: usize| {
        let p = dir.join(name);
        std::fs::write(&p, vec![byte; len]).unwrap();
        p
    };
    let spec = BuildSpec {
        board: "outpost,rpi4".into(),
        version: Version::new(1, 2, 0),
        min_version: None,
        rootfs: input("rootfs", 0x5a, 300_000),
        kernel: input("Image", 0x4b, 70_000),
        initrd: input("initrd.img", 0x49, 30_000),
        dtbs: vec![],
    };
    let out = dir.join("outpost-1.2.0.bundle");
    build_bundle(&spec, &out).unwrap();
    sign_bundle(&out, &SecretKey::from_seed(&[7; 32])).unwrap();
    out
}

#[test]
fn publish_assign_and_show_update_state() {
    let tp = start_portal();
    let work = tempfile::tempdir().unwrap();
    let file = bundle(work.path());
    let bytes = std::fs::read(&file).unwrap();

    // Refusals come back as the portal's sentence and a non-zero exit.
    let garbage = work.path().join("garbage.bundle");
    std::fs::write(&garbage, b"definitely not a bundle".repeat(100)).unwrap();
    let err = fails(&tp, &["bundle", "publish", garbage.to_str().unwrap()]);
    assert!(err.contains("not an Outpost bundle"), "{err}");
    let wrong = work.path().join("wrong.token");
    std::fs::write(&wrong, "oat_wrong\n").unwrap();
    let err = fails(
        &tp,
        &[
            "--admin-token-file",
            wrong.to_str().unwrap(),
            "bundle",
            "publish",
            file.to_str().unwrap(),
        ],
    );
    assert!(err.contains("wrong admin token"), "{err}");

    let out = ok(
        &tp,
        &["bundle", "publish", file.to_str().unwrap(), "--json"],
    );
    let info: BundleInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (info.version.as_str(), info.size),
        ("1.2.0", bytes.len() as u64)
    );
    let text = ok(&tp, &["bundle", "publish", file.to_str().unwrap()]);
    assert!(
        text.starts_with(&format!("bundle {}: 1.2.0 for outpost,rpi4", info.id)),
        "{text}"
    );
    let list = ok(&tp, &["bundle", "list"]);
    assert!(
        list.lines().count() == 2 && list.contains(&info.sha256),
        "{list}"
    );

    // A sensor that can update.
    let a = agent(&tp);
    let reg = register(
        &tp,
        &a,
        &RegisterRequest {
            name: "branch-17".into(),
            board_serial: Some("10000000abcdef01".into()),
            capabilities: vec![Capability::Scan, Capability::Update],
            ..request(1, "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
        },
    );
    let (id, key) = (reg.sensor_id.as_str(), reg.api_key.expose());

    let err = fails(&tp, &["bundle", "assign", &info.id.to_string()]);
    assert!(err.contains("--site") || err.contains("--sensor"), "{err}");
    let err = fails(&tp, &["bundle", "assign", "999", "--sensor", id]);
    assert!(err.contains("bundle 999 does not exist"), "{err}");
    let out = ok(
        &tp,
        &["bundle", "assign", &info.id.to_string(), "--sensor", id],
    );
    assert!(out.contains("1 update job(s) queued"), "{out}");
    let jobs = ok(&tp, &["job", "list"]);
    assert!(
        jobs.contains("update to 1.2.0") && jobs.contains(&format!("for {id}")),
        "{jobs}"
    );

    // The sensor runs 1.1.0 from slot a, takes the job and refuses the bundle.
    let hb = HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 1,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: Some("1.1.0".into()),
        boot_slot: Some("a".into()),
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: None,
    };
    assert_eq!(post(&a, &tp, "/api/sensor/heartbeat", key, &hb).0, 200);
    let (status, body) = post(
        &a,
        &tp,
        "/api/sensor/claim",
        key,
        &serde_json::json!({"capabilities": ["update"]}),
    );
    assert_eq!(status, 200, "{body}");
    let job: Job = serde_json::from_str(&body).unwrap();
    let report = UpdateStateReport {
        job_id: Some(job.id),
        bundle_id: info.id,
        version: "1.2.0".into(),
        state: UpdateState::Refused,
        reason: "signed by an untrusted key".into(),
        progress_percent: 0,
        slot: Some("a".into()),
    };
    assert_eq!(
        post(&a, &tp, "/api/sensor/update-state", key, &report).0,
        204
    );

    let show = ok(&tp, &["sensor", "show", id]);
    assert!(show.contains("1.1.0 (slot a)"), "{show}");
    assert!(
        show.contains("1.2.0 refused: signed by an untrusted key"),
        "{show}"
    );
    let list = ok(&tp, &["sensor", "list"]);
    let row = list.lines().find(|l| l.starts_with(id)).unwrap();
    assert!(
        row.contains("1.1.0") && row.contains(" a ") && row.contains("refused"),
        "{list}"
    );
    let s: SensorInfo = serde_json::from_str(&ok(&tp, &["sensor", "show", id, "--json"])).unwrap();
    assert_eq!(s.update.map(|u| u.state), Some(UpdateState::Refused));
    // The Pi's serial as sent at registration, in the text and in the JSON.
    assert_eq!(s.board_serial.as_deref(), Some("10000000abcdef01"));
    assert!(show.contains("board serial:   10000000abcdef01"), "{show}");
    let listed: Vec<SensorInfo> =
        serde_json::from_str(&ok(&tp, &["sensor", "list", "--json"])).unwrap();
    let row = listed.iter().find(|s| s.id == id).unwrap();
    assert_eq!(row.board_serial.as_deref(), Some("10000000abcdef01"));
    let show = ok(&tp, &["job", "show", &job.id.to_string()]);
    assert!(
        show.contains("failed") && show.contains("untrusted key"),
        "{show}"
    );
}

/// Publishes a feed release row with its manifest blob (what the portal serves from);
/// the import itself is tested in outpost-portal.
fn publish_feed(tp: &TestPortal, plugin_set: &str) -> (i64, String) {
    use outpost_portal::feeds::blobs::{sha256_hex, BlobStore};
    use outpost_portal::store::{NewFeedRelease, Store};
    let manifest = format!("manifest {plugin_set}");
    let sha = sha256_hex(manifest.as_bytes());
    BlobStore::open(&tp.dir.path().join("feeds"))
        .unwrap()
        .put(&sha, manifest.as_bytes())
        .unwrap();
    let db = tp.dir.path().join("portal.sqlite").display().to_string();
    let (r, _) = tp
        ._rt
        .block_on(async {
            Store::open(&db)
                .await
                .unwrap()
                .publish_feed_release(&NewFeedRelease {
                    manifest_sha256: sha.clone(),
                    plugin_set: plugin_set.into(),
                    notus_version: None,
                    vt_count: 10,
                    files: 3,
                    bytes: 100,
                    signature: "outpost-feed-signature k s".into(),
                    imported_at: 1,
                })
                .await
        })
        .unwrap();
    (r.id, outpost_wire::feed::release_name(plugin_set, &sha))
}

#[test]
fn feed_channels_and_the_lag_of_each_sensor() {
    let tp = start_portal();
    let (r1, n1) = publish_feed(&tp, "202509150400");
    let (r2, n2) = publish_feed(&tp, "202509160400");

    let a = agent(&tp);
    let reg = register(
        &tp,
        &a,
        &request(9, "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let (id, key) = (reg.sensor_id.as_str(), reg.api_key.expose());
    let hb = HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 5,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: Some(n1.clone()),
    };
    let (status, body) = post(&a, &tp, outpost_wire::paths::HEARTBEAT, key, &hb);
    assert_eq!(status, 200, "{body}");

    // The releases, newest first; a September 2025 feed is stale by any clock since.
    let list = ok(&tp, &["feed", "list"]);
    assert!(list.contains(&n1) && list.contains(&n2), "{list}");
    assert!(list.contains("upstream: STALE"), "{list}");
    let json: FeedReleases = serde_json::from_str(&ok(&tp, &["feed", "list", "--json"])).unwrap();
    assert_eq!(
        json.releases.iter().map(|r| r.id).collect::<Vec<_>>(),
        [r2, r1]
    );
    assert!(json.stale);

    // On the default channel (newest), the sensor is one release and one day behind.
    let line = |out: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {out}"))
            .to_owned()
    };
    let l = line(&ok(&tp, &["sensor", "list"]));
    assert!(
        l.contains(&format!("{n1} -> {n2} (1 newer, 1d 0h behind)")),
        "{l}"
    );
    let show = ok(&tp, &["sensor", "show", id]);
    assert!(show.contains(&format!("feed wanted:    {n2}")), "{show}");
    assert!(
        show.contains("feed channel:   newest (from default)"),
        "{show}"
    );

    // Refusals name the problem and exit non-zero.
    let err = fails(&tp, &["feed", "channel", "set", "9999", "--site", "berlin"]);
    assert!(err.contains("feed release 9999 is not published"), "{err}");
    let err = fails(
        &tp,
        &["feed", "channel", "set", "sideways", "--site", "berlin"],
    );
    assert!(err.contains("neither `newest` nor a release id"), "{err}");
    let err = fails(
        &tp,
        &[
            "feed", "channel", "set", "newest", "--site", "berlin", "--sensor", id,
        ],
    );
    assert!(err.contains("cannot be used with"), "{err}");
    let err = fails(&tp, &["feed", "channel", "clear", "--sensor", id]);
    assert!(err.contains("has no feed channel of its own"), "{err}");

    // Berlin pinned to the release the sensor runs: it is where it should be.
    let out = ok(
        &tp,
        &[
            "feed",
            "channel",
            "set",
            &r1.to_string(),
            "--site",
            "berlin",
        ],
    );
    assert_eq!(out.trim(), format!("site berlin: feed channel pinned {r1}"));
    let l = line(&ok(&tp, &["sensor", "list"]));
    assert!(l.trim_end().ends_with(&n1) && !l.contains("->"), "{l}");
    let list = ok(&tp, &["feed", "list"]);
    let pinned = list.lines().find(|l| l.contains(&n1)).unwrap();
    assert!(pinned.trim_end().ends_with("site berlin"), "{list}");

    // The sensor's own channel wins over its site's, and clearing it gives the site back.
    ok(&tp, &["feed", "channel", "set", "newest", "--sensor", id]);
    let channels = ok(&tp, &["feed", "channel", "list"]);
    assert!(
        channels.contains(&format!("site berlin                  pinned {r1}"))
            && channels.contains(&format!("sensor {id}")),
        "{channels}"
    );
    let show = ok(&tp, &["sensor", "show", id]);
    assert!(
        show.contains("feed channel:   newest (from sensor)"),
        "{show}"
    );
    assert!(show.contains(&format!("feed wanted:    {n2}")), "{show}");
    let out = ok(&tp, &["feed", "channel", "clear", "--sensor", id]);
    assert_eq!(out.trim(), format!("sensor {id}: feed channel cleared"));
    let show = ok(&tp, &["sensor", "show", id]);
    assert!(
        show.contains(&format!("feed channel:   pinned {r1} (from site)")),
        "{show}"
    );
    let s: SensorInfo = serde_json::from_str(&ok(&tp, &["sensor", "show", id, "--json"])).unwrap();
    let f = s.feed.unwrap();
    assert_eq!(f.wanted.as_deref(), Some(n1.as_str()));
    assert_eq!((f.newer_releases, f.feed_behind), (Some(1), false));
}

/// `outpostctl report N` prints a report of many chunks as the portal streams it, byte for
/// byte; `--json` gives the whole record.
#[test]
fn report_prints_a_report_stored_in_chunks() {
    let tp = start_portal_with(|s| s.report_chunk = 16 * 1024);
    let a = agent(&tp);
    let reg = register(
        &tp,
        &a,
        &request(3, "pTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="),
    );
    let key = reg.api_key.expose();
    let job: JobInfo = serde_json::from_str(&ok(
        &tp,
        &[
            "job", "scan", "--site", "berlin", "--target", "10.9.0.2", "--json",
        ],
    ))
    .unwrap();
    let (status, body) = post(
        &a,
        &tp,
        "/api/sensor/claim",
        key,
        &serde_json::json!({"capabilities": ["scan"]}),
    );
    assert_eq!(status, 200, "{body}");
    let text = "<result>\"ü ✓ 😀\"\t</result>\n".repeat(20_000);
    let upload = ReportUpload {
        request_id: "r-1".into(),
        outcome: ReportOutcome::Completed,
        partial: false,
        content_type: "application/xml".into(),
        content: text.clone(),
        summary: ReportSummary::default(),
    };
    let path = format!("/api/sensor/jobs/{}/report", job.id);
    let (status, body) = post(&a, &tp, &path, key, &upload);
    assert_eq!(status, 201, "{body}");

    let printed = ok(&tp, &["report", &job.id.to_string()]);
    assert!(
        printed == format!("{text}\n"),
        "the report text, as uploaded"
    );
    let r: ReportInfo =
        serde_json::from_str(&ok(&tp, &["report", &job.id.to_string(), "--json"])).unwrap();
    assert!(r.content == text);
    assert_eq!((r.job_id, r.outcome), (job.id, ReportOutcome::Completed));
    let err = fails(&tp, &["report", "999"]);
    assert!(err.contains("job 999 has no report"), "{err}");
}
