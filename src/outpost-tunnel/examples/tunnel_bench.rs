//! Throughput benchmark: a bulk HTTPS download through the user-space
//! tunnel (gateway-side HTTPS server to device-side client over loopback)
//! against the same HTTPS download with kernel TCP over two wireguard-go
//! instances in two network namespaces. Both use rustls (ring) and one
//! self-signed certificate made at start. Prints one `metric=value` line
//! per figure.
//!
//! Run (root, wireguard-go, wireguard-tools, iproute2, python3 needed):
//!   cargo run --profile host -p outpost-tunnel --example tunnel_bench
//! `TUNNEL_BENCH_MIB` sets the download size (default 64).

#[path = "../tests/common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outpost_tunnel::{
    Cidr, DeviceConfig, DeviceTunnel, Gateway, GatewayConfig, GatewayPeer, InterfaceSection,
    PeerSection, PrivateKey, WgQuickConfig,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const CHUNK: usize = 256 * 1024;
/// Tunnel addresses: the user-space gateway, and the serving side of the
/// wireguard-go pair. The certificate names both.
const GW_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const WG_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
/// Longest request head the server accepts.
const MAX_HEAD: usize = 8 * 1024;

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
        Some("serve") if args.len() == 6 => {
            let tls = server_tls(&read_pem(&args[4])?, &read_pem(&args[5])?)?;
            return serve(&args[2], args[3].parse()?, tls);
        }
        Some("fetch") if args.len() == 5 => {
            let tls = client_tls(&read_pem(&args[4])?)?;
            return fetch(&args[2], args[3].parse()?, tls);
        }
        Some(mode @ ("serve" | "fetch")) => bail!("bad arguments for helper mode {mode}"),
        _ => {}
    }
    let mib: usize = std::env::var("TUNNEL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let bytes = mib * 1024 * 1024;

    let cert = Cert::generate()?;
    let (tunnel_secs, handshake) = userspace_tunnel(bytes, &cert)?;
    let wg_secs = wireguard_go_pair(bytes, &cert)?;
    let mbit = |secs: f64| bytes as f64 * 8.0 / secs / 1e6;
    println!("tunnel_mbit_per_s={:.1}", mbit(tunnel_secs));
    println!("wireguard_go_mbit_per_s={:.1}", mbit(wg_secs));
    println!("tunnel_vs_wireguard_go_ratio={:.3}", wg_secs / tunnel_secs);
    println!("handshake_ms={:.2}", handshake.as_secs_f64() * 1000.0);
    Ok(())
}

/// Self-signed server certificate (PEM) for both runs.
struct Cert {
    cert_pem: String,
    key_pem: String,
}

impl Cert {
    fn generate() -> Result<Self> {
        let names = vec![GW_ADDR.to_string(), WG_SERVER_ADDR.to_string()];
        let ck = rcgen::generate_simple_self_signed(names).context("making certificate")?;
        Ok(Self {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
        })
    }
}

fn read_pem(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_tls(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("key PEM")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("server TLS config")?;
    Ok(Arc::new(config))
}

/// Client config trusting exactly the benchmark's certificate.
fn client_tls(cert_pem: &str) -> Result<Arc<ClientConfig>> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("certificate PEM")?;
    let mut roots = RootCertStore::empty();
    roots.add(cert).context("trusting certificate")?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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

/// Reads an HTTP head up to the blank line; returns it and any body bytes
/// that arrived in the same reads.
fn read_head(mut r: impl Read) -> Result<(String, usize)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf.len() - end - 4));
        }
        if buf.len() > MAX_HEAD {
            bail!("HTTP head longer than {MAX_HEAD} bytes");
        }
        let n = r.read(&mut chunk).context("reading HTTP head")?;
        if n == 0 {
            bail!("connection closed inside the HTTP head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_count(mut r: impl Read, bytes: usize) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).context("reading download")?;
        if n == 0 {
            bail!("download ended after {got} of {bytes} bytes");
        }
        got += n;
    }
    if got != bytes {
        bail!("download sent {got} bytes, expected {bytes}");
    }
    Ok(())
}

/// Server half over any byte stream: TLS handshake, one `GET`, a response
/// of `bytes` bytes, close_notify. Returns the TLS stream so the caller can
/// shut the transport down its own way.
fn serve_https<S: Read + Write>(
    tcp: S,
    config: Arc<ServerConfig>,
    bytes: usize,
) -> Result<rustls::StreamOwned<ServerConnection, S>> {
    let conn = ServerConnection::new(config).context("TLS server")?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let (head, _) = read_head(&mut tls)?;
    if !head.starts_with("GET /bulk ") {
        bail!(
            "unexpected request: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {bytes}\r\nConnection: close\r\n\r\n"
    )?;
    write_pattern(&mut tls, bytes)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(tls)
}

/// Client half: TLS handshake (verifying the server against `config`), the
/// request, and the whole body. Checks status and length.
fn fetch_https<S: Read + Write>(
    tcp: S,
    config: Arc<ClientConfig>,
    server: Ipv4Addr,
    bytes: usize,
) -> Result<()> {
    let name = ServerName::from(IpAddr::V4(server));
    let conn = ClientConnection::new(config, name).context("TLS client")?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET /bulk HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n"
    )
    .context("sending request (TLS handshake)")?;
    tls.flush()?;
    let (head, early) = read_head(&mut tls)?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200 ") {
        bail!("HTTPS download failed: {status}");
    }
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .context("response without Content-Length")?
        .1
        .trim()
        .parse()
        .context("bad Content-Length")?;
    if length != bytes {
        bail!("server announced {length} bytes, expected {bytes}");
    }
    read_count(&mut tls, bytes.saturating_sub(early))?;
    tls.conn.send_close_notify();
    // The server may already be gone; the download itself is complete.
    let _ = tls.flush();
    Ok(())
}

/// Our tunnel: returns (download seconds, handshake time).
fn userspace_tunnel(bytes: usize, cert: &Cert) -> Result<(f64, Duration)> {
    let server_config = server_tls(&cert.cert_pem, &cert.key_pem)?;
    let client_config = client_tls(&cert.cert_pem)?;
    let gw_key = PrivateKey::generate();
    let dev_key = PrivateKey::generate();
    let gw_addr = GW_ADDR;
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
        let s = server_gw.accept()?;
        let mut tls = serve_https(s, server_config, bytes)?;
        tls.sock.shutdown_write();
        // Keep the stream until the client closes, so nothing queued is cut.
        let mut rest = [0u8; 64];
        while matches!(tls.sock.read(&mut rest), Ok(n) if n > 0) {}
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
    // Timed like the wireguard-go run: TLS handshake, request and body.
    let start = Instant::now();
    fetch_https(s, client_config, gw_addr, bytes)?;
    let secs = start.elapsed().as_secs_f64();
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
fn wireguard_go_pair(bytes: usize, cert: &Cert) -> Result<f64> {
    let mut a = netns::Netns::new();
    let mut b = netns::Netns::new_in(Some(&a.name));
    // b.host_ip lives in namespace a, b.ns_ip in namespace b.
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let (ta, tb) = (Ipv4Addr::new(10, 98, 0, 1), WG_SERVER_ADDR);
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
    // The helpers run in the namespaces but share the file system.
    let cert_path = write_file(a.tmp(), "cert.pem", &cert.cert_pem)?;
    let key_path = write_file(a.tmp(), "key.pem", &cert.key_pem)?;
    let exe = std::env::current_exe()?.to_string_lossy().to_string();
    let server_addr = format!("{tb}:9000");
    let size = bytes.to_string();
    b.spawn(&[&exe, "serve", &server_addr, &size, &cert_path, &key_path]);
    b.wait_listening(tb, 9000);
    let out = a.exec(&[&exe, "fetch", &server_addr, &size, &cert_path]);
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

fn write_file(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Helper mode inside the server namespace: one HTTPS download.
fn serve(addr: &str, bytes: usize, config: Arc<ServerConfig>) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    loop {
        let (s, _) = listener.accept()?;
        // The readiness probe connects and closes without sending; skip it.
        if s.peek(&mut [0u8; 1])? == 0 {
            continue;
        }
        let mut tls = serve_https(s, config, bytes)?;
        tls.sock.shutdown(std::net::Shutdown::Write)?;
        let mut rest = [0u8; 64];
        while matches!(tls.sock.read(&mut rest), Ok(n) if n > 0) {}
        return Ok(());
    }
}

/// Helper mode inside the client namespace: prints the download seconds.
fn fetch(addr: &str, bytes: usize, config: Arc<ClientConfig>) -> Result<()> {
    let sa: SocketAddrV4 = addr.parse().context("server address")?;
    let s = TcpStream::connect(sa)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let start = Instant::now();
    fetch_https(s, config, *sa.ip(), bytes)?;
    println!("{}", start.elapsed().as_secs_f64());
    Ok(())
}
