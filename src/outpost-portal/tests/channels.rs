//! Release channels and feed lag through the API, on both backends: a site pinned to an
//! older release and a sensor overriding it, the release each sensor is served and told
//! in its heartbeat's answer, the lag view with its grace, the upstream staleness flag,
//! and refusals that name what is wrong.

mod common;

use std::time::Duration;

use common::{start_portal, Api, Backend, TestPortal};
use outpost_portal::feeds::blobs::{sha256_hex, BlobStore};
use outpost_portal::store::{NewFeedRelease, Store};
use outpost_wire::admin::{
    paths, CreateToken, FeedChannel, FeedChannelInfo, FeedReleases, SensorInfo, SetFeedChannel,
    TokenCreated,
};
use outpost_wire::feed::{release_name, FeedReleaseInfo, RELEASE_PATH};
use outpost_wire::sensor::{
    Activity, HeartbeatRequest, HeartbeatResponse, Metrics, RegisterRequest, RegisterResponse,
};
use outpost_wire::{paths as sensor_paths, ErrorCode};

fn register(api: &Api, tp: &TestPortal, name: &str, site: &str) -> RegisterResponse {
    let r = api.post(
        "/api/admin/tokens",
        &tp.admin_token,
        &CreateToken {
            site: site.into(),
            uses: 1,
            ttl_s: 3600,
        },
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let tok = r.json::<TokenCreated>().token;
    let req = RegisterRequest {
        name: name.into(),
        site: site.into(),
        hostname: format!("{name}.local"),
        os: "Outpost test".into(),
        board: "Raspberry Pi 4 Model B".into(),
        hardware_serial: "0000".into(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: vec![outpost_wire::sensor::Capability::Scan],
        wg_public_key: outpost_tunnel::PrivateKey::generate()
            .public_key()
            .to_base64(),
    };
    let r = api.post(sensor_paths::REGISTER, &tok, &req);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn beat(api: &Api, key: &str, live: Option<&str>) -> HeartbeatResponse {
    let hb = HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 5,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: live.map(str::to_owned),
    };
    let r = api.post(sensor_paths::HEARTBEAT, key, &hb);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn served(api: &Api, key: &str) -> i64 {
    let r = api.get(RELEASE_PATH, key);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json::<FeedReleaseInfo>().release_id
}

fn set(api: &Api, tp: &TestPortal, req: &SetFeedChannel) -> common::Resp {
    api.post(paths::FEED_CHANNELS, &tp.admin_token, req)
}

fn feed_of(api: &Api, tp: &TestPortal, id: &str) -> outpost_wire::admin::SensorFeed {
    let r = api.get(&paths::sensor(id), &tp.admin_token);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json::<SensorInfo>()
        .feed
        .expect("the portal shows the feed")
}

/// `YYYYMMDDhhmm` of a Unix time.
fn plugin_set(t: i64) -> String {
    let (y, mo, d, h, mi, _) = outpost_feed::civil_from_unix(t);
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}")
}

/// Publishes a release row with a manifest blob on disk (what the release endpoint
/// reads); content is not what this test is about (feeds.rs imports real trees).
async fn publish(tp: &TestPortal, store: &Store, plugin_set: &str) -> (i64, String) {
    let manifest = format!("manifest {plugin_set}");
    let sha = sha256_hex(manifest.as_bytes());
    BlobStore::open(&tp.dir.path().join("feeds"))
        .expect("blob store")
        .put(&sha, manifest.as_bytes())
        .expect("manifest blob");
    let (r, created) = store
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
        .expect("publish");
    assert!(created);
    (r.id, release_name(plugin_set, &sha))
}

async fn channels_and_lag(backend: Backend) {
    let tp = start_portal(backend, |s| {
        s.feed_grace = Duration::from_secs(1);
        s.feed_stale_after = Duration::from_secs(1800);
    })
    .await;
    let api = Api::new(&tp);
    let store = Store::open(&tp.database).await.expect("store");

    // Nothing published: no release, nothing wanted, and the upstream is stale.
    let a = register(&api, &tp, "a", "berlin");
    assert_eq!(api.get(RELEASE_PATH, a.api_key.expose()).status, 204);
    assert_eq!(beat(&api, a.api_key.expose(), None).feed_release, None);
    let r: FeedReleases = api.get(paths::FEED_RELEASES, &tp.admin_token).json();
    assert!(r.stale && r.releases.is_empty());

    // Three releases a day apart, the newest an hour old by the portal's clock.
    let now = outpost_wire::unix_now();
    let (r1, n1) = publish(&tp, &store, &plugin_set(now - 3600 - 2 * 86_400)).await;
    let (r2, _) = publish(&tp, &store, &plugin_set(now - 3600 - 86_400)).await;
    let (r3, n3) = publish(&tp, &store, &plugin_set(now - 3600)).await;
    let b = register(&api, &tp, "b", "berlin");
    let c = register(&api, &tp, "c", "paris");

    // Stale after 30 minutes: an hour-old newest release is stale, and says how old.
    let r: FeedReleases = api.get(paths::FEED_RELEASES, &tp.admin_token).json();
    assert_eq!(
        r.releases.iter().map(|x| x.id).collect::<Vec<_>>(),
        [r3, r2, r1]
    );
    assert_eq!(r.releases[0].name, n3);
    assert!(r.stale);
    assert_eq!(r.stale_after_s, 1800);
    let age = r.newest_age_s.expect("age");
    assert!((3600..3600 + 120).contains(&age), "{age}");

    // Berlin pinned to the oldest; sensor b follows the newest anyway; paris the default.
    let pin = SetFeedChannel {
        site: Some("berlin".into()),
        sensor: None,
        channel: Some(FeedChannel::Pinned(r1)),
    };
    let resp = set(&api, &tp, &pin);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = set(
        &api,
        &tp,
        &SetFeedChannel {
            site: None,
            sensor: Some(b.sensor_id.clone()),
            channel: Some(FeedChannel::Newest),
        },
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let list: Vec<FeedChannelInfo> = resp.json();
    assert_eq!(list.len(), 2);
    assert_eq!(served(&api, a.api_key.expose()), r1);
    assert_eq!(served(&api, b.api_key.expose()), r3);
    assert_eq!(served(&api, c.api_key.expose()), r3);
    let r: FeedReleases = api.get(paths::FEED_RELEASES, &tp.admin_token).json();
    assert_eq!(r.releases[2].pinned_by, ["site berlin"]);

    // The heartbeat's answer names the release each should have.
    assert_eq!(
        beat(&api, a.api_key.expose(), Some(&n1))
            .feed_release
            .as_deref(),
        Some(n1.as_str())
    );
    assert_eq!(
        beat(&api, b.api_key.expose(), Some(&n1))
            .feed_release
            .as_deref(),
        Some(n3.as_str())
    );
    assert_eq!(
        beat(&api, c.api_key.expose(), None).feed_release.as_deref(),
        Some(n3.as_str())
    );

    // a runs its pinned release: two newer exist, but it is where it should be.
    let fa = feed_of(&api, &tp, &a.sensor_id);
    assert_eq!(fa.channel, FeedChannel::Pinned(r1));
    assert_eq!(fa.channel_from, "site");
    assert_eq!(fa.live.as_deref(), Some(n1.as_str()));
    assert_eq!(fa.wanted_release_id, Some(r1));
    assert_eq!(fa.newer_releases, Some(2));
    assert_eq!(fa.plugin_set_behind_s, Some(0));
    assert!(!fa.feed_behind && fa.off_channel_since.is_none());
    // b is two releases, two days, behind its channel; within the grace at first.
    let fb = feed_of(&api, &tp, &b.sensor_id);
    assert_eq!(fb.channel_from, "sensor");
    assert_eq!(fb.wanted.as_deref(), Some(n3.as_str()));
    assert_eq!(fb.newer_releases, Some(2));
    assert_eq!(fb.plugin_set_behind_s, Some(2 * 86_400));
    assert!(fb.off_channel_since.is_some());
    // c said nothing about its feed: nothing is claimed about it.
    let fc = feed_of(&api, &tp, &c.sensor_id);
    assert_eq!(
        (fc.live, fc.newer_releases, fc.feed_behind),
        (None, None, false)
    );
    assert_eq!(fc.channel_from, "default");

    // Past the grace b is flagged; a is not. Once b runs the newest it is not.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(feed_of(&api, &tp, &b.sensor_id).feed_behind);
    assert!(!feed_of(&api, &tp, &a.sensor_id).feed_behind);
    let list: Vec<SensorInfo> = api.get(paths::SENSORS, &tp.admin_token).json();
    let behind: Vec<&str> = list
        .iter()
        .filter(|s| s.feed.as_ref().is_some_and(|f| f.feed_behind))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(behind, ["b"]);
    beat(&api, b.api_key.expose(), Some(&n3));
    let fb = feed_of(&api, &tp, &b.sensor_id);
    assert!(!fb.feed_behind && fb.off_channel_since.is_none());
    assert_eq!(fb.newer_releases, Some(0));

    // Cleared, b follows its site's pin again; clearing twice is an error.
    let clear_b = SetFeedChannel {
        site: None,
        sensor: Some(b.sensor_id.clone()),
        channel: None,
    };
    assert_eq!(set(&api, &tp, &clear_b).status, 200);
    assert_eq!(served(&api, b.api_key.expose()), r1);
    let e = set(&api, &tp, &clear_b);
    assert_eq!(e.status, 404);
    assert!(
        e.error().message.contains("no feed channel of its own"),
        "{}",
        e.text()
    );

    // Refusals name what is wrong and change nothing.
    let e = set(
        &api,
        &tp,
        &SetFeedChannel {
            site: Some("berlin".into()),
            sensor: None,
            channel: Some(FeedChannel::Pinned(9999)),
        },
    );
    assert_eq!(e.error().error, ErrorCode::NotFound);
    assert!(
        e.error()
            .message
            .contains("feed release 9999 is not published"),
        "{}",
        e.text()
    );
    let e = set(
        &api,
        &tp,
        &SetFeedChannel {
            site: None,
            sensor: Some("sn_nobody".into()),
            channel: Some(FeedChannel::Newest),
        },
    );
    assert_eq!(e.status, 404);
    assert!(
        e.error().message.contains("sensor sn_nobody"),
        "{}",
        e.text()
    );
    let e = set(
        &api,
        &tp,
        &SetFeedChannel {
            site: Some("berlin".into()),
            sensor: Some(b.sensor_id.clone()),
            channel: Some(FeedChannel::Newest),
        },
    );
    assert_eq!(e.status, 400);
    assert_eq!(served(&api, a.api_key.expose()), r1, "the pin still holds");
    let list: Vec<FeedChannelInfo> = api.get(paths::FEED_CHANNELS, &tp.admin_token).json();
    assert_eq!(
        list,
        [FeedChannelInfo {
            site: Some("berlin".into()),
            sensor: None,
            channel: FeedChannel::Pinned(r1),
            set_at: list[0].set_at,
        }]
    );

    // The database refuses to delete a pinned release, whoever asks.
    store.delete_feed_releases(&[r1, r2]).await.expect("delete");
    let ids: Vec<i64> = store
        .feed_releases()
        .await
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [r3, r1]);
    tp.portal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_lag_sqlite() {
    channels_and_lag(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_lag_postgres() {
    channels_and_lag(Backend::Postgres).await
}
