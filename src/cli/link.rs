//! `kemu link LAB HOST[:DEV] ...`: a link's faults, and the hidden `kemu fault-engine` (the
//! delay line that the userspace impairment engine starts inside the host).

use std::process::ExitCode;

use clap::Args;

use crate::faults::link::{self, LinkChange};
use crate::faults::spec::{self, Delay, Impairment, Percent, Rate};
use crate::faults::state::{FaultLock, FaultState};
use crate::lab::state::LabRecord;

/// Impair, cut or shrink one link of a host (its egress); `--clear` gives it back.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// `HOST` or `HOST:DEV` (host name or underlay IP; the device defaults to eth0, the
    /// host's underlay link).
    pub link: String,
    /// Set the link down.
    #[arg(long, conflicts_with = "up")]
    pub down: bool,
    /// Set the link up.
    #[arg(long)]
    pub up: bool,
    /// Set the MTU (0 gives the old one back); switches GSO/TSO/GRO off along the path, so
    /// oversized packets are dropped as on a real wire.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Limit the rate, e.g. 10mbit.
    #[arg(long, value_parser = spec::parse_rate)]
    pub rate: Option<Rate>,
    /// Delay each packet, e.g. 100ms or 100ms±10ms (0ms removes it).
    #[arg(long, value_parser = spec::parse_delay, allow_hyphen_values = true)]
    pub delay: Option<Delay>,
    /// Drop this share of packets, e.g. 5%.
    #[arg(long, value_parser = spec::parse_percent)]
    pub loss: Option<Percent>,
    /// Send this share of packets twice.
    #[arg(long, value_parser = spec::parse_percent)]
    pub duplicate: Option<Percent>,
    /// Send this share of packets without the delay, ahead of the others (needs --delay).
    #[arg(long, value_parser = spec::parse_percent)]
    pub reorder: Option<Percent>,
    /// Damage this share of packets (the receiver drops them as checksum errors).
    #[arg(long, value_parser = spec::parse_percent)]
    pub corrupt: Option<Percent>,
    /// Remove every fault of the link.
    #[arg(long, conflicts_with_all = ["down", "up", "mtu", "rate", "delay", "loss", "duplicate", "reorder", "corrupt"])]
    pub clear: bool,
}

pub fn run(args: LinkArgs) -> anyhow::Result<ExitCode> {
    let (dir, record) = LabRecord::open(&args.lab)?;
    let (host, dev) = match args.link.split_once(':') {
        Some((h, d)) => (h, d),
        None => (args.link.as_str(), crate::overlay::UNDERLAY_DEVICE),
    };
    let change = LinkChange {
        down: if args.down {
            Some(true)
        } else if args.up {
            Some(false)
        } else {
            None
        },
        mtu: args.mtu,
        impairment: Impairment {
            rate: args.rate,
            delay: args.delay,
            loss: args.loss,
            duplicate: args.duplicate,
            reorder: args.reorder,
            corrupt: args.corrupt,
        },
        clear: args.clear,
    };
    anyhow::ensure!(
        change != LinkChange::default(),
        "nothing to do: give --down, --up, --mtu, an impairment (--rate, --delay, --loss, --duplicate, --reorder, --corrupt) or --clear"
    );
    let _lock = FaultLock::take(&dir)?;
    let mut state = FaultState::load(&dir)?;
    let now = link::change(&dir, &record, &mut state, host, dev, &change)?;
    if now.is_clear() {
        println!("link {}:{dev}: no faults", now.host);
    } else if let Some(line) = state
        .describe()
        .into_iter()
        .find(|l| l.starts_with(&format!("link {}:{dev}:", now.host)))
    {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The delay line of the userspace impairment engine (started by `kemu link`).
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The NFQUEUE number to serve.
    #[arg(long)]
    pub queue: u16,
    #[arg(long, value_parser = spec::parse_delay, allow_hyphen_values = true)]
    pub delay: Option<Delay>,
    #[arg(long, value_parser = spec::parse_percent)]
    pub duplicate: Option<Percent>,
    #[arg(long, value_parser = spec::parse_percent)]
    pub reorder: Option<Percent>,
    /// Seed of the random draws (jitter, duplicates, reordering); default: the clock.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run_engine(args: EngineArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let params = crate::faults::delay::Params {
        delay: args.delay,
        duplicate: args.duplicate,
        reorder: args.reorder,
    };
    crate::faults::delay::run(args.queue, params, seed)?;
    Ok(ExitCode::SUCCESS)
}
