//! wg-quick style configuration text (`[Interface]` / `[Peer]`), so operators
//! can read and write tunnel settings in the terms they already know.
//!
//! Only the keys this project uses are accepted; anything else is an error
//! naming the line, because a silently ignored setting is worse than a refusal.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use crate::device::DeviceConfig;
use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};

/// An address with prefix length, e.g. `10.77.0.2/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn v4(addr: Ipv4Addr, prefix: u8) -> Self {
        Self {
            addr: IpAddr::V4(addr),
            prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has an invalid prefix length"))?,
        };
        Ok(Self { addr, prefix })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSection {
    pub private_key: PrivateKey,
    pub addresses: Vec<Cidr>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSection {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Cidr>,
    pub persistent_keepalive: Option<u16>,
}

/// A whole wg-quick file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuickConfig {
    pub interface: InterfaceSection,
    pub peers: Vec<PeerSection>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: {key}: {source}")]
    Key {
        line: usize,
        key: &'static str,
        source: KeyError,
    },
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Unsupported(String),
}

impl WgQuickConfig {
    /// Render as wg-quick text. The private key is included: this is the
    /// file an operator installs, so treat the output as a secret.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let i = &self.interface;
        // Writing to a String cannot fail; ignore the fmt::Result.
        let _ = writeln!(out, "[Interface]");
        let _ = writeln!(out, "PrivateKey = {}", i.private_key.to_base64());
        if !i.addresses.is_empty() {
            let _ = writeln!(out, "Address = {}", join(&i.addresses));
        }
        if let Some(port) = i.listen_port {
            let _ = writeln!(out, "ListenPort = {port}");
        }
        if let Some(mtu) = i.mtu {
            let _ = writeln!(out, "MTU = {mtu}");
        }
        for p in &self.peers {
            let _ = writeln!(out, "\n[Peer]");
            let _ = writeln!(out, "PublicKey = {}", p.public_key);
            if let Some(psk) = &p.preshared_key {
                let _ = writeln!(out, "PresharedKey = {}", psk.to_base64());
            }
            if let Some(ep) = p.endpoint {
                let _ = writeln!(out, "Endpoint = {ep}");
            }
            if !p.allowed_ips.is_empty() {
                let _ = writeln!(out, "AllowedIPs = {}", join(&p.allowed_ips));
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(out, "PersistentKeepalive = {k}");
            }
        }
        out
    }

    /// Parse wg-quick text (`#` comments, case-insensitive keys as in wg-quick).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        enum Section {
            None,
            Interface,
            Peer,
        }
        let mut section = Section::None;
        let mut iface: Option<PartialInterface> = None;
        let mut peers: Vec<PartialPeer> = Vec::new();

        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if content.starts_with('[') {
                section = match content.to_ascii_lowercase().as_str() {
                    "[interface]" => {
                        if iface.is_some() {
                            return Err(syntax(line, "a second [Interface] section"));
                        }
                        iface = Some(PartialInterface::default());
                        Section::Interface
                    }
                    "[peer]" => {
                        peers.push(PartialPeer::default());
                        Section::Peer
                    }
                    other => return Err(syntax(line, format!("unknown section {other}"))),
                };
                continue;
            }
            let (key, value) = content
                .split_once('=')
                .ok_or_else(|| syntax(line, "expected `Key = Value`"))?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            match (&section, iface.as_mut(), peers.last_mut()) {
                (Section::Interface, Some(i), _) => i.set(line, &key, value)?,
                (Section::Peer, _, Some(p)) => p.set(line, &key, value)?,
                _ => return Err(syntax(line, "setting outside of a section")),
            }
        }

        let iface = iface.ok_or(ConfigError::Missing("[Interface] section"))?;
        Ok(Self {
            interface: InterfaceSection {
                private_key: iface
                    .private_key
                    .ok_or(ConfigError::Missing("Interface PrivateKey"))?,
                addresses: iface.addresses,
                listen_port: iface.listen_port,
                mtu: iface.mtu,
            },
            peers: peers
                .into_iter()
                .map(|p| {
                    Ok(PeerSection {
                        public_key: p.public_key.ok_or(ConfigError::Missing("Peer PublicKey"))?,
                        preshared_key: p.preshared_key,
                        endpoint: p.endpoint,
                        allowed_ips: p.allowed_ips,
                        persistent_keepalive: p.persistent_keepalive,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        })
    }

    /// The device-side tunnel settings: exactly one peer with an endpoint and
    /// one IPv4 interface address are required.
    pub fn to_device_config(&self) -> Result<DeviceConfig, ConfigError> {
        let address = self
            .interface
            .addresses
            .iter()
            .find_map(|c| match c.addr {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .ok_or(ConfigError::Missing("an IPv4 Interface Address"))?;
        let peer = match self.peers.as_slice() {
            [p] => p,
            [] => return Err(ConfigError::Missing("[Peer] section")),
            _ => {
                return Err(ConfigError::Unsupported(
                    "the device tunnel talks to exactly one peer".into(),
                ))
            }
        };
        let endpoint = peer.endpoint.ok_or(ConfigError::Missing("Peer Endpoint"))?;
        let mut cfg = DeviceConfig::new(
            self.interface.private_key.clone(),
            peer.public_key,
            endpoint,
            address,
        );
        cfg.persistent_keepalive = peer.persistent_keepalive;
        cfg.preshared_key = peer.preshared_key.clone();
        if let Some(mtu) = self.interface.mtu {
            cfg.mtu = mtu;
        }
        Ok(cfg)
    }
}

fn join(list: &[Cidr]) -> String {
    list.iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn syntax(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError::Syntax {
        line,
        message: message.into(),
    }
}

fn number<T: FromStr>(line: usize, key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| syntax(line, format!("{key}: `{value}` is not a valid number")))
}

fn cidr_list(line: usize, value: &str) -> Result<Vec<Cidr>, ConfigError> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse::<Cidr>().map_err(|m| syntax(line, m)))
        .collect()
}

#[derive(Default)]
struct PartialInterface {
    private_key: Option<PrivateKey>,
    addresses: Vec<Cidr>,
    listen_port: Option<u16>,
    mtu: Option<u16>,
}

impl PartialInterface {
    fn set(&mut self, line: usize, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "privatekey" => {
                self.private_key = Some(value.parse().map_err(|source| ConfigError::Key {
                    line,
                    key: "PrivateKey",
                    source,
                })?)
            }
            "address" => self.addresses.extend(cidr_list(line, value)?),
            "listenport" => self.listen_port = Some(number(line, "ListenPort", value)?),
            "mtu" => self.mtu = Some(number(line, "MTU", value)?),
            other => return Err(syntax(line, format!("unsupported Interface key `{other}`"))),
        }
        Ok(())
    }
}

#[derive(Default)]
struct PartialPeer {
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<Cidr>,
    persistent_keepalive: Option<u16>,
}

impl PartialPeer {
    fn set(&mut self, line: usize, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "publickey" => {
                self.public_key = Some(value.parse().map_err(|source| ConfigError::Key {
                    line,
                    key: "PublicKey",
                    source,
                })?)
            }
            "presharedkey" => {
                self.preshared_key = Some(value.parse().map_err(|source| ConfigError::Key {
                    line,
                    key: "PresharedKey",
                    source,
                })?)
            }
            "endpoint" => {
                self.endpoint = Some(value.parse().map_err(|_| {
                    syntax(
                        line,
                        format!("Endpoint `{value}` must be IP:port (names are resolved before writing the config)"),
                    )
                })?)
            }
            "allowedips" => self.allowed_ips.extend(cidr_list(line, value)?),
            "persistentkeepalive" => {
                self.persistent_keepalive = if value.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(number(line, "PersistentKeepalive", value)?)
                }
            }
            other => return Err(syntax(line, format!("unsupported Peer key `{other}`"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WgQuickConfig {
        WgQuickConfig {
            interface: InterfaceSection {
                private_key: PrivateKey::generate(),
                addresses: vec![Cidr::v4(Ipv4Addr::new(10, 77, 0, 2), 32)],
                listen_port: None,
                mtu: Some(1420),
            },
            peers: vec![PeerSection {
                public_key: PrivateKey::generate().public_key(),
                preshared_key: Some(PresharedKey::generate()),
                endpoint: Some("127.0.0.1:51820".parse().unwrap()),
                allowed_ips: vec![Cidr::v4(Ipv4Addr::new(10, 77, 0, 1), 32)],
                persistent_keepalive: Some(25),
            }],
        }
    }

    #[test]
    fn render_then_parse_is_identity() {
        let cfg = sample();
        let text = cfg.render();
        assert!(text.starts_with("[Interface]\nPrivateKey = "));
        assert!(text.contains("\n[Peer]\nPublicKey = "));
        assert!(text.contains("AllowedIPs = 10.77.0.1/32"));
        assert!(text.contains("PersistentKeepalive = 25"));
        assert_eq!(WgQuickConfig::parse(&text).unwrap(), cfg);
    }

    #[test]
    fn parses_typical_operator_file() {
        let private = PrivateKey::generate();
        let peer = PrivateKey::generate().public_key();
        let text = format!(
            "# sensor tunnel\n[interface]\nprivatekey={}\nAddress = 10.77.0.9/24\n\n\
             [Peer] # portal\nPublicKey = {peer}\nEndpoint = 127.0.0.1:51820\n\
             AllowedIPs = 10.77.0.1/32, 10.78.0.0/16\nPersistentKeepalive = off\n",
            private.to_base64()
        );
        let cfg = WgQuickConfig::parse(&text).unwrap();
        assert_eq!(cfg.peers[0].allowed_ips.len(), 2);
        assert_eq!(cfg.peers[0].persistent_keepalive, None);
        let dev = cfg.to_device_config().unwrap();
        assert_eq!(dev.address, Ipv4Addr::new(10, 77, 0, 9));
        assert_eq!(dev.peer_public_key, peer);
        assert_eq!(dev.peer_endpoint, "127.0.0.1:51820".parse().unwrap());
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let err = WgQuickConfig::parse("[Interface]\nPrivateKey = abc\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Key {
                    line: 2,
                    key: "PrivateKey",
                    ..
                }
            ),
            "{err}"
        );

        let err = WgQuickConfig::parse("[Interface]\nPostUp = rm -rf /\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: unsupported Interface key `postup`"
        );

        let err = WgQuickConfig::parse("PrivateKey = x\n").unwrap_err();
        assert_eq!(err.to_string(), "line 1: setting outside of a section");

        let key = PrivateKey::generate().to_base64();
        let err = WgQuickConfig::parse(&format!(
            "[Interface]\nPrivateKey = {key}\n[Peer]\nEndpoint = portal.example:51820\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("line 4: Endpoint"), "{err}");

        let err = WgQuickConfig::parse(&format!("[Interface]\nPrivateKey = {key}\n[Peer]\n"))
            .unwrap_err();
        assert_eq!(err, ConfigError::Missing("Peer PublicKey"));

        let err = WgQuickConfig::parse(&format!(
            "[Interface]\nPrivateKey = {key}\nAddress = 10.0.0.1/33\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("invalid prefix"), "{err}");
    }

    #[test]
    fn device_config_needs_one_peer_with_endpoint() {
        let mut cfg = sample();
        cfg.peers[0].endpoint = None;
        assert_eq!(
            cfg.to_device_config().unwrap_err(),
            ConfigError::Missing("Peer Endpoint")
        );
        cfg.peers.clear();
        assert_eq!(
            cfg.to_device_config().unwrap_err(),
            ConfigError::Missing("[Peer] section")
        );
    }
}
