//! `outpostctl`: the operator's CLI for the portal (tokens, scans, sensors, reports).

mod bundle;
mod client;
mod creds;
mod feed;
mod image;
mod sensor_log;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use outpost_wire::admin::{
    paths, CreateJob, CreateToken, JobInfo, ReportInfo, SensorInfo, StoredLogEvent, TokenCreated,
};
use outpost_wire::sensor::{AliveMethod, AliveTest, JobSpec, ScanSpec, UpdateState};

use client::{Client, Target};

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Operate Outpost sensors and their portal"
)]
struct Cli {
    #[command(flatten)]
    portal: PortalArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct PortalArgs {
    /// A portal data directory (reads portal.url, ca.pem and admin.token from it).
    #[arg(long, global = true, env = "OUTPOST_PORTAL_DIR")]
    portal_dir: Option<PathBuf>,
    /// Portal base URL, e.g. https://portal.example.net:8443
    #[arg(long, global = true, env = "OUTPOST_PORTAL")]
    portal: Option<String>,
    /// CA certificate that signed the portal's certificate.
    #[arg(long, global = true, env = "OUTPOST_CA")]
    ca: Option<PathBuf>,
    /// File holding the admin token.
    #[arg(long, global = true, env = "OUTPOST_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Scan jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Sensors.
    #[command(subcommand)]
    Sensor(SensorCmd),
    /// Print the report of a finished job (the raw OSP XML, or the summary with --json).
    Report { job: i64 },
    /// Update bundles: keygen, build, sign, verify (offline); publish, list, assign (portal).
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Feed releases on the portal and the release channel of each site or sensor.
    #[command(subcommand)]
    Feed(feed::FeedCmd),
    /// SD-card images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Write an image to a card, read it back and verify; refuses mounted or system disks.
    Flash { image: PathBuf, device: PathBuf },
}

/// The commands that talk to a portal.
enum PortalCmd {
    Token(TokenCmd),
    Job(JobCmd),
    Sensor(SensorCmd),
    Report { job: i64 },
    Bundle(bundle::BundleCmd),
    Feed(feed::FeedCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a site-bound enrollment token and print it.
    Create {
        #[arg(long)]
        site: String,
        /// How many sensors may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 7 * 24 * 3600)]
        ttl: u64,
    },
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum JobCmd {
    /// Queue a scan for a site's sensors; prints the job id.
    Scan {
        #[arg(long)]
        site: String,
        /// Host, CIDR or range (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long, default_value = "T:1-1024")]
        ports: String,
        #[arg(long = "exclude")]
        exclude_hosts: Vec<String>,
        /// VT family to run (repeatable).
        #[arg(long = "family")]
        families: Vec<String>,
        /// Single VT OID to run (repeatable).
        #[arg(long = "oid")]
        oids: Vec<String>,
        /// icmp-and-tcp-ack, icmp, tcp-syn, tcp-ack, arp or consider-alive, or several
        /// joined with `+` (e.g. icmp+arp).
        #[arg(long, default_value = "icmp-and-tcp-ack")]
        alive_test: String,
        /// Seconds before the sensor gives up on the scan.
        #[arg(long, default_value_t = 4 * 3600)]
        deadline: u64,
        /// Only this sensor (of the site) may run the scan.
        #[arg(long = "sensor")]
        sensor_id: Option<String>,
        /// SSH login for authenticated (local security) checks; needs a password or
        /// key file. The portal stores the secret sealed and shows it to nobody.
        #[arg(long)]
        ssh_user: Option<String>,
        /// File holding the SSH password (`-`: standard input).
        #[arg(long)]
        ssh_password_file: Option<PathBuf>,
        /// File holding the SSH private key (`-`: standard input).
        #[arg(long)]
        ssh_key_file: Option<PathBuf>,
        /// SSH port of the targets (default 22).
        #[arg(long)]
        ssh_port: Option<u16>,
    },
    Show {
        id: i64,
    },
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    Cancel {
        id: i64,
    },
}

#[derive(Subcommand)]
enum SensorCmd {
    List,
    Show {
        id: String,
    },
    /// Phase and event log of a sensor.
    Log {
        id: String,
        #[arg(long, default_value_t = 200)]
        limit: i64,
    },
    Delete {
        id: String,
    },
    /// Ask the sensor to rotate its WireGuard key at its next heartbeat.
    RotateKey {
        id: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpostctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(p: PortalArgs) -> Result<Client> {
    Client::new(Target::resolve(
        p.portal_dir.as_deref(),
        p.portal,
        p.ca,
        p.admin_token_file,
    )?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A preset name, or methods joined with `+` or `,` (e.g. `icmp+arp`). Returns the
/// preset (the nearest one for older sensors) and the methods when they are no preset.
fn alive_test(s: &str) -> Result<(AliveTest, Vec<AliveMethod>)> {
    if s == "icmp-and-tcp-ack" {
        return Ok((AliveTest::IcmpAndTcpAck, Vec::new()));
    }
    let mut methods = Vec::new();
    for m in s.split(['+', ',']) {
        methods.push(match m.trim() {
            "icmp" => AliveMethod::Icmp,
            "tcp-syn" => AliveMethod::TcpSyn,
            "tcp-ack" => AliveMethod::TcpAck,
            "arp" => AliveMethod::Arp,
            "consider-alive" => AliveMethod::ConsiderAlive,
            other => bail!("unknown alive test {other:?}"),
        });
    }
    Ok(match AliveTest::preset_for(&methods) {
        Some(preset) => (preset, Vec::new()),
        // Sensors that predate combinations run the first method alone.
        None => (
            AliveTest::preset_for(&methods[..1]).unwrap_or_default(),
            methods,
        ),
    })
}

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    // Bundle commands work on files only, so they run before a portal is required.
    // File and device commands need no portal.
    let cmd = match cli.cmd {
        Cmd::Bundle(cmd) if !cmd.needs_portal() => return bundle::run(cmd, json),
        Cmd::Bundle(cmd) => PortalCmd::Bundle(cmd),
        Cmd::Image(image::ImageCmd::Provision(a)) => return image::provision(a),
        Cmd::Flash { image, device } => return image::flash(image, device),
        Cmd::Token(t) => PortalCmd::Token(t),
        Cmd::Job(j) => PortalCmd::Job(j),
        Cmd::Sensor(s) => PortalCmd::Sensor(s),
        Cmd::Report { job } => PortalCmd::Report { job },
        Cmd::Feed(f) => PortalCmd::Feed(f),
    };
    let c = client(cli.portal)?;
    match cmd {
        PortalCmd::Token(TokenCmd::Create { site, uses, ttl }) => {
            let t: TokenCreated = c.post(
                paths::TOKENS,
                &CreateToken {
                    site,
                    uses,
                    ttl_s: ttl,
                },
            )?;
            if json {
                print_json(&t)?;
            } else {
                println!("{}", t.token);
            }
        }
        PortalCmd::Job(JobCmd::Scan {
            site,
            targets,
            ports,
            exclude_hosts,
            families,
            oids,
            alive_test: at,
            deadline,
            sensor_id,
            ssh_user,
            ssh_password_file,
            ssh_key_file,
            ssh_port,
        }) => {
            let (alive_test, alive_methods) = alive_test(&at)?;
            let credentials = creds::ssh_credentials(creds::SshArgs {
                user: ssh_user.as_deref(),
                password_file: ssh_password_file.as_deref(),
                key_file: ssh_key_file.as_deref(),
                port: ssh_port,
            })?;
            let spec = JobSpec::Scan(ScanSpec {
                targets,
                ports,
                exclude_hosts,
                families,
                oids,
                alive_test,
                alive_methods,
                credentials,
                deadline_s: deadline,
            });
            let job: JobInfo = c.post(
                paths::JOBS,
                &CreateJob {
                    site,
                    spec,
                    sensor_id,
                },
            )?;
            if json {
                print_json(&job)?;
            } else {
                println!("{}", job.id);
            }
        }
        PortalCmd::Job(JobCmd::Show { id }) => {
            let job: JobInfo = c.get(&paths::job(id))?;
            if json {
                print_json(&job)?;
            } else {
                print_jobs(&[job]);
            }
        }
        PortalCmd::Job(JobCmd::List { limit }) => {
            let jobs: Vec<JobInfo> = c.get(&format!("{}?limit={limit}", paths::JOBS))?;
            if json {
                print_json(&jobs)?;
            } else {
                print_jobs(&jobs);
            }
        }
        PortalCmd::Job(JobCmd::Cancel { id }) => {
            let job: JobInfo = c.post(&paths::cancel_job(id), &serde_json::json!({}))?;
            if json {
                print_json(&job)?;
            } else {
                println!(
                    "job {id}: {}{}",
                    job.state.as_str(),
                    if job.cancel_requested && !job.state.is_final() {
                        " (cancel requested)"
                    } else {
                        ""
                    }
                );
            }
        }
        PortalCmd::Sensor(SensorCmd::List) => {
            let sensors: Vec<SensorInfo> = c.get(paths::SENSORS)?;
            if json {
                print_json(&sensors)?;
            } else {
                print_sensors(&sensors);
            }
        }
        PortalCmd::Sensor(SensorCmd::Show { id }) => {
            let s: SensorInfo = c.get(&paths::sensor(&id))?;
            if json {
                print_json(&s)?;
            } else {
                print_sensor(&s);
            }
        }
        PortalCmd::Sensor(SensorCmd::Log { id, limit }) => {
            let log: Vec<StoredLogEvent> =
                c.get(&format!("{}?limit={limit}", paths::sensor_log(&id)))?;
            if json {
                print_json(&log)?;
            } else {
                for e in &log {
                    println!("{}", sensor_log::line(e));
                }
            }
        }
        PortalCmd::Sensor(SensorCmd::Delete { id }) => {
            c.delete(&paths::sensor(&id))?;
            if !json {
                println!("sensor {id} deleted");
            }
        }
        PortalCmd::Sensor(SensorCmd::RotateKey { id }) => {
            c.post_action(&paths::rotate_key(&id))?;
            if !json {
                println!("sensor {id}: key rotation requested (done at its next heartbeat)");
            }
        }
        PortalCmd::Bundle(cmd) => bundle::run_portal(cmd, &c, json)?,
        PortalCmd::Feed(cmd) => feed::run(cmd, &c, json)?,
        PortalCmd::Report { job } => {
            if json {
                let r: ReportInfo = c.get(&paths::job_report(job))?;
                print_json(&r)?;
            } else {
                // The text goes to stdout as it arrives, never whole in memory.
                let body = c.get_reader(&paths::job_report(job))?;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                outpost_wire::json_stream::split_string_field::<ReportInfo>(
                    body, "content", &mut out,
                )
                .context("portal answer is not the expected report")?;
                writeln!(out)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// What a job does, in a few words: the scan targets, or the update's version.
fn job_what(spec: &JobSpec) -> String {
    match spec {
        JobSpec::Scan(s) => format!("scan {}", s.targets.join(",")),
        JobSpec::Update(u) => format!("update to {} (bundle {})", u.version, u.bundle_id),
    }
}

fn print_jobs(jobs: &[JobInfo]) {
    println!(
        "{:>6}  {:<10} {:<12} {:>4}%  {:<20} what",
        "id", "state", "site", "", "sensor"
    );
    for j in jobs {
        // Unclaimed jobs made for one sensor show it with a marker.
        let sensor = match (&j.sensor_id, &j.target_sensor) {
            (Some(s), _) => s.clone(),
            (None, Some(t)) => format!("for {t}"),
            (None, None) => "-".into(),
        };
        let mut what = job_what(&j.spec);
        if let Some(reason) = &j.failure_reason {
            what.push_str(&format!(" ({reason})"));
        }
        println!(
            "{:>6}  {:<10} {:<12} {:>4}%  {:<20} {what}",
            j.id,
            j.state.as_str(),
            j.site,
            j.progress_percent,
            sensor,
        );
    }
}

fn status_text(s: &SensorInfo) -> String {
    serde_json::to_value(s.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `1.2.0 committed`, `1.3.0 refused: <reason>`, `1.3.0 downloading 40%`, or `-`.
fn update_text(s: &SensorInfo) -> String {
    let Some(u) = &s.update else {
        return "-".into();
    };
    let mut t = format!("{} {}", u.version, u.state.as_str());
    if matches!(u.state, UpdateState::Downloading | UpdateState::Installing) {
        t.push_str(&format!(" {}%", u.progress_percent));
    }
    if !u.reason.is_empty() {
        t.push_str(&format!(": {}", u.reason));
    }
    t
}

fn print_sensors(sensors: &[SensorInfo]) {
    println!(
        "{:<20} {:<16} {:<12} {:<9} {:<13} {:<10} {:<4} {:<14} {:<24} feed",
        "id", "name", "site", "status", "phase", "firmware", "slot", "last heartbeat", "update"
    );
    for s in sensors {
        println!(
            "{:<20} {:<16} {:<12} {:<9} {:<13} {:<10} {:<4} {:<14} {:<24} {}",
            s.id,
            s.name,
            s.site,
            status_text(s),
            s.phase.map(|p| p.as_str()).unwrap_or("-"),
            s.firmware_version.as_deref().unwrap_or("-"),
            s.boot_slot.as_deref().unwrap_or("-"),
            s.last_heartbeat
                .map(|t| t.to_string())
                .unwrap_or_else(|| "never".into()),
            update_text(s),
            feed::feed_text(s),
        );
    }
}

/// One sensor in full.
fn print_sensor(s: &SensorInfo) {
    let line = |k: &str, v: &str| println!("{k:<15} {v}");
    line("id:", &s.id);
    line("name:", &s.name);
    line("site:", &s.site);
    line("status:", &status_text(s));
    line("phase:", s.phase.map(|p| p.as_str()).unwrap_or("-"));
    line(
        "last heartbeat:",
        &s.last_heartbeat
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into()),
    );
    line("board:", &s.board);
    if let Some(serial) = &s.board_serial {
        line("board serial:", serial);
    }
    line("agent:", &s.agent_version);
    line(
        "firmware:",
        &format!(
            "{} (slot {})",
            s.firmware_version.as_deref().unwrap_or("unknown"),
            s.boot_slot.as_deref().unwrap_or("unknown")
        ),
    );
    match &s.update {
        Some(u) => line(
            "update:",
            &format!(
                "{} (bundle {}, at {})",
                update_text(s),
                u.bundle_id,
                u.updated_at
            ),
        ),
        None => line("update:", "-"),
    }
    for (k, v) in feed::feed_lines(s) {
        line(k, &v);
    }
    match &s.tunnel {
        Some(t) => {
            line(
                "tunnel:",
                &format!(
                    "{}, {} handshakes",
                    if t.session_up { "up" } else { "down" },
                    t.handshakes_completed
                ),
            );
            line(
                "",
                &format!(
                    "rx {} packets / {} bytes, tx {} packets / {} bytes",
                    t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes
                ),
            );
            line(
                "",
                &format!(
                    "dropped: {} not for the portal, {} spoofed source",
                    t.dropped_not_for_us, t.dropped_spoofed_source
                ),
            );
        }
        None => line("tunnel:", "-"),
    }
}
