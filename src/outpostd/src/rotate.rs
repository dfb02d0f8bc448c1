//! Operator-triggered WireGuard key rotation. A heartbeat answer asks for it; the daemon
//! sends a fresh public key through the current tunnel and, once the portal has stored
//! it, keeps the new key and registration on disk. The running tunnel still uses the old
//! key, so the daemon then exits with [`EXIT_KEY_ROTATED`] and the image's init
//! (`inittab` respawn of `run-outpostd`) starts it again with the new key.

use std::time::Duration;

use outpost_wire::sensor::RotateKeyRequest;

use crate::api::{ApiError, PortalClient};
use crate::identity::{self, DataDir, DeviceKey, IdentityError, Registration};

/// Exit code after a successful rotation: not a failure, but not a clean stop either.
pub const EXIT_KEY_ROTATED: i32 = 3;

/// Wait between the portal's answer and the exit: the gateway installs the new peer
/// 500 ms after answering, and the log thread gets a chance to ship the rotation line.
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
    /// answer the old key stays in use everywhere.
    pub fn rotate(&mut self, client: &PortalClient) -> Result<(), RotateError> {
        let key = DeviceKey::generate().map_err(RotateError::NewKey)?;
        let tunnel = client.rotate_key(&RotateKeyRequest {
            wg_public_key: key.public_b64(),
        })?;
        let mut reg = self.reg.clone();
        reg.wg_public_key = key.public_b64();
        reg.tunnel = Some(tunnel);
        identity::commit_rotation(&self.data, &key, &reg).map_err(RotateError::Store)?;
        self.reg = reg;
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
    }
}
