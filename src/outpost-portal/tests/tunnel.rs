//! The sensor API through the WireGuard gateway: a device-side user-space tunnel from
//! `outpost-tunnel` talks HTTPS to the portal's tunnel address; the portal ties every
//! request to the tunnel it came through and refuses the API outside it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{build_bundle, device, https, release_key, start_portal, Api, Backend, TestPortal};
use outpost_portal::settings::TunnelSettings;
use outpost_tunnel::{DeviceTunnel, PrivateKey};
use outpost_wire::admin::{
    AssignBundle, AssignResult, BundleInfo, CreateJob, CreateToken, JobInfo, JobState, SensorInfo,
    TokenCreated,
};
use outpost_wire::sensor::{
    Capability, ClaimRequest, HeartbeatRequest, HeartbeatResponse, Job, JobSpec, RegisterResponse,
    RotateKeyRequest, TunnelConfig, UpdateState, UpdateStateReport,
};
use outpost_wire::{ErrorBody, ErrorCode};

/// An HTTPS client whose every connection goes through the device tunnel.
fn tunnel_agent(tunnel: Arc<DeviceTunnel>, ca_pem: &[u8]) -> ureq::Agent {
    device::tunnel_agent(tunnel, ca_pem, Duration::from_secs(20)).expect("tunnel agent")
}

fn start_device(key: PrivateKey, t: &TunnelConfig) -> Arc<DeviceTunnel> {
    device::start_device(&key, t, None, Duration::from_secs(10))
        .expect("handshake with the gateway")
}

fn post<T: serde::Serialize>(agent: &ureq::Agent, url: &str, key: &str, body: &T) -> (u16, String) {
    let resp = agent
        .post(url)
        .header("authorization", &format!("Bearer {key}"))
        .send_json(body)
        .expect("request");
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().read_to_string().unwrap_or_default(),
    )
}

fn heartbeat() -> HeartbeatRequest {
    common::idle_heartbeat(None)
}

/// Queues a scan job for the site berlin through the admin API.
fn queue_scan(tp: &TestPortal) -> i64 {
    let (status, body) = post(
        &https(&tp.ca_pem),
        &format!("{}/api/admin/jobs", tp.portal.url),
        &tp.admin_token,
        &CreateJob {
            site: "berlin".into(),
            spec: common::scan_spec("T:22"),
            sensor_id: None,
        },
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<JobInfo>(&body).unwrap().id
}

fn claim_scan() -> ClaimRequest {
    ClaimRequest {
        capabilities: vec![Capability::Scan],
    }
}

fn register(tp: &TestPortal, name: &str, token: &str, key: &PrivateKey) -> RegisterResponse {
    register_caps(tp, name, token, key, &[Capability::Scan])
}

fn register_caps(
    tp: &TestPortal,
    name: &str,
    token: &str,
    key: &PrivateKey,
    caps: &[Capability],
) -> RegisterResponse {
    let direct = https(&tp.ca_pem);
    let req = common::register_request(name, "berlin", caps, &key.public_key());
    let (status, body) = post(
        &direct,
        &format!("{}/api/sensor/register", tp.portal.url),
        token,
        &req,
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_api_through_the_gateway() {
    through_the_gateway(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_api_through_the_gateway_postgres() {
    through_the_gateway(Backend::Postgres).await
}

async fn through_the_gateway(backend: Backend) {
    let tp = start_portal(backend, |s| {
        s.tunnel = Some(TunnelSettings::new(
            "127.0.0.1:0".parse().unwrap(),
            String::new(),
        ));
    })
    .await;
    let tp = Arc::new(tp);
    let t2 = tp.clone();
    tokio::task::spawn_blocking(move || run(&t2)).await.unwrap();
}

fn run(tp: &TestPortal) {
    let direct = https(&tp.ca_pem);
    let (status, body) = post(
        &direct,
        &format!("{}/api/admin/tokens", tp.portal.url),
        &tp.admin_token,
        &CreateToken {
            site: "berlin".into(),
            uses: 2,
            ttl_s: 600,
        },
    );
    assert_eq!(status, 201);
    let token = serde_json::from_str::<TokenCreated>(&body).unwrap().token;

    let key_a = PrivateKey::generate();
    let a = register(tp, "a", &token, &key_a);
    let tun = a
        .tunnel
        .clone()
        .expect("registration returns the tunnel config");
    assert_eq!(tun.portal_address, "100.96.0.1");
    assert_eq!(tun.sensor_address, "100.96.0.2");
    assert_eq!(tun.persistent_keepalive_s, 25);

    // Outside the tunnel the sensor API is refused.
    let (status, body) = post(
        &direct,
        &format!("{}/api/sensor/heartbeat", tp.portal.url),
        a.api_key.expose(),
        &heartbeat(),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only through the WireGuard tunnel"));

    // Through the tunnel, TLS to the portal's tunnel address, it works.
    let dev_a = start_device(key_a.clone(), &tun);
    let via_a = tunnel_agent(dev_a.clone(), &tp.ca_pem);
    let api = format!("https://{}", tun.portal_address);
    let (status, body) = post(
        &via_a,
        &format!("{api}/api/sensor/heartbeat"),
        a.api_key.expose(),
        &heartbeat(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(dev_a.stats().handshakes_completed >= 1);

    // Another sensor's key over A's tunnel is refused.
    let key_b = PrivateKey::generate();
    let b = register(tp, "b", &token, &key_b);
    assert_eq!(b.tunnel.as_ref().unwrap().sensor_address, "100.96.0.3");
    let (status, body) = post(
        &via_a,
        &format!("{api}/api/sensor/heartbeat"),
        b.api_key.expose(),
        &heartbeat(),
    );
    assert_eq!(status, 403, "{body}");
    let e: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(e.error, ErrorCode::Forbidden);

    // Claims: refused outside the tunnel, through another sensor's tunnel and with an
    // unknown key, none of which leases the job; through its own tunnel the sensor
    // gets it, once.
    let job = queue_scan(tp);
    let claim = |agent: &ureq::Agent, url: &str, key: &str| {
        post(
            agent,
            &format!("{url}/api/sensor/claim"),
            key,
            &claim_scan(),
        )
    };
    let (status, body) = claim(&direct, &tp.portal.url, a.api_key.expose());
    assert_eq!(status, 403, "{body}");
    let (status, body) = claim(&via_a, &api, b.api_key.expose());
    assert_eq!(status, 403, "{body}");
    let (status, body) = claim(&via_a, &api, "not-a-sensor-key");
    assert_eq!(status, 401, "{body}");
    let (status, body) = claim(&via_a, &api, a.api_key.expose());
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Job>(&body).unwrap().id, job);
    let (status, body) = claim(&via_a, &api, a.api_key.expose());
    assert_eq!(status, 204, "{body}");

    // The operator asks for a rotation: the sensor learns it from its heartbeat answer.
    let (status, body) = post(
        &direct,
        &format!("{}/api/admin/sensors/sn_nope/rotate-key", tp.portal.url),
        &tp.admin_token,
        &(),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        &direct,
        &format!(
            "{}/api/admin/sensors/{}/rotate-key",
            tp.portal.url, a.sensor_id
        ),
        &tp.admin_token,
        &(),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(
        &via_a,
        &format!("{api}/api/sensor/heartbeat"),
        a.api_key.expose(),
        &heartbeat(),
    );
    assert_eq!(status, 200, "{body}");
    let hb: HeartbeatResponse = serde_json::from_str(&body).unwrap();
    assert!(hb.rotate_wg_key, "{body}");

    // Key rotation: same identity and address, the old key stops working.
    let new_key = PrivateKey::generate();
    let (status, body) = post(
        &via_a,
        &format!("{api}/api/sensor/wg-key"),
        a.api_key.expose(),
        &RotateKeyRequest {
            wg_public_key: new_key.public_key().to_base64(),
        },
    );
    assert_eq!(status, 200, "{body}");
    let rotated: TunnelConfig = serde_json::from_str(&body).unwrap();
    assert_eq!(rotated.sensor_address, tun.sensor_address);
    drop(via_a);
    drop(dev_a);
    let dev_a2 = start_device(new_key, &rotated);
    let via_a2 = tunnel_agent(dev_a2, &tp.ca_pem);
    // The first request with the new key is a claim: it completes the rotation too.
    let job = queue_scan(tp);
    let (status, body) = claim(&via_a2, &api, a.api_key.expose());
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Job>(&body).unwrap().id, job);
    let (status, body) = post(
        &via_a2,
        &format!("{api}/api/sensor/heartbeat"),
        a.api_key.expose(),
        &heartbeat(),
    );
    assert_eq!(status, 200, "{body}");
    let hb: HeartbeatResponse = serde_json::from_str(&body).unwrap();
    assert!(
        !hb.rotate_wg_key,
        "the stored new key cleared the request: {body}"
    );
    assert!(
        device::start_device(&key_a, &tun, None, Duration::from_secs(3)).is_err(),
        "the rotated-away key gets no handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_download_through_the_gateway() {
    download_through_the_gateway(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_download_through_the_gateway_postgres() {
    download_through_the_gateway(Backend::Postgres).await
}

async fn download_through_the_gateway(backend: Backend) {
    let tp = start_portal(backend, |s| {
        s.tunnel = Some(TunnelSettings::new(
            "127.0.0.1:0".parse().unwrap(),
            String::new(),
        ));
    })
    .await;
    let tp = Arc::new(tp);
    let t2 = tp.clone();
    tokio::task::spawn_blocking(move || download_run(&t2))
        .await
        .unwrap();
}

/// An update as a sensor runs it, all through its tunnel: claim, a download in two
/// ranges, progress; then the gateway's counters for it in `sensor show`.
fn download_run(tp: &TestPortal) {
    let admin = Api::new(tp);
    let r = admin.post(
        "/api/admin/tokens",
        &tp.admin_token,
        &CreateToken {
            site: "berlin".into(),
            uses: 2,
            ttl_s: 600,
        },
    );
    let token = r.json::<TokenCreated>().token;
    let key_a = PrivateKey::generate();
    let both = [Capability::Scan, Capability::Update];
    let a = register_caps(tp, "a", &token, &key_a, &both);
    let b = register(tp, "b", &token, &PrivateKey::generate());
    let inputs = tempfile::tempdir().unwrap();
    let file = build_bundle(inputs.path(), "1.2.0", Some(&release_key()));
    let r = admin.post_bytes(
        "/api/admin/bundles",
        &tp.admin_token,
        "application/octet-stream",
        &file.bytes,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let bundle: BundleInfo = r.json();
    let r = admin.post(
        &format!("/api/admin/bundles/{}/assign", bundle.id),
        &tp.admin_token,
        &AssignBundle {
            site: None,
            sensors: vec![a.sensor_id.clone()],
        },
    );
    let job_id = r.json::<AssignResult>().jobs[0];

    let tun = a.tunnel.clone().unwrap();
    let dev = start_device(key_a, &tun);
    let via = Api {
        agent: tunnel_agent(dev, &tp.ca_pem),
        base: format!("https://{}", tun.portal_address),
    };
    let key = a.api_key.expose();
    let r = via.post(
        "/api/sensor/claim",
        key,
        &serde_json::json!({"capabilities": ["scan", "update"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let job: Job = r.json();
    let JobSpec::Update(spec) = &job.spec else {
        panic!("not an update: {:?}", job.spec)
    };
    assert_eq!(
        (job.id, spec.size, &spec.sha256),
        (job_id, file.bytes.len() as u64, &file.sha256)
    );

    let path = format!("/api/sensor/bundles/{}", bundle.id);
    let len = file.bytes.len();
    let cut = len / 2;
    let head = via.get_with(
        path.as_str(),
        key,
        &[("range", &format!("bytes=0-{}", cut - 1))],
    );
    assert_eq!(head.status, 206, "{}", head.text());
    let mut state = UpdateStateReport {
        job_id: Some(job.id),
        bundle_id: bundle.id,
        version: spec.version.clone(),
        state: UpdateState::Downloading,
        reason: String::new(),
        progress_percent: 50,
        slot: Some("a".into()),
    };
    let r = via.post("/api/sensor/update-state", key, &state);
    assert_eq!(r.status, 204, "{}", r.text());
    let tail = via.get_with(path.as_str(), key, &[("range", &format!("bytes={cut}-"))]);
    assert_eq!(tail.status, 206, "{}", tail.text());
    let mut got = head.body;
    got.extend_from_slice(&tail.body);
    assert!(got == file.bytes, "the two ranges make the bundle");
    state.state = UpdateState::Rebooting;
    state.progress_percent = 100;
    let r = via.post("/api/sensor/update-state", key, &state);
    assert_eq!(r.status, 204, "{}", r.text());
    let j: JobInfo = admin
        .get(&format!("/api/admin/jobs/{job_id}"), &tp.admin_token)
        .json();
    assert_eq!(j.state, JobState::Completed);

    let s: SensorInfo = admin
        .get(
            &format!("/api/admin/sensors/{}", a.sensor_id),
            &tp.admin_token,
        )
        .json();
    let t = s.tunnel.expect("a tunnel sensor has counters");
    assert!(t.session_up);
    assert!(t.handshakes_completed >= 1, "{t:?}");
    assert!(t.rx_packets > 0 && t.tx_packets > 0, "{t:?}");
    assert!(
        t.tx_bytes >= len as u64,
        "the whole bundle went to the sensor: {t:?}"
    );
    assert!(t.rx_bytes > 0, "{t:?}");
    assert_eq!((t.dropped_not_for_us, t.dropped_spoofed_source), (0, 0));
    assert_eq!(s.update.map(|u| u.state), Some(UpdateState::Rebooting));
    // A peer that never connected: counters, all zero.
    let s: SensorInfo = admin
        .get(
            &format!("/api/admin/sensors/{}", b.sensor_id),
            &tp.admin_token,
        )
        .json();
    let t = s.tunnel.expect("b is a peer");
    assert!(!t.session_up);
    assert_eq!((t.handshakes_completed, t.rx_bytes, t.tx_bytes), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_survives_a_lost_answer() {
    lost_rotation_answer(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_survives_a_lost_answer_postgres() {
    lost_rotation_answer(Backend::Postgres).await
}

async fn lost_rotation_answer(backend: Backend) {
    let tp = start_portal(backend, |s| {
        s.tunnel = Some(TunnelSettings::new(
            "127.0.0.1:0".parse().unwrap(),
            String::new(),
        ));
    })
    .await;
    let tp = Arc::new(tp);
    let t2 = tp.clone();
    let state = tokio::task::spawn_blocking(move || lost_rotation_first(&t2))
        .await
        .unwrap();

    // The portal restarts mid-rotation: both keys come back from the database.
    let tp = Arc::into_inner(tp).expect("no other holder");
    let (dir, database, admin_token, ca_pem) = (tp.dir, tp.database, tp.admin_token, tp.ca_pem);
    tp.portal.stop().await;
    let mut s =
        outpost_portal::Settings::new(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    s.database = Some(database.clone());
    s.tunnel = Some(TunnelSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        String::new(),
    ));
    let portal = outpost_portal::Portal::start(s)
        .await
        .expect("the portal restarts mid-rotation");
    let tp = Arc::new(TestPortal {
        portal,
        dir,
        database,
        admin_token,
        ca_pem,
    });
    let t2 = tp.clone();
    tokio::task::spawn_blocking(move || lost_rotation_second(&t2, state))
        .await
        .unwrap();
}

/// Where the first half of the lost-answer test leaves the sensor.
struct LostRotation {
    old_key: PrivateKey,
    new_key: PrivateKey,
    api_key: String,
    tun: TunnelConfig,
}

fn lost_rotation_first(tp: &TestPortal) -> LostRotation {
    let direct = https(&tp.ca_pem);
    let (_, body) = post(
        &direct,
        &format!("{}/api/admin/tokens", tp.portal.url),
        &tp.admin_token,
        &CreateToken {
            site: "berlin".into(),
            uses: 1,
            ttl_s: 600,
        },
    );
    let token = serde_json::from_str::<TokenCreated>(&body).unwrap().token;
    let old_key = PrivateKey::generate();
    let reg = register(tp, "a", &token, &old_key);
    let tun = reg.tunnel.clone().unwrap();
    let api = format!("https://{}", tun.portal_address);
    let key = reg.api_key.expose().to_owned();
    let dev_old = start_device(old_key.clone(), &tun);
    let via_old = tunnel_agent(dev_old.clone(), &tp.ca_pem);
    let (status, _) = post(
        &direct,
        &format!(
            "{}/api/admin/sensors/{}/rotate-key",
            tp.portal.url, reg.sensor_id
        ),
        &tp.admin_token,
        &(),
    );
    assert_eq!(status, 202);
    assert!(beat(&via_old, &api, &key).rotate_wg_key);

    // The sensor stores its new key, sends it, and never sees the answer: the portal
    // has taken it, the sensor does not know.
    let new_key = PrivateKey::generate();
    let rotate = RotateKeyRequest {
        wg_public_key: new_key.public_key().to_base64(),
    };
    let _lost = post(&via_old, &format!("{api}/api/sensor/wg-key"), &key, &rotate);

    // It keeps working on the old key, even after a restart (a new tunnel, new
    // handshake), and is still asked to rotate.
    assert!(
        beat(&via_old, &api, &key).rotate_wg_key,
        "the rotation is not done yet"
    );
    drop(via_old);
    drop(dev_old);
    let dev_old = start_device(old_key.clone(), &tun);
    let via_old = tunnel_agent(dev_old, &tp.ca_pem);
    assert!(beat(&via_old, &api, &key).rotate_wg_key);
    LostRotation {
        old_key,
        new_key,
        api_key: key,
        tun,
    }
}

fn beat(via: &ureq::Agent, api: &str, key: &str) -> HeartbeatResponse {
    let (status, body) = post(
        via,
        &format!("{api}/api/sensor/heartbeat"),
        key,
        &heartbeat(),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn lost_rotation_second(tp: &TestPortal, st: LostRotation) {
    let gw = tp.portal.state.gateway.clone().unwrap();
    // The restarted gateway listens elsewhere; the sensor learns it as it would from
    // its configuration.
    let mut tun = st.tun.clone();
    tun.endpoint = gw.local_addr().to_string();
    let api = format!("https://{}", tun.portal_address);
    let key = st.api_key.as_str();
    assert!(gw.peer_status(&st.old_key.public_key()).is_some());
    assert!(gw.peer_status(&st.new_key.public_key()).is_some());

    // The old key still works after the restart; the retry sends the same stored key and
    // gets the same answer.
    let dev_old = start_device(st.old_key.clone(), &tun);
    let via_old = tunnel_agent(dev_old.clone(), &tp.ca_pem);
    assert!(beat(&via_old, &api, key).rotate_wg_key);
    let rotate = RotateKeyRequest {
        wg_public_key: st.new_key.public_key().to_base64(),
    };
    let (status, body) = post(&via_old, &format!("{api}/api/sensor/wg-key"), key, &rotate);
    assert_eq!(status, 200, "{body}");
    let rotated: TunnelConfig = serde_json::from_str(&body).unwrap();
    assert_eq!(rotated.sensor_address, tun.sensor_address);
    assert!(beat(&via_old, &api, key).rotate_wg_key);

    // The first request through the new key completes the rotation.
    drop(via_old);
    drop(dev_old);
    let dev_new = start_device(st.new_key.clone(), &rotated);
    let via_new = tunnel_agent(dev_new, &tp.ca_pem);
    assert!(
        !beat(&via_new, &api, key).rotate_wg_key,
        "done: the request cleared"
    );
    assert!(!beat(&via_new, &api, key).rotate_wg_key);
    assert!(gw.peer_status(&st.new_key.public_key()).is_some());
    assert!(
        gw.peer_status(&st.old_key.public_key()).is_none(),
        "the old key is dropped once the new one is used"
    );
    assert!(
        device::start_device(&st.old_key, &tun, None, Duration::from_secs(3)).is_err(),
        "the rotated-away key gets no handshake"
    );
}
