//! `kemu trace LAB --from HOST|pod/NS/NAME --to ADDR:PORT [--proto tcp|udp]`: send one probe
//! and print its path through the netfilter rules of every host it crosses, chain by chain
//! and rule by rule (iptables-nft's rules and nftables' alike), ending with the rewrites it
//! underwent and whether it was delivered or dropped. The tracing table kemu adds to each host
//! is removed afterwards, so `kemu snapshot` is as before (see [`crate::observe::trace`]).

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::lab::state::LabRecord;
use crate::netns::NetNs;
use crate::observe::point::Point;
use crate::observe::trace::{self, HostTrace, Proto};
use crate::observe::{LabApi, pods};

/// Follow one probe through every host's rules.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Where the probe starts: a host (name or underlay IP) or pod/NAMESPACE/NAME.
    #[arg(long)]
    pub from: String,
    /// Where it goes: ADDRESS:PORT (a ClusterIP, a node port, a pod).
    #[arg(long)]
    pub to: SocketAddr,
    /// tcp (a SYN; the connection is opened and closed) or udp (one datagram).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub proto: String,
    /// How long to wait for an answer.
    #[arg(long, default_value = "2s", value_parser = crate::topology::parse_duration_arg)]
    pub timeout: Duration,
}

/// The tracing tables added so far (host, namespace); removed when dropped, whatever
/// happened in between.
struct Tables {
    added: Vec<(String, String)>,
}

impl Drop for Tables {
    fn drop(&mut self) {
        for (host, netns) in &self.added {
            if let Err(e) = nft(netns, &trace::remove_table()) {
                eprintln!("warning: remove the tracing table of {host}: {e:#}");
            }
        }
    }
}

/// `nft -f -` with `script`, inside namespace `netns`.
fn nft(netns: &str, script: &str) -> anyhow::Result<()> {
    let ns = NetNs::open(netns)?;
    let script = script.to_string();
    let out = ns.run(move || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), script.as_bytes())?;
        child.wait_with_output()
    })?;
    anyhow::ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let proto = if args.proto == "udp" {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    let from = Point::parse(&args.from).map_err(super::exit::usage)?;
    if let Point::Host { dev: Some(_), .. } = &from {
        return Err(super::exit::usage(
            "--from is a host or a pod, not a device",
        ));
    }
    let (dir, record) = LabRecord::open(&args.lab)?;
    let (source_host, source_netns) = match &from {
        Point::Host { host, .. } => {
            let host = record.host(host)?;
            (host.name.clone(), record.topology.host_namespace(host))
        }
        Point::Pod { namespace, name } => {
            let api = LabApi::connect(&record)?;
            let pod = api
                .rt
                .block_on(Api::<Pod>::namespaced(api.client.clone(), namespace).get_opt(name))?
                .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} not found"))?;
            let place = pods::locate(&record, &pod)?;
            (place.host, place.netns)
        }
    };
    let hosts: Vec<(String, String)> = record
        .topology
        .hosts
        .iter()
        .map(|h| (h.name.clone(), record.topology.host_namespace(h)))
        .collect();
    let sport: u16 = 40000 + (rand::random::<u16>() % 20000);

    let mut tables = Tables { added: Vec::new() };
    for (host, netns) in &hosts {
        nft(netns, &trace::trace_table(proto, sport))
            .map_err(|e| anyhow::anyhow!("switch tracing on in {host}: {e:#}"))?;
        tables.added.push((host.clone(), netns.clone()));
    }
    // One `nft monitor trace` per host, each line stamped when read.
    let (tx, rx) = mpsc::channel::<(usize, Instant, String)>();
    let mut monitors: Vec<Child> = Vec::new();
    for (i, (host, netns)) in hosts.iter().enumerate() {
        let ns = NetNs::open(netns)?;
        let mut child = ns.run(|| {
            // Line-buffered (nft's stdout to a pipe is block-buffered): each line arrives
            // when the kernel reports it, which orders the hosts.
            let mut cmd = Command::new("stdbuf");
            cmd.args(["-oL", "nft", "monitor", "trace"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            crate::lab::exec::in_host_cgroup(&dir, host, &mut cmd)
                .map_err(std::io::Error::other)?;
            cmd.spawn()
        })?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send((i, Instant::now(), line));
            }
        });
        monitors.push(child);
    }
    drop(tx);
    // The monitors subscribe as they start; give them a moment.
    std::thread::sleep(Duration::from_millis(400));
    let answered = send_probe(&source_netns, args.to, sport, proto, args.timeout);
    std::thread::sleep(Duration::from_millis(300));
    for child in &mut monitors {
        // Our own children, by PID.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    drop(tables);

    let mut lines: Vec<(usize, Instant, String)> = rx.into_iter().collect();
    lines.sort_by_key(|(_, at, _)| *at);
    // The source's host first, then the others as their reports came.
    let mut order: Vec<usize> = hosts
        .iter()
        .position(|(name, _)| *name == source_host)
        .filter(|i| lines.iter().any(|(h, _, _)| h == i))
        .into_iter()
        .collect();
    for (i, _, _) in &lines {
        if !order.contains(i) {
            order.push(*i);
        }
    }
    let traces: Vec<HostTrace> = order
        .iter()
        .map(|i| HostTrace {
            host: hosts[*i].0.clone(),
            steps: lines
                .iter()
                .filter(|(h, _, _)| h == i)
                .filter_map(|(_, _, l)| trace::parse_line(l))
                .collect(),
        })
        .collect();
    let outcome = trace::outcome(&traces, answered.is_ok());
    let probe = format!(
        "{} from {} (port {sport}) to {}{}",
        proto.as_str(),
        args.from,
        args.to,
        match &answered {
            Ok(()) => String::new(),
            Err(e) => format!(": {e}"),
        }
    );
    print!("{}", trace::render(&probe, &traces, &outcome));
    Ok(ExitCode::SUCCESS)
}

/// Send the probe from `netns` with source port `sport`: a TCP connection (answered when it
/// opens), or a datagram (answered when one comes back).
fn send_probe(
    netns: &str,
    to: SocketAddr,
    sport: u16,
    proto: Proto,
    timeout: Duration,
) -> Result<(), String> {
    let ns = NetNs::open(netns).map_err(|e| e.to_string())?;
    let result = ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let local: SocketAddr = ([0, 0, 0, 0], sport).into();
            match proto {
                Proto::Tcp => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.set_reuseaddr(true)?;
                    set_tos(std::os::fd::AsRawFd::as_raw_fd(&socket))?;
                    socket.bind(local)?;
                    match tokio::time::timeout(timeout, socket.connect(to)).await {
                        Ok(Ok(_stream)) => Ok(Ok(())),
                        Ok(Err(e)) => Ok(Err(e.to_string())),
                        Err(_) => Ok(Err("no answer (timeout)".to_string())),
                    }
                }
                Proto::Udp => {
                    let socket = tokio::net::UdpSocket::bind(local).await?;
                    set_tos(std::os::fd::AsRawFd::as_raw_fd(&socket))?;
                    socket.send_to(b"hostname", to).await?;
                    let mut buf = [0u8; 2048];
                    match tokio::time::timeout(timeout, socket.recv_from(&mut buf)).await {
                        Ok(Ok(_)) => Ok(Ok(())),
                        Ok(Err(e)) => Ok(Err(e.to_string())),
                        Err(_) => Ok(Err("no answer (timeout)".to_string())),
                    }
                }
            }
        })
    });
    match result {
        Ok(r) => r,
        Err(e) => Err(e.to_string()),
    }
}

/// Mark what the socket sends with the probe's DSCP (`IP_TOS`).
fn set_tos(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let tos: libc::c_int = (trace::PROBE_DSCP as libc::c_int) << 2;
    // SAFETY: setsockopt with an int that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_TOS,
            (&tos as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
