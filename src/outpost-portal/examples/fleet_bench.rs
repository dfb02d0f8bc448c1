//! `scripts/bench fleet [MAX_SENSORS]`: simulated sensors speaking the real protocol
//! through real WireGuard tunnels (outpost-tunnel's user-space DeviceTunnel) to one
//! `outpost-portal serve` process with its gateway, on PostgreSQL. Every sensor
//! registers (a token from the admin API), then claims every 5 s and heartbeats every
//! 30 s; about 2% of them get a job queued for their site each step and upload a small
//! report for it. The sensor count steps up (100, 1,000, 2,500, 5,000, 10,000, capped at
//! MAX_SENSORS); each step runs OUTPOST_BENCH_FLEET_STEP_S seconds (default 60) and the
//! stepping stops early when errors pass 1% or the p99 passes 1 s.
//!
//! The portal binary comes from OUTPOST_PORTAL_BIN, PostgreSQL from OUTPOST_TEST_PG_URL
//! (scripts/bench builds the one and starts the other). The simulator runs in this one
//! process on the same cores as the portal, as tokio tasks on two worker threads: each
//! sensor is a task, its tunnel (own UDP socket, boringtun, smoltcp) is driven by
//! another, and it keeps one HTTPS connection (HTTP/1.1, TLS pinned to the portal's
//! CA) open through the tunnel, as the device's agent does.

#[path = "../tests/common/device.rs"]
mod device;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use outpost_tunnel::{DeviceTunnel, PrivateKey};
use outpost_wire::admin::{CreateJob, CreateToken, TokenCreated};
use outpost_wire::sensor::{
    Activity, Capability, ClaimRequest, HeartbeatRequest, Job, JobSpec, Metrics, RegisterRequest,
    RegisterResponse, ReportOutcome, ReportSummary, ReportUpload, ScanSpec,
};
use tokio::io::{AsyncRead, AsyncWrite};

const STEPS: &[usize] = &[100, 1_000, 2_500, 5_000, 10_000];
const CLAIM_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// Registrations in flight at once.
const REGISTER_WORKERS: usize = 32;
/// Registrations started per second. The gateway answers handshakes past 200 a second
/// (all peers together) with cookie replies, which cost the device a 5 s retry: a
/// faster burst registers fewer sensors a second, not more. This leaves room for the
/// running fleet's rekeys (10,000 sensors: about 85 a second).
const REGISTER_PER_S: u32 = 100;
/// A request that takes longer counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const SITE: &str = "bench";

fn scan_spec() -> JobSpec {
    JobSpec::Scan(ScanSpec {
        deadline_s: 60,
        ..ScanSpec::new(vec!["10.0.0.1".into()], "T:80")
    })
}

fn heartbeat() -> HeartbeatRequest {
    HeartbeatRequest {
        activity: Activity::Idle,
        uptime_s: 1,
        agent_version: "0.1.0".into(),
        phase: None,
        firmware_version: None,
        boot_slot: None,
        metrics: Metrics::default(),
        running_jobs: None,
        feed_release: None,
    }
}

/// What the sensors measure; requests are counted in the step they started in.
struct Measure {
    step: AtomicU64,
    stop: AtomicBool,
    reports: AtomicU64,
    samples: Mutex<Vec<(u64, f64, bool)>>,
}

impl Measure {
    fn record(&self, step: u64, started: Instant, ok: bool) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((step, ms, ok));
    }
}

/// Where a client's connections go: straight over TCP, or through a device tunnel.
#[derive(Clone)]
enum Target {
    Direct(SocketAddr),
    Tunnel(Arc<DeviceTunnel>, SocketAddrV4),
}

/// One HTTPS client keeping one HTTP/1.1 connection, reopened after a failure.
struct Client {
    tls: Arc<rustls::ClientConfig>,
    target: Target,
    conn: Option<SendRequest<Full<Bytes>>>,
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

impl Client {
    fn new(tls: Arc<rustls::ClientConfig>, target: Target) -> Self {
        Self {
            tls,
            target,
            conn: None,
        }
    }

    fn host(&self) -> SocketAddr {
        match &self.target {
            Target::Direct(a) => *a,
            Target::Tunnel(_, a) => SocketAddr::V4(*a),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::IpAddress(self.host().ip().into());
        match &self.target {
            Target::Direct(a) => {
                let tcp = tokio::net::TcpStream::connect(a).await?;
                tcp.set_nodelay(true)?;
                handshake(tls.connect(name, tcp).await?).await
            }
            Target::Tunnel(t, a) => {
                let stream = t.connect_async(*a).await?;
                handshake(tls.connect(name, stream).await?).await
            }
        }
    }

    /// POSTs JSON; status and body.
    async fn post<T: serde::Serialize>(
        &mut self,
        path: &str,
        bearer: &str,
        body: &T,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Bytes)> {
        let body = serde_json::to_vec(body)?;
        let host = self.host().to_string();
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let r = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut conn = match self.conn.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.connect().await?,
            };
            conn.ready().await?;
            let resp = conn.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((conn, status, body))
        })
        .await
        .context("request timed out")?;
        let (conn, status, body) = r?;
        self.conn = Some(conn);
        Ok((status, body))
    }
}

struct Sensor {
    key: String,
    client: Client,
}

async fn register(
    direct: &mut Client,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
    i: usize,
) -> Result<Sensor> {
    let wg = PrivateKey::generate();
    let req = RegisterRequest {
        name: format!("fleet-{i}"),
        site: SITE.into(),
        hostname: format!("fleet-{i}"),
        os: "bench".into(),
        board: "bench".into(),
        hardware_serial: i.to_string(),
        board_serial: None,
        agent_version: "0.1.0".into(),
        capabilities: vec![Capability::Scan],
        wg_public_key: wg.public_key().to_base64(),
    };
    let (status, body) = direct
        .post("/api/sensor/register", token, &req, None)
        .await?;
    anyhow::ensure!(
        status == 201,
        "registration answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let reg: RegisterResponse = serde_json::from_slice(&body)?;
    let t = reg.tunnel.context("no tunnel in the registration")?;
    let tunnel = device::start_device_async(&wg, &t, None, Duration::from_secs(60)).await?;
    let portal: std::net::Ipv4Addr = t.portal_address.parse().context("portal address")?;
    Ok(Sensor {
        key: reg.api_key.expose().to_owned(),
        client: Client::new(
            tls.clone(),
            Target::Tunnel(tunnel, SocketAddrV4::new(portal, 443)),
        ),
    })
}

fn report(job: i64, n: u64) -> ReportUpload {
    ReportUpload {
        request_id: format!("fleet-{job}-{n}"),
        outcome: ReportOutcome::Completed,
        partial: false,
        content_type: "application/xml".into(),
        content: "<results><result host=\"10.0.0.1\" port=\"80/tcp\"/></results>".into(),
        summary: ReportSummary {
            hosts: vec!["10.0.0.1".into()],
            ports: vec!["10.0.0.1:80/tcp".into()],
            ..Default::default()
        },
    }
}

/// One sensor's life: claim every 5 s, heartbeat every 30 s, report any job it gets.
async fn sensor_loop(mut s: Sensor, m: Arc<Measure>, offset: Duration) {
    tokio::time::sleep(offset).await;
    let claim_body = ClaimRequest {
        capabilities: vec![Capability::Scan],
    };
    let mut next_claim = Instant::now();
    let mut next_beat = Instant::now() + offset;
    let mut n = 0u64;
    while !m.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_beat {
            next_beat += HEARTBEAT_EVERY;
            let step = m.step.load(Ordering::Relaxed);
            let t = Instant::now();
            let r = s
                .client
                .post("/api/sensor/heartbeat", &s.key, &heartbeat(), None)
                .await;
            m.record(step, t, matches!(r, Ok((200, _))));
        }
        if now >= next_claim {
            next_claim += CLAIM_EVERY;
            let step = m.step.load(Ordering::Relaxed);
            let t = Instant::now();
            let r = s
                .client
                .post("/api/sensor/claim", &s.key, &claim_body, None)
                .await;
            match r {
                Ok((200, body)) => {
                    m.record(step, t, true);
                    if let Ok(job) = serde_json::from_slice::<Job>(&body) {
                        n += 1;
                        let up = report(job.id, n);
                        let t = Instant::now();
                        let path = format!("/api/sensor/jobs/{}/report", job.id);
                        let r = s
                            .client
                            .post(&path, &s.key, &up, Some(&up.request_id))
                            .await;
                        let ok = matches!(r, Ok((200..=299, _)));
                        if ok {
                            m.reports.fetch_add(1, Ordering::Relaxed);
                        }
                        m.record(step, t, ok);
                    }
                }
                Ok((204, _)) => m.record(step, t, true),
                _ => m.record(step, t, false),
            }
        }
        // Sleeping straight to the next request: thousands of tasks waking twice a
        // second for nothing cost the simulator measurable CPU. `stop` is seen
        // within a claim interval.
        tokio::time::sleep_until(next_claim.min(next_beat).into()).await;
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_portal(bin: &str, dir: &std::path::Path, database: &str) -> Result<(Child, String)> {
    let wg = format!("127.0.0.1:{}", free_udp_port()?);
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--wg-listen", &wg])
        .arg("--data-dir")
        .arg(dir)
        .args(["--database", database])
        .env("OUTPOST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(u) = std::fs::read_to_string(dir.join("portal.url")) {
            if !u.trim().is_empty() && dir.join("admin.token").exists() {
                return Ok((child, u.trim().to_owned()));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the portal did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn proc_figures(pid: u32) -> (u64, f64) {
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // after the command: state is field 3, utime 14 and stime 15
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            Some((utime + stime) / tck)
        })
        .unwrap_or(0.0);
    (hwm, cpu)
}

fn main() -> Result<()> {
    let max: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().context("MAX_SENSORS")?,
        None => 10_000,
    };
    let step_s: u64 = std::env::var("OUTPOST_BENCH_FLEET_STEP_S")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("OUTPOST_BENCH_FLEET_STEP_S")?
        .unwrap_or(60);
    let bin = std::env::var("OUTPOST_PORTAL_BIN").context("OUTPOST_PORTAL_BIN not set")?;
    let pg = std::env::var("OUTPOST_TEST_PG_URL").context("OUTPOST_TEST_PG_URL not set")?;
    let base = pg.rsplit_once('/').context("URL has no database")?.0;
    let name = format!("outpost_fleet_{}", std::process::id());
    let psql = |sql: &str| -> Result<()> {
        let ok = Command::new("psql")
            .args([pg.as_str(), "-q", "-c", sql])
            .stdout(Stdio::null())
            .status()
            .context("psql")?
            .success();
        anyhow::ensure!(ok, "psql {sql:?} failed");
        Ok(())
    };
    psql(&format!("CREATE DATABASE {name}"))?;
    let dir = tempfile::tempdir()?;
    let (mut child, url) = start_portal(&bin, dir.path(), &format!("{base}/{name}"))?;
    let pid = child.id();
    // Two workers: the simulated fleet shares the machine's two cores with the portal.
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
        .and_then(|rt| rt.block_on(run(max, step_s, dir.path(), &url)));
    let (rss, cpu) = proc_figures(pid);
    let (_, sim_cpu) = proc_figures(std::process::id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = psql(&format!("DROP DATABASE {name} WITH (FORCE)"));
    result?;
    println!("portal_rss_kib={rss}");
    println!("portal_cpu_s={cpu:.1}");
    println!("simulator_cpu_s={sim_cpu:.1}");
    Ok(())
}

async fn run(max: usize, step_s: u64, dir: &std::path::Path, url: &str) -> Result<()> {
    let admin = std::fs::read_to_string(dir.join("admin.token"))?
        .trim()
        .to_owned();
    let ca = std::fs::read(dir.join("ca.pem"))?;
    let tls = device::rustls_client(&ca)?;
    let portal: SocketAddr = url
        .trim_start_matches("https://")
        .parse()
        .context("portal URL")?;
    let mut direct = Client::new(tls.clone(), Target::Direct(portal));
    let measure = Arc::new(Measure {
        step: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        reports: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let mut steps: Vec<usize> = STEPS.iter().copied().filter(|n| *n < max).collect();
    steps.push(max);
    let mut running = 0usize;
    let mut register_s = 0.0;
    let mut best: Option<(usize, f64, f64, usize)> = None;
    let mut last: Option<(usize, f64, f64, usize)> = None;
    let mut sensors = Vec::new();
    for (si, &n) in steps.iter().enumerate() {
        // Registration of the new sensors, concurrently, timed on its own.
        let (status, body) = direct
            .post(
                "/api/admin/tokens",
                &admin,
                &CreateToken {
                    site: SITE.into(),
                    uses: (n - running) as u32,
                    ttl_s: 86_400,
                },
                None,
            )
            .await?;
        anyhow::ensure!(status == 201, "token: {status}");
        let token = serde_json::from_slice::<TokenCreated>(&body)?.token;
        let t0 = Instant::now();
        let next = Arc::new(AtomicU64::new(running as u64));
        let pace = Duration::from_secs(1) / REGISTER_PER_S;
        let regs: Vec<_> = (0..REGISTER_WORKERS)
            .map(|_| {
                let (next, token, tls) = (next.clone(), token.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut direct = Client::new(tls.clone(), Target::Direct(portal));
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= n {
                            return anyhow::Ok(out);
                        }
                        // The i-th registration of this step starts at its slot.
                        let slot = t0 + pace * (i - running) as u32;
                        tokio::time::sleep_until(slot.into()).await;
                        out.push(
                            register(&mut direct, &token, &tls, i)
                                .await
                                .with_context(|| format!("registering sensor {i}"))?,
                        );
                    }
                })
            })
            .collect();
        let mut new = Vec::new();
        for r in regs {
            new.extend(r.await??);
        }
        let took = t0.elapsed().as_secs_f64();
        register_s += took;
        println!(
            "fleet_step_register_s={took:.1} fleet_step_register_per_s={:.0}",
            new.len() as f64 / took.max(0.001)
        );
        let count = new.len();
        for (k, s) in new.into_iter().enumerate() {
            let offset = CLAIM_EVERY.mul_f64(k as f64 / count.max(1) as f64);
            sensors.push(tokio::spawn(sensor_loop(s, measure.clone(), offset)));
        }
        running = n;
        // Jobs for about 2% of the sensors, queued for the site.
        for _ in 0..n.div_ceil(50) {
            let (status, _) = direct
                .post(
                    "/api/admin/jobs",
                    &admin,
                    &CreateJob {
                        site: SITE.into(),
                        spec: scan_spec(),
                        sensor_id: None,
                    },
                    None,
                )
                .await?;
            anyhow::ensure!(status == 201 || status == 200, "job: {status}");
        }
        // Let the new sensors settle into their rhythm, then measure the step.
        tokio::time::sleep(CLAIM_EVERY).await;
        let step = si as u64 + 1;
        measure.step.store(step, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(step_s)).await;
        measure.step.store(u64::MAX, Ordering::Relaxed);
        // Requests in flight at the step's end are still counted in it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut lat = Vec::new();
        let mut errors = 0usize;
        {
            let mut samples = measure.samples.lock().unwrap_or_else(|e| e.into_inner());
            for (s, ms, ok) in samples.drain(..) {
                if s == step {
                    lat.push(ms);
                    if !ok {
                        errors += 1;
                    }
                }
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "fleet_step_sensors={n} fleet_requests={} fleet_p50_ms={p50:.1} fleet_p99_ms={p99:.1} fleet_errors={errors}",
            lat.len()
        );
        let fig = (n, p50, p99, errors);
        last = Some(fig);
        if errors == 0 && p99 < 100.0 && !lat.is_empty() {
            best = Some(fig);
        }
        if errors as f64 > lat.len() as f64 * 0.01 || p99 > 1000.0 {
            break;
        }
    }
    measure.stop.store(true, Ordering::Relaxed);
    for s in sensors {
        let _ = s.await;
    }
    println!("fleet_register_s={register_s:.1}");
    println!("fleet_reports={}", measure.reports.load(Ordering::Relaxed));
    let (n, p50, p99, errors) = best.or(last).unwrap_or_default();
    println!("fleet_sensors={}", if best.is_some() { n } else { 0 });
    println!("fleet_p50_ms={p50:.1}");
    println!("fleet_p99_ms={p99:.1}");
    println!("fleet_errors={errors}");
    Ok(())
}
