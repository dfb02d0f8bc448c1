//! Sensor identities by API key digest, held in memory so a sensor request on PostgreSQL
//! costs no database round trip to authenticate (a claim was two: the key's lookup and
//! the claim itself).
//!
//! Replicas share the database, so another process may delete a sensor or finish its key
//! rotation at any time. The cache follows the same notifications as the gateway's peers
//! ([`crate::peer_sync`]) and is only used while they can be heard:
//! - every change to a sensor's row that matters here (deletion, a new current WireGuard
//!   key) sends a NOTIFY naming the sensor in the transaction that makes it; the follower
//!   drops the sensor's entry on receipt, before it updates the gateway;
//! - entries are kept only while the LISTEN connection is up: they are all dropped when it
//!   is lost (notifications sent meanwhile are lost too) and none are added until it is
//!   back. A process that never listens (SQLite, the CLI tools) never caches;
//! - a lookup that read the row before an invalidation may not store what it read after
//!   it (every invalidation bumps an epoch the insert must match), so a row deleted while
//!   its lookup was under way never lands in the cache;
//! - the process that makes a change drops its own entry when it commits, without waiting
//!   for its own notification;
//! - entries expire after [`MAX_AGE`], a bound for changes made outside the portal.
//!
//! So a deleted sensor or a replaced key is refused by a replica no later than that
//! replica's gateway drops the sensor's tunnel peers. Unknown keys are not cached: they
//! cost a lookup as before, and cannot fill the memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::SensorAuth;

/// How long an entry is trusted without a notification.
pub const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct AuthCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The LISTEN connection is up: entries may be used and added.
    listening: bool,
    /// Bumped by every invalidation; an insert must carry the value read before its lookup.
    epoch: u64,
    by_key: HashMap<String, (SensorAuth, Instant)>,
    /// Sensor id -> its key digest, to drop a sensor's entry by the id a notification names.
    by_sensor: HashMap<String, String>,
}

/// Taken before a database lookup; the result may be cached with it if nothing was
/// invalidated meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

impl AuthCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map holds no invariant a panicking holder could break half-way that matters
        // more than serving: a poisoned lock is cleared and used.
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut g = poisoned.into_inner();
            g.clear();
            g
        })
    }

    /// The identity for this key digest, if cached, fresh and the cache is in use.
    pub fn get(&self, key_hash: &str) -> Option<SensorAuth> {
        let g = self.lock();
        if !g.listening {
            return None;
        }
        match g.by_key.get(key_hash) {
            Some((auth, at)) if at.elapsed() < MAX_AGE => Some(auth.clone()),
            _ => None,
        }
    }

    /// Call before reading the row from the database.
    pub fn ticket(&self) -> Ticket {
        let g = self.lock();
        Ticket(g.listening.then_some(g.epoch))
    }

    /// Stores what a lookup read, unless the cache was invalidated (or stopped) since
    /// `ticket` was taken.
    pub fn insert(&self, ticket: Ticket, key_hash: &str, auth: &SensorAuth) {
        let mut g = self.lock();
        if !g.listening || ticket.0 != Some(g.epoch) {
            return;
        }
        if let Some(old) = g.by_sensor.insert(auth.id.clone(), key_hash.to_owned()) {
            if old != key_hash {
                g.by_key.remove(&old);
            }
        }
        g.by_key
            .insert(key_hash.to_owned(), (auth.clone(), Instant::now()));
    }

    /// Drops these sensors' entries (a notification, or a change this process made).
    pub fn forget(&self, sensors: &[String]) {
        let mut g = self.lock();
        g.epoch = g.epoch.wrapping_add(1);
        for id in sensors {
            if let Some(key) = g.by_sensor.remove(id) {
                g.by_key.remove(&key);
            }
        }
    }

    /// The LISTEN connection came up (`true`) or was lost (`false`); either way every
    /// entry goes, since notifications may have been missed.
    pub fn set_listening(&self, on: bool) {
        let mut g = self.lock();
        g.clear();
        g.listening = on;
    }

    /// Whether an entry for this sensor is held (fresh or not).
    pub fn holds(&self, sensor: &str) -> bool {
        self.lock().by_sensor.contains_key(sensor)
    }

    pub fn is_listening(&self) -> bool {
        self.lock().listening
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.by_key.clear();
        self.by_sensor.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(id: &str) -> SensorAuth {
        SensorAuth {
            id: id.into(),
            name: id.into(),
            site: "berlin".into(),
            wg_public_key: format!("wg-{id}"),
        }
    }

    #[test]
    fn nothing_is_cached_while_not_listening() {
        let c = AuthCache::default();
        let t = c.ticket();
        c.insert(t, "h1", &auth("s1"));
        assert_eq!(c.get("h1"), None);
        c.set_listening(true);
        // A ticket from before the connection came up is stale.
        c.insert(t, "h1", &auth("s1"));
        assert_eq!(c.get("h1"), None);
        let t = c.ticket();
        c.insert(t, "h1", &auth("s1"));
        assert_eq!(c.get("h1"), Some(auth("s1")));
    }

    #[test]
    fn losing_the_connection_drops_everything() {
        let c = AuthCache::default();
        c.set_listening(true);
        let t = c.ticket();
        c.insert(t, "h1", &auth("s1"));
        c.set_listening(false);
        assert_eq!(c.get("h1"), None);
        assert!(c.is_empty());
        // Back up: still empty; what was read before the loss is not taken.
        c.set_listening(true);
        assert_eq!(c.get("h1"), None);
        c.insert(t, "h1", &auth("s1"));
        assert_eq!(c.get("h1"), None);
    }

    #[test]
    fn a_notification_drops_the_sensor_and_blocks_lookups_under_way() {
        let c = AuthCache::default();
        c.set_listening(true);
        let t = c.ticket();
        c.insert(t, "h1", &auth("s1"));
        c.insert(t, "h2", &auth("s2"));
        // A lookup of s3 reads its row, then s3 is deleted (the notification arrives)
        // before the lookup stores it: it must not be stored.
        let during = c.ticket();
        c.forget(&["s1".to_owned(), "s3".to_owned()]);
        c.insert(during, "h3", &auth("s3"));
        assert_eq!(c.get("h1"), None);
        assert_eq!(c.get("h3"), None);
        assert_eq!(c.get("h2"), Some(auth("s2")), "other sensors stay");
    }

    #[test]
    fn a_sensor_has_one_entry() {
        let c = AuthCache::default();
        c.set_listening(true);
        c.insert(c.ticket(), "h1", &auth("s1"));
        c.insert(c.ticket(), "h1b", &auth("s1"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("h1"), None);
        c.forget(&["s1".to_owned()]);
        assert!(c.is_empty());
    }
}
