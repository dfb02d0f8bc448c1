//! `outpost-feedgen`: writes a synthetic Greenbone-shaped feed (docs/feeds.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use outpost_feedgen::gpg::GpgSigner;
use outpost_feedgen::{advance, generate, FeedSpec, Summary, FULL_SCRIPTS};

#[derive(Parser)]
#[command(
    name = "outpost-feedgen",
    version,
    about = "Synthetic vulnerability feeds for tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct FeedArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// NASL scripts on day 0 (the real feed has 136302).
    #[arg(long, default_value_t = FULL_SCRIPTS)]
    scripts: u32,
    /// GnuPG home holding the signing key; without it the tree is left unsigned.
    #[arg(long)]
    gnupghome: Option<PathBuf>,
    /// User id of the signing key in --gnupghome.
    #[arg(
        long,
        default_value = "Outpost Synthetic Feed Signing Key <feed@outpost.invalid>"
    )]
    uid: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the release of DAY into OUT.
    Generate {
        #[command(flatten)]
        feed: FeedArgs,
        #[arg(long, default_value_t = 0)]
        day: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn the release of DAY in DIR into the next day's, in place.
    Advance {
        #[command(flatten)]
        feed: FeedArgs,
        #[arg(long)]
        day: u32,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create a throwaway signing key in a new GnuPG home; prints its public key.
    Keygen {
        #[arg(long)]
        gnupghome: PathBuf,
        #[arg(
            long,
            default_value = "Outpost Synthetic Feed Signing Key <feed@outpost.invalid>"
        )]
        uid: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-feedgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn signer(f: &FeedArgs) -> Result<Option<GpgSigner>> {
    f.gnupghome
        .as_deref()
        .map(|h| GpgSigner::open(h, &f.uid))
        .transpose()
        .context("opening the signing key")
}

fn print(s: &Summary) {
    println!("plugin_set={}", s.plugin_set);
    println!("nasl_scripts={}", s.nasl_scripts);
    println!("inc_files={}", s.inc_files);
    println!("advisories={}", s.advisories);
    println!("product_files={}", s.product_files);
    println!("vt_count={}", s.vt_count);
    println!("files={}", s.files);
    println!("bytes={}", s.bytes);
    println!("written_files={}", s.written.len());
    println!("written_bytes={}", s.written_bytes);
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Generate { feed, day, out } => {
            let spec = FeedSpec::new(feed.seed, feed.scripts)?;
            let s = generate(&out, &spec, day, signer(&feed)?.as_ref())
                .with_context(|| format!("generating {}", out.display()))?;
            print(&s);
        }
        Cmd::Advance { feed, day, dir } => {
            let spec = FeedSpec::new(feed.seed, feed.scripts)?;
            let s = advance(&dir, &spec, day, signer(&feed)?.as_ref())
                .with_context(|| format!("advancing {}", dir.display()))?;
            print(&s);
        }
        Cmd::Keygen { gnupghome, uid } => {
            // Dropping the signer stops the agent; a later `--gnupghome` run starts its own.
            let s = GpgSigner::create(&gnupghome, &uid)?;
            print!("{}", String::from_utf8_lossy(&s.export_public()?));
        }
    }
    Ok(())
}
