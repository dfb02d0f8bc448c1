//! Throughput benchmark: a bulk download through the user-space tunnel
//! (gateway-side server to device-side client over loopback) against the
//! same download with kernel TCP over two wireguard-go instances in two
//! network namespaces. Prints one `metric=value` line per figure.
//!
//! Run (root, wireguard-go, wireguard-tools, iproute2, python3 needed):
//!   cargo run --release -p outpost-tunnel --example tunnel_bench
//! `TUNNEL_BENCH_MIB` sets the download size (default 64).

#[path = "../tests/common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outpost_tunnel::{
    Cidr, DeviceConfig, DeviceTunnel, Gateway, GatewayConfig, GatewayPeer, InterfaceSection,
    PeerSection, PrivateKey, WgQuickConfig,
};

const CHUNK: usize = 256 * 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("tunnel_bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Helper modes, run inside namespaces by the parent process.
    match args.get(1).map(String::as_str) {
        Some("serve") => return serve(&args[2], args[3].parse()?),
        Some("fetch") => return fetch(&args[2], args[3].parse()?),
        _ => {}
    }
    let mib: usize = std::env::var("TUNNEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let bytes = mib * 1024 * 1024;

    let (tunnel_secs, handshake) = userspace_tunnel(bytes)?;
    let wg_secs = wireguard_go_pair(bytes)?;
    let mbit = |secs: f64| bytes as f64 * 8.0 / secs / 1e6;
    println!("tunnel_mbit_per_s={:.1}", mbit(tunnel_secs));
    println!("wireguard_go_mbit_per_s={:.1}", mbit(wg_secs));
    println!("tunnel_vs_wireguard_go_ratio={:.3}", wg_secs / tunnel_secs);
    println!("handshake_ms={:.2}", handshake.as_secs_f64() * 1000.0);
    Ok(())
}

fn write_pattern(mut w: impl Write, bytes: usize) -> std::io::Result<()> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        w.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

fn read_exact_count(mut r: impl Read, bytes: usize) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).context("reading download")?;
        if n == 0 {
            bail!("download ended after {got} of {bytes} bytes");
        }
        got += n;
    }
    Ok(())
}

/// Our tunnel: returns (download seconds, handshake time).
fn userspace_tunnel(bytes: usize) -> Result<(f64, Duration)> {
    let gw_key = PrivateKey::generate();
    let dev_key = PrivateKey::generate();
    let gw_addr = Ipv4Addr::new(10, 77, 0, 1);
    let dev_addr = Ipv4Addr::new(10, 77, 0, 2);
    let gw = Arc::new(Gateway::bind(GatewayConfig::new(
        gw_key.clone(),
        "127.0.0.1:0".parse()?,
        gw_addr,
        9000,
    ))?);
    gw.add_peer(GatewayPeer {
        public_key: dev_key.public_key(),
        allowed_ip: dev_addr,
        preshared_key: None,
    })?;
    let server_gw = gw.clone();
    let server = std::thread::spawn(move || -> Result<()> {
        let mut s = server_gw.accept()?;
        // Same protocol as the kernel-TCP run: the client asks with one byte.
        let mut go = [0u8; 1];
        s.read_exact(&mut go)?;
        write_pattern(&mut s, bytes)?;
        s.shutdown_write();
        let mut rest = [0u8; 16];
        let _ = s.read(&mut rest);
        Ok(())
    });

    let start = Instant::now();
    let dev = DeviceTunnel::start(DeviceConfig::new(
        dev_key,
        gw_key.public_key(),
        gw.local_addr(),
        dev_addr,
    ))?;
    dev.wait_handshake(Duration::from_secs(10))?;
    let handshake = start.elapsed();

    let mut s = dev.connect(SocketAddrV4::new(gw_addr, 9000))?;
    s.set_read_timeout(Some(Duration::from_secs(60)));
    let start = Instant::now();
    s.write_all(b"g")?;
    read_exact_count(&mut s, bytes)?;
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
    Ok((secs, handshake))
}

fn setconf(
    key: &PrivateKey,
    port: u16,
    peer: &PrivateKey,
    endpoint: SocketAddr,
    allowed: Ipv4Addr,
) -> String {
    WgQuickConfig {
        interface: InterfaceSection {
            private_key: key.clone(),
            addresses: vec![],
            listen_port: Some(port),
            mtu: None,
        },
        peers: vec![PeerSection {
            public_key: peer.public_key(),
            preshared_key: None,
            endpoint: Some(endpoint),
            allowed_ips: vec![Cidr::v4(allowed, 32)],
            persistent_keepalive: None,
        }],
    }
    .render()
}

/// Kernel TCP over two wireguard-go instances: returns download seconds.
fn wireguard_go_pair(bytes: usize) -> Result<f64> {
    let mut a = netns::Netns::new();
    let mut b = netns::Netns::new_in(Some(&a.name));
    // b.host_ip lives in namespace a, b.ns_ip in namespace b.
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (ta, tb) = (Ipv4Addr::new(10, 98, 0, 1), Ipv4Addr::new(10, 98, 0, 2));
    a.wireguard_go(
        &setconf(&ka, 51820, &kb, SocketAddr::new(b.ns_ip.into(), 51821), tb),
        ta,
        24,
    );
    b.wireguard_go(
        &setconf(
            &kb,
            51821,
            &ka,
            SocketAddr::new(b.host_ip.into(), 51820),
            ta,
        ),
        tb,
        24,
    );
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let server_addr = format!("{tb}:9000");
    b.spawn(&[&exe, "serve", &server_addr, &bytes.to_string()]);
    b.wait_listening(tb, 9000);
    let out = a.exec(&[&exe, "fetch", &server_addr, &bytes.to_string()]);
    if !out.status.success() {
        bail!(
            "fetch over wireguard-go failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("fetch output")?;
    drop(b);
    drop(a);
    Ok(secs)
}

fn serve(addr: &str, bytes: usize) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    // The readiness probe connects once before the real client.
    loop {
        let (mut s, _) = listener.accept()?;
        let mut first = [0u8; 1];
        if s.read(&mut first)? == 1 {
            write_pattern(&mut s, bytes)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let _ = s.read(&mut first);
            return Ok(());
        }
    }
}

fn fetch(addr: &str, bytes: usize) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let start = Instant::now();
    s.write_all(b"g")?;
    read_exact_count(&mut s, bytes)?;
    println!("{}", start.elapsed().as_secs_f64());
    Ok(())
}
