//! The cluster add-ons `kemu up` installs once the API server answers, as kubeadm's addon phase
//! does: the cluster DNS (the `kube-dns` Service at the tenth service address and the
//! `coredns` Deployment in `kube-system`, with kubeadm's names, labels, ports and probes), and
//! the default StorageClass `standard` of kemu's local-path provisioner (as kind installs
//! its own). They are created once; a user may change or delete them like any object.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::health::{LabApi, http_post};
use crate::topology::Topology;

/// The image the DNS pods name (kemu runs its built-in `coredns` for it).
pub const DNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.0";
/// CoreDNS replicas, as kubeadm deploys them.
const DNS_REPLICAS: u32 = 2;

/// The add-on objects of `topo`, with the API path each is created at.
pub fn objects(topo: &Topology) -> Vec<(&'static str, Value)> {
    let Some(ip) = topo.dns_service_ip() else {
        return Vec::new();
    };
    let labels = json!({"k8s-app": "kube-dns"});
    let api = format!("http://{}:{}", topo.master().ip, super::forward::API_PORT);
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
        "spec": {"selector": labels, "clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
        "spec": {
            "replicas": DNS_REPLICAS,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "dnsPolicy": "Default",
                    "priorityClassName": "system-cluster-critical",
                    "containers": [{
                        "name": "coredns",
                        "image": DNS_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["--endpoint", api, "--cluster-domain", topo.dns.cluster_domain],
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                            "initialDelaySeconds": 60, "timeoutSeconds": 5, "successThreshold": 1, "failureThreshold": 5},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181, "scheme": "HTTP"},
                            "periodSeconds": 1}
                    }]
                }
            }
        }
    });
    vec![
        ("/api/v1/namespaces/kube-system/services", service),
        (
            "/apis/apps/v1/namespaces/kube-system/deployments",
            deployment,
        ),
    ]
}

/// The default StorageClass: volumes of kemu's local-path provisioner, made when the first pod
/// using a claim is on a node.
pub fn storage_objects() -> Vec<(&'static str, Value)> {
    vec![(
        "/apis/storage.k8s.io/v1/storageclasses",
        json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": crate::controllers::volume::plan::PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer"
        }),
    )]
}

/// Create the add-ons of `topo` (those that exist already are left as they are).
pub fn install(api: &LabApi, topo: &Topology) -> anyhow::Result<()> {
    create(api, objects(topo))
}

/// Create the default StorageClass (left as it is if it exists).
pub fn install_storage(api: &LabApi) -> anyhow::Result<()> {
    create(api, storage_objects())
}

fn create(api: &LabApi, objects: Vec<(&'static str, Value)>) -> anyhow::Result<()> {
    for (path, object) in objects {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (code, body) = http_post(api, path, &object.to_string(), Duration::from_secs(5))
            .with_context(|| format!("create the {name} add-on"))?;
        if code != 201 && code != 409 {
            anyhow::bail!("creating the {name} add-on: HTTP {code}: {body}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_addon_is_kubeadms() {
        let topo = crate::topology::Topology::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topologies/two-segments.yaml"
        )))
        .unwrap();
        let objects = objects(&topo);
        insta::assert_json_snapshot!(objects);
        let mut off = topo.clone();
        off.dns.enabled = false;
        assert!(super::objects(&off).is_empty());
    }
}
