//! Mutating admission of new pods: kube-apiserver's `ServiceAccount` plugin
//! (plugin/pkg/admission/serviceaccount). A pod runs as a service account (`default` unless
//! it names one), which must exist; unless automounting is off, every container gets the
//! account's API credentials as the projected volume `kube-api-access-<suffix>` at
//! [`TOKEN_DIR`]: a bound token, the cluster CA (`kube-root-ca.crt`) and the namespace. A pod
//! without image pull secrets takes its account's.

use serde_json::{Value, json};

/// Where a container finds its service account's token, `ca.crt` and `namespace`.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap every namespace gets with the cluster CA (root-ca-cert-publisher's).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Lifetime the plugin asks for: an hour, plus 7 s so that the kubelet's refresh at 80% does
/// not line up with other hourly jobs (kube's `ExpirationSeconds: 3607`).
const TOKEN_SECONDS: i64 = 3607;

/// The account a pod runs as: `spec.serviceAccountName`, else the deprecated
/// `spec.serviceAccount`, else `default`.
pub fn account_name(pod: &Value) -> String {
    ["/spec/serviceAccountName", "/spec/serviceAccount"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_str))
        .find(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string()
}

/// Admit `pod` running as `account` (`None`: it does not exist). `suffix` names the token
/// volume. The error is the reason the pod is forbidden.
pub fn service_account(
    pod: &mut Value,
    account: Option<&Value>,
    suffix: &str,
) -> Result<(), String> {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mirror = pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    if mirror {
        // Static pods' mirrors run as no account.
        return Ok(());
    }
    let name = account_name(pod);
    let Some(account) = account else {
        return Err(format!(
            "error looking up service account {namespace}/{name}: serviceaccount \"{name}\" not found"
        ));
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = account.get("imagePullSecrets").and_then(Value::as_array)
        && !secrets.is_empty()
    {
        spec.insert("imagePullSecrets".into(), json!(secrets));
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut();
    let Some(volumes) = volumes else {
        return Ok(());
    };
    let mut volume_name = format!("kube-api-access-{suffix}");
    while volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(volume_name.as_str()))
    {
        volume_name.push('x');
    }
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for container in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = container
                .as_object_mut()
                .map(|c| c.entry("volumeMounts").or_insert_with(|| json!([])));
            let Some(mounts) = mounts.and_then(Value::as_array_mut) else {
                continue;
            };
            // A container that mounts something there itself keeps it.
            if mounts
                .iter()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_DIR))
            {
                continue;
            }
            mounts.push(json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_DIR}));
            mounted = true;
        }
    }
    if mounted {
        let volumes = spec
            .get_mut("volumes")
            .and_then(Value::as_array_mut)
            .expect("made above");
        volumes.push(json!({"name": volume_name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}));
    }
    if spec
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|v| v.is_empty())
    {
        spec.remove("volumes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec})
    }

    #[test]
    fn a_pod_gets_the_default_account_and_its_token_volume() {
        let mut p = pod(json!({"containers": [{"name": "a", "image": "nginx"}],
            "initContainers": [{"name": "i", "image": "nginx"}]}));
        service_account(&mut p, Some(&json!({})), "abcde").unwrap();
        insta::assert_json_snapshot!(p);
    }

    #[test]
    fn a_missing_account_forbids_the_pod() {
        let mut p = pod(json!({"serviceAccountName": "robot", "containers": []}));
        assert_eq!(
            service_account(&mut p, None, "abcde").unwrap_err(),
            "error looking up service account shop/robot: serviceaccount \"robot\" not found"
        );
    }

    #[test]
    fn automount_off_in_pod_or_account_mounts_nothing_and_the_pod_wins() {
        let spec = json!({"containers": [{"name": "a", "image": "nginx"}]});
        let mut p = pod(spec.clone());
        service_account(
            &mut p,
            Some(&json!({"automountServiceAccountToken": false})),
            "x",
        )
        .unwrap();
        assert!(p.pointer("/spec/volumes").is_none());
        assert!(p["spec"]["containers"][0]["volumeMounts"].is_null());

        let mut spec_on = spec.clone();
        spec_on["automountServiceAccountToken"] = json!(true);
        let mut p = pod(spec_on);
        service_account(
            &mut p,
            Some(&json!({"automountServiceAccountToken": false})),
            "x",
        )
        .unwrap();
        assert_eq!(p["spec"]["volumes"][0]["name"], "kube-api-access-x");
    }

    #[test]
    fn pull_secrets_come_from_the_account_when_the_pod_has_none() {
        let account = json!({"imagePullSecrets": [{"name": "regcred"}]});
        let mut p = pod(json!({"containers": []}));
        service_account(&mut p, Some(&account), "x").unwrap();
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let mut p = pod(json!({"containers": [], "imagePullSecrets": [{"name": "mine"}]}));
        service_account(&mut p, Some(&account), "x").unwrap();
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
    }

    #[test]
    fn a_container_with_its_own_mount_there_keeps_it() {
        let mut p = pod(json!({"containers": [{"name": "a", "image": "nginx",
            "volumeMounts": [{"name": "own", "mountPath": TOKEN_DIR}]}],
            "volumes": [{"name": "own", "emptyDir": {}}]}));
        service_account(&mut p, Some(&json!({})), "x").unwrap();
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
    }
}
