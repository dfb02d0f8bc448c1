//! The scan scope: which addresses this sensor may probe at all.
//!
//! `outpost.toml` lists the allowed IPv4 CIDRs (`[scope] allowed`). Every target of a
//! job must lie wholly inside them before a single OSP command is sent. A target is an
//! IPv4 address, a CIDR (`10.0.0.0/24`; host bits are ignored, as OpenVAS does), or a
//! range (`10.0.0.1-10.0.0.9` or the short `10.0.0.1-9`).
//!
//! Exclusions (`exclude_hosts`) take the same forms. They never widen the scope: each
//! target is checked whole, before anything is taken out of it, so a job cannot reach an
//! address outside the scope by excluding it again (ospd-openvas would be trusted to
//! apply the exclusion exactly as parsed here). What remains after the exclusions is the
//! job's [`TargetSet`]; a job that excludes every address is refused.
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
    /// The prefix length when the block was written as a CIDR.
    pub cidr_len: Option<u8>,
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
            cidr_len: s.contains('/').then_some(len),
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
    #[error("exclusion {entry:?} is not an IPv4 address, CIDR or range ({why})")]
    BadExclusion { entry: String, why: &'static str },
    #[error("the exclusions leave no address of the targets to scan")]
    AllExcluded,
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
    fn check_blocks(&self, targets: &[String]) -> Result<Vec<Block>, ScopeError> {
        if self.blocks.is_empty() {
            return Err(ScopeError::EmptyScope);
        }
        if targets.is_empty() {
            return Err(ScopeError::NoTargets);
        }
        let mut blocks = Vec::with_capacity(targets.len());
        for t in targets {
            let block = parse_target(t)?;
            if !self.covers(&block) {
                return Err(ScopeError::Outside {
                    target: t.clone(),
                    allowed: self.describe(),
                });
            }
            blocks.push(block);
        }
        Ok(blocks)
    }

    /// Checks a job's targets (each wholly in scope, exclusions not counted) and its
    /// exclusions (parsable, so the addresses left are known); returns what is left.
    pub fn check_job(
        &self,
        targets: &[String],
        exclude_hosts: &[String],
    ) -> Result<TargetSet, ScopeError> {
        let blocks = self.check_blocks(targets)?;
        let excluded = exclude_hosts
            .iter()
            .map(|x| {
                parse_target(x).map_err(|e| match e {
                    ScopeError::Unparsable { why, .. } => ScopeError::BadExclusion {
                        entry: x.clone(),
                        why,
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let set = TargetSet::new(&blocks, &excluded);
        if set.is_empty() {
            return Err(ScopeError::AllExcluded);
        }
        Ok(set)
    }
}

/// The addresses a job scans: its targets as OpenVAS expands them, less its exclusions.
/// Kept as sorted, disjoint blocks, so a /16 costs no more than a single address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetSet {
    blocks: Vec<Block>,
}

impl TargetSet {
    /// `targets` less `excluded`, both in OpenVAS' expansion.
    fn new(targets: &[Block], excluded: &[Block]) -> TargetSet {
        let mut out = merge(targets.iter().filter_map(openvas_hosts).collect());
        for x in merge(excluded.iter().filter_map(openvas_hosts).collect()) {
            out = out
                .into_iter()
                .flat_map(|b| subtract(b, x))
                .collect::<Vec<_>>();
        }
        TargetSet { blocks: out }
    }

    /// How many addresses are scanned.
    pub fn len(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| u64::from(b.last - b.first) + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    #[cfg(test)]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.blocks.iter().any(|b| b.first <= a && a <= b.last)
    }

    /// The addresses of the set that are not in `found`, as addresses and ranges
    /// (`10.0.0.3-10.0.0.9`), lowest first.
    pub fn remaining(&self, found: &[Ipv4Addr]) -> Vec<String> {
        let mut rest = self.blocks.clone();
        for a in found {
            let a = u32::from(*a);
            let x = Block {
                first: a,
                last: a,
                cidr_len: None,
            };
            rest = rest.into_iter().flat_map(|b| subtract(b, x)).collect();
        }
        rest.iter().map(|b| b.to_string()).collect()
    }
}

/// The addresses OpenVAS scans for a block given as a target: gvm-libs skips the
/// network and broadcast addresses of a CIDR up to /30. Only for counting; scope checks
/// use the whole block.
fn openvas_hosts(b: &Block) -> Option<Block> {
    if b.cidr_len.is_some_and(|l| l <= 30) {
        (b.last - b.first >= 2).then(|| Block {
            first: b.first + 1,
            last: b.last - 1,
            cidr_len: None,
        })
    } else {
        Some(Block {
            cidr_len: None,
            ..*b
        })
    }
}

/// Sorts and joins overlapping or adjacent blocks.
fn merge(mut blocks: Vec<Block>) -> Vec<Block> {
    blocks.sort_by_key(|b| (b.first, b.last));
    let mut out: Vec<Block> = Vec::with_capacity(blocks.len());
    for b in blocks {
        match out.last_mut() {
            Some(l) if u64::from(b.first) <= u64::from(l.last) + 1 => l.last = l.last.max(b.last),
            _ => out.push(b),
        }
    }
    out
}

/// `b` less `x`: nothing, `b` itself, or one or two pieces.
fn subtract(b: Block, x: Block) -> Vec<Block> {
    if x.last < b.first || b.last < x.first {
        return vec![b];
    }
    let mut out = Vec::new();
    if b.first < x.first {
        out.push(Block {
            first: b.first,
            last: x.first - 1,
            cidr_len: None,
        });
    }
    if x.last < b.last {
        out.push(Block {
            first: x.last + 1,
            last: b.last,
            cidr_len: None,
        });
    }
    out
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
        return Ok(Block {
            first,
            last,
            cidr_len: None,
        });
    }
    match t.parse::<Ipv4Addr>() {
        Ok(a) => Ok(Block {
            first: a.into(),
            last: a.into(),
            cidr_len: None,
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
        s.check_job(
            &targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            &[],
        )
        .map(|_| ())
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

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_cidr_partly_out_of_scope_is_refused_whatever_it_excludes() {
        let s = scope(&["10.9.0.0/25"]);
        // The /24 reaches 10.9.0.128-255, outside the /25.
        let e = s
            .check_job(&strings(&["10.9.0.0/24"]), &strings(&[]))
            .unwrap_err();
        assert!(matches!(e, ScopeError::Outside { ref target, .. } if target == "10.9.0.0/24"));
        // Excluding the outside half does not make it acceptable: targets are checked whole.
        let e = s
            .check_job(&strings(&["10.9.0.0/24"]), &strings(&["10.9.0.128/25"]))
            .unwrap_err();
        assert!(matches!(e, ScopeError::Outside { .. }), "{e}");
        // Neither does a range that ends one address past the scope.
        assert!(s
            .check_job(&strings(&["10.9.0.100-10.9.0.128"]), &strings(&[]))
            .is_err());
    }

    #[test]
    fn exclusions_shrink_the_target_set() {
        let s = scope(&["10.9.0.0/24"]);
        // OpenVAS scans .1-.254 of a /24.
        let set = s.check_job(&strings(&["10.9.0.0/24"]), &[]).unwrap();
        assert_eq!(set.len(), 254);
        assert!(!set.contains(Ipv4Addr::new(10, 9, 0, 0)));
        let set = s
            .check_job(
                &strings(&["10.9.0.0/24", "10.9.0.5"]),
                &strings(&["10.9.0.9", "10.9.0.100-10.9.0.199", "10.9.0.240/28"]),
            )
            .unwrap();
        assert_eq!(set.len(), 254 - 1 - 100 - 14);
        assert!(set.contains(Ipv4Addr::new(10, 9, 0, 8)));
        assert!(!set.contains(Ipv4Addr::new(10, 9, 0, 9)));
        assert!(!set.contains(Ipv4Addr::new(10, 9, 0, 150)));
        assert_eq!(
            set.remaining(&[Ipv4Addr::new(10, 9, 0, 2), Ipv4Addr::new(10, 9, 0, 200)]),
            [
                "10.9.0.1",
                "10.9.0.3-10.9.0.8",
                "10.9.0.10-10.9.0.99",
                "10.9.0.201-10.9.0.240",
            ]
        );
        // A list and a short range; /32 and /31 are taken whole.
        let set = s
            .check_job(
                &strings(&["10.9.0.1-3", "10.9.0.7/32", "10.9.0.10/31"]),
                &[],
            )
            .unwrap();
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn bad_or_total_exclusions_are_refused() {
        let s = scope(&["10.9.0.0/24"]);
        let e = s
            .check_job(&strings(&["10.9.0.2"]), &strings(&["printer.local"]))
            .unwrap_err();
        assert!(matches!(e, ScopeError::BadExclusion { .. }), "{e}");
        assert!(
            e.to_string().starts_with("exclusion \"printer.local\""),
            "{e}"
        );
        let e = s
            .check_job(&strings(&["10.9.0.2-4"]), &strings(&["10.9.0.0/24"]))
            .unwrap_err();
        assert_eq!(e, ScopeError::AllExcluded);
        // Exclusions outside the scope are harmless: they only take away.
        assert!(s
            .check_job(&strings(&["10.9.0.2"]), &strings(&["192.0.2.0/24"]))
            .is_ok());
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
