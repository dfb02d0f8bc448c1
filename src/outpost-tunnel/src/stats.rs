//! Counters an operator reads to see whether a tunnel is healthy, and why
//! packets were thrown away.

use std::time::{Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;

/// Why a datagram or inner packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Outer datagram larger than any legitimate WireGuard packet we accept.
    Oversized,
    /// Not a WireGuard message at all (wrong type or length), or a bad inner IP packet.
    Malformed,
    /// Handshake message whose MAC does not match our public key.
    InvalidMac,
    /// Handshake from a static key that is not a configured peer.
    UnknownPeer,
    /// Data/response for a session index we do not have.
    UnknownReceiver,
    /// Decryption failed (bad AEAD tag).
    AuthFailed,
    /// Counter already seen or too old: a replayed or duplicated packet.
    Replay,
    /// Inner packet whose source address is not the peer's allowed address.
    SpoofedSource,
    /// Inner packet not addressed to our tunnel address, or not IPv4.
    NotForUs,
    /// Handshake refused because we are under load (cookie sent instead).
    RateLimited,
    /// Nowhere to send: the peer's endpoint is not known yet.
    NoEndpoint,
    /// The UDP send failed (buffer full, network unreachable).
    SendFailed,
}

/// Drop counts by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub oversized: u64,
    pub malformed: u64,
    pub invalid_mac: u64,
    pub unknown_peer: u64,
    pub unknown_receiver: u64,
    pub auth_failed: u64,
    pub replay: u64,
    pub spoofed_source: u64,
    pub not_for_us: u64,
    pub rate_limited: u64,
    pub no_endpoint: u64,
    pub send_failed: u64,
}

impl DropCounters {
    pub fn record(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::Oversized => &mut self.oversized,
            DropReason::Malformed => &mut self.malformed,
            DropReason::InvalidMac => &mut self.invalid_mac,
            DropReason::UnknownPeer => &mut self.unknown_peer,
            DropReason::UnknownReceiver => &mut self.unknown_receiver,
            DropReason::AuthFailed => &mut self.auth_failed,
            DropReason::Replay => &mut self.replay,
            DropReason::SpoofedSource => &mut self.spoofed_source,
            DropReason::NotForUs => &mut self.not_for_us,
            DropReason::RateLimited => &mut self.rate_limited,
            DropReason::NoEndpoint => &mut self.no_endpoint,
            DropReason::SendFailed => &mut self.send_failed,
        };
        *slot += 1;
    }

    /// Add another set of counts (the gateway sums its shards').
    pub(crate) fn add(&mut self, d: &DropCounters) {
        self.oversized += d.oversized;
        self.malformed += d.malformed;
        self.invalid_mac += d.invalid_mac;
        self.unknown_peer += d.unknown_peer;
        self.unknown_receiver += d.unknown_receiver;
        self.auth_failed += d.auth_failed;
        self.replay += d.replay;
        self.spoofed_source += d.spoofed_source;
        self.not_for_us += d.not_for_us;
        self.rate_limited += d.rate_limited;
        self.no_endpoint += d.no_endpoint;
        self.send_failed += d.send_failed;
    }

    pub fn total(&self) -> u64 {
        self.oversized
            + self.malformed
            + self.invalid_mac
            + self.unknown_peer
            + self.unknown_receiver
            + self.auth_failed
            + self.replay
            + self.spoofed_source
            + self.not_for_us
            + self.rate_limited
            + self.no_endpoint
            + self.send_failed
    }
}

/// Traffic and handshake counters of one tunnel (device) or one peer (gateway).
/// Byte counts are inner (plaintext IP) bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    pub handshakes_completed: u64,
    /// Wall-clock time of the last completed handshake, for display.
    pub last_handshake: Option<SystemTime>,
    /// True while a session key is usable.
    pub session_up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub dropped: DropCounters,
    /// Times the device tunnel took a new UDP socket (its address or the portal's
    /// changed, or handshakes stopped succeeding).
    pub rebinds: u64,
}

impl TunnelStats {
    pub(crate) fn handshake_done(&mut self) -> Instant {
        self.handshakes_completed += 1;
        self.last_handshake = Some(SystemTime::now());
        Instant::now()
    }
}

/// Map boringtun's decapsulation errors to the reason we count.
pub(crate) fn classify(err: &WireGuardError) -> DropReason {
    match err {
        WireGuardError::DuplicateCounter
        | WireGuardError::InvalidCounter
        | WireGuardError::WrongTai64nTimestamp => DropReason::Replay,
        WireGuardError::InvalidAeadTag | WireGuardError::WrongKey => DropReason::AuthFailed,
        WireGuardError::InvalidMac => DropReason::InvalidMac,
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => {
            DropReason::UnknownReceiver
        }
        WireGuardError::UnderLoad => DropReason::RateLimited,
        _ => DropReason::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_total() {
        let mut c = DropCounters::default();
        c.record(DropReason::Replay);
        c.record(DropReason::Replay);
        c.record(DropReason::SpoofedSource);
        assert_eq!(c.replay, 2);
        assert_eq!(c.spoofed_source, 1);
        assert_eq!(c.total(), 3);
    }

    #[test]
    fn replay_errors_count_as_replay() {
        assert_eq!(
            classify(&WireGuardError::DuplicateCounter),
            DropReason::Replay
        );
        assert_eq!(
            classify(&WireGuardError::InvalidAeadTag),
            DropReason::AuthFailed
        );
    }
}
