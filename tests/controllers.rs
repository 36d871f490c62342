//! End to end: `kemu controller-manager` on a seed lab, driven with the real kubectl. The
//! replication controller of the 2015 article (scale, replace, cascade and orphan deletion),
//! Deployments (rollout, rolling update, undo), Endpoints and EndpointSlices (readiness, named
//! ports, churn), the node lifecycle (a silent kubelet's node goes Unknown, its pods move; every
//! kubelet silent at once evicts nothing) and the garbage collector (background and foreground
//! deletion).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde_json::Value;

const SEED: &str = "topologies/seed.yaml";
const LONG: Duration = Duration::from_secs(90);
const MASTER: &str = "192.168.0.201";
const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];

/// A pod as these tests look at it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    uid: String,
    node: String,
    ip: String,
    image: String,
    ready: bool,
    deleting: bool,
    owners: Vec<Value>,
}

fn get_json(lab: &Lab, args: &[&str]) -> Value {
    let mut argv = vec!["get"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&argv)).expect("kubectl -o json")
}

fn pod_view(p: &Value) -> PodView {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let ready = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    PodView {
        name: s(&p["metadata"]["name"]),
        uid: s(&p["metadata"]["uid"]),
        node: s(&p["spec"]["nodeName"]),
        ip: s(&p["status"]["podIP"]),
        image: s(&p["spec"]["containers"][0]["image"]),
        ready,
        deleting: !p["metadata"]["deletionTimestamp"].is_null(),
        owners: p["metadata"]["ownerReferences"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    }
}

/// Every pod matching a label selector, terminating ones included.
fn pods(lab: &Lab, selector: &str) -> Vec<PodView> {
    get_json(lab, &["pods", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(pod_view)
        .collect()
}

/// Wait until exactly `n` pods match `selector`, all Ready and none terminating.
fn wait_ready_pods(lab: &Lab, selector: &str, n: usize) -> Vec<PodView> {
    wait_for(
        &format!("{n} ready pods and nothing else for {selector}"),
        LONG,
        || {
            let all = pods(lab, selector);
            (all.len() == n && all.iter().all(|p| p.ready && !p.deleting)).then_some(all)
        },
    )
}

fn wait_gone(lab: &Lab, object: &str) {
    wait_for(&format!("{object} gone"), LONG, || {
        let out = lab.kubectl(&["get", object]);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
            .then_some(())
    });
}

fn kubectl_fails(lab: &Lab, args: &[&str]) -> String {
    let out = lab.kubectl(args);
    assert!(
        !out.status.success(),
        "kubectl {} should have failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one controller reference of a pod.
fn controller_of(p: &PodView) -> &Value {
    assert_eq!(p.owners.len(), 1, "{}: {:?}", p.name, p.owners);
    let r = &p.owners[0];
    assert_eq!(r["controller"], true, "{}: {r}", p.name);
    assert_eq!(r["blockOwnerDeletion"], true, "{}: {r}", p.name);
    r
}

#[test]
fn the_seed_replication_controller_scales_replaces_and_cascades() {
    let lab = Lab::up(SEED, "cr", &[]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-rc.yaml"]);
    let two = wait_ready_pods(&lab, "name=nginx", 2);
    let nodes: BTreeSet<&str> = two.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "the two replicas share a node: {two:?}");
    let rc_uid = lab.jsonpath("rc/nginx-controller", "{.metadata.uid}");
    for p in &two {
        assert!(p.name.starts_with("nginx-controller-"), "{}", p.name);
        let r = controller_of(p);
        assert_eq!(r["kind"], "ReplicationController");
        assert_eq!(r["apiVersion"], "v1");
        assert_eq!(r["name"], "nginx-controller");
        assert_eq!(r["uid"], rc_uid.as_str());
    }
    let status = |replicas: &str| {
        wait_for(&format!("rc status at {replicas} replicas"), LONG, || {
            let rc = get_json(&lab, &["rc", "nginx-controller"]);
            let s = &rc["status"];
            let n = replicas.parse::<i64>().unwrap();
            (s["replicas"] == n
                && s["readyReplicas"] == n
                && s["availableReplicas"] == n
                && s["fullyLabeledReplicas"] == n
                && s["observedGeneration"] == rc["metadata"]["generation"])
                .then_some(())
        });
        let table = lab.kubectl_ok(&["get", "rc", "nginx-controller", "--no-headers"]);
        let columns: Vec<&str> = table.split_whitespace().collect();
        assert_eq!(
            columns[..4],
            ["nginx-controller", replicas, replicas, replicas],
            "NAME DESIRED CURRENT READY: {table}"
        );
    };
    status("2");
    let describe = lab.kubectl_ok(&["describe", "rc", "nginx-controller"]);
    assert!(
        describe.contains("2 current / 2 desired") && describe.contains("SuccessfulCreate"),
        "{describe}"
    );

    // Scale up, then down with the precondition kubectl checks.
    lab.kubectl_ok(&["scale", "rc", "nginx-controller", "--replicas=4"]);
    let four = wait_ready_pods(&lab, "name=nginx", 4);
    let spread: BTreeSet<&str> = four.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(spread.len(), 3, "four replicas use every minion: {four:?}");
    status("4");
    let wrong = kubectl_fails(
        &lab,
        &[
            "scale",
            "rc",
            "nginx-controller",
            "--current-replicas=3",
            "--replicas=1",
        ],
    );
    assert!(
        wrong.contains("Expected replicas to be 3, was 4"),
        "{wrong}"
    );
    assert_eq!(lab.jsonpath("rc/nginx-controller", "{.spec.replicas}"), "4");
    lab.kubectl_ok(&[
        "scale",
        "rc",
        "nginx-controller",
        "--current-replicas=4",
        "--replicas=1",
    ]);
    let one = wait_ready_pods(&lab, "name=nginx", 1);
    status("1");

    // A deleted pod is replaced.
    lab.kubectl_ok(&["delete", "pod", &one[0].name]);
    let replaced = wait_ready_pods(&lab, "name=nginx", 1);
    assert_ne!(replaced[0].name, one[0].name);
    assert_eq!(controller_of(&replaced[0])["uid"], rc_uid.as_str());
    status("1");

    // A pod relabelled out of the selector is released and replaced ...
    let relabelled = replaced[0].name.clone();
    lab.kubectl_ok(&["label", "pod", &relabelled, "name=away", "--overwrite"]);
    let successor = wait_ready_pods(&lab, "name=nginx", 1);
    assert_ne!(successor[0].name, relabelled);
    wait_for("the relabelled pod released", LONG, || {
        pods(&lab, "name=away")
            .first()
            .is_some_and(|p| p.owners.is_empty() && !p.deleting)
            .then_some(())
    });
    // ... and when it matches again it is adopted, and the surplus pod deleted.
    lab.kubectl_ok(&["label", "pod", &relabelled, "name=nginx", "--overwrite"]);
    let kept = wait_ready_pods(&lab, "name=nginx", 1);
    assert_eq!(controller_of(&kept[0])["uid"], rc_uid.as_str());
    status("1");

    // Orphan deletion leaves the pod without its owner reference...
    lab.kubectl_ok(&["scale", "rc", "nginx-controller", "--replicas=2"]);
    let before = wait_ready_pods(&lab, "name=nginx", 2);
    lab.kubectl_ok(&["delete", "rc", "nginx-controller", "--cascade=orphan"]);
    wait_gone(&lab, "rc/nginx-controller");
    let orphans = wait_for("the references to the RC removed", LONG, || {
        let now = pods(&lab, "name=nginx");
        now.iter().all(|p| p.owners.is_empty()).then_some(now)
    });
    let names = |ps: &[PodView]| ps.iter().map(|p| p.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(names(&orphans), names(&before));
    assert!(
        orphans.iter().all(|p| p.ready && !p.deleting),
        "{orphans:?}"
    );
    for p in &orphans {
        let refs = lab.jsonpath(&format!("pod/{}", p.name), "{.metadata.ownerReferences}");
        assert_eq!(refs, "", "{}: the emptied list is omitted", p.name);
    }

    // ... which a new RC with the same selector adopts (and does not duplicate) ...
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-rc.yaml"]);
    let new_uid = lab.jsonpath("rc/nginx-controller", "{.metadata.uid}");
    assert_ne!(new_uid, rc_uid);
    let adopted = wait_for("the orphans adopted", LONG, || {
        let now = pods(&lab, "name=nginx");
        now.iter()
            .all(|p| p.owners.len() == 1 && p.owners[0]["uid"] == new_uid.as_str())
            .then_some(now)
    });
    assert_eq!(names(&adopted), names(&before));
    status("2");

    // ... and a background cascade removes.
    lab.kubectl_ok(&["delete", "rc", "nginx-controller"]);
    wait_gone(&lab, "rc/nginx-controller");
    wait_for("the RC's pods gone", LONG, || {
        pods(&lab, "name=nginx").is_empty().then_some(())
    });
}

fn deployment_images(lab: &Lab) -> BTreeSet<String> {
    pods(lab, "app=web").into_iter().map(|p| p.image).collect()
}

/// The ReplicaSets of deployment `web`: (name, revision, spec.replicas, template image).
fn replica_sets(lab: &Lab) -> Vec<(String, String, i64, String)> {
    let mut out: Vec<_> = get_json(lab, &["rs", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["name"].as_str().unwrap().to_string(),
                rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                rs["spec"]["replicas"].as_i64().unwrap(),
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

fn rollout_status(lab: &Lab) {
    let out = lab.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
}

fn assert_deploy_columns(lab: &Lab, ready: &str, up_to_date: &str, available: &str) {
    let table = lab.kubectl_ok(&["get", "deploy", "web"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["web", ready, up_to_date, available], "{table}");
}

/// What `kubectl create deployment NAME --image=IMAGE --replicas=N` makes.
fn deployment(name: &str, image: &str, replicas: u32) -> String {
    let container = image.rsplit('/').next().unwrap();
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: {container}\n        image: {image}\n        ports: [{{containerPort: 80}}]\n"
    )
}

/// Every state a watch of the pods matching `selector` goes through, as (pods not being
/// deleted, those of them that are Ready), for invariants that must hold at every moment.
fn watch_pod_counts(lab: &Lab, selector: &str) -> Arc<Mutex<Vec<(usize, usize)>>> {
    let api = lab.api_endpoint();
    let states = Arc::new(Mutex::new(Vec::new()));
    let out = states.clone();
    let selector = selector.to_string();
    // A kube client belongs to the runtime it was made in: make it in the watcher's own.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = api.client();
            let api: kube::Api<Pod> = kube::Api::default_namespaced(client);
            let config = watcher::Config::default().labels(&selector);
            let mut stream = watcher(api, config).boxed();
            let (mut seen, mut listing) = (BTreeMap::new(), BTreeMap::new());
            while let Some(event) = stream.next().await {
                let key = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
                match event {
                    Ok(watcher::Event::Init) => {
                        listing.clear();
                        continue;
                    }
                    Ok(watcher::Event::InitApply(p)) => {
                        listing.insert(key(&p), p);
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => seen = std::mem::take(&mut listing),
                    Ok(watcher::Event::Apply(p)) => {
                        seen.insert(key(&p), p);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        seen.remove(&key(&p));
                    }
                    Err(_) => continue,
                }
                let live: Vec<PodView> = seen
                    .values()
                    .map(|p| pod_view(&serde_json::to_value(p).unwrap()))
                    .filter(|p| !p.deleting)
                    .collect();
                let ready = live.iter().filter(|p| p.ready).count();
                out.lock().unwrap().push((live.len(), ready));
            }
        });
    });
    states
}

#[test]
fn a_deployment_rolls_out_updates_and_undoes() {
    let lab = Lab::up(SEED, "cd", &[]);
    // `kubectl create deployment` sends protobuf, which kemu's API server does not read.
    lab.apply(&deployment("web", "nginx", 3));
    rollout_status(&lab);
    assert_deploy_columns(&lab, "3/3", "3", "3");
    wait_ready_pods(&lab, "app=web", 3);
    let first = replica_sets(&lab);
    assert_eq!(first.len(), 1, "{first:?}");
    let (rs1, rev, replicas, image) = &first[0];
    assert_eq!((rev.as_str(), *replicas, image.as_str()), ("1", 3, "nginx"));
    let deploy_uid = lab.jsonpath("deploy/web", "{.metadata.uid}");
    assert_eq!(
        lab.jsonpath(
            &format!("rs/{rs1}"),
            "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].uid}"
        ),
        format!("Deployment/{deploy_uid}")
    );
    assert_eq!(
        lab.jsonpath(
            "deploy/web",
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "1"
    );
    let pod_hash = lab.jsonpath(&format!("rs/{rs1}"), "{.metadata.labels.pod-template-hash}");
    assert!(rs1.ends_with(&format!("-{pod_hash}")), "{rs1} {pod_hash}");

    // A new image: a rolling update to a second ReplicaSet. With 3 replicas, maxUnavailable
    // 25% rounds down to 0: three pods serve at every moment of the update.
    let counts = watch_pod_counts(&lab, "app=web");
    wait_for("the watch's first list", LONG, || {
        (counts.lock().unwrap().last() == Some(&(3, 3))).then_some(())
    });
    lab.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.25"]);
    rollout_status(&lab);
    let second = wait_for("the old ReplicaSet scaled to 0", LONG, || {
        let rss = replica_sets(&lab);
        (rss.len() == 2 && rss[0].2 == 0 && rss[1].2 == 3).then_some(rss)
    });
    assert_eq!(second[0].0, *rs1);
    assert_eq!(second[1].1, "2");
    assert_eq!(second[1].3, "nginx:1.25");
    wait_ready_pods(&lab, "app=web", 3);
    assert_eq!(
        deployment_images(&lab),
        BTreeSet::from(["nginx:1.25".to_string()])
    );
    let states = counts.lock().unwrap().clone();
    assert!(
        states.iter().all(|&(_, ready)| ready >= 3),
        "fewer than 3 ready pods during the update: (live, ready) went {states:?}"
    );
    assert!(
        states.iter().any(|&(live, _)| live == 4),
        "the update surged by one pod: {states:?}"
    );
    assert_deploy_columns(&lab, "3/3", "3", "3");
    let describe = lab.kubectl_ok(&["describe", "deploy", "web"]);
    let lines: Vec<String> = describe
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in [
        format!("NewReplicaSet: {} (3/3 replicas created)", second[1].0),
        format!("OldReplicaSets: {rs1} (0/0 replicas created)"),
        "Replicas: 3 desired | 3 updated | 3 total | 3 available | 0 unavailable".to_string(),
    ] {
        assert!(lines.contains(&line), "no {line:?} in\n{describe}");
    }
    let history = lab.kubectl_ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.lines().any(|l| l.starts_with("1 "))
            && history.lines().any(|l| l.starts_with("2 ")),
        "{history}"
    );

    // Undo: the first ReplicaSet comes back as revision 3.
    lab.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    rollout_status(&lab);
    let third = wait_for("the first ReplicaSet back", LONG, || {
        let rss = replica_sets(&lab);
        (rss.len() == 2 && rss[0].2 == 0 && rss[1].2 == 3).then_some(rss)
    });
    assert_eq!(third[1].0, *rs1, "{third:?}");
    assert_eq!(third[1].1, "3");
    assert_eq!(third[1].3, "nginx");
    wait_ready_pods(&lab, "app=web", 3);
    assert_eq!(
        deployment_images(&lab),
        BTreeSet::from(["nginx".to_string()])
    );
    assert_eq!(
        lab.jsonpath(
            "deploy/web",
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "3"
    );
    assert_deploy_columns(&lab, "3/3", "3", "3");
    // Revision 1 became revision 3.
    let history = lab.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let table = lab.kubectl_ok(&["get", "rs", "-l", "app=web", "--no-headers"]);
    let mut rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().take(4).collect())
        .collect();
    rows.sort();
    let mut want = vec![
        vec![rs1.as_str(), "3", "3", "3"],
        vec![second[1].0.as_str(), "0", "0", "0"],
    ];
    want.sort();
    assert_eq!(rows, want, "NAME DESIRED CURRENT READY:\n{table}");

    // Scaling shows in the columns; deletion takes ReplicaSets and pods along.
    lab.kubectl_ok(&["scale", "deployment", "web", "--replicas=1"]);
    rollout_status(&lab);
    wait_ready_pods(&lab, "app=web", 1);
    assert_deploy_columns(&lab, "1/1", "1", "1");
    lab.kubectl_ok(&["delete", "deployment", "web"]);
    wait_for("the ReplicaSets and pods gone", LONG, || {
        (replica_sets(&lab).is_empty() && pods(&lab, "app=web").is_empty()).then_some(())
    });
}

/// Addresses of an Endpoints object: (ready IPs, not-ready IPs, ports) per subset, flattened.
fn endpoints(lab: &Lab, name: &str) -> (BTreeSet<String>, BTreeSet<String>, Vec<Value>) {
    let ep = get_json(lab, &["endpoints", name]);
    let mut ready = BTreeSet::new();
    let mut unready = BTreeSet::new();
    let mut ports = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let port = subset["ports"][0]["port"].as_i64().unwrap();
        for a in subset["addresses"].as_array().into_iter().flatten() {
            ready.insert(format!("{}:{port}", a["ip"].as_str().unwrap()));
        }
        for a in subset["notReadyAddresses"].as_array().into_iter().flatten() {
            unready.insert(format!("{}:{port}", a["ip"].as_str().unwrap()));
        }
        ports.extend(subset["ports"].as_array().unwrap().iter().cloned());
    }
    (ready, unready, ports)
}

/// The endpoints of a Service's slices: (ip:port, ready) for every address.
fn slice_endpoints(lab: &Lab, service: &str) -> BTreeSet<(String, bool)> {
    let slices = get_json(
        lab,
        &[
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={service}"),
        ],
    );
    let mut out = BTreeSet::new();
    for slice in slices["items"].as_array().unwrap() {
        assert_eq!(slice["addressType"], "IPv4", "{slice}");
        let Some(ports) = slice["ports"].as_array() else {
            // The placeholder slice of a Service without endpoints.
            assert_eq!(slice["endpoints"], serde_json::json!([]), "{slice}");
            continue;
        };
        assert_eq!(ports.len(), 1, "{slice}");
        let port = ports[0]["port"].as_i64().unwrap();
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            let ready = e["conditions"]["ready"].as_bool().unwrap();
            for ip in e["addresses"].as_array().unwrap() {
                out.insert((format!("{}:{port}", ip.as_str().unwrap()), ready));
            }
        }
    }
    out
}

fn ip_ports(pods: &[PodView], port: u16) -> BTreeSet<String> {
    pods.iter().map(|p| format!("{}:{port}", p.ip)).collect()
}

#[test]
fn endpoints_and_slices_follow_ready_pods_and_named_ports() {
    let lab = Lab::up(SEED, "ce", &[]);
    // Two kinds of backends behind one Service: nginx serves "http" on 80, agnhost on 8080; a
    // third pod never passes its readiness probe.
    lab.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nginx\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web, flavour: nginx}}\n  template:\n    metadata:\n      labels: {app: web, flavour: nginx}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx\n        ports: [{name: http, containerPort: 80}]\n",
    );
    lab.apply(
        "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: agnhost\nspec:\n  replicas: 1\n  selector: {app: web, flavour: agnhost}\n  template:\n    metadata:\n      labels: {app: web, flavour: agnhost}\n    spec:\n      containers:\n      - name: netexec\n        image: registry.k8s.io/e2e-test-images/agnhost:2.53\n        args: [netexec, --http-port=8080, --udp-port=-1]\n        ports: [{name: http, containerPort: 8080}]\n",
    );
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: unready\n  labels: {app: web, flavour: unready}\nspec:\n  containers:\n  - name: nginx\n    image: nginx\n    ports: [{name: http, containerPort: 80}]\n    readinessProbe:\n      httpGet: {path: /healthz, port: 80}\n      periodSeconds: 1\n      failureThreshold: 1\n",
    );
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - {name: web, port: 8001, targetPort: http}\n",
    );
    let nginx = wait_ready_pods(&lab, "flavour=nginx", 2);
    let agnhost = wait_ready_pods(&lab, "flavour=agnhost", 1);
    let unready = wait_for("the unready pod running with an IP", LONG, || {
        let p = pods(&lab, "flavour=unready").pop()?;
        (!p.ip.is_empty()).then_some(p)
    });
    assert!(!unready.ready);
    let mut want_ready = ip_ports(&nginx, 80);
    want_ready.extend(ip_ports(&agnhost, 8080));
    let want_unready = ip_ports(std::slice::from_ref(&unready), 80);
    let (_, _, ports) = wait_for("the Endpoints of web", LONG, || {
        let got = endpoints(&lab, "web");
        (got.0 == want_ready && got.1 == want_unready).then_some(got)
    });
    for p in &ports {
        assert_eq!(p["name"], "web", "{p}");
        assert_eq!(p["protocol"], "TCP", "{p}");
    }
    let mut want_slices: BTreeSet<(String, bool)> =
        want_ready.iter().map(|a| (a.clone(), true)).collect();
    want_slices.extend(want_unready.iter().map(|a| (a.clone(), false)));
    wait_for("the EndpointSlices of web", LONG, || {
        (slice_endpoints(&lab, "web") == want_slices).then_some(())
    });
    // The slice's endpoints name their pods and nodes; the slice is owned by the Service.
    let slices = get_json(
        &lab,
        &["endpointslices", "-l", "kubernetes.io/service-name=web"],
    );
    let svc_uid = lab.jsonpath("svc/web", "{.metadata.uid}");
    for slice in slices["items"].as_array().unwrap() {
        assert_eq!(
            slice["metadata"]["ownerReferences"][0]["uid"],
            svc_uid.as_str()
        );
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        for e in slice["endpoints"].as_array().unwrap() {
            let name = e["targetRef"]["name"].as_str().unwrap();
            let pod = nginx
                .iter()
                .chain(&agnhost)
                .chain([&unready])
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name} is not a backend"));
            assert_eq!(e["nodeName"], pod.node.as_str());
            assert_eq!(e["targetRef"]["kind"], "Pod");
        }
    }
    let described = lab.kubectl_ok(&["describe", "svc", "web"]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().eq(["TargetPort:", "http/TCP"])),
        "{described}"
    );

    // Pods come: a third nginx.
    lab.kubectl_ok(&["scale", "deployment", "nginx", "--replicas=3"]);
    let nginx = wait_ready_pods(&lab, "flavour=nginx", 3);
    let mut want_ready = ip_ports(&nginx, 80);
    want_ready.extend(ip_ports(&agnhost, 8080));
    wait_for("the third nginx in the Endpoints", LONG, || {
        let got = endpoints(&lab, "web");
        (got.0 == want_ready && got.1 == want_unready).then_some(())
    });

    // Pods go: the unready pod deleted, the agnhost pod replaced by another.
    lab.kubectl_ok(&["delete", "pod", "unready", &agnhost[0].name]);
    let agnhost = wait_ready_pods(&lab, "flavour=agnhost", 1);
    let mut want_ready = ip_ports(&nginx, 80);
    want_ready.extend(ip_ports(&agnhost, 8080));
    wait_for("the Endpoints after the deletions", LONG, || {
        let got = endpoints(&lab, "web");
        (got.0 == want_ready && got.1.is_empty()).then_some(())
    });
    let want_slices: BTreeSet<(String, bool)> =
        want_ready.iter().map(|a| (a.clone(), true)).collect();
    wait_for("the EndpointSlices after the deletions", LONG, || {
        (slice_endpoints(&lab, "web") == want_slices).then_some(())
    });

    // A pod relabelled out of the Service (and of its ReplicaSet, which replaces it) leaves.
    lab.kubectl_ok(&["label", "pod", &nginx[0].name, "app=away", "--overwrite"]);
    let nginx = wait_for("a replacement nginx", LONG, || {
        let now = wait_ready_pods(&lab, "flavour=nginx,app=web", 3);
        now.iter().all(|p| p.name != nginx[0].name).then_some(now)
    });
    let mut want_ready = ip_ports(&nginx, 80);
    want_ready.extend(ip_ports(&agnhost, 8080));
    wait_for("the Endpoints after the relabelling", LONG, || {
        let got = endpoints(&lab, "web");
        (got.0 == want_ready && got.1.is_empty()).then_some(())
    });
    let want_slices: BTreeSet<(String, bool)> =
        want_ready.iter().map(|a| (a.clone(), true)).collect();
    wait_for("the EndpointSlices after the relabelling", LONG, || {
        (slice_endpoints(&lab, "web") == want_slices).then_some(())
    });

    // A selector that matches nothing leaves empty Endpoints; deleting the Service removes them.
    lab.kubectl_ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"selector":{"app":"nothing"}}}"#,
    ]);
    wait_for("empty Endpoints", LONG, || {
        let got = endpoints(&lab, "web");
        (got.0.is_empty() && got.1.is_empty()).then_some(())
    });
    wait_for("empty EndpointSlices", LONG, || {
        slice_endpoints(&lab, "web").is_empty().then_some(())
    });
    lab.kubectl_ok(&["delete", "svc", "web"]);
    wait_gone(&lab, "endpoints/web");
    wait_for("the slices gone", LONG, || {
        get_json(
            &lab,
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
        )["items"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
}

fn agent_pid(lab: &Lab, host: &str, name: &str) -> i32 {
    let status: Value =
        serde_json::from_slice(&run_kemu(&["status", &lab.name, "-o", "json"]).stdout).unwrap();
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == host && a["name"] == name && a["state"] == "running")
        .and_then(|a| a["pid"].as_i64())
        .expect("the agent is running") as i32
}

/// A kubelet stopped with SIGSTOP, continued when dropped (also when the test fails).
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

fn node_ready(lab: &Lab, node: &str) -> (String, String) {
    let n = get_json(lab, &["node", node]);
    let ready = n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    (
        ready["status"].as_str().unwrap_or_default().to_string(),
        ready["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn node_taints(lab: &Lab, node: &str) -> BTreeSet<String> {
    get_json(lab, &["node", node])["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap(),
                t["effect"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_silent_node_goes_unknown_and_its_pods_move() {
    let lab = Lab::up(SEED, "cn", &[]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-rc.yaml"]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-service-clusterip.yaml"]);
    let before = wait_ready_pods(&lab, "name=nginx", 2);
    // Silence a node that runs a replica (not the master's: its kubelet shares the host with
    // the control plane, which must keep working).
    let victim = before
        .iter()
        .find(|p| p.node != MASTER)
        .unwrap_or_else(|| panic!("no replica on .202 or .203: {before:?}"))
        .clone();
    let node = victim.node.clone();
    let stopped = Stopped::new(agent_pid(&lab, &node, "kubelet"));

    wait_for("the node Unknown", LONG, || {
        let (status, reason) = node_ready(&lab, &node);
        (status == "Unknown" && reason == "NodeStatusUnknown").then_some(())
    });
    let nodes = lab.kubectl_ok(&["get", "nodes"]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with(&node) && l.contains(" NotReady ")),
        "{nodes}"
    );
    wait_for("the unreachable taints", LONG, || {
        let taints = node_taints(&lab, &node);
        (taints.contains("node.kubernetes.io/unreachable:NoSchedule")
            && taints.contains("node.kubernetes.io/unreachable:NoExecute"))
        .then_some(())
    });
    // The replica there is evicted (it stays Terminating while its kubelet is silent) and
    // replaced on a node that answers.
    let after = wait_for("a replacement on another node", LONG, || {
        let all = pods(&lab, "name=nginx");
        let evicted = all
            .iter()
            .any(|p| p.uid == victim.uid && p.deleting && !p.ready);
        let live: Vec<PodView> = all.into_iter().filter(|p| !p.deleting && p.ready).collect();
        (evicted && live.len() == 2).then_some(live)
    });
    assert!(after.iter().all(|p| p.node != node), "{after:?}");
    // The Service's Endpoints hold the two live replicas only (a terminating pod is left out).
    wait_for("the Endpoints without the evicted pod", LONG, || {
        let (ready, unready, _) = endpoints(&lab, "nginx-service-clusterip");
        (ready == ip_ports(&after, 80) && unready.is_empty()).then_some(())
    });
    let events = lab.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={}", victim.name),
    ]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
    let rc = get_json(&lab, &["rc", "nginx-controller"]);
    assert_eq!(rc["status"]["replicas"], 2, "{}", rc["status"]);
    assert_eq!(rc["status"]["readyReplicas"], 2, "{}", rc["status"]);

    // The kubelet speaks again: Ready, taints gone, the evicted pod finished off.
    drop(stopped);
    wait_for("the node Ready again", LONG, || {
        (node_ready(&lab, &node).0 == "True").then_some(())
    });
    wait_for("the taints gone", LONG, || {
        node_taints(&lab, &node).is_empty().then_some(())
    });
    wait_for("the evicted pod gone", LONG, || {
        pods(&lab, "name=nginx")
            .iter()
            .all(|p| p.uid != victim.uid)
            .then_some(())
    });
    wait_ready_pods(&lab, "name=nginx", 2);
    let nodes = lab.kubectl_ok(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 3, "{nodes}");
}

#[test]
fn every_node_silent_at_once_is_master_disruption_and_nothing_is_evicted() {
    let lab = Lab::up(SEED, "cz", &[]);
    lab.kubectl_ok(&["create", "-f", "examples/seed/nginx-rc.yaml"]);
    let before = wait_ready_pods(&lab, "name=nginx", 2);
    let uids: BTreeSet<String> = before.iter().map(|p| p.uid.clone()).collect();
    let stopped: Vec<Stopped> = NODES
        .iter()
        .map(|n| Stopped::new(agent_pid(&lab, n, "kubelet")))
        .collect();

    wait_for("every node Unknown", LONG, || {
        NODES
            .iter()
            .all(|n| node_ready(&lab, n).0 == "Unknown")
            .then_some(())
    });
    // All of the only zone is down: master disruption mode. The NoSchedule taints follow the
    // conditions; no NoExecute taint stays (the first node down may have had one for a moment,
    // before the others went).
    let unreachable = |effect: &str| format!("node.kubernetes.io/unreachable:{effect}");
    wait_for("NoSchedule taints only", LONG, || {
        NODES
            .iter()
            .all(|n| {
                let t = node_taints(&lab, n);
                t.contains(&unreachable("NoSchedule")) && !t.contains(&unreachable("NoExecute"))
            })
            .then_some(())
    });
    // Twice the seed's podEvictionTimeout (5 s): pods on a tainted node would be gone by now.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(10) {
        for n in NODES {
            let taints = node_taints(&lab, n);
            assert!(
                !taints.contains(&unreachable("NoExecute")),
                "{n}: {taints:?}"
            );
        }
        let now = pods(&lab, "name=nginx");
        assert!(
            now.iter().all(|p| uids.contains(&p.uid) && !p.deleting) && now.len() == 2,
            "{now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The kubelets speak again: out of master disruption, no taints, the same pods.
    drop(stopped);
    wait_for("every node Ready and untainted", LONG, || {
        NODES
            .iter()
            .all(|n| node_ready(&lab, n).0 == "True" && node_taints(&lab, n).is_empty())
            .then_some(())
    });
    let after = pods(&lab, "name=nginx");
    assert!(
        after.iter().all(|p| uids.contains(&p.uid) && !p.deleting) && after.len() == 2,
        "{after:?}"
    );
    let evictions = lab.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
    ]);
    assert!(!evictions.contains("TaintManagerEviction"), "{evictions}");
}

#[test]
fn the_garbage_collector_deletes_dependents_in_the_background_and_in_the_foreground() {
    let lab = Lab::up(SEED, "cg", &[]);
    // Background: a ReplicaSet's pods, and a bare pod that names a Service as (non-controller)
    // owner, go after their owners.
    lab.apply(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: rs\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: rs}}\n  template:\n    metadata:\n      labels: {app: rs}\n    spec:\n      containers:\n      - {name: c, image: kemu/pause}\n",
    );
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: owner\nspec:\n  ports: [{port: 80}]\n",
    );
    let svc_uid = lab.jsonpath("svc/owner", "{.metadata.uid}");
    lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: dependent\n  labels: {{app: dependent}}\n  ownerReferences:\n  - {{apiVersion: v1, kind: Service, name: owner, uid: {svc_uid}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: kemu/pause}}\n"
    ));
    // A pod whose owner never existed is collected too.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: dangling\n  labels: {app: dangling}\n  ownerReferences:\n  - {apiVersion: v1, kind: ReplicationController, name: ghost, uid: 6b1a8a2e-0000-4000-8000-000000000000}\nspec:\n  containers:\n  - {name: c, image: kemu/pause}\n",
    );
    wait_ready_pods(&lab, "app=rs", 2);
    wait_gone(&lab, "pod/dangling");
    wait_ready_pods(&lab, "app=dependent", 1);
    lab.kubectl_ok(&["delete", "rs", "rs", "--cascade=background"]);
    lab.kubectl_ok(&["delete", "svc", "owner"]);
    wait_for("the background dependents gone", LONG, || {
        (pods(&lab, "app=rs").is_empty() && pods(&lab, "app=dependent").is_empty()).then_some(())
    });

    // Foreground: the owner stays, with the foregroundDeletion finalizer, while a blocking
    // dependent remains (here held by a finalizer of our own), and goes once it is gone.
    lab.apply(
        "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: fg\nspec:\n  replicas: 2\n  selector: {app: fg}\n  template:\n    metadata:\n      labels: {app: fg}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {name: c, image: kemu/pause}\n",
    );
    let fg = wait_ready_pods(&lab, "app=fg", 2);
    let held = &fg[0].name;
    lab.kubectl_ok(&[
        "patch",
        "pod",
        held,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["kemu.test/hold"]}}"#,
    ]);
    lab.kubectl_ok(&["delete", "rc", "fg", "--cascade=foreground", "--wait=false"]);
    wait_for(
        "the other dependent gone, the held one terminating",
        LONG,
        || {
            let now = pods(&lab, "app=fg");
            (now.len() == 1 && now[0].name == *held && now[0].deleting).then_some(())
        },
    );
    let rc = get_json(&lab, &["rc", "fg"]);
    assert!(!rc["metadata"]["deletionTimestamp"].is_null(), "{rc}");
    assert_eq!(
        rc["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"]),
        "{rc}"
    );
    lab.kubectl_ok(&[
        "patch",
        "pod",
        held,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    wait_gone(&lab, &format!("pod/{held}"));
    wait_gone(&lab, "rc/fg");

    // Foreground through two levels: Deployment -> ReplicaSet -> pods.
    lab.apply(&deployment("two", "kemu/pause", 2));
    wait_ready_pods(&lab, "app=two", 2);
    // kubectl waits for the Deployment to go, which happens only after its dependents went.
    lab.kubectl_ok(&["delete", "deployment", "two", "--cascade=foreground"]);
    let rss = get_json(&lab, &["rs", "-l", "app=two"]);
    assert_eq!(rss["items"], serde_json::json!([]), "ReplicaSets left");
    let left = pods(&lab, "app=two");
    assert!(left.is_empty(), "pods left: {left:?}");

    // Orphaning a Deployment leaves its ReplicaSet (without the reference) and its pods.
    lab.apply(&deployment("three", "kemu/pause", 2));
    let three = wait_ready_pods(&lab, "app=three", 2);
    lab.kubectl_ok(&["delete", "deployment", "three", "--cascade=orphan"]);
    wait_gone(&lab, "deployment/three");
    let rs = wait_for("the ReplicaSet orphaned", LONG, || {
        let rss = get_json(&lab, &["rs", "-l", "app=three"]);
        let items = rss["items"].as_array().unwrap();
        (items.len() == 1 && items[0]["metadata"]["ownerReferences"].is_null())
            .then(|| items[0]["metadata"]["name"].as_str().unwrap().to_string())
    });
    let still = wait_ready_pods(&lab, "app=three", 2);
    let names = |ps: &[PodView]| ps.iter().map(|p| p.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(names(&still), names(&three));
    for p in &still {
        assert_eq!(controller_of(p)["name"], rs.as_str());
    }
    lab.kubectl_ok(&["delete", "rs", &rs]);
    wait_for("the orphaned ReplicaSet's pods gone", LONG, || {
        pods(&lab, "app=three").is_empty().then_some(())
    });
}
