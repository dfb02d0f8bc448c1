//! Enrollment: `POST /api/sensor/register` with the token from `outpost.toml`, retried
//! until the portal says yes. Network trouble and 5xx back off exponentially; a refused
//! token is explained on the console and retried slowly with the very same token, since
//! the operator fixes that on the portal side.

use std::time::Duration;

use outpost_wire::log::{Level, Phase, PhaseOutcome};
use outpost_wire::provision::Provision;
use outpost_wire::sensor::{Capability, RegisterRequest, RegisterResponse};
use outpost_wire::ErrorCode;

use crate::api::{self, ApiError};
use crate::backoff::Backoff;
use crate::report::Reporter;
use crate::sysfacts::SysFacts;
use crate::transport::Transport;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The body sent at registration.
pub fn request(provision: &Provision, facts: &SysFacts, wg_public_key: &str) -> RegisterRequest {
    RegisterRequest {
        name: provision.name.clone(),
        site: provision.site.clone(),
        hostname: facts.hostname.clone(),
        os: facts.os.clone(),
        board: facts.board.clone(),
        hardware_serial: facts.hardware_serial.clone(),
        board_serial: facts.board_serial.clone(),
        agent_version: AGENT_VERSION.to_owned(),
        capabilities: vec![Capability::Scan],
        wg_public_key: wg_public_key.to_owned(),
    }
}

/// How to go on after a failed attempt.
#[derive(Debug, PartialEq)]
pub enum Retry {
    /// Unreachable or overloaded portal: back off exponentially.
    Backoff,
    /// The portal refused us for a reason a person must fix: retry slowly.
    Slowly,
}

/// Plain-words reason for the console, and how to retry.
pub fn classify(err: &ApiError) -> (String, Retry) {
    if err.is_transient() {
        return (err.to_string(), Retry::Backoff);
    }
    let reason = err
        .portal_message()
        .map(str::to_owned)
        .unwrap_or_else(|| err.to_string());
    let token_problem = matches!(
        err.code(),
        Some(
            ErrorCode::TokenInvalid
                | ErrorCode::TokenExpired
                | ErrorCode::TokenUsedUp
                | ErrorCode::TokenSiteMismatch
                | ErrorCode::Unauthorized
                | ErrorCode::Forbidden
        )
    ) || matches!(err.status(), Some(401 | 403));
    if token_problem {
        (
            format!("the portal refused the enrollment token: {reason}"),
            Retry::Slowly,
        )
    } else {
        (
            format!("the portal refused the registration: {reason}"),
            Retry::Slowly,
        )
    }
}

/// Registers, retrying forever; `sleep` is injected so tests do not wait.
pub fn register_until_done(
    transport: &dyn Transport,
    provision: &Provision,
    req: &RegisterRequest,
    reporter: &Reporter,
    slow_retry: Duration,
    sleep: &mut dyn FnMut(Duration),
) -> RegisterResponse {
    let mut backoff = Backoff::portal();
    loop {
        match api::register(transport, &provision.token, req) {
            Ok(resp) => {
                reporter.status().portal(true);
                return resp;
            }
            Err(err) => {
                let (reason, retry) = classify(&err);
                // A refusal is the portal answering (the LED shows the failed phase).
                reporter.status().portal(retry == Retry::Slowly);
                let delay = match retry {
                    Retry::Backoff => backoff.next_delay(),
                    Retry::Slowly => {
                        backoff.reset();
                        slow_retry
                    }
                };
                tracing::warn!(error = %err, retry_in = ?delay, "registration failed");
                if retry == Retry::Slowly {
                    reporter.phase(Phase::Provision, PhaseOutcome::Failed, Some(&reason));
                } else {
                    reporter.message(
                        Level::Warn,
                        &format!("{reason}; retrying in {}s", delay.as_secs().max(1)),
                    );
                }
                sleep(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fake::{ok_json, status, FakeTransport};
    use crate::report::capture;
    use crate::transport::TransportError;
    use outpost_wire::{paths, ErrorBody};

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn provision() -> Provision {
        let text = format!(
            "[portal]\nurl = \"https://127.0.0.1:8443\"\nca_cert = \"\"\"\n{PEM}\"\"\"\n\
             [sensor]\nname = \"branch-1\"\nsite = \"berlin\"\ntoken = \"otk_0123456789abcdef\"\n"
        );
        Provision::parse(&text, |_| Err("none".into())).unwrap()
    }

    fn facts() -> SysFacts {
        SysFacts {
            hostname: "h".into(),
            os: "o".into(),
            board: "b".into(),
            hardware_serial: "s".into(),
            board_serial: Some("10000000abcdef01".into()),
        }
    }

    fn answer() -> RegisterResponse {
        RegisterResponse {
            sensor_id: "sen_1".into(),
            api_key: outpost_wire::Secret::new("osk_1"),
            site: "berlin".into(),
            tunnel: None,
            heartbeat_interval_s: 30,
            claim_interval_s: 5,
        }
    }

    #[test]
    fn retries_through_outage_and_refusal_with_the_same_token() {
        let t = FakeTransport::default();
        t.push(
            paths::REGISTER,
            Err(TransportError("connection refused".into())),
        );
        t.push(paths::REGISTER, Ok(status(503, None)));
        t.push(
            paths::REGISTER,
            Ok(status(
                403,
                Some(ErrorBody::new(ErrorCode::TokenExpired, "token expired")),
            )),
        );
        t.push(paths::REGISTER, Ok(ok_json(&answer())));
        let rep = capture("branch-1");
        let p = provision();
        let req = request(&p, &facts(), "PUBKEY");
        let mut slept = Vec::new();
        let resp = register_until_done(&t, &p, &req, &rep, Duration::from_secs(60), &mut |d| {
            slept.push(d)
        });
        assert_eq!(resp, answer());

        let seen = t.seen_on(paths::REGISTER);
        assert_eq!(seen.len(), 4);
        assert!(seen
            .iter()
            .all(|s| s.bearer.as_deref() == Some("otk_0123456789abcdef")));
        let body: RegisterRequest = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(body.wg_public_key, "PUBKEY");
        assert_eq!(body.capabilities, vec![Capability::Scan]);
        assert_eq!(body.board_serial.as_deref(), Some("10000000abcdef01"));
        assert_eq!(body.site, "berlin");

        // Two short backoffs (first at most 1 s, then at most 2 s) and one slow retry.
        assert_eq!(slept.len(), 3);
        assert!(slept[0] <= Duration::from_secs(1));
        assert!(slept[1] <= Duration::from_secs(2));
        assert_eq!(slept[2], Duration::from_secs(60));

        let console = rep.captured();
        assert!(
            console.contains(
                &"outpost[branch-1]: phase provision failed: the portal refused the enrollment token: token expired"
                    .to_owned()
            ),
            "{console:?}"
        );
        assert!(
            console[0].contains("cannot reach the portal"),
            "{console:?}"
        );
    }

    #[test]
    fn the_led_shows_an_unreachable_portal_then_a_refusal() {
        let leds = tempfile::tempdir().unwrap();
        let act = leds.path().join("ACT");
        std::fs::create_dir_all(&act).unwrap();
        std::fs::write(act.join("trigger"), "[heartbeat] timer none").unwrap();
        let rep = capture("branch-1").with_status_led(crate::statusled::StatusLed::new(
            crate::statusled::Led::open(leds.path(), "ACT"),
        ));
        let t = FakeTransport::default();
        t.push(
            paths::REGISTER,
            Err(TransportError("connection refused".into())),
        );
        t.push(
            paths::REGISTER,
            Ok(status(
                403,
                Some(ErrorBody::new(ErrorCode::TokenExpired, "token expired")),
            )),
        );
        t.push(paths::REGISTER, Ok(ok_json(&answer())));
        let p = provision();
        let req = request(&p, &facts(), "PUBKEY");
        let read = |f: &str| std::fs::read_to_string(act.join(f)).unwrap();
        // What the LED shows during each wait before the next attempt.
        let mut shown = Vec::new();
        register_until_done(&t, &p, &req, &rep, Duration::ZERO, &mut |_| {
            shown.push((read("trigger"), read("delay_on"), read("delay_off")))
        });
        let timer = |on: &str, off: &str| ("timer".to_owned(), on.to_owned(), off.to_owned());
        assert_eq!(
            shown,
            [timer("1000", "1000"), timer("100", "100")],
            "no portal, then failed"
        );
        // Registered: the failure ends with the phase, and the sensor is booting on.
        rep.phase(Phase::Provision, PhaseOutcome::Done, None);
        assert_eq!(read("trigger"), "heartbeat");
    }

    #[test]
    fn classification() {
        let (r, k) = classify(&ApiError::Status {
            status: 401,
            body: Some(ErrorBody::new(ErrorCode::TokenInvalid, "unknown token")),
        });
        assert_eq!(r, "the portal refused the enrollment token: unknown token");
        assert_eq!(k, Retry::Slowly);
        let (r, k) = classify(&ApiError::Status {
            status: 400,
            body: Some(ErrorBody::new(ErrorCode::BadRequest, "missing field `os`")),
        });
        assert_eq!(r, "the portal refused the registration: missing field `os`");
        assert_eq!(k, Retry::Slowly);
        let (_, k) = classify(&ApiError::Status {
            status: 502,
            body: None,
        });
        assert_eq!(k, Retry::Backoff);
    }
}
