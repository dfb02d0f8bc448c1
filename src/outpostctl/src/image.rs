//! `outpostctl image provision` and `outpostctl flash`: prepare an SD-card image for a
//! branch and write it to a card. Both work on files and devices only, no portal needed.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use outpost_imagetool::{FlashPhase, FlashProgress};
use outpost_wire::provision::{FeedThresholds, Provision};
use outpost_wire::Secret;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Write outpost.toml into the image's boot partition (no mounting, no root needed).
    Provision(ProvisionArgs),
}

#[derive(Args)]
pub struct ProvisionArgs {
    pub image: PathBuf,
    /// Portal base URL the sensor registers with.
    #[arg(long)]
    pub portal: String,
    /// Enrollment token (from `outpostctl token create`).
    #[arg(long)]
    pub token: String,
    /// The portal's CA certificate (its data directory's ca.pem).
    #[arg(long)]
    pub ca: PathBuf,
    /// Sensor name shown at the portal and on the console.
    #[arg(long, default_value = "outpost")]
    pub name: String,
    #[arg(long)]
    pub site: String,
    /// CIDR the sensor may scan (repeatable); nothing else is scanned.
    #[arg(long = "scope")]
    pub scope: Vec<String>,
    /// Feed thresholds (defaults as production sensors use).
    #[arg(long)]
    pub feed_min_nasl: Option<u32>,
    #[arg(long)]
    pub feed_min_notus: Option<u32>,
    #[arg(long)]
    pub feed_max_age_hours: Option<u32>,
    /// Cap on the feed sync's download in kbit/s (`[feed] max_kbit_per_s`); none when
    /// absent or 0.
    #[arg(long)]
    pub feed_max_kbit_per_s: Option<u32>,
    /// A static address line for network.conf, "IFACE ADDRESS/PREFIX [GATEWAY]"
    /// (repeatable); interfaces not named use DHCP.
    #[arg(long = "static")]
    pub static_lines: Vec<String>,
    /// Provision with scanning turned off (`[scanner] enabled = false`): the sensor
    /// enrolls, heartbeats and takes updates but runs no OpenVAS and no scan jobs.
    #[arg(long)]
    pub no_scanner: bool,
}

pub fn provision(a: ProvisionArgs) -> Result<()> {
    let ca_cert_pem =
        std::fs::read_to_string(&a.ca).with_context(|| format!("reading {}", a.ca.display()))?;
    let mut feed = FeedThresholds::default();
    feed.min_nasl = a.feed_min_nasl.unwrap_or(feed.min_nasl);
    feed.min_notus = a.feed_min_notus.unwrap_or(feed.min_notus);
    feed.max_age_hours = a.feed_max_age_hours.unwrap_or(feed.max_age_hours);
    let p = Provision {
        portal_url: a.portal,
        ca_cert_pem,
        name: a.name,
        site: a.site,
        token: Secret::new(a.token),
        scope: a.scope,
        feed,
        feed_max_kbit_per_s: a.feed_max_kbit_per_s.unwrap_or(0),
        scanner_enabled: !a.no_scanner,
    };
    let text = p.render();
    // Refuse here what the sensor would refuse at boot, naming the field.
    Provision::parse(&text, |_| Err("not used".into()))
        .context("the provisioning file would be invalid")?;
    let mut network = String::new();
    for line in &a.static_lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let addr_ok = fields
            .get(1)
            .and_then(|a| outpost_wire::provision::parse_cidr(a))
            .is_some();
        if !(2..=3).contains(&fields.len()) || !addr_ok {
            anyhow::bail!("--static {line:?}: expected \"IFACE ADDRESS/PREFIX [GATEWAY]\"");
        }
        network.push_str(&fields.join(" "));
        network.push('\n');
    }
    outpost_imagetool::provision(&a.image, &text)
        .with_context(|| format!("writing outpost.toml into {}", a.image.display()))?;
    if !network.is_empty() {
        outpost_imagetool::write_boot_file(&a.image, "network.conf", network.as_bytes())
            .with_context(|| format!("writing network.conf into {}", a.image.display()))?;
    }
    println!(
        "{}: outpost.toml written for sensor {} (site {})",
        a.image.display(),
        p.name,
        p.site
    );
    Ok(())
}

pub fn flash(image: PathBuf, device: PathBuf) -> Result<()> {
    let mut last = (None, 0u64);
    let report = outpost_imagetool::flash(&image, &device, |p: FlashProgress| {
        let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
        let phase = match p.phase {
            FlashPhase::Write => "writing",
            FlashPhase::Verify => "verifying",
        };
        if last.0 != Some(p.phase) || pct != last.1 {
            let bar = "#".repeat((pct / 4) as usize);
            eprint!(
                "\r{phase:>9} [{bar:<25}] {pct:>3}% ({} of {} MiB)",
                p.done >> 20,
                p.total >> 20
            );
            let _ = std::io::stderr().flush();
            last = (Some(p.phase), pct);
        }
    })
    .with_context(|| format!("flashing {} to {}", image.display(), device.display()))?;
    eprintln!();
    println!("{}: written and verified ({:?})", device.display(), report);
    Ok(())
}
