//! What a `start_scan` carries: targets, credentials, alive test,
//! scanner preferences and the VT selection.

use crate::error::OspError;
use crate::secret::Secret;
use crate::xml::write::XmlWriter;

/// The service a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialService {
    /// SSH logins for local security checks on Unix-like hosts.
    Ssh,
    /// SMB logins for Windows hosts.
    Smb,
    /// VMware ESXi (HTTPS API) logins.
    Esxi,
    /// SNMP (v1/v2c community or v3 user).
    Snmp,
}

impl CredentialService {
    fn as_str(self) -> &'static str {
        match self {
            CredentialService::Ssh => "ssh",
            CredentialService::Smb => "smb",
            CredentialService::Esxi => "esxi",
            CredentialService::Snmp => "snmp",
        }
    }
}

/// How a credential authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialAuth {
    /// Username and password (OSP type `up`): ssh, smb, esxi.
    UsernamePassword {
        /// Login name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// Username and private key (OSP type `usk`): ssh only.
    SshKey {
        /// Login name.
        username: String,
        /// The private key itself (PEM/OpenSSH text), not a path.
        private_key: Secret,
        /// Passphrase of the key; empty when the key is not encrypted.
        passphrase: Secret,
    },
    /// SNMP (OSP type `snmp`): community for v1/v2c, user for v3.
    Snmp {
        /// v3 user name; empty for v1/v2c.
        username: String,
        /// v3 authentication password.
        password: Secret,
        /// v1/v2c community string.
        community: Secret,
        /// v3 authentication algorithm: `md5` or `sha1`.
        auth_algorithm: Option<String>,
        /// v3 privacy password.
        privacy_password: Secret,
        /// v3 privacy algorithm: `aes` or `des`.
        privacy_algorithm: Option<String>,
    },
}

/// One credential for the hosts of a target. `Debug` never shows secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Which service it is for.
    pub service: CredentialService,
    /// Port of the service, when not the default.
    pub port: Option<u16>,
    /// How it authenticates.
    pub auth: CredentialAuth,
    /// SSH only: user and password to gain elevated privileges (su/sudo).
    pub privilege: Option<(String, Secret)>,
}

impl Credential {
    /// SSH with username and password.
    pub fn ssh_password(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self::up(CredentialService::Ssh, username, password)
    }

    /// SSH with a private key (the key text) and its passphrase.
    pub fn ssh_key(
        username: impl Into<String>,
        private_key: impl Into<Secret>,
        passphrase: impl Into<Secret>,
    ) -> Self {
        Credential {
            service: CredentialService::Ssh,
            port: None,
            auth: CredentialAuth::SshKey {
                username: username.into(),
                private_key: private_key.into(),
                passphrase: passphrase.into(),
            },
            privilege: None,
        }
    }

    /// SMB with username and password.
    pub fn smb(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self::up(CredentialService::Smb, username, password)
    }

    /// ESXi with username and password.
    pub fn esxi(username: impl Into<String>, password: impl Into<Secret>) -> Self {
        Self::up(CredentialService::Esxi, username, password)
    }

    /// SNMP v1/v2c with a community string.
    pub fn snmp_community(community: impl Into<Secret>) -> Self {
        Credential {
            service: CredentialService::Snmp,
            port: None,
            auth: CredentialAuth::Snmp {
                username: String::new(),
                password: Secret::new(""),
                community: community.into(),
                auth_algorithm: None,
                privacy_password: Secret::new(""),
                privacy_algorithm: None,
            },
            privilege: None,
        }
    }

    /// SNMP v3 user with authentication and optional privacy.
    pub fn snmp_v3(
        username: impl Into<String>,
        password: impl Into<Secret>,
        auth_algorithm: impl Into<String>,
        privacy: Option<(Secret, String)>,
    ) -> Self {
        let (privacy_password, privacy_algorithm) = match privacy {
            Some((p, a)) => (p, Some(a)),
            None => (Secret::new(""), None),
        };
        Credential {
            service: CredentialService::Snmp,
            port: None,
            auth: CredentialAuth::Snmp {
                username: username.into(),
                password: password.into(),
                community: Secret::new(""),
                auth_algorithm: Some(auth_algorithm.into()),
                privacy_password,
                privacy_algorithm,
            },
            privilege: None,
        }
    }

    /// Sets a non-default service port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// SSH only: user and password for privilege escalation.
    pub fn with_privilege(
        mut self,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        self.privilege = Some((username.into(), password.into()));
        self
    }

    fn up(
        service: CredentialService,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Credential {
            service,
            port: None,
            auth: CredentialAuth::UsernamePassword {
                username: username.into(),
                password: password.into(),
            },
            privilege: None,
        }
    }

    fn check(&self) -> Result<(), OspError> {
        let svc = self.service.as_str();
        let bad = |why: &str| Err(OspError::InvalidRequest(format!("{svc} credential: {why}")));
        match (&self.auth, self.service) {
            (CredentialAuth::UsernamePassword { username, .. }, s)
                if s != CredentialService::Snmp =>
            {
                if username.is_empty() {
                    return bad("username is empty");
                }
            }
            (
                CredentialAuth::SshKey {
                    username,
                    private_key,
                    ..
                },
                CredentialService::Ssh,
            ) => {
                if username.is_empty() || private_key.is_empty() {
                    return bad("username or private key is empty");
                }
            }
            (
                CredentialAuth::Snmp {
                    username,
                    community,
                    ..
                },
                CredentialService::Snmp,
            ) => {
                if username.is_empty() && community.is_empty() {
                    return bad("needs a community (v1/v2c) or a user (v3)");
                }
            }
            _ => return bad("authentication kind does not fit the service"),
        }
        if self.privilege.is_some() && self.service != CredentialService::Ssh {
            return bad("privilege escalation is for ssh only");
        }
        Ok(())
    }

    fn write(&self, w: &mut XmlWriter) -> Result<(), OspError> {
        self.check()?;
        let kind = match self.auth {
            CredentialAuth::UsernamePassword { .. } => "up",
            CredentialAuth::SshKey { .. } => "usk",
            CredentialAuth::Snmp { .. } => "snmp",
        };
        let port = self.port.map(|p| p.to_string());
        w.open(
            "credential",
            &[
                ("type", Some(kind)),
                ("service", Some(self.service.as_str())),
                ("port", port.as_deref()),
            ],
        );
        match &self.auth {
            CredentialAuth::UsernamePassword { username, password } => {
                w.text_element("username", username);
                w.text_element("password", password.expose());
            }
            CredentialAuth::SshKey {
                username,
                private_key,
                passphrase,
            } => {
                w.text_element("username", username);
                w.text_element("password", passphrase.expose());
                w.text_element("private", private_key.expose());
            }
            CredentialAuth::Snmp {
                username,
                password,
                community,
                auth_algorithm,
                privacy_password,
                privacy_algorithm,
            } => {
                w.text_element("username", username);
                w.text_element("password", password.expose());
                w.text_element("community", community.expose());
                w.text_element("auth_algorithm", auth_algorithm.as_deref().unwrap_or(""));
                w.text_element("privacy_password", privacy_password.expose());
                w.text_element(
                    "privacy_algorithm",
                    privacy_algorithm.as_deref().unwrap_or(""),
                );
            }
        }
        if let Some((user, pass)) = &self.privilege {
            w.text_element("priv_username", user);
            w.text_element("priv_password", pass.expose());
        }
        w.close();
        Ok(())
    }
}

/// Which alive tests the scanner runs before scanning a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AliveTestMethods {
    /// ICMP echo.
    pub icmp: bool,
    /// TCP SYN to the alive-test ports.
    pub tcp_syn: bool,
    /// TCP ACK to the alive-test ports.
    pub tcp_ack: bool,
    /// ARP (same segment only).
    pub arp: bool,
    /// Skip the test and treat every host as alive.
    pub consider_alive: bool,
}

impl AliveTestMethods {
    fn write(&self, w: &mut XmlWriter) {
        let b = |v: bool| if v { "1" } else { "0" };
        w.open("alive_test_methods", &[]);
        w.text_element("icmp", b(self.icmp));
        w.text_element("tcp_syn", b(self.tcp_syn));
        w.text_element("tcp_ack", b(self.tcp_ack));
        w.text_element("arp", b(self.arp));
        w.text_element("consider_alive", b(self.consider_alive));
        w.close();
    }
}

/// Hosts to scan, with their ports and credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Hosts: addresses, CIDR blocks, ranges or names (one per entry).
    pub hosts: Vec<String>,
    /// Port list, e.g. `T:1-1024,U:53,161`.
    pub ports: String,
    /// Hosts to leave out.
    pub exclude_hosts: Vec<String>,
    /// Hosts already done (when resuming a scan).
    pub finished_hosts: Vec<String>,
    /// Credentials for authenticated checks.
    pub credentials: Vec<Credential>,
    /// Alive test; `None` keeps the scanner's default.
    pub alive_test: Option<AliveTestMethods>,
    /// Ports for the TCP alive tests.
    pub alive_test_ports: Option<String>,
    /// Scan only addresses that resolve to a name.
    pub reverse_lookup_only: Option<bool>,
    /// Scan a name only once even if several addresses resolve to it.
    pub reverse_lookup_unify: Option<bool>,
}

impl Target {
    /// A target of `hosts` on `ports`.
    pub fn new<I, S>(hosts: I, ports: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Target {
            hosts: hosts.into_iter().map(Into::into).collect(),
            ports: ports.into(),
            ..Target::default()
        }
    }

    fn write(&self, w: &mut XmlWriter) -> Result<(), OspError> {
        if self.hosts.is_empty() {
            return Err(OspError::InvalidRequest("target has no hosts".into()));
        }
        if self.ports.trim().is_empty() {
            return Err(OspError::InvalidRequest("target has no ports".into()));
        }
        w.open("target", &[]);
        w.text_element("hosts", &host_list("hosts", &self.hosts)?);
        w.text_element("ports", &self.ports);
        if !self.credentials.is_empty() {
            w.open("credentials", &[]);
            for c in &self.credentials {
                c.write(w)?;
            }
            w.close();
        }
        w.text_element(
            "exclude_hosts",
            &host_list("exclude_hosts", &self.exclude_hosts)?,
        );
        w.text_element(
            "finished_hosts",
            &host_list("finished_hosts", &self.finished_hosts)?,
        );
        if let Some(a) = &self.alive_test {
            a.write(w);
        }
        if let Some(p) = &self.alive_test_ports {
            w.text_element("alive_test_ports", p);
        }
        let b = |v: bool| if v { "1" } else { "0" };
        if let Some(v) = self.reverse_lookup_only {
            w.text_element("reverse_lookup_only", b(v));
        }
        if let Some(v) = self.reverse_lookup_unify {
            w.text_element("reverse_lookup_unify", b(v));
        }
        w.close();
        Ok(())
    }
}

/// Joins host entries with commas; an entry may not itself hold one, so a
/// caller cannot smuggle extra hosts into a list.
fn host_list(field: &str, hosts: &[String]) -> Result<String, OspError> {
    for h in hosts {
        if h.trim().is_empty() || h.contains(',') {
            return Err(OspError::InvalidRequest(format!(
                "{field}: entry {h:?} is empty or contains a comma"
            )));
        }
    }
    Ok(hosts.iter().map(|h| h.trim()).collect::<Vec<_>>().join(","))
}

/// One VT to run, with preference values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtSingle {
    /// The VT's OID.
    pub oid: String,
    /// Preference id and value pairs.
    pub values: Vec<(String, String)>,
}

/// The VTs to run: single VTs and whole families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VtSelection {
    /// Single VTs.
    pub singles: Vec<VtSingle>,
    /// Group filters, e.g. `family=Debian Local Security Checks`.
    pub groups: Vec<String>,
}

impl VtSelection {
    /// Adds one VT by OID.
    pub fn vt(mut self, oid: impl Into<String>) -> Self {
        self.singles.push(VtSingle {
            oid: oid.into(),
            values: Vec::new(),
        });
        self
    }

    /// Adds one VT with preference values (`id`, `value`).
    pub fn vt_with<I, K, V>(mut self, oid: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.singles.push(VtSingle {
            oid: oid.into(),
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        });
        self
    }

    /// Adds every VT of a family.
    pub fn family(mut self, family: impl AsRef<str>) -> Self {
        self.groups.push(format!("family={}", family.as_ref()));
        self
    }

    /// True when nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.groups.is_empty()
    }

    fn write(&self, w: &mut XmlWriter) -> Result<(), OspError> {
        // ospd refuses an empty <vt_selection>; leave it out instead.
        if self.is_empty() {
            return Ok(());
        }
        w.open("vt_selection", &[]);
        for s in &self.singles {
            check_vt_id(&s.oid)?;
            w.open("vt_single", &[("id", Some(&s.oid))]);
            for (id, value) in &s.values {
                w.text_element_with("vt_value", &[("id", Some(id))], value);
            }
            w.close();
        }
        for g in &self.groups {
            // ospd splits filters on ';' into several terms.
            if g.contains(';') {
                return Err(OspError::InvalidRequest(format!(
                    "vt_group filter {g:?} contains ';'"
                )));
            }
            w.empty("vt_group", &[("filter", Some(g))]);
        }
        w.close();
        Ok(())
    }
}

/// A `start_scan` command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartScan {
    /// Scan id to use (a UUID); ospd makes one up when absent.
    pub scan_id: Option<String>,
    /// Targets; ospd-openvas scans the first.
    pub targets: Vec<Target>,
    /// Scanner preferences, e.g. (`max_checks`, `4`).
    pub scanner_params: Vec<(String, String)>,
    /// The VTs to run.
    pub vts: VtSelection,
}

impl StartScan {
    /// A scan of one target.
    pub fn new(target: Target) -> Self {
        StartScan {
            targets: vec![target],
            ..StartScan::default()
        }
    }

    /// Sets the scan id.
    pub fn with_scan_id(mut self, id: impl Into<String>) -> Self {
        self.scan_id = Some(id.into());
        self
    }

    /// Adds one scanner preference.
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.scanner_params.push((name.into(), value.into()));
        self
    }

    /// Sets the VT selection.
    pub fn with_vts(mut self, vts: VtSelection) -> Self {
        self.vts = vts;
        self
    }

    pub(crate) fn write(&self, w: &mut XmlWriter) -> Result<(), OspError> {
        if let Some(id) = &self.scan_id {
            check_scan_id(id)?;
        }
        if self.targets.is_empty() {
            return Err(OspError::InvalidRequest("start_scan needs a target".into()));
        }
        w.open("start_scan", &[("scan_id", self.scan_id.as_deref())]);
        // ospd requires <scanner_params>, even when empty.
        w.open("scanner_params", &[]);
        for (name, value) in &self.scanner_params {
            w.text_element(name, value);
        }
        w.close();
        self.vts.write(w)?;
        w.open("targets", &[]);
        for t in &self.targets {
            t.write(w)?;
        }
        w.close();
        w.close();
        Ok(())
    }
}

/// OSP's `uuid` type: 1–40 hex digits and dashes.
pub(crate) fn check_scan_id(id: &str) -> Result<(), OspError> {
    let ok = (1..=40).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(OspError::InvalidRequest(format!(
            "scan id {id:?} is not a UUID"
        )))
    }
}

/// OSP's `vt_id` type: 1–80 of `[0-9a-zA-Z_-.:]`.
pub(crate) fn check_vt_id(id: &str) -> Result<(), OspError> {
    let ok = (1..=80).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(OspError::InvalidRequest(format!(
            "VT id {id:?} is not valid"
        )))
    }
}
