//! Benchmark of the faults (issue 16):
//!
//! 1. applying and removing each kind of fault: the wall time of the whole `kemu link`,
//!    `kemu partition` / `kemu heal` command, as a user runs it (process start included), on
//!    a network-only seed lab;
//! 2. the userspace delay line at 10 ms: UDP datagrams stamped with their send time
//!    (CLOCK_MONOTONIC, shared by every namespace) go from one host to another through it at
//!    fixed offered rates; the receiver measures each one's delay. A rate is sustained when
//!    every datagram arrives and none skipped the line.
//!
//! Needs root (it builds a lab). Writes its section of BENCHMARKS.md.
//!
//!     sudo cargo bench --bench faults

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use common::write_section;
use kemu::netns::NetNs;

const LAB: &str = "fltbench";
const A: &str = "192.168.0.202";
const B: &str = "192.168.0.203";
const RUNS: usize = 21;
const DELAY_MS: f64 = 10.0;

fn kemu(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(args)
        .output()
        .expect("run kemu")
}

fn kemu_ok(args: &[&str]) {
    let out = kemu(args);
    assert!(
        out.status.success(),
        "kemu {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(args: &[&str]) -> f64 {
    let t = Instant::now();
    kemu_ok(args);
    t.elapsed().as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One fixed-rate run through the delay line: `(delivered, sent, delays in ms)`.
fn run_rate(rate: u64, seconds: f64) -> (usize, usize, Vec<f64>) {
    let rx_ns = NetNs::open(&format!("kemu-{LAB}-{B}")).unwrap();
    let tx_ns = NetNs::open(&format!("kemu-{LAB}-{A}")).unwrap();
    let total = (rate as f64 * seconds) as usize;
    let receiver = std::thread::spawn(move || {
        rx_ns
            .run(move || {
                let sock = UdpSocket::bind(format!("{B}:9500"))?;
                sock.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut buf = [0u8; 64];
                let mut delays = Vec::with_capacity(total);
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n >= 8 {
                        let sent = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        delays.push((monotonic_ns().saturating_sub(sent)) as f64 / 1e6);
                    }
                }
                Ok(delays)
            })
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(50));
    let sent = tx_ns
        .run(move || {
            let sock = UdpSocket::bind(format!("{A}:0"))?;
            let start = Instant::now();
            let mut sent = 0;
            for i in 0..total {
                // Paced: packet i leaves at i / rate.
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                while start.elapsed() < due {
                    std::hint::spin_loop();
                }
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&monotonic_ns().to_le_bytes());
                if sock.send_to(&payload, format!("{B}:9500")).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
        .unwrap();
    let delays = receiver.join().unwrap();
    (delays.len(), sent, delays)
}

fn main() {
    let _ = kemu(&["down", LAB]);
    kemu_ok(&[
        "up",
        "topologies/seed.yaml",
        "--name",
        LAB,
        "--network-only",
        "--no-kubeconfig",
    ]);

    // 1. Apply and remove.
    let cases: [(&str, Vec<&str>, Vec<&str>); 6] = [
        (
            "loss 5% (nftables)",
            vec!["link", LAB, A, "--loss", "5%"],
            vec!["link", LAB, A, "--clear"],
        ),
        (
            "corrupt 1% (nftables)",
            vec!["link", LAB, A, "--corrupt", "1%"],
            vec!["link", LAB, A, "--clear"],
        ),
        (
            "rate 10mbit (tbf)",
            vec!["link", LAB, A, "--rate", "10mbit"],
            vec!["link", LAB, A, "--clear"],
        ),
        (
            "delay 10ms±1ms (delay line)",
            vec!["link", LAB, A, "--delay", "10ms±1ms"],
            vec!["link", LAB, A, "--clear"],
        ),
        (
            "mtu 1400 + offloads off, link down",
            vec!["link", LAB, A, "--mtu", "1400", "--down"],
            vec!["link", LAB, A, "--clear"],
        ),
        (
            "partition (all planes) / heal",
            vec!["partition", LAB, A],
            vec!["heal", LAB],
        ),
    ];
    let mut rows = String::new();
    let mut worst: f64 = 0.0;
    for (name, apply, clear) in &cases {
        let (mut a, mut c) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            a.push(timed(apply));
            c.push(timed(clear));
        }
        let (a, c) = (sorted(a), sorted(c));
        worst = worst.max(percentile(&a, 0.5)).max(percentile(&c, 0.5));
        rows.push_str(&format!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            percentile(&a, 0.5),
            percentile(&a, 0.9),
            percentile(&c, 0.5),
            percentile(&c, 0.9)
        ));
        eprintln!("{name}: apply {a:.1?}\n  clear {c:.1?}");
    }

    // 2. The delay line at 10 ms.
    kemu_ok(&["link", LAB, A, "--delay", "10ms"]);
    let mut engine_rows = String::new();
    let mut best_rate = 0;
    for rate in [10_000u64, 25_000, 50_000, 75_000, 100_000] {
        let (got, sent, delays) = run_rate(rate, 2.0);
        let errors = sorted(delays.iter().map(|d| (d - DELAY_MS).abs()).collect());
        let skipped = delays.iter().filter(|d| **d < DELAY_MS - 1.0).count();
        let ok = got == sent && skipped == 0 && percentile(&errors, 0.99) <= 1.0;
        if ok {
            best_rate = rate;
        }
        engine_rows.push_str(&format!(
            "| {rate} | {got} / {sent} | {skipped} | {:.3} ms | {:.3} ms | {:.3} ms | {} |\n",
            percentile(&errors, 0.5),
            percentile(&errors, 0.99),
            errors.last().copied().unwrap_or(f64::NAN),
            if ok { "yes" } else { "no" }
        ));
        eprintln!(
            "rate {rate}: {got}/{sent}, skipped {skipped}, error p50 {:.3} p99 {:.3} max {:.3}",
            percentile(&errors, 0.5),
            percentile(&errors, 0.99),
            errors.last().copied().unwrap_or(f64::NAN)
        );
    }
    kemu_ok(&["link", LAB, A, "--clear"]);
    kemu_ok(&["down", LAB]);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Other work on the machine delays every wakeup of the delay line: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    let date = jiff::Zoned::now().strftime("%Y-%m-%d").to_string();
    let section = format!(
        "<!-- faults:begin -->\n## Faults: applying, removing, and kemu's delay line\n\n\
Reproduce with `sudo cargo bench --bench faults` (release build; a network-only seed lab). \
Measured {date} on 2 cores (load average {load} at the end of the run), kernel {}, which has \
no netem: link impairments use kemu's own engine (tbf, nftables, the NFQUEUE delay line).\n\n\
Wall time of the whole command as a user runs it (process start included), {RUNS} runs each:\n\n\
| fault | apply p50 | apply p90 | remove p50 | remove p90 |\n|---|---:|---:|---:|---:|\n{rows}\n\
Target: applying or removing a fault ≤ 50 ms: {} (slowest median {worst:.1} ms).\n\n\
The delay line at 10 ms: 32-byte UDP datagrams sent at a fixed rate for 2 s from one host to \
another through it; each one's delay measured by the receiver against its send time; \
\"skipped\" counts datagrams that arrived without the delay (the kernel queue overflowed and \
let them pass).\n\n\
| offered pkt/s | delivered | skipped | error p50 | error p99 | error max | sustained |\n\
|---:|---:|---:|---:|---:|---:|---|\n{engine_rows}\n\
Target: ≥ 50,000 packets/s with ≤ 1 ms added error at 10 ms: {} (highest sustained rate \
{best_rate} pkt/s).\n<!-- faults:end -->\n",
        kernel.trim(),
        if worst <= 50.0 { "met" } else { "NOT met" },
        if best_rate >= 50_000 {
            "met"
        } else {
            "NOT met"
        },
    );
    write_section("faults", &section);
    print!("{section}");
}
