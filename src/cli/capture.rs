//! `kemu capture LAB POINT... -w FILE.pcapng|-` with POINT `HOST`, `HOST:DEV` or
//! `pod/NS/NAME`: packets of several places of a lab in one pcapng file, merged by time, one
//! interface per device (`host:dev`), with the direction each packet went. Captured through
//! `AF_PACKET` sockets inside the namespaces (see [`crate::observe::capture`]); read the file
//! with `tcpdump -r`, `tshark -r` or Wireshark (`-w -`: `kemu capture ... -w - | tcpdump -r -`).

use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::lab::state::LabRecord;
use crate::observe::capture::{self, CapturePoint, Captured, Filter, SNAP_LEN};
use crate::observe::pcapng;
use crate::observe::point::Point;
use crate::observe::{LabApi, pods};

/// Capture packets at several points of a lab into one pcapng file.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Lab name.
    pub lab: crate::topology::LabName,
    /// Where: HOST (all its devices but lo), HOST:DEV, or pod/NAMESPACE/NAME (the pod's eth0).
    #[arg(required = true)]
    pub points: Vec<String>,
    /// The file to write (`-`: standard output).
    #[arg(short = 'w', long = "write")]
    pub write: String,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    pub count: Option<usize>,
    /// Stop after this long (e.g. 5s); without it and --count, capture until interrupted.
    #[arg(short = 'd', long, value_parser = crate::topology::parse_duration_arg)]
    pub duration: Option<Duration>,
    /// Keep only packets from or to this address (repeatable; VXLAN's inner packets count).
    #[arg(long = "host")]
    pub hosts: Vec<IpAddr>,
    /// Keep only packets from or to this TCP/UDP port (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Keep only this protocol: tcp, udp or icmp.
    #[arg(long)]
    pub proto: Option<String>,
}

/// Set by SIGINT/SIGTERM: stop capturing, write what is held, close the file.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// How long a packet is held before it is written, so that packets of all points come out in
/// time order (the threads deliver them a little apart).
const HOLD: Duration = Duration::from_millis(200);

/// A packet waiting to be written, oldest first out of the heap.
struct Held(Captured);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.ns == other.0.ns
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.ns.cmp(&self.0.ns)
    }
}

/// The file being written: interfaces get their block (and id) when first seen.
struct Writer {
    out: Box<dyn Write>,
    interfaces: HashMap<String, u32>,
    written: usize,
    flush_each: bool,
}

impl Writer {
    fn write(&mut self, p: &Captured) -> std::io::Result<()> {
        let next = self.interfaces.len() as u32;
        let id = match self.interfaces.get(&p.interface) {
            Some(id) => *id,
            None => {
                self.out.write_all(&pcapng::interface(
                    &p.interface,
                    pcapng::LINKTYPE_ETHERNET,
                    SNAP_LEN as u32,
                ))?;
                self.interfaces.insert(p.interface.clone(), next);
                next
            }
        };
        self.out.write_all(&pcapng::packet(
            id,
            p.ns,
            &p.data,
            p.original_len,
            p.direction,
        ))?;
        self.written += 1;
        if self.flush_each {
            self.out.flush()?;
        }
        Ok(())
    }
}

pub fn run(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let protocol = match args.proto.as_deref() {
        None => None,
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        Some("icmp") => Some(1),
        Some(other) => {
            return Err(super::exit::usage(format!(
                "--proto {other:?}: expected tcp, udp or icmp"
            )));
        }
    };
    let filter = Filter {
        hosts: args.hosts.clone(),
        ports: args.ports.clone(),
        protocol,
    };
    let parsed = args
        .points
        .iter()
        .map(|p| Point::parse(p).map_err(super::exit::usage))
        .collect::<anyhow::Result<Vec<Point>>>()?;
    let (_, record) = LabRecord::open(&args.lab)?;
    let mut points = Vec::new();
    let mut api = None;
    for point in parsed {
        points.push(match point {
            Point::Host { host, dev } => {
                let host = record.host(&host)?;
                CapturePoint {
                    label: host.name.clone(),
                    netns: record.topology.host_namespace(host),
                    dev,
                }
            }
            Point::Pod { namespace, name } => {
                if api.is_none() {
                    api = Some(LabApi::connect(&record)?);
                }
                let api = api.as_ref().expect("connected");
                let pod = api
                    .rt
                    .block_on(
                        Api::<Pod>::namespaced(api.client.clone(), &namespace).get_opt(&name),
                    )?
                    .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{name} not found"))?;
                let place = pods::locate(&record, &pod)?;
                anyhow::ensure!(
                    !place.host_network,
                    "pod {namespace}/{name} uses the host's network: capture on {} instead",
                    place.host
                );
                CapturePoint {
                    label: format!("pod/{namespace}/{name}"),
                    netns: place.netns,
                    dev: Some(crate::overlay::UNDERLAY_DEVICE.to_string()),
                }
            }
        });
    }
    let (out, flush_each): (Box<dyn Write>, bool) = if args.write == "-" {
        (Box::new(std::io::stdout().lock()), true)
    } else {
        let file = std::fs::File::create(&args.write)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", args.write))?;
        (Box::new(std::io::BufWriter::new(file)), false)
    };
    let mut writer = Writer {
        out,
        interfaces: HashMap::new(),
        written: 0,
        flush_each,
    };
    writer.out.write_all(&pcapng::section_header(concat!(
        "kemu ",
        env!("CARGO_PKG_VERSION")
    )))?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_stop),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &action)?;
        nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGTERM, &action)?;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Captured>();
    let threads_stop = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for point in &points {
            let (tx, filter, stop, ready) = (tx.clone(), &filter, &threads_stop, &ready);
            handles.push(scope.spawn(move || {
                capture::capture(
                    point,
                    filter,
                    stop,
                    &|| {
                        ready.fetch_add(1, Ordering::SeqCst);
                    },
                    tx,
                )
                .map_err(|e| anyhow::anyhow!("capture on {}: {e:#}", point.label))
            }));
        }
        drop(tx);
        // Tell the user (and scripts) when every socket listens.
        let started = Instant::now();
        while ready.load(Ordering::SeqCst) < points.len()
            && !handles.iter().any(|h| h.is_finished())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        if ready.load(Ordering::SeqCst) == points.len() {
            eprintln!("capturing on {} point(s)", points.len());
        }
        let limit = args.count.unwrap_or(usize::MAX);
        // The threads must be told to stop whatever happens here (a write error included), or
        // the scope would wait for them for ever.
        let written = merge_and_write(
            &rx,
            &mut writer,
            limit,
            &|| {
                STOP.load(Ordering::Relaxed)
                    || args.duration.is_some_and(|d| started.elapsed() >= d)
                    || handles.iter().any(|h| h.is_finished())
            },
            &threads_stop,
            &|| handles.iter().all(|h| h.is_finished()),
        );
        threads_stop.store(true, Ordering::Relaxed);
        let mut failed = None;
        for h in handles {
            if let Err(e) = h.join().expect("capture thread panicked") {
                failed.get_or_insert(e);
            }
        }
        match written {
            // The reader went away (`| tcpdump -c 5 -r -`): that ends the capture.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(anyhow::anyhow!("write {}: {e}", args.write)),
            Ok(()) => {}
        }
        failed.map_or(Ok(()), Err)
    });
    match writer.out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            result?;
            return Err(anyhow::anyhow!("write {}: {e}", args.write));
        }
        _ => result?,
    }
    eprintln!(
        "{} packet(s) on {} interface(s)",
        writer.written,
        writer.interfaces.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Write what the capture threads send, in time order (each packet held [`HOLD`] so that a
/// later-arriving but earlier packet goes first), until `stop` says so and every thread has
/// finished (`finished`), or `limit` packets are written.
fn merge_and_write(
    rx: &std::sync::mpsc::Receiver<Captured>,
    writer: &mut Writer,
    limit: usize,
    stop: &dyn Fn() -> bool,
    threads_stop: &AtomicBool,
    finished: &dyn Fn() -> bool,
) -> std::io::Result<()> {
    let mut held = BinaryHeap::new();
    loop {
        let stopping = stop();
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(p) => held.push(Held(p)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let due =
            (jiff::Timestamp::now().as_nanosecond() as u64).saturating_sub(HOLD.as_nanos() as u64);
        while held.peek().is_some_and(|p| p.0.ns <= due || stopping) {
            let Held(p) = held.pop().expect("peeked");
            if writer.written < limit {
                writer.write(&p)?;
            }
        }
        if stopping || writer.written >= limit {
            threads_stop.store(true, Ordering::Relaxed);
            // The threads see the flag within their poll timeout; what they still send is
            // written too (up to the limit), in order.
            if finished() {
                break;
            }
        }
    }
    held.extend(rx.try_iter().map(Held));
    while let Some(Held(p)) = held.pop() {
        if writer.written < limit {
            writer.write(&p)?;
        }
    }
    Ok(())
}
