//! A/B updates through the portal, on both backends: publishing real bundles (and
//! refusing broken ones with nothing stored), assigning them, claiming update jobs,
//! ranged downloads and the update-state job transitions.

mod common;

use common::{build_bundle, dump, other_key, release_key, start_portal, Api, Backend, TestPortal};
use outpost_wire::admin::{
    AssignBundle, AssignResult, BundleInfo, CreateJob, CreateToken, JobInfo, JobState, SensorInfo,
    StoredLogEvent, TokenCreated,
};
use outpost_wire::log::EventKind;
use outpost_wire::sensor::{
    Activity, Capability, HeartbeatRequest, Job, JobSpec, Metrics, RegisterRequest,
    RegisterResponse, UpdateSpec, UpdateState, UpdateStateReport,
};
use outpost_wire::ErrorCode;

const OCTETS: &str = "application/octet-stream";

/// Runs `f` and asserts it left every table untouched.
async fn unchanged<F: FnOnce()>(tp: &TestPortal, what: &str, f: F) {
    let before = dump(&tp.database).await;
    f();
    let after = dump(&tp.database).await;
    assert_eq!(before, after, "{what} changed the database");
}

/// Files under the bundle directory (temporary uploads included), but for the storage
/// marker a portal on PostgreSQL writes there at start.
fn bundle_files(tp: &TestPortal) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(tp.dir.path().join("bundles")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != outpost_portal::shared::STORAGE_ID_FILE)
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn token(api: &Api, tp: &TestPortal, site: &str, uses: u32) -> String {
    let r = api.post(
        "/api/admin/tokens",
        &tp.admin_token,
        &CreateToken {
            site: site.into(),
            uses,
            ttl_s: 3600,
        },
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json::<TokenCreated>().token
}

fn register(api: &Api, tok: &str, name: &str, site: &str, caps: &[Capability]) -> RegisterResponse {
    let req = RegisterRequest {
        name: name.into(),
        site: site.into(),
        hostname: format!("{name}.local"),
        os: "Outpost test".into(),
        board: "Raspberry Pi 4 Model B".into(),
        hardware_serial: "0000".into(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: caps.to_vec(),
        // Every device has its own key; the portal registers a key once.
        wg_public_key: outpost_tunnel::PrivateKey::generate()
            .public_key()
            .to_base64(),
    };
    let r = api.post("/api/sensor/register", tok, &req);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn publish(api: &Api, tp: &TestPortal, bytes: &[u8]) -> common::Resp {
    api.post_bytes("/api/admin/bundles", &tp.admin_token, OCTETS, bytes)
}

fn claim(api: &Api, key: &str, caps: &[Capability]) -> Option<Job> {
    let r = api.post(
        "/api/sensor/claim",
        key,
        &serde_json::json!({ "capabilities": caps }),
    );
    match r.status {
        204 => None,
        200 => Some(r.json()),
        s => panic!("claim answered {s}: {}", r.text()),
    }
}

fn assign(api: &Api, tp: &TestPortal, bundle: i64, a: &AssignBundle) -> common::Resp {
    api.post(
        &format!("/api/admin/bundles/{bundle}/assign"),
        &tp.admin_token,
        a,
    )
}

fn sensors(ids: &[&str]) -> AssignBundle {
    AssignBundle {
        site: None,
        sensors: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn job(api: &Api, tp: &TestPortal, id: i64) -> JobInfo {
    let r = api.get(&format!("/api/admin/jobs/{id}"), &tp.admin_token);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sensor(api: &Api, tp: &TestPortal, id: &str) -> SensorInfo {
    let r = api.get(&format!("/api/admin/sensors/{id}"), &tp.admin_token);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn scan_spec() -> JobSpec {
    common::scan_spec("T:22")
}

fn report(job: Option<i64>, bundle: i64, state: UpdateState) -> UpdateStateReport {
    UpdateStateReport {
        job_id: job,
        bundle_id: bundle,
        version: "1.2.0".into(),
        state,
        reason: String::new(),
        progress_percent: 0,
        slot: None,
    }
}

fn heartbeat(firmware: &str, slot: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 5,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: Some(firmware.into()),
        boot_slot: Some(slot.into()),
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: None,
    }
}

const BOTH: &[Capability] = &[Capability::Scan, Capability::Update];

// ---- publish ----

async fn publish_and_refusals(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let inputs = tempfile::tempdir().unwrap();
    let good = build_bundle(inputs.path(), "1.2.0", Some(&release_key()));
    let len = good.bytes.len();
    assert!(len > 2 * 1024 * 1024, "the test bundle exceeds 2 MiB");

    let mut corrupt = good.bytes.clone();
    corrupt[len - 10] ^= 0xff;
    let mut trailing = good.bytes.clone();
    trailing.extend_from_slice(b"junk");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage",
            b"this is not a bundle at all".repeat(40),
            "not an Outpost bundle",
        ),
        ("truncated", good.bytes[..len - 1000].to_vec(), "truncated"),
        ("only a header", good.bytes[..100].to_vec(), "truncated"),
        (
            "trailing data",
            trailing,
            "unexpected bytes after the last part",
        ),
        ("a corrupt part", corrupt, "rootfs"),
        ("an empty body", Vec::new(), "empty"),
    ];
    for (what, body, needle) in &cases {
        unchanged(&tp, what, || {
            let r = publish(&api, &tp, body);
            assert_eq!(r.status, 400, "{what}: {}", r.text());
            let e = r.error();
            assert_eq!(e.error, ErrorCode::BadRequest);
            assert!(e.message.contains(needle), "{what}: {}", e.message);
        })
        .await;
        assert!(
            bundle_files(&tp).is_empty(),
            "{what} left files behind: {:?}",
            bundle_files(&tp)
        );
    }
    // Only the admin may publish.
    let r = api.post_bytes("/api/admin/bundles", "osk_nope", OCTETS, &good.bytes);
    assert_eq!(r.status, 401);

    let r = publish(&api, &tp, &good.bytes);
    assert_eq!(r.status, 201, "{}", r.text());
    let info: BundleInfo = r.json();
    assert_eq!(info.version, "1.2.0");
    assert_eq!(info.compatible, "outpost,rpi4");
    assert_eq!(info.min_version.as_deref(), Some("1.0.0"));
    assert_eq!(info.size, len as u64);
    assert_eq!(info.sha256, good.sha256);
    let stored = tp
        .dir
        .path()
        .join("bundles")
        .join(format!("{}.bundle", good.sha256));
    assert_eq!(std::fs::read(&stored).unwrap(), good.bytes);
    assert_eq!(bundle_files(&tp).len(), 1);

    // Publishing the same file again answers with the stored bundle and adds nothing.
    unchanged(&tp, "a repeated publish", || {
        let again = publish(&api, &tp, &good.bytes);
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json::<BundleInfo>(), info);
    })
    .await;
    let list: Vec<BundleInfo> = api.get("/api/admin/bundles", &tp.admin_token).json();
    assert_eq!(list, vec![info.clone()]);
    let one = api.get(&format!("/api/admin/bundles/{}", info.id), &tp.admin_token);
    assert_eq!(one.json::<BundleInfo>(), info);
    let r = api.get("/api/admin/bundles/999", &tp.admin_token);
    assert_eq!(r.status, 404);
    assert!(r.error().message.contains("bundle 999"), "{}", r.text());

    // With bundle-keys.pub in the data directory, only bundles signed by its keys pass.
    std::fs::write(
        tp.dir.path().join("bundle-keys.pub"),
        release_key().public_line("release"),
    )
    .unwrap();
    let unsigned = build_bundle(inputs.path(), "1.3.0", None);
    let foreign = build_bundle(inputs.path(), "1.4.0", Some(&other_key()));
    for (what, b, needle) in [
        ("unsigned", &unsigned, "unsigned"),
        ("foreign", &foreign, "not a trusted key"),
    ] {
        unchanged(&tp, what, || {
            let r = publish(&api, &tp, &b.bytes);
            assert_eq!(r.status, 400, "{what}: {}", r.text());
            assert!(r.error().message.contains(needle), "{}", r.text());
        })
        .await;
    }
    let trusted = build_bundle(inputs.path(), "1.5.0", Some(&release_key()));
    let r = publish(&api, &tp, &trusted.bytes);
    assert_eq!(r.status, 201, "{}", r.text());
    let list: Vec<BundleInfo> = api.get("/api/admin/bundles", &tp.admin_token).json();
    let versions: Vec<&str> = list.iter().map(|b| b.version.as_str()).collect();
    assert_eq!(versions, ["1.5.0", "1.2.0"], "newest first");
    assert_eq!(bundle_files(&tp).len(), 2);
    tp.portal.stop().await;
}

// ---- assign and claim ----

async fn assign_and_claim(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 3);
    let a = register(&api, &tok, "a", "berlin", BOTH);
    let b = register(&api, &tok, "b", "berlin", BOTH);
    let c = register(&api, &tok, "c", "berlin", &[Capability::Scan]);
    let paris = token(&api, &tp, "paris", 1);
    let d = register(&api, &paris, "d", "paris", BOTH);
    let (ka, kb, kc, kd) = (
        a.api_key.expose(),
        b.api_key.expose(),
        c.api_key.expose(),
        d.api_key.expose(),
    );
    let inputs = tempfile::tempdir().unwrap();
    let file = build_bundle(inputs.path(), "1.2.0", Some(&release_key()));
    let bundle: BundleInfo = publish(&api, &tp, &file.bytes).json();

    unchanged(&tp, "refused assignments", || {
        let r = assign(&api, &tp, 999, &sensors(&[&a.sensor_id]));
        assert_eq!((r.status, r.error().error), (404, ErrorCode::NotFound));
        assert!(r.error().message.contains("bundle 999"), "{}", r.text());
        // All or none: one unknown sensor and no job is made for the known one.
        let r = assign(&api, &tp, bundle.id, &sensors(&[&a.sensor_id, "sn_nope"]));
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.error().message.contains("sn_nope"), "{}", r.text());
        let r = assign(&api, &tp, bundle.id, &AssignBundle::default());
        assert_eq!(r.status, 400, "{}", r.text());
        let r = assign(
            &api,
            &tp,
            bundle.id,
            &AssignBundle {
                site: Some("nowhere".into()),
                sensors: vec![],
            },
        );
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(r.error().message.contains("nowhere"), "{}", r.text());
        let r = api.post_bytes(
            &format!("/api/admin/bundles/{}/assign", bundle.id),
            &tp.admin_token,
            "application/json",
            b"{\"sensors\": 3}",
        );
        assert_eq!(r.status, 400, "{}", r.text());

        // Update jobs come only from assign; targeted jobs only for a sensor of the site.
        let update = JobSpec::Update(UpdateSpec {
            bundle_id: bundle.id,
            version: "1.2.0".into(),
            size: 1,
            sha256: "00".into(),
        });
        let cases = [
            ("berlin", update, None, 400, "assign"),
            (
                "berlin",
                scan_spec(),
                Some("sn_nope".to_string()),
                404,
                "sn_nope",
            ),
            (
                "berlin",
                scan_spec(),
                Some(d.sensor_id.clone()),
                400,
                "paris",
            ),
        ];
        for (site, spec, sensor_id, status, needle) in cases {
            let r = api.post(
                "/api/admin/jobs",
                &tp.admin_token,
                &CreateJob {
                    site: site.into(),
                    spec,
                    sensor_id,
                },
            );
            assert_eq!(r.status, status, "{}", r.text());
            assert!(r.error().message.contains(needle), "{}", r.text());
        }
    })
    .await;

    let r = assign(&api, &tp, bundle.id, &sensors(&[&a.sensor_id]));
    assert_eq!(r.status, 201, "{}", r.text());
    let jobs = r.json::<AssignResult>().jobs;
    assert_eq!(jobs.len(), 1);
    let ja = job(&api, &tp, jobs[0]);
    assert_eq!(ja.state, JobState::Queued);
    assert_eq!(ja.site, "berlin");
    assert_eq!(ja.target_sensor.as_deref(), Some(a.sensor_id.as_str()));
    let want = JobSpec::Update(UpdateSpec {
        bundle_id: bundle.id,
        version: "1.2.0".into(),
        size: file.bytes.len() as u64,
        sha256: file.sha256.clone(),
    });
    assert_eq!(ja.spec, want);

    // Another sensor with the capability, or the target without it: nothing.
    assert!(claim(&api, kb, BOTH).is_none(), "b took a's update");
    assert!(
        claim(&api, ka, &[Capability::Scan]).is_none(),
        "a got an update without the capability"
    );
    let got = claim(&api, ka, BOTH).expect("a gets its update");
    assert_eq!((got.id, &got.spec), (ja.id, &want));
    assert_eq!(
        job(&api, &tp, ja.id).sensor_id.as_deref(),
        Some(a.sensor_id.as_str())
    );

    // A whole site: one job per sensor, each for its sensor only.
    let r = assign(
        &api,
        &tp,
        bundle.id,
        &AssignBundle {
            site: Some("berlin".into()),
            sensors: vec![],
        },
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let site_jobs = r.json::<AssignResult>().jobs;
    let for_sensor: std::collections::HashMap<String, i64> = site_jobs
        .iter()
        .map(|id| (job(&api, &tp, *id).target_sensor.expect("targeted"), *id))
        .collect();
    assert_eq!(site_jobs.len(), 3);
    assert_eq!(for_sensor.len(), 3, "one job per sensor: {for_sensor:?}");
    let site_job = |s: &RegisterResponse| for_sensor[&s.sensor_id];
    assert!(claim(&api, kd, BOTH).is_none(), "paris got a berlin update");
    assert!(
        claim(&api, kc, &[Capability::Scan]).is_none(),
        "c cannot update"
    );
    assert_eq!(
        claim(&api, kb, &[Capability::Update]).map(|j| j.id),
        Some(site_job(&b))
    );

    // A scan made for b: a (oldest first) gets its own update, then nothing; b the scan.
    let r = api.post(
        "/api/admin/jobs",
        &tp.admin_token,
        &CreateJob {
            site: "berlin".into(),
            spec: scan_spec(),
            sensor_id: Some(b.sensor_id.clone()),
        },
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let scan: JobInfo = r.json();
    assert_eq!(scan.target_sensor.as_deref(), Some(b.sensor_id.as_str()));
    assert_eq!(claim(&api, ka, BOTH).map(|j| j.id), Some(site_job(&a)));
    assert!(claim(&api, ka, BOTH).is_none(), "a took b's scan");
    assert_eq!(claim(&api, kb, BOTH).map(|j| j.id), Some(scan.id));
    // c's update waits for a c that can update; deleting c fails it instead of leaving
    // it queued for ever.
    let r = api
        .agent
        .delete(&format!("{}/api/admin/sensors/{}", api.base, c.sensor_id))
        .header("authorization", &format!("Bearer {}", tp.admin_token))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let jc = job(&api, &tp, site_job(&c));
    assert_eq!(jc.state, JobState::Failed);
    assert!(jc.failure_reason.unwrap().contains("deleted"));
    tp.portal.stop().await;
}

// ---- downloads ----

async fn ranged_downloads(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 2);
    let a = register(&api, &tok, "a", "berlin", BOTH);
    let b = register(&api, &tok, "b", "berlin", BOTH);
    let (ka, kb) = (a.api_key.expose(), b.api_key.expose());
    let inputs = tempfile::tempdir().unwrap();
    let file = build_bundle(inputs.path(), "1.2.0", Some(&release_key()));
    let bundle: BundleInfo = publish(&api, &tp, &file.bytes).json();
    let path = format!("/api/sensor/bundles/{}", bundle.id);

    // Before any assignment nobody may download it.
    let r = api.get(&path, ka);
    assert_eq!((r.status, r.error().error), (403, ErrorCode::Forbidden));
    assert_eq!(
        assign(&api, &tp, bundle.id, &sensors(&[&a.sensor_id])).status,
        201
    );
    let r = api.get(&path, kb);
    assert_eq!(r.status, 403, "b has no update job for it");
    assert!(r.error().message.contains("not assigned"), "{}", r.text());
    assert_eq!(api.get(&path, &tp.admin_token).status, 401);
    assert_eq!(api.get(&path, "osk_nope").status, 401);
    let r = api.get("/api/sensor/bundles/999", ka);
    assert_eq!(r.status, 404);
    assert!(r.error().message.contains("bundle 999"));

    let len = file.bytes.len();
    let full = api.get(&path, ka);
    assert_eq!(full.status, 200);
    assert_eq!(full.header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(full.header("content-length"), Some(len.to_string()));
    assert_eq!(
        full.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert!(full.body == file.bytes, "the full download is the file");

    // Resume: the first third arrived, the rest comes from a range.
    let cut = len / 3;
    let tail = api.get_with(&path, ka, &[("range", &format!("bytes={cut}-"))]);
    assert_eq!(tail.status, 206);
    assert_eq!(
        tail.header("content-range"),
        Some(format!("bytes {cut}-{}/{len}", len - 1))
    );
    assert_eq!(tail.header("content-length"), Some((len - cut).to_string()));
    assert!(
        tail.body == file.bytes[cut..],
        "the range is the file's tail"
    );
    let mut resumed = file.bytes[..cut].to_vec();
    resumed.extend_from_slice(&tail.body);
    assert_eq!(common::sha256_hex(&resumed), bundle.sha256);

    let mid = api.get_with(&path, ka, &[("range", "bytes=100-199")]);
    assert_eq!(mid.status, 206);
    assert_eq!(
        mid.header("content-range"),
        Some(format!("bytes 100-199/{len}"))
    );
    assert!(mid.body == file.bytes[100..200]);

    for bad in [format!("bytes={len}-"), format!("bytes={}-", len + 10)] {
        let r = api.get_with(&path, ka, &[("range", &bad)]);
        assert_eq!(r.status, 416, "{bad}: {}", r.text());
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}")));
    }
    tp.portal.stop().await;
}

// ---- update-state ----

async fn update_state_transitions(backend: Backend) {
    let tp = start_portal(backend, |_| {}).await;
    let api = Api::new(&tp);
    let tok = token(&api, &tp, "berlin", 2);
    let a = register(&api, &tok, "a", "berlin", BOTH);
    let b = register(&api, &tok, "b", "berlin", BOTH);
    let (ka, kb) = (a.api_key.expose(), b.api_key.expose());
    let inputs = tempfile::tempdir().unwrap();
    let file = build_bundle(inputs.path(), "1.2.0", Some(&release_key()));
    let bundle: BundleInfo = publish(&api, &tp, &file.bytes).json();
    let other: BundleInfo = publish(
        &api,
        &tp,
        &build_bundle(inputs.path(), "1.3.0", Some(&release_key())).bytes,
    )
    .json();
    let r = assign(
        &api,
        &tp,
        bundle.id,
        &sensors(&[&a.sensor_id, &b.sensor_id]),
    );
    let jobs = r.json::<AssignResult>().jobs;
    let (ja, jb) = (jobs[0], jobs[1]);
    assert_eq!(claim(&api, ka, BOTH).map(|j| j.id), Some(ja));
    assert_eq!(claim(&api, kb, BOTH).map(|j| j.id), Some(jb));
    let scan = api
        .post(
            "/api/admin/jobs",
            &tp.admin_token,
            &CreateJob {
                site: "berlin".into(),
                spec: scan_spec(),
                sensor_id: None,
            },
        )
        .json::<JobInfo>()
        .id;
    assert_eq!(
        api.post("/api/sensor/heartbeat", ka, &heartbeat("1.1.0", "a"))
            .status,
        200
    );
    let s = sensor(&api, &tp, &a.sensor_id);
    assert_eq!(s.firmware_version.as_deref(), Some("1.1.0"));
    assert_eq!(s.boot_slot.as_deref(), Some("a"));
    assert_eq!(s.update, None);
    assert_eq!(s.tunnel, None, "no gateway, no tunnel counters");

    let state = "/api/sensor/update-state";
    unchanged(&tp, "refused update-state reports", || {
        let send = |key: &str, r: &UpdateStateReport| api.post(state, key, r);
        let mut r = report(Some(ja), 999, UpdateState::Downloading);
        let resp = send(ka, &r);
        assert_eq!(resp.status, 404, "{}", resp.text());
        assert!(resp.error().message.contains("bundle 999"));
        r.bundle_id = bundle.id;
        r.progress_percent = 150;
        assert_eq!(send(ka, &r).status, 400);
        r.progress_percent = 10;
        r.slot = Some("c".into());
        assert_eq!(send(ka, &r).status, 400);
        r.slot = None;
        r.job_id = Some(jb);
        let resp = send(ka, &r);
        assert_eq!(
            (resp.status, resp.error().error),
            (403, ErrorCode::Forbidden)
        );
        r.job_id = Some(ja + 1000);
        assert_eq!(send(ka, &r).status, 404);
        r.job_id = Some(scan);
        let resp = send(ka, &r);
        assert_eq!(resp.status, 400);
        assert!(
            resp.error().message.contains("not an update"),
            "{}",
            resp.text()
        );
        r.job_id = Some(ja);
        r.bundle_id = other.id;
        let resp = send(ka, &r);
        assert_eq!(resp.status, 400);
        assert!(
            resp.error().message.contains("installs bundle"),
            "{}",
            resp.text()
        );
        let resp = api.post_bytes(
            state,
            ka,
            "application/json",
            b"{\"state\":\"downloading\"}",
        );
        assert_eq!(resp.status, 400);
        assert!(
            resp.error().message.contains("bundle_id"),
            "{}",
            resp.text()
        );
        let resp = api.post_bytes(
            state,
            ka,
            "application/json",
            b"{\"bundle_id\":1,\"version\":\"1.2.0\",\"state\":\"exploded\"}",
        );
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert_eq!(api.post(state, "osk_nope", &r).status, 401);
    })
    .await;

    let send = |key: &str, r: &UpdateStateReport| {
        let resp = api.post(state, key, r);
        assert_eq!(resp.status, 204, "{:?}: {}", r.state, resp.text());
    };
    let mut r = report(Some(ja), bundle.id, UpdateState::Downloading);
    r.progress_percent = 40;
    send(ka, &r);
    let j = job(&api, &tp, ja);
    assert_eq!((j.state, j.progress_percent), (JobState::Running, 40));
    let u = sensor(&api, &tp, &a.sensor_id)
        .update
        .expect("update state");
    assert_eq!((u.bundle_id, u.version.as_str()), (bundle.id, "1.2.0"));
    assert_eq!(
        (u.state, u.progress_percent),
        (UpdateState::Downloading, 40)
    );

    r.state = UpdateState::Installing;
    r.progress_percent = 80;
    send(ka, &r);
    assert_eq!(job(&api, &tp, ja).progress_percent, 80);
    let mut rb = report(Some(jb), bundle.id, UpdateState::Downloading);
    rb.progress_percent = 10;
    send(kb, &rb);

    // `rebooting` completes the job: the reboot takes however long it takes.
    r.state = UpdateState::Rebooting;
    r.progress_percent = 100;
    r.slot = Some("a".into());
    send(ka, &r);
    let j = job(&api, &tp, ja);
    assert_eq!((j.state, j.progress_percent), (JobState::Completed, 100));

    // Long after both leases ended, only b's (still downloading) job goes back.
    let lease = tp.portal.state.settings.lease.as_secs() as i64;
    let later = outpost_wire::unix_now() + lease + 3600;
    let requeued = tp
        .portal
        .state
        .store
        .requeue_expired(later, Default::default())
        .await
        .unwrap();
    assert_eq!(
        requeued.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![jb],
        "the rebooting sensor's job stays completed"
    );
    let j = job(&api, &tp, ja);
    assert_eq!((j.state, j.attempts), (JobState::Completed, 0));

    // The new slot reports in; `committed` after the job ended changes only the sensor.
    assert_eq!(
        api.post("/api/sensor/heartbeat", ka, &heartbeat("1.2.0", "b"))
            .status,
        200
    );
    let mut c = report(None, bundle.id, UpdateState::Committed);
    c.slot = Some("b".into());
    send(ka, &c);
    c.job_id = Some(ja);
    send(ka, &c);
    assert_eq!(job(&api, &tp, ja), j, "the completed job is untouched");
    let resp = api.post(
        state,
        ka,
        &report(Some(ja), bundle.id, UpdateState::Downloading),
    );
    assert_eq!(
        (resp.status, resp.error().error),
        (409, ErrorCode::Conflict)
    );
    let s = sensor(&api, &tp, &a.sensor_id);
    assert_eq!(s.firmware_version.as_deref(), Some("1.2.0"));
    assert_eq!(s.boot_slot.as_deref(), Some("b"));
    assert_eq!(
        s.update.as_ref().map(|u| u.state),
        Some(UpdateState::Committed)
    );

    // b: its re-queued job comes back to it alone; it refuses the bundle, then its old
    // slot reports a rollback of an earlier attempt.
    let again = claim(&api, kb, BOTH).expect("b reclaims its update");
    assert_eq!((again.id, again.attempt), (jb, 1));
    let mut refused = report(Some(jb), bundle.id, UpdateState::Refused);
    refused.reason = "bundle is for board \"outpost,rpi5\"".into();
    send(kb, &refused);
    let j = job(&api, &tp, jb);
    assert_eq!(j.state, JobState::Failed);
    let why = j.failure_reason.unwrap();
    assert!(
        why.contains("refused") && why.contains("outpost,rpi5"),
        "{why}"
    );
    let mut rolled = report(None, bundle.id, UpdateState::RolledBack);
    rolled.reason = "slot b used up its tries".into();
    send(kb, &rolled);
    let u = sensor(&api, &tp, &b.sensor_id).update.unwrap();
    assert_eq!(u.state, UpdateState::RolledBack);
    assert_eq!(u.reason, "slot b used up its tries");
    let list: Vec<SensorInfo> = api.get("/api/admin/sensors", &tp.admin_token).json();
    let listed = |id: &str| {
        list.iter()
            .find(|s| s.id == id)
            .and_then(|s| s.update.as_ref().map(|u| u.state))
    };
    assert_eq!(listed(&a.sensor_id), Some(UpdateState::Committed));
    assert_eq!(listed(&b.sensor_id), Some(UpdateState::RolledBack));

    // The sensor log holds the history, oldest first.
    let log: Vec<StoredLogEvent> = api
        .get(
            &format!("/api/admin/sensors/{}/log", a.sensor_id),
            &tp.admin_token,
        )
        .json();
    let lines: Vec<String> = log
        .iter()
        .map(|e| match &e.event.kind {
            EventKind::Job { message, .. } | EventKind::Message { message } => message.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for (line, want) in lines.iter().zip([
        "downloading 40%",
        "installing 80%",
        "rebooting",
        "committed",
        "committed",
    ]) {
        assert!(
            line.contains(want) && line.contains("1.2.0"),
            "{line} lacks {want}"
        );
    }
    tp.portal.stop().await;
}

// ---- no starvation, at the queue itself ----

async fn no_starvation(backend: Backend) {
    use outpost_portal::store::{NewBundle, SensorAuth, Store};
    let dir = tempfile::tempdir().unwrap();
    let url = common::fresh_database(backend, dir.path()).await;
    let store = Store::open(&url).await.unwrap();
    let now = outpost_wire::unix_now();
    let (bundle, _) = store
        .publish_bundle(&NewBundle {
            version: "1.2.0".into(),
            compatible: "outpost,rpi4".into(),
            min_version: None,
            size: 10,
            sha256: "ab".repeat(32),
            published_at: now,
        })
        .await
        .unwrap();
    let me = SensorAuth {
        id: "sn_me".into(),
        name: "me".into(),
        site: "berlin".into(),
        wg_public_key: String::new(),
    };
    let update = outpost_portal::store::update_spec(&bundle);
    let caps = [Capability::Scan, Capability::Update];
    let kind_of = |j: &Job| j.spec.capability();

    // Scans keep arriving (one per claim); the update queued after five of them still
    // comes sixth.
    for _ in 0..5 {
        store.create_job("berlin", &scan_spec(), now).await.unwrap();
    }
    let up = store
        .create_job_for("berlin", &update, Some("sn_me"), now)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        store.create_job("berlin", &scan_spec(), now).await.unwrap();
        got.push(store.claim(&me, &caps, now, 600).await.unwrap().unwrap());
    }
    assert_eq!(got[5].id, up, "{backend:?}: the update waited its turn");
    assert!(got[..5].iter().all(|j| kind_of(j) == Capability::Scan));

    // And the other way round: a stream of updates does not starve the oldest scan.
    let dir2 = tempfile::tempdir().unwrap();
    let store = Store::open(&common::fresh_database(backend, dir2.path()).await)
        .await
        .unwrap();
    let (bundle, _) = store
        .publish_bundle(&NewBundle {
            version: "1.2.0".into(),
            compatible: "outpost,rpi4".into(),
            min_version: None,
            size: 10,
            sha256: "cd".repeat(32),
            published_at: now,
        })
        .await
        .unwrap();
    let update = outpost_portal::store::update_spec(&bundle);
    for _ in 0..5 {
        store
            .create_job_for("berlin", &update, Some("sn_me"), now)
            .await
            .unwrap();
    }
    let scan = store.create_job("berlin", &scan_spec(), now).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        store
            .create_job_for("berlin", &update, Some("sn_me"), now)
            .await
            .unwrap();
        got.push(store.claim(&me, &caps, now, 600).await.unwrap().unwrap());
    }
    assert_eq!(got[5].id, scan, "{backend:?}: the scan waited its turn");
    assert!(got[..5].iter().all(|j| kind_of(j) == Capability::Update));
    // Nobody else takes the remaining updates, however able.
    let other = SensorAuth {
        id: "sn_other".into(),
        ..me.clone()
    };
    assert!(store
        .claim(&other, &caps, now, 600)
        .await
        .unwrap()
        .is_none());
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

both!(publish_and_refusals, publish_sqlite, publish_postgres);
both!(assign_and_claim, assign_sqlite, assign_postgres);
both!(ranged_downloads, download_sqlite, download_postgres);
both!(
    update_state_transitions,
    update_state_sqlite,
    update_state_postgres
);
both!(no_starvation, no_starvation_sqlite, no_starvation_postgres);
