//! Two portal processes (the real `outpost-portal serve` binary, each with its own data
//! directory and ports) on one PostgreSQL database: a sensor registered through one is
//! served through the other's tunnel, a key rotated through one works on the other, a
//! sensor deleted on one is refused on the other, and both present the same CA. With a
//! shared directory, a bundle published through one downloads (resumed) through the
//! other, and a feed imported once on the portal host is served by both.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{device, fresh_database, https, Backend};
use outpost_tunnel::{DeviceTunnel, PrivateKey};
use outpost_wire::admin::{CreateJob, CreateToken, JobInfo, TokenCreated};
use outpost_wire::sensor::{
    Capability, HeartbeatRequest, Job, RegisterResponse, RotateKeyRequest, TunnelConfig,
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

/// `outpost-portal serve` on `database` with its own data directory and ports, and
/// `extra` arguments.
fn start_replica(database: &str, dir: tempfile::TempDir, extra: &[&OsStr]) -> Replica {
    let wg_port = free_udp_port();
    let _ = std::fs::remove_file(dir.path().join("portal.url"));
    let child = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--database", database])
        .args(["--wg-listen", &format!("127.0.0.1:{wg_port}")])
        .args(extra)
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
    common::idle_heartbeat(None)
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
    let shared = tempfile::tempdir().unwrap();
    let shared_arg: [&OsStr; 2] = ["--shared-dir".as_ref(), shared.path().as_os_str()];
    let a = start_replica(&database, dir_a, &shared_arg);
    assert_eq!(a.file("wg.key"), old_wg.as_bytes());
    assert_eq!(a.admin(), "oat_kept");
    // The credential key never enters the database: the operator copies it (docs).
    let dir_b = tempfile::tempdir().unwrap();
    copy(a.dir.path(), dir_b.path(), "credentials.key");
    let b = start_replica(&database, dir_b, &shared_arg);

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
    let key = PrivateKey::generate();
    let reg = register_direct(&direct, &a.url, &admin, "s1", &key);
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
            spec: common::scan_spec("T:22"),
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

// ---- bundles and feed blobs on the shared directory ----

/// Registers a sensor named `name` at site `berlin` (scans and updates) through `url`,
/// with a token made there.
fn register_direct(
    agent: &ureq::Agent,
    url: &str,
    admin: &str,
    name: &str,
    key: &PrivateKey,
) -> RegisterResponse {
    let (status, body) = post(
        agent,
        &format!("{url}/api/admin/tokens"),
        admin,
        &CreateToken {
            site: "berlin".into(),
            uses: 1,
            ttl_s: 600,
        },
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<TokenCreated>(&body).unwrap().token;
    let caps = [Capability::Scan, Capability::Update];
    let (status, body) = post(
        agent,
        &format!("{url}/api/sensor/register"),
        &token,
        &common::register_request(name, "berlin", &caps, &key.public_key()),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A sensor API GET with a range; status, content-range and body.
fn get_range(
    agent: &ureq::Agent,
    url: &str,
    key: &str,
    range: &str,
) -> (u16, Option<String>, Vec<u8>) {
    let resp = agent
        .get(url)
        .header("authorization", &format!("Bearer {key}"))
        .header("range", range)
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    let cr = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, cr, body)
}

/// `POST` a feed batch request; status and the raw answer.
fn post_feed<T: serde::Serialize>(
    agent: &ureq::Agent,
    url: &str,
    key: &str,
    body: &T,
) -> (u16, Vec<u8>) {
    let resp = agent
        .post(url)
        .header("authorization", &format!("Bearer {key}"))
        .send_json(body)
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .with_config()
        .limit(128 << 20)
        .read_to_vec()
        .unwrap();
    (status, body)
}

/// The blobs `shas` from the replica at `url`, each checked against its name; panics on
/// any answer but 200.
fn fetch_blobs(agent: &ureq::Agent, url: &str, key: &str, shas: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for part in shas.chunks(256) {
        let (status, body) = post_feed(
            agent,
            &format!("{url}{}", outpost_wire::feed::BLOBS_PATH),
            key,
            &outpost_wire::feed::FeedBlobsRequest {
                sha256: part.to_vec(),
            },
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let mut batch = outpost_feed::batch::BatchReader::new(&body[..]).unwrap();
        let mut got = Vec::new();
        while let Some(e) = batch.next_entry().unwrap() {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut batch.content(), &mut bytes).unwrap();
            assert_eq!(common::sha256_hex(&bytes), e.sha256);
            got.push((e.sha256, bytes));
        }
        let names: Vec<&String> = got.iter().map(|(s, _)| s).collect();
        assert_eq!(
            names,
            part.iter().collect::<Vec<_>>(),
            "every blob, in order"
        );
        out.extend(got.into_iter().map(|(_, b)| b));
    }
    out
}

/// `outpost-portal feed --data-dir DIR --shared-dir SHARED ARGS…`, which must succeed.
fn feed_cli(dir: &Path, shared: &Path, args: &[&OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("feed")
        .arg("--data-dir")
        .arg(dir)
        .arg("--shared-dir")
        .arg(shared)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "feed {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn release_info(agent: &ureq::Agent, url: &str, key: &str) -> outpost_wire::feed::FeedReleaseInfo {
    let resp = agent
        .get(format!("{url}{}", outpost_wire::feed::RELEASE_PATH))
        .header("authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.into_body().read_json().unwrap()
}

/// A release's manifest, fetched from the replica at `url` like a sensor does.
fn manifest(
    agent: &ureq::Agent,
    url: &str,
    key: &str,
    info: &outpost_wire::feed::FeedReleaseInfo,
) -> outpost_feed::FeedManifest {
    let bytes = fetch_blobs(agent, url, key, std::slice::from_ref(&info.manifest_sha256));
    assert_eq!(bytes[0].len() as u64, info.manifest_size);
    serde_json::from_slice(&bytes[0]).unwrap()
}

#[test]
fn replicas_share_bundles_and_feed_blobs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let database = rt.block_on(fresh_database(Backend::Postgres, scratch.path()));
    // What every replica mounts; each still has a data directory of its own.
    let shared = tempfile::tempdir().unwrap();
    // The sensor API outside the tunnel too, so the test needs no tunnels here.
    let extra: [&OsStr; 3] = [
        "--shared-dir".as_ref(),
        shared.path().as_os_str(),
        "--wg-optional".as_ref(),
    ];
    let a = start_replica(&database, tempfile::tempdir().unwrap(), &extra);
    let dir_b = tempfile::tempdir().unwrap();
    copy(a.dir.path(), dir_b.path(), "credentials.key");
    let b = start_replica(&database, dir_b, &extra);
    let agent = https(&a.file("ca.pem"));
    let admin = a.admin();
    let reg = register_direct(&agent, &a.url, &admin, "s1", &PrivateKey::generate());
    let (sensor, key) = (reg.sensor_id, reg.api_key.expose().to_owned());

    // A replica (or an import) not on the shared directory is refused at start, and its
    // data directory is left without a storage marker.
    let dir_c = tempfile::tempdir().unwrap();
    copy(a.dir.path(), dir_c.path(), "credentials.key");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir_c.path())
        .args(["--listen", "127.0.0.1:0", "--database", &database])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shared-dir"), "{err}");
    assert!(!dir_c.path().join("bundles/.storage-id").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-portal"))
        .arg("feed")
        .arg("--data-dir")
        .arg(dir_c.path())
        .args(["import", "--database", &database])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shared-dir"), "{err}");

    // A bundle published through A, assigned through B, downloaded as the sensor does:
    // the first part from A, cut, and resumed from B.
    let inputs = tempfile::tempdir().unwrap();
    let bundle = common::build_bundle(inputs.path(), "1.2.0", None);
    let resp = agent
        .post(format!("{}/api/admin/bundles", a.url))
        .header("authorization", &format!("Bearer {admin}"))
        .header("content-type", "application/octet-stream")
        .send(&bundle.bytes[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let info: outpost_wire::admin::BundleInfo = resp.into_body().read_json().unwrap();
    assert_eq!(info.sha256, bundle.sha256);
    let (status, body) = post(
        &agent,
        &format!("{}/api/admin/bundles/{}/assign", b.url, info.id),
        &admin,
        &outpost_wire::admin::AssignBundle {
            site: None,
            sensors: vec![sensor.clone()],
        },
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let len = bundle.bytes.len();
    let cut = len / 3;
    let path = format!("/api/sensor/bundles/{}", info.id);
    let (status, _, head) = get_range(
        &agent,
        &format!("{}{path}", a.url),
        &key,
        &format!("bytes=0-{}", cut - 1),
    );
    assert_eq!((status, head.len()), (206, cut));
    let (status, content_range, tail) = get_range(
        &agent,
        &format!("{}{path}", b.url),
        &key,
        &format!("bytes={cut}-"),
    );
    assert_eq!(status, 206);
    assert_eq!(
        content_range,
        Some(format!("bytes {cut}-{}/{len}", len - 1))
    );
    let mut resumed = head;
    resumed.extend_from_slice(&tail);
    assert!(
        resumed == bundle.bytes,
        "the resumed download is the bundle"
    );
    assert_eq!(common::sha256_hex(&resumed), info.sha256);

    // A feed imported once, on A's host, into the shared directory.
    let signer = outpost_feedgen::gpg::GpgSigner::create(
        &scratch.path().join("gnupg"),
        "Outpost Test Feed Integrity Key <feed@test.invalid>",
    )
    .unwrap();
    std::fs::write(
        a.dir.path().join("feed-keyring.gpg"),
        signer.export_public().unwrap(),
    )
    .unwrap();
    feed_cli(a.dir.path(), shared.path(), &["keygen".as_ref()]);
    let spec = outpost_feedgen::FeedSpec::new(11, 200).unwrap();
    let tree = scratch.path().join("feed");
    outpost_feedgen::generate(&tree, &spec, 0, Some(&signer)).unwrap();
    let import = |keep: &str| {
        feed_cli(
            a.dir.path(),
            shared.path(),
            &[
                "import".as_ref(),
                "--database".as_ref(),
                database.as_ref(),
                "--keep".as_ref(),
                keep.as_ref(),
                tree.as_os_str(),
            ],
        )
    };
    import("3");
    let info0 = release_info(&agent, &a.url, &key);
    assert_eq!(release_info(&agent, &b.url, &key), info0);
    let m0 = manifest(&agent, &b.url, &key, &info0);
    let shas0: Vec<String> = m0.files.iter().map(|f| f.sha256.clone()).collect();
    let mut distinct0 = shas0.clone();
    distinct0.sort();
    distinct0.dedup();
    // Every file of the release, from both replicas.
    for url in [&a.url, &b.url] {
        let got = fetch_blobs(&agent, url, &key, &distinct0);
        assert_eq!(got.len(), distinct0.len());
    }
    let file0 = |p: &str| std::fs::read(tree.join(p)).unwrap();
    let sample = &m0.files[m0.files.len() / 2];
    assert_eq!(
        fetch_blobs(&agent, &b.url, &key, std::slice::from_ref(&sample.sha256))[0],
        file0(&sample.path)
    );

    // The next day: B serves the new release and deltas of its changed files against
    // the sensor's (day 0) versions.
    let day0: std::collections::BTreeMap<String, Vec<u8>> = m0
        .files
        .iter()
        .map(|f| (f.path.clone(), file0(&f.path)))
        .collect();
    outpost_feedgen::advance(&tree, &spec, 0, Some(&signer)).unwrap();
    import("3");
    let info1 = release_info(&agent, &b.url, &key);
    assert_ne!(info1.release_id, info0.release_id);
    assert_eq!(release_info(&agent, &a.url, &key), info1);
    let m1 = manifest(&agent, &b.url, &key, &info1);
    let changed: Vec<outpost_wire::feed::FeedDeltaPair> = m1
        .files
        .iter()
        .filter_map(|f| {
            let old = m0.files.iter().find(|o| o.path == f.path)?;
            (old.sha256 != f.sha256).then(|| outpost_wire::feed::FeedDeltaPair {
                base: old.sha256.clone(),
                target: f.sha256.clone(),
            })
        })
        .collect();
    assert!(!changed.is_empty(), "day 1 changes files");
    let (status, body) = post_feed(
        &agent,
        &format!("{}{}", b.url, outpost_wire::feed::DELTAS_PATH),
        &key,
        &outpost_wire::feed::FeedDeltasRequest {
            deltas: changed.clone(),
        },
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut batch = outpost_feed::batch::BatchReader::new(&body[..]).unwrap();
    let mut applied = 0;
    while let Some(e) = batch.next_entry().unwrap() {
        let pair = changed.iter().find(|p| p.target == e.sha256).unwrap();
        let path = &m0
            .files
            .iter()
            .find(|f| f.sha256 == pair.base)
            .unwrap()
            .path;
        let base: &[u8] = &day0[path];
        let mut r = batch.content();
        let head = outpost_feed::delta::read_header(&mut r).unwrap();
        assert_eq!(head.base_sha256, pair.base);
        let mut out = Vec::new();
        outpost_feed::delta::apply_ops(&mut r, &base, head.target_len, &mut out).unwrap();
        assert_eq!(common::sha256_hex(&out), pair.target);
        applied += 1;
    }
    assert!(applied > 0, "B sent deltas");

    // Day 2 keeps two releases: day 0 goes, and so do the blobs only it had; every
    // blob of the kept releases stays, served by both replicas.
    outpost_feedgen::advance(&tree, &spec, 1, Some(&signer)).unwrap();
    import("2");
    let info2 = release_info(&agent, &a.url, &key);
    assert_eq!(release_info(&agent, &b.url, &key), info2);
    let m2 = manifest(&agent, &a.url, &key, &info2);
    let mut kept: Vec<String> = m1
        .files
        .iter()
        .chain(&m2.files)
        .map(|f| f.sha256.clone())
        .chain([info1.manifest_sha256.clone(), info2.manifest_sha256.clone()])
        .collect();
    kept.sort();
    kept.dedup();
    for url in [&a.url, &b.url] {
        assert_eq!(fetch_blobs(&agent, url, &key, &kept).len(), kept.len());
    }
    let gone: Vec<String> = distinct0
        .iter()
        .filter(|s| kept.binary_search(s).is_err())
        .cloned()
        .collect();
    assert!(!gone.is_empty(), "day 0 had content of its own");
    let (status, _) = post_feed(
        &agent,
        &format!("{}{}", b.url, outpost_wire::feed::BLOBS_PATH),
        &key,
        &outpost_wire::feed::FeedBlobsRequest {
            sha256: gone[..1].to_vec(),
        },
    );
    assert_eq!(status, 404, "a collected blob is gone for every replica");
}
