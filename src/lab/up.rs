//! `kemu up`: resolve, plan, build the fabric, start the supervisor. A failed `up` rolls back
//! what it made, using the same journal-driven teardown as `down`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::agents::agent_specs;
use super::build::{BuildReport, build};
use super::state::{Journal, LabDir, LabRecord};
use super::teardown::teardown;
use crate::plan::{OverlayBy, plan};
use crate::topology::Topology;

/// How `up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// The topology file it came from.
    pub source: Option<PathBuf>,
    /// Build the network only: no supervisor, no agents.
    pub network_only: bool,
    /// The kubeconfig to add the lab's context to (`None`: leave kubeconfigs alone).
    pub kubeconfig: Option<PathBuf>,
}

/// What `up` did.
#[derive(Debug)]
pub struct UpReport {
    pub build: BuildReport,
    pub total: Duration,
    pub supervisor: Option<i32>,
    /// The forwarded API port on 127.0.0.1, once the API server answered.
    pub api_port: Option<u16>,
    /// The nodes as `validate-cluster` found them.
    pub nodes: Vec<super::health::NodeRow>,
}

/// How long `up` waits for the API server, then for the nodes.
const API_TIMEOUT: Duration = Duration::from_secs(30);
const NODES_TIMEOUT: Duration = Duration::from_secs(60);

/// Build the lab of `topo`.
pub fn up(topo: &Topology, opts: &UpOptions) -> anyhow::Result<UpReport> {
    super::check_privileges()?;
    let started = Instant::now();
    let dir = LabDir::new(&topo.name)?;
    dir.owner
        .create_dir_all(dir.owner.root())
        .with_context(|| format!("create {}", dir.owner.root().display()))?;
    // create_dir is atomic: two `up`s of one lab cannot both get past this line.
    match dir.owner.create_dir(&dir.root) {
        Ok(()) => {
            // The mark that lets `down` remove this directory (and nothing unmarked).
            dir.owner
                .write(&dir.mark(), format!("{}\n", topo.name).as_bytes())
                .with_context(|| format!("write {}", dir.mark().display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "lab {} already exists (state in {}): run `kemu down {}` first, or pick another name with --name",
            topo.name,
            dir.root.display(),
            topo.name
        ),
        Err(e) => return Err(e).with_context(|| format!("create {}", dir.root.display())),
    }
    let with_agents = !opts.network_only && !agent_specs(topo, &dir, None).is_empty();
    if with_agents
        && topo
            .minions()
            .any(|h| h.runtime == crate::runtime::RuntimeKind::Docker)
    {
        let checked = crate::runtime::docker::socket_from_env()
            .and_then(|socket| crate::runtime::docker::prepare_engine(&socket));
        if let Err(e) = checked {
            let _ = dir.owner.remove_dir_all(&dir.root);
            anyhow::bail!("{e}");
        }
    }
    let overlay_by = if with_agents {
        OverlayBy::Agents
    } else {
        OverlayBy::Launcher
    };
    let plan = plan(topo, &dir.root, overlay_by);
    let existing: Vec<&str> = plan
        .namespaces
        .iter()
        .map(|ns| ns.name.as_str())
        .filter(|name| crate::netns::exists(name))
        .collect();
    if !existing.is_empty() {
        let _ = dir.owner.remove_dir_all(&dir.root);
        anyhow::bail!(
            "network namespaces of lab {} already exist but kemu has no record of them: {} (remove them with `ip netns delete` if they are yours)",
            topo.name,
            existing.join(", ")
        );
    }
    let record = LabRecord {
        topology: topo.clone(),
        source: opts.source.clone(),
        binary: std::env::current_exe().context("locate the kemu binary")?,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        api_port: None,
        kubeconfig: None,
        previous_context: None,
        last_repair: None,
        repairs: 0,
        pod_id_range: None,
    };
    let mut record = record;
    let result = (|| {
        // The range is chosen under a lock that is released once lab.json records it.
        let (pod_ids, lock) = super::idrange::allocate(&dir.owner)?;
        record.pod_id_range = Some(pod_ids);
        record.save(&dir).context("write lab.json")?;
        drop(lock);
        let pki = if with_agents {
            let in_lab = super::pki::InLabNames::of_cluster(
                topo.kubernetes_service_ip(),
                topo.master().ip,
                &topo.dns.cluster_domain,
            );
            let pki = super::pki::generate(&topo.name, &in_lab)?;
            pki.save(&dir)?;
            Some(pki)
        } else {
            None
        };
        let mut journal = Journal::open(&dir).context("open the lab journal")?;
        super::progress::phase(format!(
            "building the network: {} namespaces, {} kernel operations",
            plan.namespaces.len(),
            plan.operation_count()
        ));
        let build = build(&plan, &mut journal, &dir.owner)?;
        if with_agents {
            for host in topo.minions() {
                crate::proxy::agent::control::write_mode(
                    &dir.proxy_mode_file(&host.name),
                    host.proxy_mode,
                )
                .context("write the proxy mode files")?;
            }
        }
        let mut nodes = Vec::new();
        let supervisor = if !with_agents {
            None
        } else {
            super::progress::phase("starting the agents");
            let pid = super::supervisor::launch(&dir, &record)?;
            if let (Some(port), Some(pki)) = (dir.read_api_port(), &pki) {
                let creds = super::kubeconfig::Credentials {
                    server: format!("https://127.0.0.1:{port}"),
                    pki,
                };
                super::kubeconfig::write_standalone(&dir, &topo.name, &creds)?;
                record.api_port = Some(port);
                if let Some(path) = &opts.kubeconfig {
                    // Recorded before the edit: `down` must clean up even if `up` dies now.
                    record.kubeconfig = Some(path.clone());
                    record.save(&dir).context("write lab.json")?;
                    record.previous_context = super::kubeconfig::add(path, &topo.name, &creds)
                        .with_context(|| {
                            format!("add context kemu-{} to {}", topo.name, path.display())
                        })?;
                }
                record.save(&dir).context("write lab.json")?;
                let apiserver_log = dir.logs().join(&topo.master().name).join("apiserver.log");
                let api = super::health::LabApi::of(topo)?;
                super::progress::phase("waiting for the API server");
                super::health::wait_api(&api, API_TIMEOUT)
                    .with_context(|| format!("see {}", apiserver_log.display()))?;
                if agent_specs(topo, &dir, None)
                    .iter()
                    .any(|a| a.name == "kubelet")
                {
                    let expected: Vec<String> = topo.minions().map(|h| h.name.clone()).collect();
                    super::progress::phase("waiting for the nodes");
                    nodes = super::health::wait_nodes(&api, &expected, NODES_TIMEOUT)?;
                    if topo.dns.enabled {
                        super::progress::phase("installing the cluster DNS");
                        super::addons::install(&api, topo)?;
                    }
                    super::addons::install_storage(&api)?;
                }
            }
            Some(pid)
        };
        anyhow::Ok(UpReport {
            build,
            total: started.elapsed(),
            supervisor,
            api_port: record.api_port,
            nodes,
        })
    })();
    match result {
        Ok(report) => Ok(report),
        Err(err) => {
            let rollback = teardown(&dir);
            for e in &rollback.errors {
                eprintln!("warning: rollback: {e}");
            }
            Err(err.context(format!(
                "kemu up {} failed; everything it made was removed",
                topo.name
            )))
        }
    }
}
