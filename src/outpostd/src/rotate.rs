//! Operator-triggered WireGuard key rotation, in two phases. A heartbeat answer asks for
//! it; the daemon stores a new key (`wg.key.pending`) before sending its public half
//! through the current tunnel. The portal then accepts both keys. Once the answer is in,
//! the daemon keeps the new key and registration on disk; the running tunnel still uses
//! the old key, so the daemon exits with [`EXIT_KEY_ROTATED`] and the image's init
//! (`inittab` respawn of `run-outpostd`) starts it again with the new key, whose first
//! request ends the rotation at the portal (the old key stops working then). A lost
//! answer costs nothing: the old key still works, the portal keeps asking, and the next
//! attempt sends the same stored key.

use std::time::Duration;

use outpost_wire::sensor::RotateKeyRequest;

use crate::api::{ApiError, PortalClient};
use crate::identity::{self, DataDir, IdentityError, Registration};

/// Exit code after a successful rotation: not a failure, but not a clean stop either.
pub const EXIT_KEY_ROTATED: i32 = 3;

/// Wait between the portal's answer and the exit: the log thread gets a chance to ship
/// the rotation line.
pub const EXIT_DELAY: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("cannot make a new key: {0}")]
    NewKey(#[source] IdentityError),
    #[error("the portal did not take the new key: {0}")]
    Portal(#[from] ApiError),
    // The portal already knows the new key here: say plainly what that means.
    #[error("the portal took the new key but storing it failed ({0}); the tunnel will stop working after a restart")]
    Store(#[source] IdentityError),
}

/// What rotation needs: where the key lives and the registration to update.
pub struct Rotation {
    pub data: DataDir,
    pub reg: Registration,
}

impl Rotation {
    /// Rotates the key at the portal and on disk. On any error before the portal's
    /// answer the old key stays in use (the portal accepts it until the new one is
    /// used), and the pending key is kept for the next attempt.
    pub fn rotate(&mut self, client: &PortalClient) -> Result<(), RotateError> {
        let key = identity::pending_rotation_key(&self.data, &self.reg.wg_public_key)
            .map_err(RotateError::NewKey)?;
        let tunnel = match client.rotate_key(&RotateKeyRequest {
            wg_public_key: key.public_b64(),
        }) {
            Ok(t) => t,
            Err(e) => {
                // A refusal (4xx) is an answer: the portal did not take the key, so the
                // next attempt may as well make another. Anything else may have been a
                // lost answer to a key the portal took: keep it.
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 429)
                {
                    if let Err(e) = identity::discard_pending_key(&self.data) {
                        tracing::warn!(error = %e, "could not remove a refused pending key");
                    }
                }
                return Err(e.into());
            }
        };
        let mut reg = self.reg.clone();
        reg.wg_public_key = key.public_b64();
        reg.tunnel = Some(tunnel);
        identity::commit_rotation(&self.data, &key, &reg).map_err(RotateError::Store)?;
        self.reg = reg;
        // Committed: a leftover would only be replaced by the next rotation anyway.
        if let Err(e) = identity::discard_pending_key(&self.data) {
            tracing::warn!(error = %e, "could not remove the used pending key");
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::fake::{ok_json, status, FakeTransport};
    use outpost_wire::sensor::TunnelConfig;
    use outpost_wire::{paths, Secret};
    use std::sync::Arc;

    pub(crate) fn tunnel(addr: &str) -> TunnelConfig {
        TunnelConfig {
            sensor_address: addr.into(),
            portal_address: "100.96.0.1".into(),
            portal_public_key: "gw".into(),
            endpoint: "127.0.0.1:51820".into(),
            persistent_keepalive_s: 25,
        }
    }

    /// A registered sensor's data directory, its rotation and a client on `t`; the last
    /// item is the current public key.
    pub(crate) fn setup(
        t: &Arc<FakeTransport>,
    ) -> (tempfile::TempDir, Rotation, PortalClient, String) {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let (key, _) = identity::load_or_create_key(&data).unwrap();
        let reg = Registration {
            sensor_id: "sn_1".into(),
            api_key: Secret::new("osk_k"),
            site: "berlin".into(),
            name: "b".into(),
            portal_url: "https://127.0.0.1:8443".into(),
            wg_public_key: key.public_b64(),
            tunnel: Some(tunnel("100.96.0.2")),
            heartbeat_interval_s: 30,
            claim_interval_s: 5,
            registered_at: 1,
        };
        identity::save_registration(&data, &reg).unwrap();
        let client = PortalClient::new(t.clone(), Secret::new("osk_k"));
        (tmp, Rotation { data, reg }, client, key.public_b64())
    }

    #[test]
    fn accepted_key_replaces_key_and_identity() {
        let t = Arc::new(FakeTransport::default());
        t.push(paths::WG_KEY, Ok(ok_json(&tunnel("100.96.0.2"))));
        let (_tmp, mut rot, client, old) = setup(&t);
        rot.rotate(&client).unwrap();
        let sent: RotateKeyRequest =
            serde_json::from_str(&t.seen_on(paths::WG_KEY)[0].body).unwrap();
        assert_ne!(sent.wg_public_key, old);
        // What the restart will load: the sent key, and an identity that matches it.
        let (key, created) = identity::load_or_create_key(&rot.data).unwrap();
        assert!(!created);
        assert_eq!(key.public_b64(), sent.wg_public_key);
        let stored = identity::load_registration(&rot.data).unwrap().unwrap();
        assert_eq!(stored.wg_public_key, sent.wg_public_key);
        assert_eq!(stored.sensor_id, "sn_1");
    }

    #[test]
    fn a_lost_answer_is_retried_with_the_same_stored_key() {
        let t = Arc::new(FakeTransport::default());
        t.push(
            paths::WG_KEY,
            Err(crate::transport::TransportError("connection reset".into())),
        );
        t.push(paths::WG_KEY, Ok(ok_json(&tunnel("100.96.0.2"))));
        let (_tmp, mut rot, client, old) = setup(&t);
        let err = rot.rotate(&client).unwrap_err();
        assert!(matches!(err, RotateError::Portal(_)), "{err}");
        // Still the old key for the tunnel; the announced one waits on disk.
        let (key, _) = identity::load_or_create_key(&rot.data).unwrap();
        assert_eq!(key.public_b64(), old);
        assert!(rot.data.pending_key_path().exists());
        rot.rotate(&client).unwrap();
        let sent: Vec<RotateKeyRequest> = t
            .seen_on(paths::WG_KEY)
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[0].wg_public_key, sent[1].wg_public_key,
            "same key again"
        );
        let (key, _) = identity::load_or_create_key(&rot.data).unwrap();
        assert_eq!(key.public_b64(), sent[0].wg_public_key);
        assert!(!rot.data.pending_key_path().exists());
        // A later rotation makes a new key.
        t.push(paths::WG_KEY, Ok(ok_json(&tunnel("100.96.0.2"))));
        rot.rotate(&client).unwrap();
        let third: RotateKeyRequest =
            serde_json::from_str(&t.seen_on(paths::WG_KEY)[2].body).unwrap();
        assert_ne!(third.wg_public_key, sent[0].wg_public_key);
    }

    #[test]
    fn refused_key_keeps_the_old_one() {
        let t = Arc::new(FakeTransport::default());
        t.push(paths::WG_KEY, Ok(status(400, None)));
        let (_tmp, mut rot, client, old) = setup(&t);
        let err = rot.rotate(&client).unwrap_err();
        assert!(matches!(err, RotateError::Portal(_)), "{err}");
        let (key, _) = identity::load_or_create_key(&rot.data).unwrap();
        assert_eq!(key.public_b64(), old);
        let stored = identity::load_registration(&rot.data).unwrap().unwrap();
        assert_eq!(stored.wg_public_key, old);
        assert!(
            !rot.data.pending_key_path().exists(),
            "a refused key is dropped"
        );
    }
}
