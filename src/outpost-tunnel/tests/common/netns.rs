//! Network namespaces with a veth link to the host and wireguard-go running
//! inside, for interop tests and the benchmark. Everything created here is
//! removed on drop, also when the test panics.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Fail loudly (never skip) when the machine lacks what interop needs.
pub fn require_tools() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "interop tests need root (network namespaces, TUN devices)"
    );
    for tool in ["wireguard-go", "wg", "ip", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is missing: apt-get install -y wireguard-go wireguard-tools iproute2 python3"
        );
    }
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: wireguard-go needs TUN support"
    );
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace joined to the host by a veth pair: host side `host_ip`,
/// namespace side `ns_ip`, both in a /30 of 10.213.0.0/16 used only here.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    children: Vec<Child>,
    uapi: Vec<PathBuf>,
    tmp: PathBuf,
}

impl Netns {
    pub fn new() -> Self {
        Self::new_in(None)
    }

    /// Like `new`, but the other end of the veth lives in namespace `parent`
    /// instead of the host (two namespaces linked directly).
    pub fn new_in(parent: Option<&str>) -> Self {
        require_tools();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are limited to 15 characters.
        let tag = format!("{:x}{}", pid % 0xfffff, seq);
        let name = format!("otun-{tag}");
        let host_if = format!("oth{tag}");
        let ns_if = format!("otn{tag}");
        let block = (pid % 4000 * 16 + seq) % 16000;
        let host_ip = Ipv4Addr::new(10, 213, (block / 64) as u8, ((block % 64) * 4 + 1) as u8);
        let ns_ip = Ipv4Addr::new(10, 213, (block / 64) as u8, ((block % 64) * 4 + 2) as u8);
        let tmp = std::env::temp_dir().join(format!("outpost-tunnel-{name}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip,
            ns_ip,
            children: Vec::new(),
            uapi: Vec::new(),
            tmp,
        };
        run(&["ip", "netns", "add", &name]);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &name]);
        let mut side = vec!["ip"];
        if let Some(p) = parent {
            run(&["ip", "link", "set", &host_if, "netns", p]);
            side.extend(["-n", p]);
        }
        let cidr = format!("{host_ip}/30");
        run(&[&side[..], &["addr", "add", &cidr, "dev", &host_if]].concat());
        run(&[&side[..], &["link", "set", &host_if, "up"]].concat());
        run(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        run(&["ip", "-n", &name, "link", "set", &ns_if, "up"]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn tmp(&self) -> &PathBuf {
        &self.tmp
    }

    /// `ip netns exec <ns> args...` and wait.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .output()
            .unwrap_or_else(|e| panic!("running {full:?}: {e}"))
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Start a long-running process inside the namespace; killed on drop.
    pub fn spawn(&mut self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        let child = Command::new(full[0])
            .args(&full[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {full:?}: {e}"));
        self.children.push(child);
    }

    /// Run wireguard-go in the namespace with `wg setconf` text, give the
    /// interface `addr/prefix` and bring it up. Returns the interface name.
    pub fn wireguard_go(&mut self, setconf: &str, addr: Ipv4Addr, prefix: u8) -> String {
        let ifname = format!("otw{}", &self.name[5..]);
        self.spawn(&["wireguard-go", "-f", &ifname]);
        self.uapi
            .push(PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.exec(&["ip", "link", "show", &ifname]).status.success() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go did not create {ifname}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let conf = self.tmp.join(format!("{ifname}.conf"));
        std::fs::write(&conf, setconf).unwrap();
        let conf = conf.to_string_lossy().to_string();
        // Wait for the UAPI socket too, then configure.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.exec(&["wg", "setconf", &ifname, &conf]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "wg setconf failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            &ifname,
        ]);
        self.exec_ok(&["ip", "link", "set", &ifname, "up"]);
        ifname
    }

    /// Wait until `addr:port` accepts TCP inside the namespace.
    pub fn wait_listening(&self, addr: Ipv4Addr, port: u16) {
        let probe = format!(
            "import socket,sys\ns=socket.socket()\ns.settimeout(1)\nsys.exit(s.connect_ex(('{addr}',{port})))"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.exec(&["python3", "-c", &probe]).status.success() {
            assert!(
                Instant::now() < deadline,
                "nothing listening on {addr}:{port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace removes its veth end, which removes the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .output();
        for p in &self.uapi {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
