//! End to end: the workload controllers of `kemu controller-manager` on a seed lab, driven
//! with the real kubectl. One lab, with the slow parts overlapping: everything is applied at
//! once, then checked in turn — Jobs (completions and parallelism, an Indexed Job, a failing
//! Job that backs off and hits its backoffLimit, `kubectl wait --for=condition=complete`), a
//! StatefulSet scaling up in order with its claims bound to provisioned local-path volumes and
//! down from the top, a DaemonSet with one pod per node, rolled out, undone (its
//! ControllerRevisions) and following a NoExecute taint, a
//! namespace whose deletion empties and removes it, and last a CronJob `* * * * *` (the one
//! wait of up to a minute, overlapped with all of the above) and `kubectl create job --from`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SEED: &str = "topologies/seed.yaml";
const LONG: Duration = Duration::from_secs(90);
const NODES: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];

const MANIFEST: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: ok}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox, command: ["sh", "-c", "exit 0"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox, command: ["sh", "-c", "exit 3"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: ["sh", "-c", "test \"$JOB_COMPLETION_INDEX\" -ge 0 && test \"$(hostname)\" = indexed-$JOB_COMPLETION_INDEX"]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 2
  jobTemplate:
    metadata: {labels: {app: tick}}
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: tick, image: busybox, command: ["sh", "-c", "exit 0"]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: pause, image: pause}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: nginx}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Namespace
metadata: {name: scratch}
"#;

const SCRATCH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: scratch}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: scratch}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers: [{name: nginx, image: nginx}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: sleeper, namespace: scratch}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: busybox, command: ["sleep", "300"]}]
"#;

fn get_json(lab: &Lab, args: &[&str]) -> Value {
    let mut argv = vec!["get"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&lab.kubectl_ok(&argv)).expect("kubectl -o json")
}

fn items(lab: &Lab, args: &[&str]) -> Vec<Value> {
    get_json(lab, args)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("a timestamp: {v}"))
        .parse()
        .unwrap()
}

fn events_of(lab: &Lab, kind: &str, name: &str) -> String {
    lab.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ])
}

fn ready(p: &Value) -> bool {
    condition(p, "Ready").is_some_and(|c| c["status"] == "True")
}

#[test]
fn workload_controllers_on_a_live_lab() {
    let lab = Lab::up(SEED, "wl", &[]);
    lab.apply(MANIFEST);
    lab.apply(SCRATCH);

    jobs(&lab);
    stateful_set(&lab);
    daemon_set(&lab);
    namespace_lifecycle(&lab);
    cron_job(&lab);
}

fn jobs(lab: &Lab) {
    // Completions and parallelism; `kubectl wait` sees the condition.
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=90s",
    ]);
    let ok = get_json(lab, &["job", "ok"]);
    let st = &ok["status"];
    assert_eq!(
        (st["succeeded"].as_i64(), st["active"].as_i64()),
        (Some(3), Some(0)),
        "{st}"
    );
    assert_eq!(st["failed"].as_i64(), Some(0), "{st}");
    for ty in ["SuccessCriteriaMet", "Complete"] {
        let c = condition(&ok, ty).unwrap_or_else(|| panic!("{ty}: {st}"));
        assert_eq!(
            (s(&c["status"]), s(&c["reason"])),
            ("True".into(), "CompletionsReached".into())
        );
    }
    assert!(ts(&st["completionTime"]) >= ts(&st["startTime"]));
    let pods = items(lab, &["pods", "-l", "batch.kubernetes.io/job-name=ok"]);
    assert_eq!(pods.len(), 3, "{pods:?}");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (s(&owner["kind"]), owner["controller"].clone()),
            ("Job".into(), Value::Bool(true))
        );
        assert!(s(&p["metadata"]["name"]).starts_with("ok-"));
    }
    let table = lab.kubectl_ok(&["get", "job", "ok", "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cols[..3], ["ok", "Complete", "3/3"], "{table}");
    let ev = events_of(lab, "Job", "ok");
    assert!(
        ev.contains("SuccessfulCreate") && ev.contains("Completed"),
        "{ev}"
    );
    // Deleting the Job (background cascade) takes its pods.
    lab.kubectl_ok(&["delete", "job", "ok"]);
    wait_for("the pods of job ok gone", LONG, || {
        items(lab, &["pods", "-l", "batch.kubernetes.io/job-name=ok"])
            .is_empty()
            .then_some(())
    });

    // Indexed: every index once, with its env variable and hostname.
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=90s",
    ]);
    assert_eq!(
        lab.jsonpath("job/indexed", "{.status.completedIndexes}"),
        "0-2"
    );
    let indexes: BTreeSet<String> =
        items(lab, &["pods", "-l", "batch.kubernetes.io/job-name=indexed"])
            .iter()
            .map(|p| s(&p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]))
            .collect();
    assert_eq!(
        indexes,
        BTreeSet::from(["0".into(), "1".into(), "2".into()])
    );

    // A failing Job: one retry after the 10s back-off, then BackoffLimitExceeded.
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ]);
    let fails = get_json(lab, &["job", "fails"]);
    assert_eq!(
        fails["status"]["failed"].as_i64(),
        Some(2),
        "{}",
        fails["status"]
    );
    for ty in ["FailureTarget", "Failed"] {
        let c = condition(&fails, ty).unwrap_or_else(|| panic!("{ty}: {}", fails["status"]));
        assert_eq!(s(&c["reason"]), "BackoffLimitExceeded");
        assert_eq!(
            s(&c["message"]),
            "Job has reached the specified backoff limit"
        );
    }
    let mut tries = items(lab, &["pods", "-l", "batch.kubernetes.io/job-name=fails"]);
    assert_eq!(tries.len(), 2, "{tries:?}");
    tries.sort_by_key(|p| ts(&p["metadata"]["creationTimestamp"]));
    let first_done =
        ts(&tries[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]);
    let second = ts(&tries[1]["metadata"]["creationTimestamp"]);
    let gap = second.duration_since(first_done);
    assert!(
        gap >= jiff::SignedDuration::from_secs(9),
        "the retry came {gap:?} after the failure"
    );
    assert_eq!(
        tries[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    let ev = events_of(lab, "Job", "fails");
    assert!(ev.contains("BackoffLimitExceeded"), "{ev}");
}

fn stateful_set(lab: &Lab) {
    // Pods come up one by one, each after the one before it is Ready.
    let pods = wait_for("web-0..2 ready", LONG, || {
        let ps = items(lab, &["pods", "-l", "app=web"]);
        (ps.len() == 3 && ps.iter().all(ready)).then_some(ps)
    });
    let by_name = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n).unwrap();
    for i in 1..3 {
        let before = by_name(&format!("web-{}", i - 1));
        let this = by_name(&format!("web-{i}"));
        let ready_at = ts(&condition(before, "Ready").unwrap()["lastTransitionTime"]);
        let created = ts(&this["metadata"]["creationTimestamp"]);
        assert!(
            ready_at <= created,
            "web-{i} was made before web-{} was ready",
            i - 1
        );
        assert_eq!(this["spec"]["hostname"], format!("web-{i}"));
        assert_eq!(this["spec"]["subdomain"], "web");
        assert_eq!(
            this["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            i.to_string()
        );
    }
    // Claims bound to provisioned volumes: a directory in the lab's state, pinned to the node
    // of the claim's pod.
    for i in 0..3 {
        let claim = format!("data-web-{i}");
        let pvc = wait_for(&format!("{claim} bound"), LONG, || {
            let c = get_json(lab, &["pvc", &claim]);
            (c["status"]["phase"] == "Bound").then_some(c)
        });
        assert_eq!(pvc["spec"]["storageClassName"], "standard");
        let pv = get_json(lab, &["pv", &s(&pvc["spec"]["volumeName"])]);
        assert_eq!(pv["status"]["phase"], "Bound");
        assert_eq!(pv["spec"]["claimRef"]["name"], claim.as_str());
        let path = s(&pv["spec"]["hostPath"]["path"]);
        assert!(
            path.starts_with(&format!("/run/kemu/{}/volumes/pvc-", lab.name)),
            "{path}"
        );
        assert!(std::path::Path::new(&path).is_dir(), "{path}");
        let node = s(&by_name(&format!("web-{i}"))["spec"]["nodeName"]);
        let pinned =
            &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(pinned["values"][0], node.as_str(), "{pv}");
    }
    let ev = events_of(lab, "StatefulSet", "web");
    assert!(
        ev.contains("create Claim data-web-0 Pod web-0 in StatefulSet web success")
            && ev.contains("create Pod web-2 in StatefulSet web successful"),
        "{ev}"
    );
    let st = get_json(lab, &["sts", "web"])["status"].clone();
    assert_eq!(
        (st["replicas"].as_i64(), st["readyReplicas"].as_i64()),
        (Some(3), Some(3)),
        "{st}"
    );
    assert_eq!(st["currentRevision"], st["updateRevision"], "{st}");

    // Scale down from the top: web-2 goes before web-1, the claims stay (Retain).
    lab.kubectl_ok(&["scale", "sts", "web", "--replicas=1"]);
    wait_for("web scaled to 1", LONG, || {
        let ps = items(lab, &["pods", "-l", "app=web"]);
        let live = |n: &str| {
            ps.iter()
                .any(|p| p["metadata"]["name"] == n && p["metadata"]["deletionTimestamp"].is_null())
        };
        let gone = |n: &str| !ps.iter().any(|p| p["metadata"]["name"] == n);
        assert!(
            live("web-1") || !live("web-2"),
            "web-1 went while web-2 was still there"
        );
        (gone("web-1") && gone("web-2") && live("web-0")).then_some(())
    });
    let claims = items(lab, &["pvc", "-l", "app=web"]);
    assert_eq!(claims.len(), 3, "claims are retained when scaled down");

    // web-0 made again goes where its volume is (the scheduler reads the volume's affinity).
    let before = get_json(lab, &["pod", "web-0"]);
    lab.kubectl_ok(&["delete", "pod", "web-0"]);
    let again = wait_for("web-0 made again", LONG, || {
        let p = get_json(lab, &["pods", "-l", "app=web"])["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == "web-0")?
            .clone();
        (p["metadata"]["uid"] != before["metadata"]["uid"] && ready(&p)).then_some(p)
    });
    assert_eq!(again["spec"]["nodeName"], before["spec"]["nodeName"]);

    // With `whenDeleted: Delete` the set owns its claims, and they go with it.
    lab.kubectl_ok(&[
        "patch",
        "sts",
        "web",
        "-p",
        r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
    ]);
    wait_for("data-web-0 owned by the set", LONG, || {
        (lab.jsonpath("pvc/data-web-0", "{.metadata.ownerReferences[0].kind}") == "StatefulSet")
            .then_some(())
    });

    // A deleted claim releases its volume, which (reclaim policy Delete) goes with its
    // directory.
    let pv = lab.jsonpath("pvc/data-web-2", "{.spec.volumeName}");
    let dir = lab.jsonpath(&format!("pv/{pv}"), "{.spec.hostPath.path}");
    lab.kubectl_ok(&["delete", "pvc", "data-web-2"]);
    wait_for("the released volume reclaimed", LONG, || {
        let out = lab.kubectl(&["get", "pv", &pv]);
        (!out.status.success() && !std::path::Path::new(&dir).exists()).then_some(())
    });
    lab.kubectl_ok(&["delete", "sts", "web"]);
    wait_for(
        "the set's own claim gone with it, the other kept",
        LONG,
        || {
            let left: BTreeSet<String> = items(lab, &["pvc", "-l", "app=web"])
                .iter()
                .map(|c| s(&c["metadata"]["name"]))
                .collect();
            (left == BTreeSet::from(["data-web-1".to_string()])).then_some(())
        },
    );
}

fn daemon_set(lab: &Lab) {
    let on_nodes = || -> BTreeSet<String> {
        items(lab, &["pods", "-l", "app=agent"])
            .iter()
            .filter(|p| ready(p) && p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| s(&p["spec"]["nodeName"]))
            .collect()
    };
    let all: BTreeSet<String> = NODES.iter().map(|n| n.to_string()).collect();
    wait_for("a daemon pod on every node", LONG, || {
        (on_nodes() == all).then_some(())
    });
    assert_eq!(items(lab, &["pods", "-l", "app=agent"]).len(), 3);
    let status = |desired: i64| {
        wait_for(&format!("daemonset status at {desired}"), LONG, || {
            let st = get_json(lab, &["ds", "agent"])["status"].clone();
            (st["desiredNumberScheduled"] == desired
                && st["currentNumberScheduled"] == desired
                && st["numberReady"] == desired
                && st["updatedNumberScheduled"] == desired
                && st["numberMisscheduled"] == 0)
                .then_some(())
        })
    };
    status(3);
    // A rolling update, its history, and the undo that brings the first template back.
    let hashes = || -> BTreeSet<String> {
        items(lab, &["pods", "-l", "app=agent"])
            .iter()
            .map(|p| s(&p["metadata"]["labels"]["controller-revision-hash"]))
            .collect()
    };
    let first = hashes();
    assert_eq!(first.len(), 1, "{first:?}");
    lab.kubectl_ok(&["set", "env", "ds/agent", "ROUND=2"]);
    lab.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    wait_for("every daemon pod updated", LONG, || {
        let h = hashes();
        (h.len() == 1 && h != first && on_nodes() == all).then_some(())
    });
    let history = lab.kubectl_ok(&["rollout", "history", "ds/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    lab.kubectl_ok(&["rollout", "undo", "ds/agent"]);
    wait_for("the first template back on every node", LONG, || {
        (hashes() == first && on_nodes() == all).then_some(())
    });
    assert_eq!(
        lab.jsonpath("ds/agent", "{.spec.template.spec.containers[0].env}"),
        ""
    );
    let owned = items(lab, &["controllerrevisions", "-l", "app=agent"]);
    let numbers: BTreeSet<i64> = owned
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .collect();
    assert_eq!(
        numbers,
        BTreeSet::from([2, 3]),
        "the first template is revision 3 now"
    );
    status(3);
    let pod = items(lab, &["pods", "-l", "app=agent"]).remove(0);
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable"),
        "{tolerations}"
    );
    assert!(
        pod["spec"]["affinity"]["nodeAffinity"]
            .to_string()
            .contains("metadata.name"),
        "{pod}"
    );

    // A NoExecute taint the pods do not tolerate takes the node's pod away; removing it
    // brings it back.
    let tainted = NODES[2];
    lab.kubectl_ok(&["taint", "node", tainted, "dedicated=db:NoExecute"]);
    let rest: BTreeSet<String> = NODES[..2].iter().map(|n| n.to_string()).collect();
    wait_for("the tainted node's daemon pod gone", LONG, || {
        let on: BTreeSet<String> = items(lab, &["pods", "-l", "app=agent"])
            .iter()
            .map(|p| s(&p["spec"]["nodeName"]))
            .collect();
        (on == rest).then_some(())
    });
    status(2);
    lab.kubectl_ok(&["taint", "node", tainted, "dedicated=db:NoExecute-"]);
    wait_for("the daemon pod back", LONG, || {
        (on_nodes() == all).then_some(())
    });
    status(3);
}

fn namespace_lifecycle(lab: &Lab) {
    wait_for("the scratch deployment ready", LONG, || {
        let ps = items(lab, &["pods", "-n", "scratch", "-l", "app=app"]);
        (ps.len() == 2 && ps.iter().all(ready)).then_some(())
    });
    // A finalizer nobody removes holds one object, and with it the namespace.
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "scratch",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    lab.kubectl_ok(&["delete", "namespace", "scratch", "--wait=false"]);
    let ns = get_json(lab, &["namespace", "scratch"]);
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    // New content is refused meanwhile.
    let out = lab.kubectl(&["create", "configmap", "late", "-n", "scratch"]);
    assert!(!out.status.success());
    // Everything else goes; the conditions say what is left and why, as kube words them.
    wait_for("only the held configmap left", LONG, || {
        let ns = get_json(lab, &["namespace", "scratch"]);
        let said = |ty: &str| {
            condition(&ns, ty).map(|c| (s(&c["status"]), s(&c["reason"]), s(&c["message"])))
        };
        (said("NamespaceContentRemaining")
            == Some((
                "True".into(),
                "SomeResourcesRemain".into(),
                "Some resources are remaining: configmaps. has 1 resource instances".into(),
            ))
            && said("NamespaceFinalizersRemaining")
                == Some((
                    "True".into(),
                    "SomeFinalizerRemain".into(),
                    "Some finalizers are remaining: example.com/hold in 1 resource instances"
                        .into(),
                ))
            && said("NamespaceDeletionDiscoveryFailure").is_some_and(|c| c.0 == "False"))
        .then_some(())
    });
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "scratch",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    wait_for("namespace scratch gone", LONG, || {
        let out = lab.kubectl(&["get", "namespace", "scratch"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    // Its content went first (the namespace controller empties, then finalizes).
    for kind in ["pods", "deployments", "jobs", "configmaps"] {
        let left = items(lab, &[kind, "-n", "scratch"]);
        assert!(left.is_empty(), "{kind} left in scratch: {left:?}");
    }
}

fn cron_job(lab: &Lab) {
    // The first minute boundary after the CronJob was made creates a Job named by its minute.
    let job = wait_for("a job of the cronjob", LONG, || {
        items(lab, &["jobs", "-l", "app=tick"])
            .into_iter()
            .find(|j| j["metadata"]["ownerReferences"][0]["kind"] == "CronJob")
    });
    let name = s(&job["metadata"]["name"]);
    let scheduled =
        ts(&job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]);
    assert_eq!(name, format!("tick-{}", scheduled.as_second() / 60));
    assert_eq!(scheduled.as_second() % 60, 0, "on a minute boundary");
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{name}"),
        "--timeout=60s",
    ]);
    wait_for("lastSuccessfulTime", LONG, || {
        let cj = get_json(lab, &["cronjob", "tick"]);
        (!cj["status"]["lastSuccessfulTime"].is_null()
            && ts(&cj["status"]["lastScheduleTime"]) == scheduled)
            .then_some(())
    });
    let ev = events_of(lab, "CronJob", "tick");
    assert!(
        ev.contains("SuccessfulCreate") && ev.contains("SawCompletedJob"),
        "{ev}"
    );

    // A Job made by hand from the CronJob's template.
    lab.kubectl_ok(&["create", "job", "by-hand", "--from=cronjob/tick"]);
    assert_eq!(
        lab.jsonpath(
            "job/by-hand",
            "{.metadata.annotations.cronjob\\.kubernetes\\.io/instantiate}"
        ),
        "manual"
    );
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/by-hand",
        "--timeout=60s",
    ]);
}
