//! A pod's view of its cluster, on a live lab: every namespace gets a `default` service
//! account and the `kube-root-ca.crt` ConfigMap; a pod naming a missing account is forbidden;
//! ConfigMaps, Secrets and the downward API reach containers as environment and as volumes
//! (updated in place when the ConfigMap changes); and the service-account token mounted in
//! every pod authenticates over HTTPS through the `kubernetes` Service, held to RBAC, for
//! curl and for client-go's in-cluster configuration (kubectl run inside the pod). Needs root.

mod common;

use std::time::Duration;

use common::{Lab, wait_for};

const SEED: &str = "topologies/seed.yaml";
const LONG: Duration = Duration::from_secs(60);
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const KUBECTL_133: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
/// The Python client's virtual environment, made by `ci/bootstrap.sh`.
const PYTHON: &str = "/var/lib/kemu-ci/python/bin/python";

const APP: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {greeting: hello, app.conf: "listen 80\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: db}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: cfg, labels: {app: cfg}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: kemu/pause
    # The container's root: the secret's 0400 files belong to it.
    securityContext: {runAsUser: 0}
    command: [sh, -c, 'echo "env: $GREETING $DB_PASSWORD $APP_greeting $POD_NAME"; exec sleep infinity']
    env:
    - {name: HOME, value: /tmp}
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: app, key: greeting}}}
    - {name: DB_PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MISSING, valueFrom: {configMapKeyRef: {name: nope, key: x, optional: true}}}
    envFrom: [{prefix: APP_, configMapRef: {name: app}}]
    volumeMounts:
    - {name: config, mountPath: /run/config}
    - {name: secret, mountPath: /run/secret}
    - {name: info, mountPath: /run/info}
    - {name: conf-file, mountPath: /run/app.conf, subPath: app.conf}
  volumes:
  - {name: config, configMap: {name: app}}
  - {name: conf-file, configMap: {name: app}}
  - {name: secret, secret: {secretName: db, defaultMode: 0400}}
  - {name: info, downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}}
"#;

fn exec(lab: &Lab, pod: &str, script: &str) -> (bool, String) {
    let out = lab.kubectl(&["exec", pod, "--", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn running(lab: &Lab, pod: &str) {
    wait_for(&format!("pod {pod} running"), LONG, || {
        (lab.jsonpath(&format!("pod/{pod}"), "{.status.phase}") == "Running").then_some(())
    });
}

#[test]
fn pods_see_their_config_secrets_and_a_token_that_works_over_https() {
    let lab = Lab::up(SEED, "incl", &[]);

    // Every namespace, old and new, has its account and CA bundle.
    wait_for("the default account and CA bundle", LONG, || {
        let ca = lab.kubectl(&[
            "get",
            "cm",
            "kube-root-ca.crt",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        let sa = lab.kubectl(&["get", "sa", "default", "-n", "kube-system"]);
        (sa.status.success() && String::from_utf8_lossy(&ca.stdout).contains("BEGIN CERTIFICATE"))
            .then_some(())
    });
    lab.kubectl_ok(&["create", "namespace", "team"]);
    wait_for("team's default account", LONG, || {
        lab.kubectl(&["get", "sa", "default", "-n", "team"])
            .status
            .success()
            .then_some(())
    });

    // A namespace and a pod in it, in one apply: the pod waits for the namespace's account as
    // kube-apiserver's admission waits for it.
    lab.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: fresh}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: fresh}\nspec:\n  containers: [{name: c, image: kemu/pause, command: [sleep, infinity]}]\n",
    );
    assert_eq!(
        lab.kubectl_ok(&[
            "get",
            "pod",
            "p",
            "-n",
            "fresh",
            "-o",
            "jsonpath={.spec.serviceAccountName}"
        ]),
        "default"
    );

    // A missing account forbids the pod, with kube-apiserver's words.
    let out = lab.kubectl(&[
        "run",
        "robot",
        "--image=kemu/pause",
        "--overrides={\"spec\":{\"serviceAccountName\":\"robot\"}}",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pods \"robot\" is forbidden: error looking up service account default/robot: serviceaccount \"robot\" not found"),
        "{err}"
    );

    // ConfigMaps, Secrets and the downward API as environment and volumes.
    lab.apply(APP);
    running(&lab, "cfg");
    let logs = lab.kubectl_ok(&["logs", "cfg"]);
    assert!(logs.contains("env: hello s3cr3t hello cfg"), "{logs}");
    let (ok, files) = exec(
        &lab,
        "cfg",
        "cat /run/config/app.conf /run/config/greeting; echo; cat /run/secret/password; echo; \
         stat -L -c %a /run/secret/password; cat /run/info/labels; echo; cat /run/app.conf",
    );
    assert!(ok, "{files}");
    assert_eq!(
        files,
        "listen 80\nhello\ns3cr3t\n400\napp=\"cfg\"\nlisten 80\n"
    );
    let volume = lab.jsonpath(
        "pod/cfg",
        "{.spec.volumes[?(@.projected)].name} {.spec.serviceAccountName}",
    );
    assert!(
        volume.starts_with("kube-api-access-") && volume.ends_with(" default"),
        "{volume}"
    );

    // A changed ConfigMap reaches the mounted files (not the subPath file, as upstream).
    lab.kubectl_ok(&[
        "patch",
        "configmap",
        "app",
        "-p",
        "{\"data\":{\"greeting\":\"bonjour\"}}",
    ]);
    wait_for(
        "the new greeting in the volume",
        Duration::from_secs(20),
        || {
            let (_, text) = exec(&lab, "cfg", "cat /run/config/greeting");
            (text == "bonjour").then_some(())
        },
    );

    // A reference to a missing ConfigMap holds the container with the kubelet's reason.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lacking}\nspec:\n  containers:\n  - name: c\n    image: kemu/pause\n    command: [sleep, infinity]\n    env: [{name: X, valueFrom: {configMapKeyRef: {name: absent, key: k}}}]\n",
    );
    wait_for("CreateContainerConfigError", LONG, || {
        let state = lab.jsonpath(
            "pod/lacking",
            "{.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}",
        );
        (state == "CreateContainerConfigError configmap \"absent\" not found").then_some(())
    });

    // The token, the CA and the namespace, and what they are worth over HTTPS.
    let (ok, listing) = exec(
        &lab,
        "cfg",
        &format!("ls {TOKEN_DIR}; cat {TOKEN_DIR}/namespace"),
    );
    assert!(ok, "{listing}");
    assert_eq!(listing, "ca.crt\nnamespace\ntoken\ndefault");
    let curl = format!(
        "curl -sS --cacert {TOKEN_DIR}/ca.crt -H \"Authorization: Bearer $(cat {TOKEN_DIR}/token)\" \
         https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods"
    );
    let (ok, denied) = exec(&lab, "cfg", &curl);
    assert!(ok, "{denied}");
    assert!(
        denied.contains("pods is forbidden: User \\\"system:serviceaccount:default:default\\\" cannot list resource \\\"pods\\\" in API group \\\"\\\" in the namespace \\\"default\\\""),
        "{denied}"
    );
    let (ok, anonymous) = exec(
        &lab,
        "cfg",
        &format!(
            "curl -sS --cacert {TOKEN_DIR}/ca.crt https://kubernetes.default.svc/api/v1/namespaces/default/pods --resolve kubernetes.default.svc:443:$KUBERNETES_SERVICE_HOST"
        ),
    );
    assert!(ok, "{anonymous}");
    assert!(anonymous.contains("system:anonymous"), "{anonymous}");
    lab.kubectl_ok(&[
        "create",
        "rolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    let (ok, allowed) = exec(&lab, "cfg", &curl);
    assert!(
        ok && allowed.contains("\"kind\":\"PodList\"") && allowed.contains("\"cfg\""),
        "{allowed}"
    );

    // client-go's in-cluster configuration: kubectl in the pod, without a kubeconfig.
    let (ok, pods) = exec(&lab, "cfg", &format!("{KUBECTL_133} get pods -o name"));
    assert!(ok, "{pods}");
    assert!(pods.contains("pod/cfg"), "{pods}");
    let (ok, whoami) = exec(
        &lab,
        "cfg",
        &format!("{KUBECTL_133} auth whoami -o jsonpath='{{.status.userInfo.username}}'"),
    );
    assert!(ok, "{whoami}");
    assert_eq!(whoami, "system:serviceaccount:default:default");

    // The Python client's in-cluster configuration.
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run ci/bootstrap.sh deps (it installs the Python client)"
    );
    let (ok, names) = exec(
        &lab,
        "cfg",
        &format!(
            "{PYTHON} -c 'from kubernetes import client, config; \
             config.load_incluster_config(); \
             print(sorted(p.metadata.name for p in client.CoreV1Api().list_namespaced_pod(\"default\").items))'"
        ),
    );
    assert!(ok, "{names}");
    assert_eq!(names.trim(), "['cfg', 'lacking']");
}
