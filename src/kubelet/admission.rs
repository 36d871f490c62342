//! Which pods the kubelet refuses to run, whatever they ask: pods that would share a host
//! namespace kemu keeps from pods (`hostPID`, `hostIPC`) or mount a host directory (`hostPath`
//! volumes). Like the kubelet's own admission (`rejectPod`), a refused pod gets a Warning event
//! and the phase Failed with the reason, and its containers never start.

use k8s_openapi::api::core::v1::Pod;

/// Why a pod is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The event's and the pod status's reason (that of the first refused field).
    pub reason: &'static str,
    /// Every refused field, `; `-separated, as the event says it.
    pub message: String,
}

impl Refusal {
    /// The pod's `status.message`, as the kubelet words a rejection.
    pub fn status_message(&self) -> String {
        format!("Pod was rejected: {}", self.message)
    }
}

/// The refusal of `pod`, if kemu will not run it.
pub fn refusal(pod: &Pod) -> Option<Refusal> {
    let spec = pod.spec.as_ref()?;
    let mut found: Vec<(&'static str, String)> = Vec::new();
    if spec.host_pid == Some(true) {
        found.push((
            "HostPIDForbidden",
            "spec.hostPID: Forbidden: kemu runs every pod in a PID namespace of its own and shares the host's with none".into(),
        ));
    }
    if spec.host_ipc == Some(true) {
        found.push((
            "HostIPCForbidden",
            "spec.hostIPC: Forbidden: kemu runs every pod in an IPC namespace of its own and shares the host's with none".into(),
        ));
    }
    for (i, volume) in spec.volumes.iter().flatten().enumerate() {
        if let Some(host_path) = &volume.host_path {
            found.push((
                "HostPathForbidden",
                format!(
                    "spec.volumes[{i}].hostPath: Forbidden: kemu offers no host directories to pods (volume {:?}, path {:?})",
                    volume.name, host_path.path
                ),
            ));
        }
    }
    let reason = found.first()?.0;
    Some(Refusal {
        reason,
        message: found
            .into_iter()
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn ordinary_and_privileged_pods_are_admitted() {
        let plain = pod(serde_json::json!({"containers": [{"name": "c", "image": "nginx"}]}));
        assert_eq!(refusal(&plain), None);
        // Privilege is confined to the pod's user namespace, host namespaces set to false are
        // what every pod gets, and volumes that are not host paths touch no host directory.
        let privileged = pod(serde_json::json!({
            "hostPID": false,
            "hostIPC": false,
            "containers": [{"name": "c", "image": "debian", "command": ["sh"],
                "securityContext": {"privileged": true, "runAsUser": 0,
                    "capabilities": {"add": ["SYS_ADMIN", "SYS_MODULE", "NET_ADMIN"]}}}],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }));
        assert_eq!(refusal(&privileged), None);
    }

    #[test]
    fn host_namespaces_and_host_paths_are_refused_by_field() {
        let host_pid = pod(serde_json::json!({"hostPID": true, "containers": []}));
        let r = refusal(&host_pid).unwrap();
        assert_eq!(r.reason, "HostPIDForbidden");
        assert_eq!(
            r.status_message(),
            "Pod was rejected: spec.hostPID: Forbidden: kemu runs every pod in a PID namespace of its own and shares the host's with none"
        );
        let host_ipc = pod(serde_json::json!({"hostIPC": true, "containers": []}));
        assert_eq!(refusal(&host_ipc).unwrap().reason, "HostIPCForbidden");

        let everything = pod(serde_json::json!({
            "hostIPC": true,
            "containers": [],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "root", "hostPath": {"path": "/", "type": "Directory"}},
            ],
        }));
        let r = refusal(&everything).unwrap();
        assert_eq!(r.reason, "HostIPCForbidden");
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(r.message));
    }
}
