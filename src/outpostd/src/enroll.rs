//! Start-up up to a registered sensor: identity from the data directory, then either
//! the stored registration or a fresh one.

use std::time::Duration;

use outpost_wire::provision::Provision;

use crate::identity::{self, DataDir, DeviceKey, IdentityError, Registration};
use crate::register;
use crate::report::Reporter;
use crate::sysfacts::SysFacts;
use crate::transport::Transport;

/// The stored registration if it still fits this card and key; else `None` with a reason.
pub fn reusable(
    stored: Option<Registration>,
    provision: &Provision,
    key: &DeviceKey,
) -> Result<Registration, Option<String>> {
    let reg = stored.ok_or(None)?;
    if reg.portal_url != provision.portal_url {
        return Err(Some(format!(
            "outpost.toml now names portal {} (registered with {}); enrolling again",
            provision.portal_url, reg.portal_url
        )));
    }
    if reg.wg_public_key != key.public_b64() {
        return Err(Some(
            "the device key changed since registration; enrolling again".into(),
        ));
    }
    Ok(reg)
}

/// Returns the sensor's registration, registering (and persisting) it if needed.
pub fn ensure_registered(
    data: &DataDir,
    key: &DeviceKey,
    provision: &Provision,
    transport: &dyn Transport,
    reporter: &Reporter,
    slow_retry: Duration,
    pause: &mut dyn FnMut(Duration),
) -> Result<Registration, IdentityError> {
    let stored = identity::load_registration(data)?;
    match reusable(stored, provision, key) {
        Ok(reg) => {
            reporter.say(&format!(
                "registered as {} (stored identity reused)",
                reg.sensor_id
            ));
            return Ok(reg);
        }
        Err(Some(why)) => reporter.message(outpost_wire::log::Level::Warn, &why),
        Err(None) => {}
    }
    let facts = SysFacts::gather(std::path::Path::new("/"));
    let req = register::request(provision, &facts, &key.public_b64());
    let resp =
        register::register_until_done(transport, provision, &req, reporter, slow_retry, pause);
    let reg = Registration {
        sensor_id: resp.sensor_id,
        api_key: resp.api_key,
        site: resp.site,
        name: provision.name.clone(),
        portal_url: provision.portal_url.clone(),
        wg_public_key: key.public_b64(),
        tunnel: resp.tunnel,
        heartbeat_interval_s: resp.heartbeat_interval_s,
        claim_interval_s: resp.claim_interval_s,
        registered_at: outpost_wire::unix_now(),
    };
    // Persist before announcing: a crash now must not cause a second enrollment.
    identity::save_registration(data, &reg)?;
    reporter.say(&format!("registered as {}", reg.sensor_id));
    Ok(reg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{ok_json, FakeTransport};
    use crate::report::capture;
    use outpost_wire::paths;
    use outpost_wire::sensor::RegisterResponse;
    use outpost_wire::Secret;

    fn provision(url: &str) -> Provision {
        let text = format!(
            "[portal]\nurl = \"{url}\"\nca_cert = \"\"\"\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\"\"\"\n\
             [sensor]\nname = \"branch-1\"\nsite = \"berlin\"\ntoken = \"otk_0123456789abcdef\"\n"
        );
        Provision::parse(&text, |_| Err("none".into())).unwrap()
    }

    fn portal(t: &FakeTransport, id: &str) {
        t.push(
            paths::REGISTER,
            Ok(ok_json(&RegisterResponse {
                sensor_id: id.into(),
                api_key: Secret::new("osk_1"),
                site: "berlin".into(),
                tunnel: None,
                heartbeat_interval_s: 30,
                claim_interval_s: 5,
            })),
        );
    }

    #[test]
    fn a_restart_reuses_the_registration() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let (key, _) = identity::load_or_create_key(&data).unwrap();
        let p = provision("https://127.0.0.1:8443");
        let t = FakeTransport::default();
        portal(&t, "sn_1");
        let rep = capture("branch-1");
        let first = ensure_registered(
            &data,
            &key,
            &p,
            &t,
            &rep,
            Duration::ZERO,
            &mut std::thread::sleep,
        )
        .unwrap();
        assert_eq!(first.sensor_id, "sn_1");
        assert_eq!(first.wg_public_key, key.public_b64());
        // "Reboot": a new key load and a second start register nothing.
        let (key, created) = identity::load_or_create_key(&data).unwrap();
        assert!(!created);
        let again = ensure_registered(
            &data,
            &key,
            &p,
            &t,
            &rep,
            Duration::ZERO,
            &mut std::thread::sleep,
        )
        .unwrap();
        assert_eq!(again, first);
        assert_eq!(t.seen_on(paths::REGISTER).len(), 1);
        assert_eq!(
            rep.captured(),
            [
                "outpost[branch-1]: registered as sn_1",
                "outpost[branch-1]: registered as sn_1 (stored identity reused)",
            ]
        );
    }

    #[test]
    fn a_card_for_another_portal_enrolls_again() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let (key, _) = identity::load_or_create_key(&data).unwrap();
        let t = FakeTransport::default();
        portal(&t, "sn_1");
        portal(&t, "sn_2");
        let rep = capture("branch-1");
        let p1 = provision("https://127.0.0.1:8443");
        ensure_registered(
            &data,
            &key,
            &p1,
            &t,
            &rep,
            Duration::ZERO,
            &mut std::thread::sleep,
        )
        .unwrap();
        let p2 = provision("https://127.0.0.2:8443");
        let second = ensure_registered(
            &data,
            &key,
            &p2,
            &t,
            &rep,
            Duration::ZERO,
            &mut std::thread::sleep,
        )
        .unwrap();
        assert_eq!(second.sensor_id, "sn_2");
        assert_eq!(second.portal_url, "https://127.0.0.2:8443");
        assert_eq!(
            identity::load_registration(&data)
                .unwrap()
                .unwrap()
                .sensor_id,
            "sn_2"
        );
    }
}
