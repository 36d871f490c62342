//! `kemu generate --hosts N`: write an N-host topology for scale tests and benchmarks.

use std::process::ExitCode;

use clap::Args;

use crate::topology::ProxyMode;
use crate::topology::generate::{GenerateOptions, generate};

/// Print an N-host topology file.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of cluster hosts (the first is master and minion).
    #[arg(long)]
    pub hosts: usize,
    /// Spread the hosts over this many segments joined by a router.
    #[arg(long, default_value_t = 1)]
    pub segments: usize,
    /// Lab name.
    #[arg(long, default_value = "scale")]
    pub name: crate::topology::LabName,
    /// Add an outside client host per segment.
    #[arg(long)]
    pub clients: bool,
    /// Proxy mode.
    #[arg(long, value_enum, default_value_t = ProxyMode::Iptables)]
    pub proxy_mode: ProxyMode,
}

/// Why the request cannot make a topology, if it cannot: checked before anything is printed.
fn impossible(args: &GenerateArgs) -> Option<String> {
    if args.hosts == 0 {
        return Some("--hosts must be at least 1".into());
    }
    if args.segments == 0 {
        return Some("--segments must be at least 1".into());
    }
    if args.segments > args.hosts {
        return Some(format!(
            "--segments {} is more than --hosts {}: every segment needs a host",
            args.segments, args.hosts
        ));
    }
    None
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    if let Some(why) = impossible(&args) {
        return Err(super::exit::usage(why));
    }
    let text = generate(&GenerateOptions {
        name: args.name.to_string(),
        hosts: args.hosts,
        segments: args.segments,
        clients: args.clients,
        proxy_mode: args.proxy_mode.to_string(),
    });
    // What the generator makes must be a topology `up` takes (too many hosts for its address
    // plan, for one): the parser is the judge, before anything is printed.
    if let Err(e) = crate::topology::parse("the generated topology", &text) {
        return Err(super::exit::usage(format!(
            "kemu generate cannot make this topology: {e}"
        )));
    }
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(hosts: usize, segments: usize) -> GenerateArgs {
        GenerateArgs {
            hosts,
            segments,
            name: crate::topology::LabName::parse("scale").unwrap(),
            clients: false,
            proxy_mode: ProxyMode::Iptables,
        }
    }

    #[test]
    fn impossible_requests_are_refused() {
        assert!(impossible(&args(0, 1)).unwrap().contains("--hosts"));
        assert!(impossible(&args(3, 0)).unwrap().contains("--segments"));
        assert!(
            impossible(&args(2, 3))
                .unwrap()
                .contains("--segments 3 is more than --hosts 2")
        );
        assert_eq!(impossible(&args(3, 3)), None);
        assert_eq!(impossible(&args(100, 4)), None);
    }
}
