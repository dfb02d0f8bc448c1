//! `outpost-netrelay --listen 127.0.0.1:A --qemu 127.0.0.1:B --address 10.0.3.1/24
//!  --port 51820 --target 127.0.0.1:G`: see the library docs.

use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use outpost_netrelay::{Relay, RelayConfig};
use smoltcp::wire::{EthernetAddress, Ipv4Address};

fn arg(args: &[String], name: &str) -> Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| anyhow!("missing {name}"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let addr = arg(&args, "--address").unwrap_or_else(|_| "10.0.3.1/24".into());
    let (ip, prefix) = addr
        .split_once('/')
        .ok_or_else(|| anyhow!("--address wants a.b.c.d/n"))?;
    let cfg = RelayConfig {
        listen: arg(&args, "--listen")?
            .parse::<SocketAddr>()
            .context("--listen")?,
        qemu: arg(&args, "--qemu")?
            .parse::<SocketAddr>()
            .context("--qemu")?,
        address: ip
            .parse::<Ipv4Address>()
            .map_err(|_| anyhow!("--address {addr:?}"))?,
        prefix: prefix.parse().context("--address prefix")?,
        mac: EthernetAddress([0x02, 0x00, 0x0a, 0x00, 0x03, 0x01]),
        port: arg(&args, "--port")
            .unwrap_or_else(|_| "51820".into())
            .parse()
            .context("--port")?,
        target: arg(&args, "--target")?
            .parse::<SocketAddr>()
            .context("--target")?,
    };
    let mut relay = Relay::bind(cfg)?;
    eprintln!("outpost-netrelay: ready on {}", relay.local_addr()?);
    relay.run(|| false)?;
    Ok(())
}
