//! The impairment engines behind one narrow trait: kernel netem where the kernel has it, and
//! kemu's own elsewhere (tbf for the rate, nftables for loss and corruption, the NFQUEUE
//! delay line of [`super::delay`] for delay, jitter, reordering and duplication).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::kernel;
use super::render;
use super::spec::Impairment;
use super::state::{EngineState, QueueState};
use crate::lab::state::{LabDir, ProcessRecord};
use crate::netns::NetNs;

/// The link an engine works on: `dev` inside host `host`'s namespace `ns`.
pub struct LinkTarget<'a> {
    pub dir: &'a LabDir,
    pub host: &'a str,
    pub ns: &'a NetNs,
    pub dev: &'a str,
    /// The link as it is now (its index names the delay line's queue).
    pub info: &'a kernel::LinkInfo,
    /// The kemu binary that runs the delay line.
    pub binary: &'a Path,
}

/// Puts an impairment on a link's egress and takes it off again.
pub trait ImpairmentEngine {
    /// Apply `imp` (non-empty) to a link that has nothing of this engine on it.
    fn apply(&self, link: &LinkTarget, imp: &Impairment) -> anyhow::Result<EngineState>;
    /// Remove everything `apply` put there, as `state` records it.
    fn clear(&self, link: &LinkTarget, state: &EngineState) -> anyhow::Result<()>;
}

/// Which engine `KEMU_FAULT_ENGINE` asks for (`netem` or `userspace`), if any.
pub const ENGINE_VAR: &str = "KEMU_FAULT_ENGINE";

/// Apply with netem when the kernel has it (unless `KEMU_FAULT_ENGINE` says otherwise), else
/// with kemu's own engine.
pub fn apply(link: &LinkTarget, imp: &Impairment) -> anyhow::Result<EngineState> {
    let wanted = std::env::var(ENGINE_VAR).unwrap_or_default();
    match wanted.as_str() {
        "userspace" => Userspace.apply(link, imp),
        "netem" => Netem.apply(link, imp),
        "" => match Netem.apply(link, imp) {
            Err(e) if e.to_string().contains("qdisc kind is unknown") => Userspace.apply(link, imp),
            other => other,
        },
        other => anyhow::bail!("{ENGINE_VAR}={other:?}: use netem or userspace"),
    }
}

/// Remove what an engine recorded in `state`.
pub fn clear(link: &LinkTarget, state: &EngineState) -> anyhow::Result<()> {
    match state {
        EngineState::Netem => Netem.clear(link, state),
        EngineState::Userspace { .. } => Userspace.clear(link, state),
    }
}

/// The kernel's netem qdisc: one qdisc does it all.
pub struct Netem;

impl ImpairmentEngine for Netem {
    fn apply(&self, link: &LinkTarget, imp: &Impairment) -> anyhow::Result<EngineState> {
        let args = render::netem_args(link.dev, imp);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kernel::run(link.ns, "tc", &args)?;
        Ok(EngineState::Netem)
    }

    fn clear(&self, link: &LinkTarget, _: &EngineState) -> anyhow::Result<()> {
        kernel::run(link.ns, "tc", &["qdisc", "del", "dev", link.dev, "root"]).map(|_| ())
    }
}

/// kemu's own engine, for kernels without netem.
pub struct Userspace;

impl ImpairmentEngine for Userspace {
    fn apply(&self, link: &LinkTarget, imp: &Impairment) -> anyhow::Result<EngineState> {
        let mut state = EngineState::Userspace {
            tbf: false,
            nft_table: None,
            queue: None,
        };
        // Record each part as it is made, so that a failure half-way undoes what was made.
        let result = (|| {
            let EngineState::Userspace {
                tbf,
                nft_table,
                queue,
            } = &mut state
            else {
                unreachable!()
            };
            let info = link.info;
            if let Some(rate) = imp.rate {
                let args = render::tbf_args(link.dev, rate, info.mtu);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                kernel::run(link.ns, "tc", &args)?;
                *tbf = true;
            }
            if let Some(table) = render::link_table(link.dev, imp) {
                let name = render::link_table_name(link.dev);
                kernel::nft(link.ns, &render::replace_table(&name, &table))?;
                *nft_table = Some(name);
            }
            if imp.needs_delay_line() {
                *queue = Some(start_queue(link, imp, info.ifindex)?);
            }
            anyhow::Ok(())
        })();
        match result {
            Ok(()) => Ok(state),
            Err(e) => {
                let _ = self.clear(link, &state);
                Err(e)
            }
        }
    }

    fn clear(&self, link: &LinkTarget, state: &EngineState) -> anyhow::Result<()> {
        let EngineState::Userspace {
            tbf,
            nft_table,
            queue,
        } = state
        else {
            anyhow::bail!("not the userspace engine's state: {state:?}");
        };
        let mut errors = Vec::new();
        if let Some(q) = queue
            && let Err(e) = stop_queue(link, q)
        {
            errors.push(e.to_string());
        }
        if let Some(name) = nft_table
            && let Err(e) = kernel::nft(link.ns, &render::delete_table(name))
        {
            errors.push(e.to_string());
        }
        if *tbf
            && let Err(e) = kernel::run(link.ns, "tc", &["qdisc", "del", "dev", link.dev, "root"])
        {
            errors.push(e.to_string());
        }
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
        Ok(())
    }
}

/// Start the delay line on queue `ifindex` (unique in the namespace) and route the link's
/// outgoing packets to it.
fn start_queue(link: &LinkTarget, imp: &Impairment, ifindex: u32) -> anyhow::Result<QueueState> {
    let num = u16::try_from(ifindex)
        .map_err(|_| anyhow::anyhow!("{}: interface index {ifindex} too large", link.dev))?;
    let mut argv: Vec<String> = vec![
        link.binary.display().to_string(),
        "fault-engine".into(),
        "--queue".into(),
        num.to_string(),
    ];
    if let Some(d) = imp.delay {
        argv.extend(["--delay".into(), d.to_string()]);
    }
    if let Some(p) = imp.duplicate {
        argv.extend(["--duplicate".into(), p.to_string()]);
    }
    if let Some(p) = imp.reorder {
        argv.extend(["--reorder".into(), p.to_string()]);
    }
    let netns = link.ns.name().to_string();
    let mut cmd = crate::lab::exec::host_command(link.dir, link.host, &netns, &argv)?;
    link.dir.owner.create_dir_all(&link.dir.logs())?;
    let log = link.dir.owner.open_append(
        &link
            .dir
            .logs()
            .join(format!("{}-link-{}.log", link.host, link.dev)),
    )?;
    // Its own process group: a ^C in the terminal of `kemu link` does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("start the delay line: {e}"))?;
    let pid = child.id() as i32;
    let process = ProcessRecord::of(pid, format!("{}/link-engine {}", link.host, link.dev))
        .ok_or_else(|| anyhow::anyhow!("the delay line exited at once"))?;
    process.register(link.dir)?;
    let mut ready = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut ready);
    if ready.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        process.unregister(link.dir);
        anyhow::bail!(
            "the delay line did not start (see {})",
            link.dir.logs().display()
        );
    }
    let created_mangle = !kernel::has_nft_table(link.ns, "ip", "mangle")?;
    let rule = render::nfqueue_rule(link.dev, num);
    let queue = QueueState {
        num,
        process,
        rule: rule.clone(),
        created_mangle,
    };
    let mut args = vec!["-w", "-t", "mangle", "-A", "POSTROUTING"];
    args.extend(rule.iter().map(String::as_str));
    if let Err(e) = kernel::run(link.ns, "iptables", &args) {
        let _ = stop_queue(link, &queue);
        return Err(e);
    }
    Ok(queue)
}

/// Remove the queue rule (and the mangle table when kemu made it and it is empty again),
/// then stop the delay line, which lets the packets it holds go first.
fn stop_queue(link: &LinkTarget, q: &QueueState) -> anyhow::Result<()> {
    let mut args = vec!["-w", "-t", "mangle", "-D", "POSTROUTING"];
    args.extend(q.rule.iter().map(String::as_str));
    let _ = kernel::run(link.ns, "iptables", &args);
    if q.created_mangle {
        let rules = kernel::run(link.ns, "iptables", &["-w", "-t", "mangle", "-S"])?;
        if rules.lines().all(|l| l.starts_with("-P ")) {
            kernel::nft(link.ns, "delete table ip mangle\n")?;
        }
    }
    stop_process(link.dir, &q.process)
}

/// SIGTERM a recorded process (if it is still the one recorded) and wait for it to go;
/// SIGKILL after a second.
pub fn stop_process(dir: &LabDir, p: &ProcessRecord) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if p.is_alive() {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(1);
        while p.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if p.is_alive() {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
    p.unregister(dir);
    Ok(())
}
