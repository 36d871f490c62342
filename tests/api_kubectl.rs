//! The real kubectl against `kemu apiserver`: the seed scenario's objects, every `get` flavour,
//! describe, apply (client- and server-side), scale, label/annotate/patch, watch and delete.
//! One transcript per kubectl build (dispatcher, 1.30, 1.33), snapshot-tested after filtering
//! ages, timestamps and ports.

mod api_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use api_support::{Kubectl, Server, kubectls, settings, transcript};

const SEED: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: nginx-controller
spec:
  replicas: 2
  selector:
    name: nginx
  template:
    metadata:
      labels:
        name: nginx
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: nginx-service-clusterip
spec:
  ports:
  - port: 8001
    targetPort: 80
  selector:
    name: nginx
---
apiVersion: v1
kind: Service
metadata:
  name: nginx-service-nodeport
spec:
  type: NodePort
  ports:
  - port: 8000
    targetPort: 80
  selector:
    name: nginx
"#;

const NODE_AND_PODS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: 192.168.0.202
  labels:
    kubernetes.io/hostname: 192.168.0.202
    node-role.kubernetes.io/worker: ""
status:
  addresses:
  - type: InternalIP
    address: 192.168.0.202
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    message: kubelet is posting ready status
    lastHeartbeatTime: "2025-01-01T00:00:00Z"
    lastTransitionTime: "2025-01-01T00:00:00Z"
  nodeInfo:
    kubeletVersion: v1.32.4
    osImage: kemu
    kernelVersion: 6.18.0
    containerRuntimeVersion: kemu://0.1.0
    architecture: amd64
    operatingSystem: linux
    bootID: ""
    kubeProxyVersion: ""
    machineID: ""
    systemUUID: ""
  capacity:
    cpu: "2"
    memory: 4Gi
    pods: "110"
---
apiVersion: v1
kind: Pod
metadata:
  name: nginx-controller-abcde
  labels:
    name: nginx
spec:
  nodeName: 192.168.0.202
  containers:
  - name: nginx
    image: nginx
    ports:
    - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: pending-pod
  labels:
    app: other
spec:
  containers:
  - name: c
    image: busybox:1.36
---
apiVersion: v1
kind: Event
metadata:
  name: nginx-controller-abcde.1
involvedObject:
  kind: Pod
  name: nginx-controller-abcde
  namespace: default
reason: Scheduled
message: Successfully assigned default/nginx-controller-abcde to 192.168.0.202
type: Normal
source:
  component: default-scheduler
count: 1
"#;

const POD_STATUS: &str = r#"{"status":{"phase":"Running","podIP":"172.16.1.2","podIPs":[{"ip":"172.16.1.2"}],
  "conditions":[{"type":"Ready","status":"True"}],
  "containerStatuses":[{"name":"nginx","ready":true,"restartCount":0,"image":"nginx","imageID":"","started":true,
    "state":{"running":{"startedAt":"2025-01-01T00:00:00Z"}}}]}}"#;

const DEPLOY_V1: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: a
        image: nginx:1.25
        env: [{name: "X", value: "1"}, {name: "Y", value: "2"}]
      - name: b
        image: busybox
        args: [sleep, "3600"]
"#;

fn run_scenario(kubectl: &Kubectl) -> String {
    let mut out = String::new();
    let mut run = |args: &[&str]| {
        let o = kubectl.output(args);
        out.push_str(&transcript(args, &o));
        o
    };
    let v = run(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.32.4");

    let mut stdin_run = |args: &[&str], input: &str| {
        let o = kubectl.with_stdin(args, input);
        out.push_str(&transcript(args, &o));
        o
    };
    assert!(stdin_run(&["create", "-f", "-"], SEED).status.success());
    stdin_run(&["create", "-f", "-"], SEED);
    assert!(
        stdin_run(&["create", "-f", "-"], NODE_AND_PODS)
            .status
            .success()
    );
    stdin_run(&["apply", "-f", "-"], DEPLOY_V1);
    stdin_run(&["apply", "-f", "-"], DEPLOY_V1);
    let v2 = DEPLOY_V1
        .replace("nginx:1.25", "nginx:1.27")
        .replace(r#"{name: "Y", value: "2"}"#, r#"{name: "Z", value: "3"}"#);
    stdin_run(&["apply", "-f", "-"], &v2);
    // replicas is the client-side applier's: a conflict, until forced.
    stdin_run(
        &["apply", "--server-side", "-f", "-"],
        &v2.replace("replicas: 2", "replicas: 3"),
    );
    stdin_run(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &v2.replace("replicas: 2", "replicas: 3"),
    );
    stdin_run(
        &["create", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec: {replica: 1}\n",
    );
    stdin_run(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 70000}]}\n",
    );

    let mut run = |args: &[&str]| {
        let o = kubectl.output(args);
        out.push_str(&transcript(args, &o));
        o
    };
    run(&[
        "patch",
        "pod",
        "nginx-controller-abcde",
        "--subresource=status",
        "--type=merge",
        "-p",
        POD_STATUS,
    ]);
    for args in [
        &["get", "pods"][..],
        &["get", "pods", "-o", "wide"],
        &["get", "svc", "-o", "wide"],
        &["get", "rc,deploy", "-o", "wide"],
        &["get", "all"],
        &["get", "nodes", "-o", "wide"],
        &["get", "endpoints"],
        &["get", "events"],
        &["get", "ns"],
        &["get", "pods", "-A", "--show-labels"],
        &["get", "pods", "-l", "name in (nginx)"],
        &["get", "pods", "--field-selector", "status.phase=Running"],
        &[
            "get",
            "pods",
            "--field-selector",
            "spec.nodeName!=192.168.0.202",
        ],
        &["get", "pods", "--sort-by", ".metadata.name", "-o", "name"],
        &[
            "get",
            "svc",
            "nginx-service-nodeport",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}",
        ],
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation} {.spec.template.spec.containers[*].image} {.spec.template.spec.containers[0].env}",
        ],
        &["get", "rc", "nginx-controller", "-o", "yaml"],
        &["describe", "pod", "nginx-controller-abcde"],
        &["describe", "svc", "nginx-service-nodeport"],
        &["describe", "rc", "nginx-controller"],
        &["describe", "deploy", "web"],
        &["describe", "node", "192.168.0.202"],
        &["scale", "rc", "nginx-controller", "--replicas=3"],
        &[
            "scale",
            "rc",
            "nginx-controller",
            "--current-replicas=2",
            "--replicas=4",
        ],
        &[
            "scale",
            "rc",
            "nginx-controller",
            "--current-replicas=3",
            "--replicas=1",
        ],
        &["scale", "deploy", "web", "--replicas=5"],
        &["get", "rc,deploy"],
        &["label", "pod", "pending-pod", "tier=back"],
        &["annotate", "pod", "pending-pod", "note=hello"],
        &[
            "patch",
            "svc",
            "nginx-service-clusterip",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"patched":"merge"}}}"#,
        ],
        &[
            "patch",
            "svc",
            "nginx-service-clusterip",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ports/0/name","value":"web"}]"#,
        ],
        &[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"b","image":"busybox:1.36"}]}}}}"#,
        ],
        &[
            "get",
            "pod",
            "pending-pod",
            "-o",
            "jsonpath={.metadata.labels} {.metadata.annotations}",
        ],
        &[
            "get",
            "svc",
            "nginx-service-clusterip",
            "-o",
            "jsonpath={.metadata.labels} {.spec.ports}",
        ],
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ],
        &["delete", "pod", "pending-pod"],
        &["delete", "pod", "nginx-controller-abcde", "--wait=false"],
        &["get", "pod", "nginx-controller-abcde"],
        &[
            "delete",
            "pod",
            "nginx-controller-abcde",
            "--force",
            "--grace-period=0",
        ],
        &[
            "delete",
            "rc",
            "nginx-controller",
            "--cascade=orphan",
            "--wait=false",
        ],
        &[
            "get",
            "rc",
            "nginx-controller",
            "-o",
            "jsonpath={.metadata.finalizers} {.metadata.deletionTimestamp}",
        ],
        &[
            "patch",
            "rc",
            "nginx-controller",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        &["get", "rc"],
        &["delete", "deploy", "web"],
        &[
            "delete",
            "svc",
            "nginx-service-nodeport",
            "nginx-service-clusterip",
        ],
        &["get", "all"],
        &["delete", "ns", "default"],
        &["get", "pod", "nope"],
    ] {
        run(args);
    }
    out
}

#[test]
fn kubectl_scenario() {
    for (name, bin) in kubectls() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let kubectl = Kubectl::new(bin, &server);
        let out = run_scenario(&kubectl);
        settings().bind(|| insta::assert_snapshot!(format!("scenario_{name}"), out));
    }
}

#[test]
fn get_watch_streams_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for (i, (_, bin)) in kubectls().into_iter().enumerate() {
        let kubectl = Kubectl::new(bin, &server);
        let ns = format!("watch{i}");
        let ns_manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
        assert!(
            kubectl
                .with_stdin(&["create", "-f", "-"], &ns_manifest)
                .status
                .success()
        );
        let mut watch = kubectl
            .command(&["get", "pods", "-n", &ns, "-w", "--output-watch-events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
        let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: w1}\nspec: {containers: [{name: c, image: nginx}]}\n";
        let created = kubectl.with_stdin(&["create", "-n", &ns, "-f", "-"], manifest);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let header = lines.next().unwrap().unwrap();
        let added = lines.next().unwrap().unwrap();
        assert!(
            kubectl
                .output(&["label", "pod", "w1", "-n", &ns, "x=y"])
                .status
                .success()
        );
        let modified = lines.next().unwrap().unwrap();
        assert!(
            kubectl
                .output(&["delete", "pod", "w1", "-n", &ns])
                .status
                .success()
        );
        let deleted = lines.next().unwrap().unwrap();
        let _ = watch.kill();
        let _ = watch.wait();
        let got: Vec<String> = [header, added, modified, deleted]
            .iter()
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            got,
            [
                "EVENT NAME READY STATUS",
                "ADDED w1 0/1 Pending",
                "MODIFIED w1 0/1 Pending",
                "DELETED w1 0/1 Pending"
            ],
            "{bin}"
        );
    }
}

/// kubectl's generators post protobuf (typed clients never fall back to JSON), and a `kind: List`
/// file makes kubectl fetch the protobuf OpenAPI v2 before it posts the items one by one. Every
/// kubectl build the tests use, and 1.27, the oldest the dispatcher can pick.
#[test]
fn generators_and_list_files_work_with_every_kubectl() {
    let mut builds = kubectls();
    builds.push(("v1_27", "/usr/lib/google-cloud-sdk/bin/kubectl.1.27"));
    for (i, (name, bin)) in builds.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path());
        let kubectl = Kubectl::new(bin, &server);
        let ok = |args: &[&str]| {
            let o = kubectl.output(args);
            assert!(
                o.status.success(),
                "{name}: kubectl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let ns = format!("team{i}");
        ok(&["create", "namespace", &ns]);
        ok(&[
            "create",
            "deployment",
            "web",
            "-n",
            &ns,
            "--image=nginx:1.27",
            "--replicas=0",
            "--port=80",
        ]);
        ok(&[
            "create",
            "service",
            "nodeport",
            "web",
            "-n",
            &ns,
            "--tcp=8080:80",
        ]);
        let jsonpath = |object: &str, path: &str| {
            ok(&["get", object, "-n", &ns, "-o", &format!("jsonpath={path}")])
        };
        let deploy = jsonpath(
            "deploy/web",
            "{.spec.replicas} {.spec.selector.matchLabels.app} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.type}",
        );
        assert_eq!(deploy, "0 web nginx:1.27 80 RollingUpdate", "{name}");
        let svc = jsonpath(
            "svc/web",
            "{.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.app}",
        );
        assert_eq!(svc, "NodePort 8080 80 web", "{name}");
        let node_port = jsonpath("svc/web", "{.spec.ports[0].nodePort}");
        assert!(
            node_port.parse::<u16>().is_ok_and(|p| p >= 30000),
            "{name}: {node_port}"
        );

        // A List: its items are created, and a bad item gets the server's strict validation.
        let list = format!(
            r#"{{"kind":"List","apiVersion":"v1","items":[
              {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"a","namespace":"{ns}"}},"spec":{{"ports":[{{"port":80}}]}}}},
              {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"b","namespace":"{ns}"}},"spec":{{"ports":[{{"port":80,"bogus":1}}]}}}}]}}"#
        );
        let created = kubectl.with_stdin(&["create", "-f", "-"], &list);
        let stderr = String::from_utf8_lossy(&created.stderr);
        assert!(
            String::from_utf8_lossy(&created.stdout).contains("service/a created"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(r#"unknown field "spec.ports[0].bogus""#),
            "{name}: {stderr}"
        );
        ok(&["get", "svc", "a", "-n", &ns]);
        assert!(
            !kubectl
                .output(&["get", "svc", "b", "-n", &ns])
                .status
                .success()
        );
    }
}
