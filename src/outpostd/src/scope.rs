//! The scan scope: which addresses this sensor may probe at all.
//!
//! `outpost.toml` lists the allowed IPv4 CIDRs (`[scope] allowed`). Every target of a
//! job must lie wholly inside them before a single OSP command is sent. A target is an
//! IPv4 address, a CIDR (`10.0.0.0/24`; host bits are ignored, as OpenVAS does), or a
//! range (`10.0.0.1-10.0.0.9` or the short `10.0.0.1-9`).
//!
//! Host names are refused, not resolved: an answer from the branch's DNS could point
//! anywhere, and OpenVAS resolves again at scan time, so an address checked here might
//! not be the one probed. IPv6 is refused too, since the scope itself is IPv4 only.

use std::fmt;
use std::net::Ipv4Addr;

/// An inclusive block of IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub first: u32,
    pub last: u32,
}

impl Block {
    fn contains(&self, other: &Block) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// Parses `a.b.c.d/len` (or a bare address, /32); host bits are masked off.
    fn cidr(s: &str) -> Option<Block> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok()?),
            None => (s, 32),
        };
        if len > 32 {
            return None;
        }
        let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
        // `checked_shl` handles /0, whose mask is all zeroes.
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let first = addr & mask;
        Some(Block {
            first,
            last: first | !mask,
        })
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (Ipv4Addr::from(self.first), Ipv4Addr::from(self.last));
        if a == b {
            write!(f, "{a}")
        } else {
            write!(f, "{a}-{b}")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("the sensor's scan scope is empty (outpost.toml [scope] allowed), so nothing may be scanned")]
    EmptyScope,
    #[error("the job names no targets")]
    NoTargets,
    #[error("target {target:?} is not an IPv4 address, CIDR or range ({why}); host names are not scanned because their addresses cannot be checked against the scope")]
    Unparsable { target: String, why: &'static str },
    #[error("target {target:?} is outside the allowed scope {allowed}")]
    Outside { target: String, allowed: String },
    #[error("scope entry {0:?} is not an IPv4 CIDR")]
    BadScope(String),
}

/// The allowed CIDRs, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    entries: Vec<String>,
    blocks: Vec<Block>,
}

impl Scope {
    /// Parses the CIDRs from `outpost.toml` (already validated there; checked again).
    pub fn new(allowed: &[String]) -> Result<Scope, ScopeError> {
        let blocks = allowed
            .iter()
            .map(|c| Block::cidr(c.trim()).ok_or_else(|| ScopeError::BadScope(c.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Scope {
            entries: allowed.to_vec(),
            blocks,
        })
    }

    fn describe(&self) -> String {
        format!("[{}]", self.entries.join(", "))
    }

    /// Whether one parsed target lies wholly in one allowed block. A range that spans
    /// two adjacent allowed blocks is refused; operators split such targets.
    fn covers(&self, b: &Block) -> bool {
        self.blocks.iter().any(|s| s.contains(b))
    }

    /// Checks every target; the first one outside the scope fails the whole job.
    pub fn check(&self, targets: &[String]) -> Result<(), ScopeError> {
        if self.blocks.is_empty() {
            return Err(ScopeError::EmptyScope);
        }
        if targets.is_empty() {
            return Err(ScopeError::NoTargets);
        }
        for t in targets {
            let block = parse_target(t)?;
            if !self.covers(&block) {
                return Err(ScopeError::Outside {
                    target: t.clone(),
                    allowed: self.describe(),
                });
            }
        }
        Ok(())
    }
}

/// Parses one target into the block of addresses OpenVAS would probe.
pub fn parse_target(target: &str) -> Result<Block, ScopeError> {
    let bad = |why| ScopeError::Unparsable {
        target: target.to_owned(),
        why,
    };
    let t = target.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if t.contains(':') {
        return Err(bad("IPv6 is not supported"));
    }
    if t.contains('/') {
        return Block::cidr(t).ok_or_else(|| bad("bad CIDR"));
    }
    if let Some((from, to)) = t.split_once('-') {
        let first: Ipv4Addr = from.trim().parse().map_err(|_| bad("bad range start"))?;
        let last: Ipv4Addr = match to.trim().parse::<Ipv4Addr>() {
            Ok(a) => a,
            // Short form `10.0.0.1-9`: the last octet only.
            Err(_) => {
                let octet: u8 = to.trim().parse().map_err(|_| bad("bad range end"))?;
                let [a, b, c, _] = first.octets();
                Ipv4Addr::new(a, b, c, octet)
            }
        };
        let (first, last) = (u32::from(first), u32::from(last));
        if last < first {
            return Err(bad("range ends before it starts"));
        }
        return Ok(Block { first, last });
    }
    match t.parse::<Ipv4Addr>() {
        Ok(a) => Ok(Block {
            first: a.into(),
            last: a.into(),
        }),
        Err(_) => Err(bad("looks like a host name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(c: &[&str]) -> Scope {
        Scope::new(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn check(s: &Scope, targets: &[&str]) -> Result<(), ScopeError> {
        s.check(&targets.iter().map(|t| t.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn addresses_cidrs_and_ranges_inside_pass() {
        let s = scope(&["10.9.0.0/24", "192.168.5.7/32"]);
        check(
            &s,
            &[
                "10.9.0.0",
                "10.9.0.255",
                "10.9.0.128/25",
                "10.9.0.0/24",
                "10.9.0.10-10.9.0.20",
                "10.9.0.10-20",
                "192.168.5.7",
                " 10.9.0.3 ",
            ],
        )
        .unwrap();
    }

    #[test]
    fn cidr_edges_are_exact() {
        let s = scope(&["10.9.0.0/24"]);
        for out in [
            "10.8.255.255",
            "10.9.1.0",
            "10.9.0.0/23",
            "10.9.0.200-10.9.1.1",
        ] {
            let e = check(&s, &[out]).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("target {out:?} is outside the allowed scope [10.9.0.0/24]")
            );
        }
        // Host bits in a target CIDR widen it to the whole network, as OpenVAS does.
        assert!(check(&s, &["10.9.0.77/16"]).is_err());
        assert!(check(&s, &["10.9.0.77/24"]).is_ok());
        // /31 and /32 scopes.
        let tiny = scope(&["10.1.1.2/31"]);
        assert!(check(&tiny, &["10.1.1.2", "10.1.1.3", "10.1.1.2-3"]).is_ok());
        assert!(check(&tiny, &["10.1.1.4"]).is_err());
        assert!(check(&tiny, &["10.1.1.1"]).is_err());
    }

    #[test]
    fn one_target_outside_fails_the_whole_list() {
        let s = scope(&["10.9.0.0/24"]);
        let e = check(&s, &["10.9.0.2", "8.8.8.8"]).unwrap_err();
        assert!(matches!(e, ScopeError::Outside { ref target, .. } if target == "8.8.8.8"));
    }

    #[test]
    fn a_range_across_two_scope_entries_is_refused() {
        let s = scope(&["10.0.0.0/25", "10.0.0.128/25"]);
        assert!(check(&s, &["10.0.0.100-10.0.0.130"]).is_err());
        assert!(check(&s, &["10.0.0.100", "10.0.0.130"]).is_ok());
    }

    #[test]
    fn host_names_ipv6_and_garbage_are_refused() {
        let s = scope(&["0.0.0.0/0"]);
        for (t, why) in [
            ("printer.branch.local", "looks like a host name"),
            ("localhost", "looks like a host name"),
            ("fe80::1", "IPv6 is not supported"),
            ("10.0.0.0/33", "bad CIDR"),
            ("10.0.0.9-10.0.0.1", "range ends before it starts"),
            ("10.0.0.1-300", "bad range end"),
            ("", "empty"),
        ] {
            match check(&s, &[t]) {
                Err(ScopeError::Unparsable { why: w, .. }) => assert_eq!(w, why, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        // /0 allows every IPv4 address.
        assert!(check(&s, &["255.255.255.255", "0.0.0.0"]).is_ok());
    }

    #[test]
    fn empty_scope_allows_nothing() {
        let s = scope(&[]);
        let e = check(&s, &["10.9.0.2"]).unwrap_err();
        assert_eq!(e, ScopeError::EmptyScope);
        assert!(e.to_string().contains("nothing may be scanned"));
    }

    #[test]
    fn no_targets_is_an_error() {
        assert_eq!(
            check(&scope(&["10.0.0.0/8"]), &[]).unwrap_err(),
            ScopeError::NoTargets
        );
    }
}
