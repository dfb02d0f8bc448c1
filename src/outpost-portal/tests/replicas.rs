//! Two portal processes (the real `outpost-portal serve` binary, each with its own data
//! directory and ports) on one PostgreSQL database: a sensor registered through one is
//! served through the other's tunnel, a key rotated through one works on the other, a
//! sensor deleted on one is refused on the other, and both present the same CA.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{device, fresh_database, https, Backend};
use outpost_tunnel::{DeviceTunnel, PrivateKey};
use outpost_wire::admin::{CreateJob, CreateToken, JobInfo, TokenCreated};
use outpost_wire::sensor::{
    Activity, Capability, HeartbeatRequest, Job, Metrics, RegisterRequest, RegisterResponse,
    RotateKeyRequest, TunnelConfig,
};

/// Generous: the bounds are for a loaded CI machine, not measurements.
const DEADLINE: Duration = Duration::from_secs(60);

struct Replica {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    wg_port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }
    fn admin(&self) -> String {
        String::from_utf8(self.file("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_replica(database: &str, dir: tempfile::TempDir) -> Replica {
    let wg_port = free_udp_port();
    let _ = std::fs::remove_file(dir.path().join("portal.url"));
    let child = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(["--wg-listen", &format!("127.0.0.1:{wg_port}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("start outpost-portal serve");
    let url = wait_for(|| {
        std::fs::read_to_string(dir.path().join("portal.url"))
            .ok()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
    });
    Replica {
        child,
        dir,
        url,
        wg_port,
    }
}

/// Polls until `f` answers, or panics after [`DEADLINE`].
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "gave up after {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tunnel_agent(tunnel: Arc<DeviceTunnel>, ca_pem: &[u8]) -> ureq::Agent {
    device::tunnel_agent(tunnel, ca_pem, Duration::from_secs(10)).expect("tunnel agent")
}

/// A device tunnel with `key` to the gateway on `wg_port`, once its handshake succeeds.
fn tunnel_to(
    key: &PrivateKey,
    t: &TunnelConfig,
    wg_port: u16,
    wait: Duration,
) -> Option<Arc<DeviceTunnel>> {
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], wg_port));
    device::start_device(key, t, Some(gateway), wait).ok()
}

/// Status and body; None when the request did not get through at all.
fn post<T: serde::Serialize>(
    agent: &ureq::Agent,
    url: &str,
    key: &str,
    body: &T,
) -> Option<(u16, String)> {
    let resp = agent
        .post(url)
        .header("authorization", &format!("Bearer {key}"))
        .send_json(body)
        .ok()?;
    let status = resp.status().as_u16();
    Some((
        status,
        resp.into_body().read_to_string().unwrap_or_default(),
    ))
}

fn heartbeat() -> HeartbeatRequest {
    HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 1,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: None,
    }
}

fn copy(from: &Path, to: &Path, name: &str) {
    std::fs::copy(from.join(name), to.join(name)).unwrap();
}

#[test]
fn two_replicas_share_sensors_keys_and_identity() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let database = rt.block_on(fresh_database(Backend::Postgres, scratch.path()));

    // A single portal's data directory moving to replicas: its identity is kept.
    let dir_a = tempfile::tempdir().unwrap();
    let old_wg = format!("{}\n", PrivateKey::generate().to_base64());
    std::fs::write(dir_a.path().join("wg.key"), &old_wg).unwrap();
    std::fs::write(dir_a.path().join("admin.token"), "oat_kept\n").unwrap();
    let a = start_replica(&database, dir_a);
    assert_eq!(a.file("wg.key"), old_wg.as_bytes());
    assert_eq!(a.admin(), "oat_kept");
    // The credential key never enters the database: the operator copies it (docs).
    let dir_b = tempfile::tempdir().unwrap();
    copy(a.dir.path(), dir_b.path(), "credentials.key");
    let b = start_replica(&database, dir_b);

    // One identity: the sensor's pinned CA (A's) verifies B, one admin token, one gateway key.
    let ca = a.file("ca.pem");
    assert_eq!(ca, b.file("ca.pem"));
    assert_eq!(a.admin(), b.admin());
    assert_eq!(a.file("wg.key"), b.file("wg.key"));
    let direct = https(&ca);
    for r in [&a, &b] {
        let health = direct.get(format!("{}/healthz", r.url)).call().unwrap();
        assert_eq!(health.status().as_u16(), 200);
    }
    let admin = a.admin();

    // A data directory with an identity of its own is refused, not overwritten.
    let dir_c = tempfile::tempdir().unwrap();
    copy(a.dir.path(), dir_c.path(), "credentials.key");
    let other_wg = format!("{}\n", PrivateKey::generate().to_base64());
    std::fs::write(dir_c.path().join("wg.key"), &other_wg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir_c.path())
        .args(["--listen", "127.0.0.1:0", "--database", &database])
        .args(["--wg-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("portal_secrets"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir_c.path().join("wg.key")).unwrap(),
        other_wg
    );

    // Register through A.
    let (status, body) = post(
        &direct,
        &format!("{}/api/admin/tokens", a.url),
        &admin,
        &CreateToken {
            site: "berlin".into(),
            uses: 1,
            ttl_s: 600,
        },
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<TokenCreated>(&body).unwrap().token;
    let key = PrivateKey::generate();
    let (status, body) = post(
        &direct,
        &format!("{}/api/sensor/register", a.url),
        &token,
        &RegisterRequest {
            name: "s1".into(),
            site: "berlin".into(),
            hostname: "s1".into(),
            os: "test".into(),
            board: "test".into(),
            hardware_serial: "0".into(),
            board_serial: None,
            agent_version: "0.1.0".into(),
            capabilities: vec![Capability::Scan],
            wg_public_key: key.public_key().to_base64(),
        },
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let reg: RegisterResponse = serde_json::from_str(&body).unwrap();
    let tun = reg.tunnel.clone().expect("tunnel config");
    let api_key = reg.api_key.expose().to_owned();
    let api = format!("https://{}", tun.portal_address);

    // The tunnel comes up on B (which learnt the peer from the database) and a job
    // queued through B is claimed through B.
    let dev_b = wait_for(|| tunnel_to(&key, &tun, b.wg_port, Duration::from_secs(3)));
    let via_b = tunnel_agent(dev_b, &ca);
    let (status, body) = post(
        &direct,
        &format!("{}/api/admin/jobs", b.url),
        &admin,
        &CreateJob {
            site: "berlin".into(),
            spec: common::scan_spec(),
            sensor_id: None,
        },
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let job = serde_json::from_str::<JobInfo>(&body).unwrap().id;
    let (status, body) = post(
        &via_b,
        &format!("{api}/api/sensor/claim"),
        &api_key,
        &serde_json::json!({"capabilities": ["scan"]}),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Job>(&body).unwrap().id, job);

    // Rotate through A; the new key works on B.
    let dev_a = tunnel_to(&key, &tun, a.wg_port, Duration::from_secs(10)).expect("tunnel to A");
    let via_a = tunnel_agent(dev_a, &ca);
    let new_key = PrivateKey::generate();
    let (status, body) = post(
        &via_a,
        &format!("{api}/api/sensor/wg-key"),
        &api_key,
        &RotateKeyRequest {
            wg_public_key: new_key.public_key().to_base64(),
        },
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    drop((via_a, via_b));
    let dev_b2 = wait_for(|| tunnel_to(&new_key, &tun, b.wg_port, Duration::from_secs(3)));
    let via_b2 = tunnel_agent(dev_b2, &ca);
    let (status, body) = post(
        &via_b2,
        &format!("{api}/api/sensor/heartbeat"),
        &api_key,
        &heartbeat(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    // That request finished the rotation on B: A drops the old key too.
    wait_for(|| {
        tunnel_to(&key, &tun, a.wg_port, Duration::from_secs(2))
            .is_none()
            .then_some(())
    });

    // The replicas' LISTEN connections drop (a database restart, a proxy timeout):
    // they reconnect and re-read the peers, so the deletion below still reaches B.
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&database, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let n = client
            .query(
                // this database only: other tests' portals share the server
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'outpost-portal peer sync' \
                 AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .len();
        assert_eq!(n, 2, "one LISTEN connection per replica");
    });

    // Delete on A: B refuses the sensor's requests and then its tunnel.
    let resp = direct
        .delete(format!("{}/api/admin/sensors/{}", a.url, reg.sensor_id))
        .header("authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let refused = post(
        &via_b2,
        &format!("{api}/api/sensor/heartbeat"),
        &api_key,
        &heartbeat(),
    );
    assert!(
        refused.as_ref().is_none_or(|(s, _)| *s == 401),
        "{refused:?}"
    );
    wait_for(|| {
        tunnel_to(&new_key, &tun, b.wg_port, Duration::from_secs(2))
            .is_none()
            .then_some(())
    });
}
