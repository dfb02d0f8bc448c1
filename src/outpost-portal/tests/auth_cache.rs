//! The sensor identity cache (`store/auth_cache.rs`) with two portals on one PostgreSQL
//! database, as replicas run: a sensor deleted or a key rotation finished through one
//! portal reaches the other's cache through the notification, and while the other's
//! LISTEN connection is down (notifications lost) it caches nothing and refuses a sensor
//! deleted meanwhile at once.

mod common;

use std::time::{Duration, Instant};

use common::{https, start_portal, Backend, TestPortal};
use outpost_portal::auth;
use outpost_portal::settings::TunnelSettings;
use outpost_portal::store::{AuthCache, Store};
use outpost_portal::{Portal, Settings};
use outpost_tunnel::PrivateKey;
use outpost_wire::admin::{CreateToken, TokenCreated};
use outpost_wire::sensor::{Capability, RegisterResponse};

/// Generous: the bounds are for a loaded CI machine, not measurements.
const DEADLINE: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cache(p: &Portal) -> &AuthCache {
    match &p.state.store {
        Store::Postgres(pg) => pg.auth_cache(),
        Store::Sqlite(_) => panic!("these portals run on PostgreSQL"),
    }
}

fn listening(p: &Portal) -> bool {
    p.state
        .peer_syncs
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && cache(p).is_listening()
}

/// A gateway, and the sensor API outside the tunnel too, so requests need no tunnels.
fn with_gateway(s: &mut Settings) {
    let mut t = TunnelSettings::new("127.0.0.1:0".parse().unwrap(), String::new());
    t.require = false;
    s.tunnel = Some(t);
}

struct Sensor {
    id: String,
    key: String,
}

fn register(agent: &ureq::Agent, tp: &TestPortal, name: &str) -> Sensor {
    let url = &tp.portal.url;
    let token: TokenCreated = agent
        .post(format!("{url}/api/admin/tokens"))
        .header("authorization", &format!("Bearer {}", tp.admin_token))
        .send_json(CreateToken {
            site: "berlin".into(),
            uses: 1,
            ttl_s: 600,
        })
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let req = common::register_request(
        name,
        "berlin",
        &[Capability::Scan],
        &PrivateKey::generate().public_key(),
    );
    let mut resp = agent
        .post(format!("{url}/api/sensor/register"))
        .header("authorization", &format!("Bearer {}", token.token))
        .send_json(&req)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let reg: RegisterResponse = resp.body_mut().read_json().unwrap();
    Sensor {
        id: reg.sensor_id,
        key: reg.api_key.expose().to_owned(),
    }
}

/// The status of a claim by `s` through the portal at `url` (200, 204 or 401).
fn claim(agent: &ureq::Agent, url: &str, s: &Sensor) -> u16 {
    agent
        .post(format!("{url}/api/sensor/claim"))
        .header("authorization", &format!("Bearer {}", s.key))
        .send_json(serde_json::json!({"capabilities": ["scan"]}))
        .unwrap()
        .status()
        .as_u16()
}

fn delete(agent: &ureq::Agent, tp: &TestPortal, s: &Sensor) {
    let resp = agent
        .delete(format!("{}/api/admin/sensors/{}", tp.portal.url, s.id))
        .header("authorization", &format!("Bearer {}", tp.admin_token))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

#[test]
fn deletions_and_rotations_on_one_replica_reach_the_others_cache() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Replicas share a directory for bundles and feed blobs.
    let shared = tempfile::tempdir().unwrap();
    let a = rt.block_on(start_portal(Backend::Postgres, |s| {
        with_gateway(s);
        s.shared_dir = Some(shared.path().to_owned());
    }));
    // B: its own data directory (the credential key copied, as operators do), A's database.
    let dir_b = tempfile::tempdir().unwrap();
    std::fs::copy(
        a.dir.path().join("credentials.key"),
        dir_b.path().join("credentials.key"),
    )
    .unwrap();
    let mut s = Settings::new(dir_b.path().to_owned(), "127.0.0.1:0".parse().unwrap());
    s.database = Some(a.database.clone());
    with_gateway(&mut s);
    s.shared_dir = Some(shared.path().to_owned());
    let b = rt.block_on(Portal::start(s)).unwrap();
    let agent = https(&a.ca_pem);
    wait_until("both portals listen", || {
        listening(&a.portal) && listening(&b)
    });

    let s1 = register(&agent, &a, "s1");
    let s2 = register(&agent, &a, "s2");
    let s3 = register(&agent, &a, "s3");

    // B serves s1 from its cache once it has read it. (The registration's own
    // notification may still drop the first entry: ask until it stays.)
    wait_until("B caches s1", || {
        assert_eq!(claim(&agent, &b.url, &s1), 204);
        cache(&b).holds(&s1.id)
    });

    // A key rotation finished through A (as a request through A's tunnel with the new
    // key would): B's entry goes, and B reads the new key.
    let new_key = PrivateKey::generate().public_key().to_base64();
    let store_a = a.portal.state.store.clone();
    rt.block_on(async {
        store_a.begin_rotation(&s1.id, &new_key).await.unwrap();
        let old = store_a.finish_rotation(&s1.id, &new_key).await.unwrap();
        assert!(old.is_some(), "the rotation finished");
    });
    wait_until("B drops s1's old key", || !cache(&b).holds(&s1.id));
    // (Either notification may still drop a fresh entry: ask until the new key stays.)
    wait_until("B caches s1 with its new key", || {
        assert_eq!(claim(&agent, &b.url, &s1), 204);
        cache(&b)
            .get(&auth::hash(&s1.key))
            .is_some_and(|cached| cached.wg_public_key == new_key)
    });

    // Deleted through A: B's entry goes and B refuses the sensor.
    delete(&agent, &a, &s1);
    wait_until("B drops s1", || !cache(&b).holds(&s1.id));
    assert_eq!(claim(&agent, &b.url, &s1), 401);

    // Notifications lost: B's LISTEN connection is cut and cannot come back (the
    // database takes no new connections; the pools keep theirs).
    wait_until("B caches s2", || {
        assert_eq!(claim(&agent, &b.url, &s2), 204);
        cache(&b).holds(&s2.id)
    });
    let admin_url = std::env::var("OUTPOST_TEST_PG_URL").unwrap();
    let db = a.database.rsplit_once('/').unwrap().1.to_owned();
    let admin = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
            .await
            .unwrap();
        let cut = client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'outpost-portal peer sync' AND datname = $1",
                &[&db],
            )
            .await
            .unwrap();
        assert_eq!(cut, 2, "one LISTEN connection per portal");
        client
    });
    wait_until("B notices the lost connection", || {
        !cache(&b).is_listening()
    });
    assert!(cache(&b).is_empty(), "everything cached went with it");
    // s2 deleted through A meanwhile: its notification reaches nobody, and B refuses s2
    // at once. B caches nothing while it cannot hear.
    delete(&agent, &a, &s2);
    assert_eq!(claim(&agent, &b.url, &s2), 401);
    assert_eq!(claim(&agent, &b.url, &s3), 204);
    assert!(cache(&b).is_empty(), "nothing cached while not listening");

    // Back: B listens again and caches again.
    let syncs = b
        .state
        .peer_syncs
        .load(std::sync::atomic::Ordering::Relaxed);
    rt.block_on(admin.batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")))
        .unwrap();
    wait_until("B listens again", || {
        b.state
            .peer_syncs
            .load(std::sync::atomic::Ordering::Relaxed)
            > syncs
            && cache(&b).is_listening()
    });
    wait_until("B caches s3", || {
        assert_eq!(claim(&agent, &b.url, &s3), 204);
        cache(&b).holds(&s3.id)
    });
    assert_eq!(claim(&agent, &b.url, &s2), 401);
    rt.block_on(b.stop());
    rt.block_on(a.portal.stop());
}
