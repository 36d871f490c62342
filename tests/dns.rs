//! Cluster DNS end to end: `kemu up` installs CoreDNS (kemu's built-in) behind `kube-dns` at
//! the tenth service address; pods' resolv.conf points at it; `dig` from a pod gets every
//! record kind of the kubernetes plugin, over UDP and TCP; a pod reaches a Service by name.
//! Needs root and `dig` (bind9-dnsutils).

mod common;

use std::time::Duration;

use common::{Lab, wait_for};

const TOPOLOGY: &str = "tests/fixtures/topologies/ok/dns.yaml";
const LONG: Duration = Duration::from_secs(60);

const MANIFESTS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: nginx, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: db, image: kemu/pause}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-x, labels: {app: db}}
spec:
  containers: [{name: db, image: kemu/pause}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: kemu/pause, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: hostdns}
spec:
  dnsPolicy: Default
  containers: [{name: c, image: kemu/pause, command: [sleep, infinity]}]
"#;

fn ready_pods(lab: &Lab, ns: &str, selector: &str) -> usize {
    lab.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        selector,
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ])
    .lines()
    .filter(|l| *l == "True")
    .count()
}

/// `dig` in the client pod; returns its output.
fn dig(lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec!["exec", "client", "--", "dig", "+time=2", "+tries=1"];
    argv.extend_from_slice(args);
    lab.kubectl_ok(&argv)
}

fn short(lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["+short"];
    argv.extend_from_slice(args);
    let mut lines: Vec<String> = dig(lab, &argv).lines().map(String::from).collect();
    lines.sort();
    lines
}

#[test]
fn pods_resolve_every_record_kind_and_reach_a_service_by_name() {
    let lab = Lab::up(TOPOLOGY, "dns", &[]);
    // The add-on, as kubeadm makes it.
    assert_eq!(
        lab.kubectl_ok(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}"
        ]),
        "192.168.3.10"
    );
    wait_for("2 CoreDNS pods Ready", LONG, || {
        (ready_pods(&lab, "kube-system", "k8s-app=kube-dns") == 2).then_some(())
    });
    lab.apply(MANIFESTS);
    wait_for("the test pods Ready", LONG, || {
        (ready_pods(&lab, "default", "app=web") == 2
            && ready_pods(&lab, "default", "app=db") == 2
            && lab.jsonpath("pod/client", "{.status.phase}") == "Running"
            && lab.jsonpath("pod/hostdns", "{.status.phase}") == "Running")
            .then_some(())
    });

    // resolv.conf by dnsPolicy.
    assert_eq!(
        lab.kubectl_ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]),
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 192.168.3.10\noptions ndots:5\n"
    );
    assert_eq!(
        lab.kubectl_ok(&["exec", "hostdns", "--", "cat", "/etc/resolv.conf"]),
        "search .\nnameserver 127.0.0.1\n"
    );

    let web_ip = lab.jsonpath("svc/web", "{.spec.clusterIP}");
    let db0 = lab.jsonpath("pod/db-0", "{.status.podIP}");
    let dbx = lab.jsonpath("pod/db-x", "{.status.podIP}");
    let dashed = dbx.replace('.', "-");

    // A short name through the search list, and the full names.
    assert_eq!(short(&lab, &["+search", "web"]), vec![web_ip.clone()]);
    assert_eq!(
        short(&lab, &["web.default.svc.cluster.local"]),
        vec![web_ip.clone()]
    );
    assert_eq!(
        short(&lab, &["+tcp", "web.default.svc.cluster.local"]),
        vec![web_ip.clone()]
    );
    let mut both = vec![db0.clone(), dbx.clone()];
    both.sort();
    assert_eq!(short(&lab, &["db.default.svc.cluster.local"]), both);
    assert_eq!(
        short(&lab, &["db-0.db.default.svc.cluster.local"]),
        vec![db0.clone()]
    );
    assert_eq!(
        short(&lab, &[&format!("{dashed}.db.default.svc.cluster.local")]),
        vec![dbx.clone()]
    );
    assert_eq!(
        short(&lab, &["SRV", "_http._tcp.web.default.svc.cluster.local"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    let mut srv = vec![
        format!("0 50 5432 db-0.db.default.svc.cluster.local."),
        format!("0 50 5432 {dashed}.db.default.svc.cluster.local."),
    ];
    srv.sort();
    assert_eq!(
        short(&lab, &["SRV", "_pg._tcp.db.default.svc.cluster.local"]),
        srv
    );
    assert_eq!(
        short(&lab, &["ext.default.svc.cluster.local"]),
        ["example.org."]
    );
    assert_eq!(
        short(
            &lab,
            &[&format!(
                "{}.default.pod.cluster.local",
                db0.replace('.', "-")
            )]
        ),
        vec![db0.clone()]
    );
    assert_eq!(
        short(&lab, &["-x", &web_ip]),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(&lab, &["-x", &db0]),
        ["db-0.db.default.svc.cluster.local."]
    );
    assert_eq!(
        short(&lab, &["TXT", "dns-version.cluster.local"]),
        ["\"1.0.1\""]
    );

    // Names that do not exist: NXDOMAIN with the zone's SOA; outside names too (this lab has
    // no upstream), at once rather than after a timeout.
    let nx = dig(&lab, &["nope.default.svc.cluster.local"]);
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("IN\tSOA\tns.dns.cluster.local."),
        "{nx}"
    );
    let outside = dig(&lab, &["kubernetes.io"]);
    assert!(outside.contains("status: NXDOMAIN"), "{outside}");

    // A Service found by name and reached over HTTP.
    let page = lab.kubectl_ok(&[
        "exec",
        "client",
        "--",
        "curl",
        "-s",
        "-m",
        "5",
        "http://web/",
    ]);
    assert!(page.contains("Welcome to nginx!"), "{page}");

    // A Service that goes away leaves the zone.
    lab.kubectl_ok(&["delete", "svc", "ext"]);
    wait_for("ext gone from DNS", LONG, || {
        dig(&lab, &["ext.default.svc.cluster.local"])
            .contains("status: NXDOMAIN")
            .then_some(())
    });
}

#[test]
fn a_lab_without_dns_has_no_addon_and_pods_get_the_nodes_resolver() {
    let lab = Lab::up("topologies/seed.yaml", "nodns", &[]);
    let out = lab.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns"]);
    assert!(!out.status.success(), "no kube-dns without DNS");
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: kemu/pause, command: [sleep, infinity]}]\n",
    );
    wait_for("p Running", LONG, || {
        (lab.jsonpath("pod/p", "{.status.phase}") == "Running").then_some(())
    });
    assert_eq!(
        lab.kubectl_ok(&["exec", "p", "--", "cat", "/etc/resolv.conf"]),
        "search .\nnameserver 127.0.0.1\n"
    );
    let events = lab.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=p"]);
    assert!(events.contains("MissingClusterDNS"), "{events}");
}
