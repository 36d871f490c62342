//! Benchmark of the service proxy (issue 5), in each of its three modes:
//!
//! 1. rule sync time for 1,000 and 10,000 services: measured directly (the pure renderer and
//!    the agent's kernel functions, in a scratch network namespace this benchmark creates and
//!    deletes), and on a live lab (1,000 services created through the API; the agents' status
//!    files tell when a change is in every node's kernel);
//! 2. a Service create, through the API, to its ClusterIP answering from every node;
//! 3. iperf3 throughput pod → ClusterIP → pod across nodes, against pod → pod;
//! 4. the conntrack cleanup after a sync that removes a UDP endpoint, with 1,000 entries in
//!    the table (list, pick the stale ones, delete them through netlink).
//!
//! Needs root (it builds namespaces and labs). Writes its section of BENCHMARKS.md.
//!
//!     sudo cargo bench --bench proxy

mod common;

use common::{LabApi, api, write_section};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kemu::netns::{self, NetNs};
use kemu::proxy::RESTORE_ARGS;
use kemu::proxy::agent::control::ProxyStatus;
use kemu::proxy::agent::{kernel, rules};
use kemu::proxy::forwarder::Forwarder;
use kemu::proxy::{NodeContext, ProxyInput, ProxyMode, render};

const SEED_LAB: &str = "pxbench";
const WIDE_LAB: &str = "pxwide";
const HOSTS: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
const MODES: [ProxyMode; 3] = [
    ProxyMode::Userspace,
    ProxyMode::Iptables,
    ProxyMode::Nftables,
];
/// Service counts of the scratch-namespace sync measurement.
const SCRATCH_SIZES: [usize; 2] = [1_000, 10_000];
/// Services of the live-lab sync measurement.
const LIVE_SERVICES: usize = 1_000;
/// Longest a single `iptables-restore` / `nft -f` may run in the scratch namespace before the
/// benchmark stops it and reports the row as stopped.
const APPLY_LIMIT: Duration = Duration::from_secs(60);
/// Single-service changes timed per mode and size.
const CHANGES: usize = 5;
/// Services created (one at a time) per mode for create → reachable.
const REACH_SERVICES: usize = 8;
/// iperf3 rounds per mode (each: one pod → pod run, one pod → ClusterIP run) and their length.
const IPERF_ROUNDS: usize = 3;
const IPERF_SECONDS: u32 = 3;

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
        "kemu {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An API call that must answer `want`; the response body as JSON.
fn api_json(port: LabApi, method: &str, path: &str, body: &str, want: u16) -> serde_json::Value {
    let (code, text) = api(port, method, path, Some(body));
    assert_eq!(code, want, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn get_json(port: LabApi, path: &str) -> serde_json::Value {
    let (code, text) = api(port, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn resource_version(object: &serde_json::Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The 1, 5 and 15 minute load averages, e.g. "10.51, 8.20, 6.02".
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

// ---------------------------------------------------------------------------------------------
// 1a. Sync in a scratch namespace: the agent's sync steps, timed one by one.

/// The `i`th synthetic Service: ClusterIP port 80 → 8080, every tenth a NodePort.
fn service(i: usize, port: u16) -> Service {
    let mut spec = serde_json::json!({
        "clusterIP": format!("172.30.{}.{}", (i + 10) / 250, (i + 10) % 250 + 1),
        "selector": {"app": format!("s{i}")},
        "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}],
    });
    if i.is_multiple_of(10) {
        spec["type"] = "NodePort".into();
        spec["ports"][0]["nodePort"] = (30000 + i / 10).into();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "default", "resourceVersion": "1"},
        "spec": spec,
    }))
    .unwrap()
}

/// The slice of the `i`th Service: two ready endpoints, one on this node and one elsewhere.
fn slice(i: usize) -> EndpointSlice {
    let endpoint = |subnet: usize, node: &str| {
        serde_json::json!({
            "addresses": [format!("172.16.{subnet}.{}", i % 250 + 2)],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": node,
        })
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-abcde"), "namespace": "default", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "endpoints": [endpoint(1, HOSTS[0]), endpoint(2, HOSTS[1])],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// The parts of one sync: building the input and rendering (userspace: also opening and
/// closing forwarder sockets), and the kernel's part (`iptables-save` on full syncs, then one
/// `iptables-restore` or `nft -f`).
#[derive(Clone, Copy)]
struct SyncTime {
    render: Duration,
    kernel: Duration,
    /// Size of the rule text applied.
    bytes: usize,
    /// The kernel apply ran past [`APPLY_LIMIT`] and was stopped.
    stopped: bool,
}

impl SyncTime {
    fn total(&self) -> Duration {
        self.render + self.kernel
    }
}

/// What the agent keeps between syncs.
struct AgentState {
    forwarder: Option<Forwarder>,
    applied_nat_chains: Vec<String>,
    /// The whole rule set last applied (partial syncs write what differs from it).
    applied: Option<String>,
}

/// One sync exactly as the agent does it (src/proxy/agent/mod.rs `sync`), in the calling
/// thread's namespace.
fn agent_sync(
    mode: ProxyMode,
    node: &NodeContext,
    services: &[Service],
    slices: &[EndpointSlice],
    state: &mut AgentState,
    full: bool,
) -> SyncTime {
    let started = Instant::now();
    let mut input = ProxyInput::from_objects(node.clone(), services, slices);
    if mode == ProxyMode::Userspace {
        let forwarder = state.forwarder.get_or_insert_with(|| Forwarder::new(2015));
        input.proxy_ports = forwarder.sync(&input);
    }
    if mode == ProxyMode::Nftables {
        let text = render(mode, &input);
        let apply = rules::nft_sync_input(&text, state.applied.as_deref(), full);
        let render_time = started.elapsed();
        let applying = Instant::now();
        let stopped = !apply.is_empty() && !apply_limited("nft", &["-f", "-"], &apply);
        state.applied = Some(text);
        return SyncTime {
            render: render_time,
            kernel: applying.elapsed(),
            bytes: apply.len(),
            stopped,
        };
    }
    let mut kernel_time = Duration::ZERO;
    let save = full.then(|| {
        let saving = Instant::now();
        let save = kernel::iptables_save().expect("iptables-save");
        kernel_time += saving.elapsed();
        save
    });
    if mode == ProxyMode::Iptables {
        input.existing_nat_chains = match &save {
            Some(save) => rules::saved_chains(save, "nat"),
            None => state.applied_nat_chains.clone(),
        };
    }
    let text = render(mode, &input);
    let apply = rules::iptables_sync_input(mode, &text, save.as_deref(), state.applied.as_deref());
    let render_time = started.elapsed() - kernel_time;
    let applying = Instant::now();
    let stopped = !apply.is_empty() && !apply_limited("iptables-restore", RESTORE_ARGS, &apply);
    kernel_time += applying.elapsed();
    state.applied_nat_chains = rules::chains_after_restore(&text, "nat");
    state.applied = Some(text);
    SyncTime {
        render: render_time,
        kernel: kernel_time,
        bytes: apply.len(),
        stopped,
    }
}

/// The agent's apply (`kernel::iptables_restore` / `kernel::nft_apply`: the same program and
/// arguments, in the calling thread's namespace), stopped after [`APPLY_LIMIT`]. Whether it
/// finished.
fn apply_limited(program: &str, args: &[&str], input: &str) -> bool {
    let mut child = kemu::firewall::command(None, program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    // The program consumes its input as it parses it: feed it from another thread so that
    // the deadline holds while it is still reading.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let deadline = Instant::now() + APPLY_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            assert!(status.success(), "{program} failed: {err}");
            feeder.join().unwrap();
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            feeder.join().unwrap();
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct ScratchRow {
    mode: ProxyMode,
    services: usize,
    full: SyncTime,
    change: SyncTime,
}

/// A first (full) sync of `n` services in a fresh namespace, then syncs that each follow one
/// service's port change; the change row is their median by total.
fn scratch_round(mode: ProxyMode, n: usize) -> ScratchRow {
    // A fixed name: a run that died removes its predecessor's namespace.
    let name = "kemubench-proxy".to_string();
    let _ = netns::delete(&name);
    let (ns, ()) = NetNs::create(&name, || Ok(())).expect("create the scratch namespace");
    let mut services: Vec<Service> = (0..n).map(|i| service(i, 80)).collect();
    let slices: Vec<EndpointSlice> = (0..n).map(slice).collect();
    let mut node = NodeContext::new(HOSTS[0], vec!["192.168.0.201".parse().unwrap()]);
    node.cluster_cidr = Some("172.16.0.0/16".parse().unwrap());
    node.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    let result = ns.run(move || {
        // The userspace forwarder spawns a task per socket; it needs a runtime to spawn on.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _guard = runtime.enter();
        let mut state = AgentState {
            forwarder: None,
            applied_nat_chains: Vec::new(),
            applied: None,
        };
        let full = agent_sync(mode, &node, &services, &slices, &mut state, true);
        let mut changes = Vec::new();
        // 10,000-service syncs take seconds to minutes: one change there.
        let rounds = if n > 1_000 { 1 } else { CHANGES };
        for k in 0..rounds {
            if full.stopped {
                // A sync that takes minutes is not retried five times.
                changes.push(full);
                break;
            }
            let i = (k * 7919) % n;
            services[i] = service(i, 81 + k as u16);
            changes.push(agent_sync(
                mode, &node, &services, &slices, &mut state, false,
            ));
        }
        changes.sort_by_key(SyncTime::total);
        if let Some(mut f) = state.forwarder.take() {
            f.stop();
        }
        Ok((full, changes[changes.len() / 2]))
    });
    netns::delete(&name).expect("delete the scratch namespace");
    let (full, change) = result.expect("sync in the scratch namespace");
    ScratchRow {
        mode,
        services: n,
        full,
        change,
    }
}

/// Entries in the conntrack table of the cleanup measurement, and rounds of it.
const CONNTRACK_ENTRIES: usize = 1_000;
const CONNTRACK_ROUNDS: usize = 15;

/// A UDP service with `endpoints`, as the proxy's input.
fn udp_input(endpoints: &[&str]) -> ProxyInput {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: ns}\n\
         spec: {clusterIP: 172.30.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: dns-1, namespace: ns, labels: {kubernetes.io/service-name: dns}}\n\
         addressType: IPv4\nports: [{name: dns, port: 53, protocol: UDP}]\nendpoints:\n",
    );
    for ep in endpoints {
        yaml.push_str(&format!("- addresses: [{ep}]\n"));
    }
    let objs = kemu::proxy::objects::parse_yaml(&yaml).unwrap();
    ProxyInput::from_objects(
        NodeContext::new(HOSTS[0], vec!["192.168.0.201".parse().unwrap()]),
        &objs.services,
        &objs.endpoint_slices,
    )
}

/// The conntrack cleanup's figures: median and max of each way of listing the table.
struct ConntrackFigures {
    /// From the agent's event index (its steady state).
    events: (Duration, Duration),
    /// Listing by a dump (the agent's first cleanup, and after lost events).
    dump: (Duration, Duration),
    /// Of which the dump alone.
    dump_listing: (Duration, Duration),
    /// Reading one round's events (the agent's loop does it as they come, before a sync).
    reading_events: (Duration, Duration),
    /// Entries deleted per cleanup.
    deleted: usize,
}

/// The agent's conntrack cleanup (src/proxy/agent/mod.rs `cleanup_conntrack`: list the
/// table, pick the stale flows, delete them) after one of two endpoints of a UDP service
/// goes, with [`CONNTRACK_ENTRIES`] entries in the table, half of them to that endpoint; in
/// a scratch namespace, alternately with the agent's event index and with a dump.
fn conntrack_cleanup() -> ConntrackFigures {
    use kemu::proxy::conntrack::table::{ConntrackTable, EVENT_BUFFER, Source};
    use kemu::proxy::conntrack::{Flow, IPPROTO_UDP, stale_flows};
    use kemu::proxy::nfnetlink::Nfnl;
    use kemu::proxy::profile::ConntrackCleanup;
    let name = "kemubench-conntrack".to_string();
    let _ = netns::delete(&name);
    let (ns, ()) = NetNs::create(&name, || Ok(())).expect("create the scratch namespace");
    let result = ns.run(|| {
        let mut nfnl = Nfnl::open()?;
        // As the agent does at its start: listen, then list once.
        let mut table = ConntrackTable::open(EVENT_BUFFER);
        assert_eq!(table.flows(&mut nfnl, false)?.1, Source::Dump);
        let before = udp_input(&["172.16.1.2", "172.16.2.2"]);
        let after = udp_input(&["172.16.2.2"]);
        let mode = ConntrackCleanup::Reconciler { fixed: true };
        let (mut events, mut dump, mut listing, mut reading) = (vec![], vec![], vec![], vec![]);
        let mut deleted = Vec::new();
        for round in 0..2 * CONNTRACK_ROUNDS {
            for i in 0..CONNTRACK_ENTRIES {
                let flow = Flow {
                    protocol: IPPROTO_UDP,
                    orig_src: format!("172.16.3.{}", 2 + i % 200).parse().unwrap(),
                    orig_dst: "172.30.0.10".parse().unwrap(),
                    orig_sport: 20000 + (i + round * CONNTRACK_ENTRIES) as u16 % 40000,
                    orig_dport: 53,
                    reply_src: if i % 2 == 0 {
                        "172.16.1.2"
                    } else {
                        "172.16.2.2"
                    }
                    .parse()
                    .unwrap(),
                };
                nfnl.create_flow(&flow, 300)?;
            }
            let started = Instant::now();
            table.read_events()?;
            reading.push(started.elapsed());
            if round % 2 == 0 {
                let started = Instant::now();
                let (flows, source) = table.flows(&mut nfnl, false)?;
                let stale = stale_flows(mode, &flows, &before, &after);
                deleted.push(table.delete(&mut nfnl, &stale)?);
                events.push(started.elapsed());
                assert_eq!(source, Source::Events, "no event was lost");
            } else {
                let started = Instant::now();
                let flows = nfnl.list_flows(false)?;
                listing.push(started.elapsed());
                let stale = stale_flows(mode, &flows, &before, &after);
                deleted.push(nfnl.delete_flows(&stale)?);
                dump.push(started.elapsed());
            }
            // Empty the table for the next round.
            let rest = nfnl.list_flows(false)?;
            table.delete(&mut nfnl, &rest)?;
            table.read_events()?;
        }
        Ok((events, dump, listing, reading, deleted))
    });
    netns::delete(&name).expect("delete the scratch namespace");
    let (mut events, mut dump, mut listing, mut reading, deleted) =
        result.expect("conntrack cleanup in the scratch namespace");
    assert!(
        deleted.iter().all(|d| *d == CONNTRACK_ENTRIES / 2),
        "{deleted:?}"
    );
    let figures = |v: &mut Vec<Duration>| {
        let max = *v.iter().max().unwrap();
        (median(v), max)
    };
    ConntrackFigures {
        events: figures(&mut events),
        dump: figures(&mut dump),
        dump_listing: figures(&mut listing),
        reading_events: figures(&mut reading),
        deleted: deleted[0],
    }
}

/// The conntrack cleanup's subsection of BENCHMARKS.md.
fn conntrack_section(c: &ConntrackFigures) -> String {
    format!(
        "\n### Conntrack cleanup\n\nWhat the agent adds to a sync after a UDP endpoint goes (kube-proxy ≥ 1.32's \
         reconciler, kemu's profile): listing the namespace's UDP conntrack entries, picking the flows whose reply does \
         not come from a serving endpoint, and deleting them through netlink (one datagram per 256 deletes, acknowledged \
         once), in a scratch namespace whose table holds {CONNTRACK_ENTRIES} UDP entries to one service, half of them to \
         the endpoint that went ({} deleted each round); {CONNTRACK_ROUNDS} rounds each way, alternately. The agent \
         lists the entries from an index it keeps from the namespace's conntrack events (src/proxy/conntrack/index.rs; \
         it reads them as they come, so a sync finds at most a few unread); it dumps the table only at its start and \
         after lost events (ENOBUFS). A dump costs the same whatever the namespace holds: the kernel walks its whole \
         conntrack hash (262,144 buckets here, shared by every namespace), a lock per bucket.\n\n\
         | listing | cleanup: median | max |\n|---|---:|---:|\n\
         | from the event index (the agent's steady state) | {} | {} |\n\
         | by a dump (at start, after lost events) | {} | {} |\n\n\
         Of the dump's figure, the dump alone: median {}, max {}. Reading one round's {} NEW events, which the agent \
         does as they arrive, before the sync: median {}, max {}.\n",
        c.deleted,
        ms(c.events.0),
        ms(c.events.1),
        ms(c.dump.0),
        ms(c.dump.1),
        ms(c.dump_listing.0),
        ms(c.dump_listing.1),
        CONNTRACK_ENTRIES,
        ms(c.reading_events.0),
        ms(c.reading_events.1),
    )
}

/// The conntrack target line.
fn conntrack_target(c: &ConntrackFigures) -> String {
    format!(
        "- conntrack cleanup of an endpoint removal with {CONNTRACK_ENTRIES} entries in the table adds at most 5 ms \
         to the sync: {} (max {}; {} when the agent must dump the table);\n",
        met(c.events.1 <= Duration::from_millis(5)),
        ms(c.events.1),
        ms(c.dump.1)
    )
}

// ---------------------------------------------------------------------------------------------
// Labs.

fn lab_up(lab: &str, topology: &str, mode: ProxyMode) -> LabApi {
    let _ = kemu(&["down", lab]);
    kemu_ok(&[
        "up",
        topology,
        "--name",
        lab,
        "--no-kubeconfig",
        "--seed",
        "1",
        "--proxy-mode",
        mode.as_str(),
    ]);
    common::lab_api(lab)
}

/// Delete the lab's pods through the API and wait until the kubelets have stopped them, then
/// `kemu down`: `kemu down` alone leaves the container shims of running pods behind.
fn lab_down(lab: &str, port: LabApi) {
    let (code, body) = api(
        port,
        "DELETE",
        "/api/v1/namespaces/default/replicationcontrollers/nginx-controller",
        Some(r#"{"propagationPolicy":"Background"}"#),
    );
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = get_json(port, "/api/v1/namespaces/default/pods");
        let pods = pods["items"].as_array().unwrap();
        if pods.is_empty() {
            break;
        }
        // A graceful delete: the pod object goes once its kubelet has stopped its containers
        // (a zero grace period would remove it from the API at once).
        for pod in pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        {
            let name = pod["metadata"]["name"].as_str().unwrap();
            api(
                port,
                "DELETE",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
            );
        }
        assert!(
            Instant::now() < deadline,
            "pods of {lab} not gone: {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kemu_ok(&["down", lab]);
}

fn switch_mode(lab: &str, mode: ProxyMode) {
    kemu_ok(&["proxy", "mode", lab, mode.as_str(), "--timeout", "120s"]);
}

/// The seed's nginx ReplicationController, two replicas.
fn create_nginx(port: LabApi) {
    let rc = serde_json::json!({"apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": "nginx-controller", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"name": "nginx"},
                 "template": {"metadata": {"labels": {"name": "nginx"}},
                     "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]}],
                              "terminationGracePeriodSeconds": 1}}}});
    api_json(
        port,
        "POST",
        "/api/v1/namespaces/default/replicationcontrollers",
        &rc.to_string(),
        201,
    );
}

/// Wait until `n` pods matching `selector` are Running with an IP; their (name, node, IP, uid).
fn running_pods(port: LabApi, selector: &str, n: usize) -> Vec<(String, String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = get_json(
            port,
            &format!("/api/v1/namespaces/default/pods?labelSelector={selector}"),
        );
        let pods: Vec<_> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .map(|p| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&p["metadata"]["name"]),
                    s(&p["spec"]["nodeName"]),
                    s(&p["status"]["podIP"]),
                    s(&p["metadata"]["uid"]),
                )
            })
            .collect();
        if pods.len() >= n {
            return pods;
        }
        assert!(Instant::now() < deadline, "{n} pods {selector} not Running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn statuses(lab: &str) -> Vec<Option<ProxyStatus>> {
    let name = kemu::topology::LabName::parse(lab).expect("a lab name");
    let dir = kemu::lab::state::LabDir::new(&name).expect("the lab's state directory");
    HOSTS
        .iter()
        .map(|h| ProxyStatus::read(&dir.proxy_status_file(h)))
        .collect()
}

/// Wait until every node's proxy has applied `version` in `mode`; the time it took.
fn wait_applied(lab: &str, mode: ProxyMode, version: u64, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let all = statuses(lab)
            .into_iter()
            .all(|s| s.is_some_and(|s| s.mode == Some(mode) && s.applied_version >= version));
        if all {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the proxies of {lab} did not apply version {version}: {:?}",
            statuses(lab)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// 1b. Sync on a live lab.

struct LiveRow {
    mode: ProxyMode,
    /// Each node's first sync after the mode switch (a full sync), as the agent reports it.
    full_ms: Vec<f64>,
    /// Median time from a service PATCH until every node has applied it.
    change: Duration,
    /// Slowest of those.
    change_max: Duration,
    /// Median of the agents' own sync durations for those changes.
    change_sync_ms: f64,
    /// Medians of the phases of those syncs: input, render, kernel.
    change_phases: [f64; 3],
}

struct Live {
    create_all: Duration,
    rows: Vec<LiveRow>,
}

fn live_sync() -> Live {
    let seed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/seed.yaml"))
            .unwrap();
    let wide = seed.replace(
        "clusterIPRange: 192.168.3.0/24",
        "clusterIPRange: 172.30.0.0/16",
    );
    assert_ne!(wide, seed, "the seed topology's service range moved");
    let tmp = tempfile::tempdir().unwrap();
    let topology = tmp.path().join("wide.yaml");
    std::fs::write(&topology, wide).unwrap();
    let port = lab_up(WIDE_LAB, topology.to_str().unwrap(), ProxyMode::Nftables);
    create_nginx(port);
    running_pods(port, "name%3Dnginx", 2);

    let started = Instant::now();
    for i in 0..LIVE_SERVICES {
        let mut spec = serde_json::json!({"selector": {"name": "nginx"},
            "ports": [{"name": "http", "port": 80, "targetPort": 80}]});
        if i.is_multiple_of(10) {
            spec["type"] = "NodePort".into();
        }
        let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "default", "labels": {"bench": "sync"}},
            "spec": spec});
        api_json(
            port,
            "POST",
            "/api/v1/namespaces/default/services",
            &svc.to_string(),
            201,
        );
    }
    // Every service has its two endpoints: the newest of those objects is what the proxies
    // must have applied.
    let deadline = Instant::now() + Duration::from_secs(300);
    let newest = loop {
        let slices = get_json(
            port,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=bench%3Dsync",
        );
        let items = slices["items"].as_array().unwrap();
        let complete = items
            .iter()
            .filter(|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 2))
            .count();
        if complete == LIVE_SERVICES {
            let services = get_json(
                port,
                "/api/v1/namespaces/default/services?labelSelector=bench%3Dsync",
            );
            break items
                .iter()
                .chain(services["items"].as_array().unwrap())
                .map(resource_version)
                .max()
                .unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "{complete} of {LIVE_SERVICES} slices"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let create_all = wait_applied(WIDE_LAB, ProxyMode::Nftables, newest, started);

    let mut rows = Vec::new();
    for (m, mode) in MODES.into_iter().enumerate() {
        switch_mode(WIDE_LAB, mode);
        let full_ms = statuses(WIDE_LAB)
            .into_iter()
            .map(|s| s.map_or(f64::NAN, |s| s.last_sync_ms))
            .collect();
        // Let the switch's follow-up syncs settle before timing single changes.
        std::thread::sleep(Duration::from_millis(500));
        let mut times = Vec::new();
        let mut sync_ms = Vec::new();
        let mut phases: Vec<[f64; 3]> = Vec::new();
        for k in 0..CHANGES {
            // A ClusterIP service (a NodePort's patch would also have to carry its nodePort).
            let i = (k * 97 + m * 13) % LIVE_SERVICES;
            let name = format!("s{}", if i.is_multiple_of(10) { i + 1 } else { i });
            let patch = serde_json::json!({"spec": {"ports": [{"name": "http", "port": 1000 + m * 100 + k, "targetPort": 80}]}});
            let t = Instant::now();
            let changed = api_json(
                port,
                "PATCH",
                &format!("/api/v1/namespaces/default/services/{name}"),
                &patch.to_string(),
                200,
            );
            times.push(wait_applied(WIDE_LAB, mode, resource_version(&changed), t));
            for s in statuses(WIDE_LAB).into_iter().flatten() {
                sync_ms.push(s.last_sync_ms);
                let p = s.last_sync_phases;
                phases.push([p.input_ms, p.render_ms, p.kernel_ms]);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        sync_ms.sort_by(f64::total_cmp);
        let change_max = *times.iter().max().unwrap();
        rows.push(LiveRow {
            mode,
            full_ms,
            change: median(&mut times),
            change_max,
            change_sync_ms: sync_ms[sync_ms.len() / 2],
            change_phases: std::array::from_fn(|i| {
                let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            }),
        });
    }
    lab_down(WIDE_LAB, port);
    Live { create_all, rows }
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. Create → reachable, and throughput, on a seed lab.

/// GET / from the calling thread's namespace; whether nginx answered.
fn nginx_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("Welcome to nginx!")
}

/// Create a ClusterIP Service for the nginx pods and time it until every node gets the nginx
/// page through it; the slowest node's time.
fn create_to_reachable(port: LabApi, nodes: &[NetNs], name: &str) -> Duration {
    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"name": "nginx"}, "ports": [{"port": 8001, "targetPort": 80}]}});
    let started = Instant::now();
    let created = api_json(
        port,
        "POST",
        "/api/v1/namespaces/default/services",
        &svc.to_string(),
        201,
    );
    let ip = created["spec"]["clusterIP"].as_str().unwrap();
    let addr: SocketAddr = format!("{ip}:8001").parse().unwrap();
    let times: Vec<Duration> = std::thread::scope(|s| {
        let probes: Vec<_> = nodes
            .iter()
            .map(|ns| {
                s.spawn(move || {
                    ns.run(move || {
                        let deadline = started + Duration::from_secs(30);
                        while !nginx_answers(addr) {
                            if Instant::now() > deadline {
                                return Err(std::io::Error::other(format!(
                                    "{addr} did not answer in 30 s"
                                )));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(started.elapsed())
                    })
                    .unwrap()
                })
            })
            .collect();
        probes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let (code, body) = api(
        port,
        "DELETE",
        &format!("/api/v1/namespaces/default/services/{name}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    times.into_iter().max().unwrap()
}

/// `iperf3 -c target` from inside a pod's namespace; received bits per second.
fn iperf(pod_ns: &str, target: &str) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", pod_ns, "iperf3", "-c", target, "-J", "-t"])
        .arg(IPERF_SECONDS.to_string())
        .output()
        .expect("run iperf3 (Debian package iperf3)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 -c {target}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 -c {target}: {report}"))
}

struct SeedRow {
    mode: ProxyMode,
    reach: Vec<Duration>,
    direct_bps: f64,
    service_bps: f64,
}

fn seed_lab() -> (Vec<SeedRow>, String, String) {
    let port = lab_up(SEED_LAB, "topologies/seed.yaml", ProxyMode::Userspace);
    create_nginx(port);
    // iperf3 server on .202, client (a pause pod: only its namespace is used) on .203.
    for (name, node, image, command) in [
        ("iperf-server", HOSTS[1], "iperf3", vec!["iperf3", "-s"]),
        (
            "iperf-client",
            HOSTS[2],
            "registry.k8s.io/pause:3.10",
            vec![],
        ),
    ] {
        let mut container = serde_json::json!({"name": "main", "image": image});
        if !command.is_empty() {
            container["command"] = command.into();
        }
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [container], "terminationGracePeriodSeconds": 1}});
        api_json(
            port,
            "POST",
            "/api/v1/namespaces/default/pods",
            &pod.to_string(),
            201,
        );
    }
    let iperf_svc = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "iperf", "namespace": "default"},
        "spec": {"selector": {"app": "iperf-server"}, "ports": [{"port": 5201, "targetPort": 5201}]}});
    let iperf_svc = api_json(
        port,
        "POST",
        "/api/v1/namespaces/default/services",
        &iperf_svc.to_string(),
        201,
    );
    let cluster_ip = iperf_svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    running_pods(port, "name%3Dnginx", 2);
    let server = running_pods(port, "app%3Diperf-server", 1).remove(0);
    let client = running_pods(port, "app%3Diperf-client", 1).remove(0);
    let client_ns = kemu::kubelet::sandbox::pod_namespace(SEED_LAB, &client.3);
    let nodes: Vec<NetNs> = HOSTS
        .iter()
        .map(|h| NetNs::open(&format!("kemu-{SEED_LAB}-{h}")).unwrap())
        .collect();
    // iperf3 -s is up once it accepts a connection.
    let server_addr: SocketAddr = format!("{}:5201", server.2).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[2]
        .run(move || TcpStream::connect_timeout(&server_addr, Duration::from_millis(200)))
        .is_err()
    {
        assert!(Instant::now() < deadline, "iperf3 -s does not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut rows = Vec::new();
    for mode in MODES {
        switch_mode(SEED_LAB, mode);
        std::thread::sleep(Duration::from_millis(500));
        let reach = (0..REACH_SERVICES)
            .map(|k| {
                let t = create_to_reachable(port, &nodes, &format!("r-{mode}-{k}"));
                std::thread::sleep(Duration::from_millis(300));
                t
            })
            .collect();
        let mut direct = Vec::new();
        let mut service = Vec::new();
        for _ in 0..IPERF_ROUNDS {
            direct.push(iperf(&client_ns, &server.2));
            service.push(iperf(&client_ns, &cluster_ip));
        }
        direct.sort_by(f64::total_cmp);
        service.sort_by(f64::total_cmp);
        rows.push(SeedRow {
            mode,
            reach,
            direct_bps: direct[direct.len() / 2],
            service_bps: service[service.len() / 2],
        });
    }
    lab_down(SEED_LAB, port);
    (rows, server.1, client.1)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // Userspace mode opens a socket per service port: 10,000 in the scratch namespace.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    assert!(
        Path::new("/usr/bin/iperf3").exists(),
        "iperf3 is missing (Debian package iperf3)"
    );
    let begun = Instant::now();
    let load_at_start = load_average();
    let conntrack = conntrack_cleanup();
    eprint!(
        "{}{}",
        conntrack_section(&conntrack),
        conntrack_target(&conntrack)
    );
    // `cargo bench --bench proxy -- conntrack`: only this part, printed, BENCHMARKS.md unchanged.
    if std::env::args().any(|a| a == "conntrack") {
        return;
    }
    let (seed, server_node, client_node) = seed_lab();
    eprintln!("seed lab done at {:?}", begun.elapsed());
    let live = live_sync();
    eprintln!("live sync done at {:?}", begun.elapsed());
    let mut scratch = Vec::new();
    for n in SCRATCH_SIZES {
        for mode in MODES {
            let row = scratch_round(mode, n);
            eprintln!(
                "scratch {mode} {n}: full {} + {}, change {} + {}",
                ms(row.full.render),
                ms(row.full.kernel),
                ms(row.change.render),
                ms(row.change.kernel)
            );
            scratch.push(row);
        }
    }
    eprintln!("scratch done at {:?}", begun.elapsed());

    let mut s = String::from("<!-- proxy:begin -->\n## Service proxy\n\n");
    s.push_str(&format!(
        "Reproduce every figure with `sudo cargo bench --bench proxy` (release build; about {} minutes on this \
         2-core machine; the three agents of the live lab share its cores; `-- conntrack` runs only the conntrack \
         part and prints it). Load average (1, 5, 15 min) at the start of this run: {load_at_start}; at its end: {}. \
         Other engineers' builds and tests share the machine: under load every time below is larger than on a quiet \
         machine.\n\n",
        begun.elapsed().as_secs().div_ceil(60),
        load_average()
    ));
    s.push_str(
        "### Rule sync, measured directly\n\nThe agent's sync steps (src/proxy/agent/mod.rs `sync`), called from the \
         benchmark in a scratch network namespace it creates and deletes: synthetic Services (ClusterIP port 80, every \
         tenth a NodePort) with two ready endpoints each, one on this node. *Render* builds the input from the API \
         objects and renders the rule text (userspace: and opens or updates the forwarder's sockets); *kernel* is \
         `iptables-save` (full syncs only, as the agent does) plus the one `iptables-restore --noflush` or `nft -f`. \
         The full sync is the first one, into an empty namespace; the change row is the median of 5 syncs (one at 10,000 services) \
         that each follow one service's port change: like the agent, a change sync writes only what differs from the last \
         applied rule set (the iptables modes declare and refill only the changed chains under `--noflush`; nftables \
         patches chains and map elements in one transaction).\n\n\
         | mode | services | rules | full sync: render + kernel = total | after one change: render + kernel = total |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let cell = |t: &SyncTime| {
        if t.stopped {
            format!(
                "{} + stopped after {} s = **> {} s**",
                ms(t.render),
                APPLY_LIMIT.as_secs(),
                APPLY_LIMIT.as_secs()
            )
        } else {
            format!(
                "{} + {} = **{}**",
                ms(t.render),
                ms(t.kernel),
                ms(t.total())
            )
        }
    };
    for r in &scratch {
        let change = if r.full.stopped {
            "not measured".to_string()
        } else {
            cell(&r.change)
        };
        s.push_str(&format!(
            "| {} | {} | {:.1} MiB | {} | {} |\n",
            r.mode,
            r.services,
            r.full.bytes as f64 / 1048576.0,
            cell(&r.full),
            change,
        ));
    }
    s.push_str(&format!(
        "\n### Rule sync on a live lab\n\nThe seed topology with a /16 service range (172.30.0.0/16), 2 nginx replicas, \
         {LIVE_SERVICES} Services created through the API (selector: the nginx pods, so two endpoints each; every tenth \
         a NodePort). Creating them all until every node's proxy had applied the last EndpointSlice took {}. Then, per \
         mode: `kemu proxy mode` (the agents' first sync in the new mode is a full one; its duration is what each agent \
         writes to its status file), and 5 single-service changes (a PATCH of the service's port) timed from the request \
         until the status files of all three nodes show that resourceVersion applied (polled every millisecond). The \
         agents report where a sync's time goes (`lastSyncPhases` in their status files): building the input from the \
         cached objects (userspace: and updating the forwarder), rendering and diffing, and the kernel's command.\n\n\
         | mode | full sync per node (agent's own figure) | one change applied on every node: median / max | agent sync for one change (median) | its phases (medians): input + render + kernel |\n\
         |---|---:|---:|---:|---:|\n",
        ms(live.create_all)
    ));
    for r in &live.rows {
        let full: Vec<String> = r.full_ms.iter().map(|v| format!("{v:.0} ms")).collect();
        s.push_str(&format!(
            "| {} | {} | {} / {} | {:.1} ms | {:.1} + {:.1} + {:.1} ms |\n",
            r.mode,
            full.join(", "),
            ms(r.change),
            ms(r.change_max),
            r.change_sync_ms,
            r.change_phases[0],
            r.change_phases[1],
            r.change_phases[2],
        ));
    }
    s.push_str(&format!(
        "\n### Service create to reachable from every node\n\nA seed lab (`topologies/seed.yaml`, 3 minions, vxlan) with \
         the seed's 2 nginx replicas, the mode switched live with `kemu proxy mode`. {REACH_SERVICES} ClusterIP Services \
         (port 8001 → 80) are created one after the other through the API; each is timed from its create request until \
         a GET of `ClusterIP:8001` from every node's namespace (all three polled in parallel, a new connection every \
         millisecond) returns the nginx page; the figure is the slowest node's.\n\n\
         | mode | p50 | max |\n|---|---:|---:|\n"
    ));
    for r in &seed {
        let mut reach = r.reach.clone();
        let max = *reach.iter().max().unwrap();
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            r.mode,
            ms(median(&mut reach)),
            ms(max)
        ));
    }
    s.push_str(&format!(
        "\n### Throughput through a ClusterIP\n\nSame lab: `iperf3 -s` runs in a pod on {server_node} (image `iperf3`, \
         which is not built in, so the pod runs the host's `iperf3` command), `iperf3 -c -t {IPERF_SECONDS}` from a pod's \
         namespace on {client_node}, across the vxlan overlay, to the server pod's IP and to its Service's ClusterIP, \
         alternately, {IPERF_ROUNDS} runs each; medians of the received rate.\n\n\
         | mode | pod → pod | pod → ClusterIP → pod | ratio |\n|---|---:|---:|---:|\n"
    ));
    for r in &seed {
        s.push_str(&format!(
            "| {} | {:.2} Gbit/s | {:.2} Gbit/s | {:.0}% |\n",
            r.mode,
            r.direct_bps / 1e9,
            r.service_bps / 1e9,
            100.0 * r.service_bps / r.direct_bps
        ));
    }

    s.push_str(&conntrack_section(&conntrack));

    let at_1k = |mode| live.rows.iter().find(|r| r.mode == mode).unwrap();
    let kernel_ok = |mode| {
        seed.iter()
            .find(|r| r.mode == mode)
            .is_some_and(|r| r.service_bps >= 0.9 * r.direct_bps)
    };
    s.push_str("\nTargets:\n");
    for mode in MODES {
        let r = at_1k(mode);
        s.push_str(&format!(
            "- one service change applied on every node in under 100 ms at {LIVE_SERVICES} services, {mode} mode: \
             {} (median {}, max {});\n",
            met(r.change_max < Duration::from_millis(100)),
            ms(r.change),
            ms(r.change_max)
        ));
    }
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        s.push_str(&format!(
            "- pod → ClusterIP → pod within 10% of pod → pod, {mode} mode: {};\n",
            met(kernel_ok(mode))
        ));
    }
    let userspace = seed
        .iter()
        .find(|r| r.mode == ProxyMode::Userspace)
        .unwrap();
    s.push_str(&conntrack_target(&conntrack));
    s.push_str(&format!(
        "- userspace mode has no target: its forwarder copies every byte through a user-space process \
         ({:.0}% of pod → pod here).\n<!-- proxy:end -->\n",
        100.0 * userspace.service_bps / userspace.direct_bps
    ));
    print!("{s}");
    write_section("proxy", &s);
}
