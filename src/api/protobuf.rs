//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded to the JSON that the
//! rest of the API server handles.
//!
//! kubectl's generators (`create deployment`, `create namespace`, `create service ...`) post
//! through client-go's typed clients, which send protobuf and never fall back to JSON. The body
//! is the magic `k8s\0` and a `runtime.Unknown` envelope whose `raw` field holds the object.
//! kemu decodes the kinds those generators create, with the field numbers of k8s.io/api's
//! `generated.proto` for the fields they can set, into the JSON Go would write for the same
//! object: Go writes every non-pointer field, so a zero value there means "unset" and is left
//! out, while a pointer field that is present keeps its value, zero or not (`--replicas=0`).
//! A field outside these tables that carries a value is refused, never dropped.

use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// How a field's value is encoded and turned into JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Strs,
    Int32,
    Int64,
    Bool,
    /// `map<string, string>`: repeated entries `{key = 1, value = 2}`.
    StrMap,
    /// `IntOrString {type = 1, intVal = 2, strVal = 3}`.
    IntOrString,
    /// `Time {seconds = 1, nanos = 2}`, written as RFC 3339.
    Time,
    /// `repeated int64` (packed or not).
    Int64s,
    /// `map<string, bytes>`: written as base64, as Go writes `[]byte`.
    BytesMap,
    /// `Quantity {string = 1}`, written as its string.
    Quantity,
    /// `map<string, Quantity>`.
    QuantityMap,
    Msg(&'static [Field]),
    Msgs(&'static [Field]),
    /// A Go struct embedded in its parent: its fields are the parent's in JSON.
    Inline(&'static [Field]),
}

/// One field of a message: its number, its JSON name, and whether Go holds it as a pointer.
struct Field {
    tag: u32,
    name: &'static str,
    ty: Ty,
    pointer: bool,
}

const fn f(tag: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        pointer: false,
    }
}

const fn ptr(tag: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        pointer: true,
    }
}

use Ty::*;

static OWNER_REFERENCE: [Field; 6] = [
    f(5, "apiVersion", Str),
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    ptr(6, "controller", Bool),
    ptr(7, "blockOwnerDeletion", Bool),
];

static OBJECT_META: [Field; 14] = [
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int64),
    f(8, "creationTimestamp", Time),
    ptr(9, "deletionTimestamp", Time),
    ptr(10, "deletionGracePeriodSeconds", Int64),
    f(11, "labels", StrMap),
    f(12, "annotations", StrMap),
    f(13, "ownerReferences", Msgs(&OWNER_REFERENCE)),
    f(14, "finalizers", Strs),
];

static LABEL_SELECTOR_REQUIREMENT: [Field; 3] = [
    f(1, "key", Str),
    f(2, "operator", Str),
    f(3, "values", Strs),
];

static LABEL_SELECTOR: [Field; 2] = [
    f(1, "matchLabels", StrMap),
    f(2, "matchExpressions", Msgs(&LABEL_SELECTOR_REQUIREMENT)),
];

static NAMESPACE_SPEC: [Field; 1] = [f(1, "finalizers", Strs)];

static NAMESPACE: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&NAMESPACE_SPEC)),
];

static SERVICE_PORT: [Field; 6] = [
    f(1, "name", Str),
    f(2, "protocol", Str),
    ptr(6, "appProtocol", Str),
    f(3, "port", Int32),
    f(4, "targetPort", IntOrString),
    f(5, "nodePort", Int32),
];

static SERVICE_SPEC: [Field; 19] = [
    f(1, "ports", Msgs(&SERVICE_PORT)),
    f(2, "selector", StrMap),
    f(3, "clusterIP", Str),
    f(18, "clusterIPs", Strs),
    f(4, "type", Str),
    f(5, "externalIPs", Strs),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    f(9, "loadBalancerSourceRanges", Strs),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", Int32),
    f(13, "publishNotReadyAddresses", Bool),
    f(19, "ipFamilies", Strs),
    ptr(17, "ipFamilyPolicy", Str),
    ptr(20, "allocateLoadBalancerNodePorts", Bool),
    ptr(21, "loadBalancerClass", Str),
    ptr(22, "internalTrafficPolicy", Str),
    ptr(23, "trafficDistribution", Str),
];

static SERVICE: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&SERVICE_SPEC)),
];

static CONTAINER_PORT: &[Field] = &[
    f(1, "name", Str),
    f(2, "hostPort", Int32),
    f(3, "containerPort", Int32),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];

static OBJECT_FIELD_SELECTOR: &[Field] = &[f(1, "apiVersion", Str), f(2, "fieldPath", Str)];

static RESOURCE_FIELD_SELECTOR: &[Field] = &[
    f(1, "containerName", Str),
    f(2, "resource", Str),
    ptr(3, "divisor", Quantity),
];

static LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Str)];

/// ConfigMapKeySelector and SecretKeySelector.
static KEY_SELECTOR: &[Field] = &[
    f(1, "", Inline(LOCAL_OBJECT_REFERENCE)),
    f(2, "key", Str),
    ptr(3, "optional", Bool),
];

static ENV_VAR_SOURCE: &[Field] = &[
    ptr(1, "fieldRef", Msg(OBJECT_FIELD_SELECTOR)),
    ptr(2, "resourceFieldRef", Msg(RESOURCE_FIELD_SELECTOR)),
    ptr(3, "configMapKeyRef", Msg(KEY_SELECTOR)),
    ptr(4, "secretKeyRef", Msg(KEY_SELECTOR)),
];

static ENV_VAR: &[Field] = &[
    f(1, "name", Str),
    f(2, "value", Str),
    ptr(3, "valueFrom", Msg(ENV_VAR_SOURCE)),
];

/// ConfigMapEnvSource and SecretEnvSource.
static ENV_SOURCE: &[Field] = &[
    f(1, "", Inline(LOCAL_OBJECT_REFERENCE)),
    ptr(2, "optional", Bool),
];

static ENV_FROM_SOURCE: &[Field] = &[
    f(1, "prefix", Str),
    ptr(2, "configMapRef", Msg(ENV_SOURCE)),
    ptr(3, "secretRef", Msg(ENV_SOURCE)),
];

static RESOURCE_REQUIREMENTS: &[Field] =
    &[f(1, "limits", QuantityMap), f(2, "requests", QuantityMap)];

static VOLUME_MOUNT: &[Field] = &[
    f(1, "name", Str),
    f(2, "readOnly", Bool),
    ptr(7, "recursiveReadOnly", Str),
    f(3, "mountPath", Str),
    f(4, "subPath", Str),
    ptr(5, "mountPropagation", Str),
    f(6, "subPathExpr", Str),
];

static EXEC_ACTION: &[Field] = &[f(1, "command", Strs)];

static HTTP_HEADER: &[Field] = &[f(1, "name", Str), f(2, "value", Str)];

static HTTP_GET_ACTION: &[Field] = &[
    f(1, "path", Str),
    f(2, "port", IntOrString),
    f(3, "host", Str),
    f(4, "scheme", Str),
    f(5, "httpHeaders", Msgs(HTTP_HEADER)),
];

static TCP_SOCKET_ACTION: &[Field] = &[f(1, "port", IntOrString), f(2, "host", Str)];

static GRPC_ACTION: &[Field] = &[ptr(1, "port", Int32), ptr(2, "service", Str)];

static PROBE_HANDLER: &[Field] = &[
    ptr(1, "exec", Msg(EXEC_ACTION)),
    ptr(2, "httpGet", Msg(HTTP_GET_ACTION)),
    ptr(3, "tcpSocket", Msg(TCP_SOCKET_ACTION)),
    ptr(4, "grpc", Msg(GRPC_ACTION)),
];

static PROBE: &[Field] = &[
    f(1, "", Inline(PROBE_HANDLER)),
    f(2, "initialDelaySeconds", Int32),
    f(3, "timeoutSeconds", Int32),
    f(4, "periodSeconds", Int32),
    f(5, "successThreshold", Int32),
    f(6, "failureThreshold", Int32),
    ptr(7, "terminationGracePeriodSeconds", Int64),
];

static SLEEP_ACTION: &[Field] = &[f(1, "seconds", Int64)];

static LIFECYCLE_HANDLER: &[Field] = &[
    ptr(1, "exec", Msg(EXEC_ACTION)),
    ptr(2, "httpGet", Msg(HTTP_GET_ACTION)),
    ptr(3, "tcpSocket", Msg(TCP_SOCKET_ACTION)),
    ptr(4, "sleep", Msg(SLEEP_ACTION)),
];

static LIFECYCLE: &[Field] = &[
    ptr(1, "postStart", Msg(LIFECYCLE_HANDLER)),
    ptr(2, "preStop", Msg(LIFECYCLE_HANDLER)),
];

static CAPABILITIES: &[Field] = &[f(1, "add", Strs), f(2, "drop", Strs)];

static SECCOMP_PROFILE: &[Field] = &[f(1, "type", Str), ptr(2, "localhostProfile", Str)];

static SECURITY_CONTEXT: &[Field] = &[
    ptr(1, "capabilities", Msg(CAPABILITIES)),
    ptr(2, "privileged", Bool),
    ptr(4, "runAsUser", Int64),
    ptr(8, "runAsGroup", Int64),
    ptr(5, "runAsNonRoot", Bool),
    ptr(6, "readOnlyRootFilesystem", Bool),
    ptr(7, "allowPrivilegeEscalation", Bool),
    ptr(9, "procMount", Str),
    ptr(11, "seccompProfile", Msg(SECCOMP_PROFILE)),
];

static SYSCTL: &[Field] = &[f(1, "name", Str), f(2, "value", Str)];

static POD_SECURITY_CONTEXT: &[Field] = &[
    ptr(2, "runAsUser", Int64),
    ptr(6, "runAsGroup", Int64),
    ptr(3, "runAsNonRoot", Bool),
    f(4, "supplementalGroups", Int64s),
    ptr(12, "supplementalGroupsPolicy", Str),
    ptr(5, "fsGroup", Int64),
    f(7, "sysctls", Msgs(SYSCTL)),
    ptr(9, "fsGroupChangePolicy", Str),
    ptr(10, "seccompProfile", Msg(SECCOMP_PROFILE)),
];

static CONTAINER: &[Field] = &[
    f(1, "name", Str),
    f(2, "image", Str),
    f(3, "command", Strs),
    f(4, "args", Strs),
    f(5, "workingDir", Str),
    f(6, "ports", Msgs(CONTAINER_PORT)),
    f(19, "envFrom", Msgs(ENV_FROM_SOURCE)),
    f(7, "env", Msgs(ENV_VAR)),
    f(8, "resources", Msg(RESOURCE_REQUIREMENTS)),
    ptr(24, "restartPolicy", Str),
    f(9, "volumeMounts", Msgs(VOLUME_MOUNT)),
    ptr(10, "livenessProbe", Msg(PROBE)),
    ptr(11, "readinessProbe", Msg(PROBE)),
    ptr(22, "startupProbe", Msg(PROBE)),
    ptr(12, "lifecycle", Msg(LIFECYCLE)),
    f(13, "terminationMessagePath", Str),
    f(20, "terminationMessagePolicy", Str),
    f(14, "imagePullPolicy", Str),
    ptr(15, "securityContext", Msg(SECURITY_CONTEXT)),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
];

static KEY_TO_PATH: &[Field] = &[f(1, "key", Str), f(2, "path", Str), ptr(3, "mode", Int32)];

static HOST_PATH_VOLUME_SOURCE: &[Field] = &[f(1, "path", Str), ptr(2, "type", Str)];

static EMPTY_DIR_VOLUME_SOURCE: &[Field] = &[f(1, "medium", Str), ptr(2, "sizeLimit", Quantity)];

static SECRET_VOLUME_SOURCE: &[Field] = &[
    f(1, "secretName", Str),
    f(2, "items", Msgs(KEY_TO_PATH)),
    ptr(3, "defaultMode", Int32),
    ptr(4, "optional", Bool),
];

static CONFIG_MAP_VOLUME_SOURCE: &[Field] = &[
    f(1, "", Inline(LOCAL_OBJECT_REFERENCE)),
    f(2, "items", Msgs(KEY_TO_PATH)),
    ptr(3, "defaultMode", Int32),
    ptr(4, "optional", Bool),
];

static DOWNWARD_API_VOLUME_FILE: &[Field] = &[
    f(1, "path", Str),
    ptr(2, "fieldRef", Msg(OBJECT_FIELD_SELECTOR)),
    ptr(3, "resourceFieldRef", Msg(RESOURCE_FIELD_SELECTOR)),
    ptr(4, "mode", Int32),
];

static DOWNWARD_API_VOLUME_SOURCE: &[Field] = &[
    f(1, "items", Msgs(DOWNWARD_API_VOLUME_FILE)),
    ptr(2, "defaultMode", Int32),
];

/// ConfigMapProjection and SecretProjection.
static OBJECT_PROJECTION: &[Field] = &[
    f(1, "", Inline(LOCAL_OBJECT_REFERENCE)),
    f(2, "items", Msgs(KEY_TO_PATH)),
    ptr(4, "optional", Bool),
];

static DOWNWARD_API_PROJECTION: &[Field] = &[f(1, "items", Msgs(DOWNWARD_API_VOLUME_FILE))];

static SERVICE_ACCOUNT_TOKEN_PROJECTION: &[Field] = &[
    f(1, "audience", Str),
    ptr(2, "expirationSeconds", Int64),
    f(3, "path", Str),
];

static VOLUME_PROJECTION: &[Field] = &[
    ptr(1, "secret", Msg(OBJECT_PROJECTION)),
    ptr(2, "downwardAPI", Msg(DOWNWARD_API_PROJECTION)),
    ptr(3, "configMap", Msg(OBJECT_PROJECTION)),
    ptr(
        4,
        "serviceAccountToken",
        Msg(SERVICE_ACCOUNT_TOKEN_PROJECTION),
    ),
];

static PROJECTED_VOLUME_SOURCE: &[Field] = &[
    f(1, "sources", Msgs(VOLUME_PROJECTION)),
    ptr(2, "defaultMode", Int32),
];

static PVC_VOLUME_SOURCE: &[Field] = &[f(1, "claimName", Str), f(2, "readOnly", Bool)];

static VOLUME_SOURCE: &[Field] = &[
    ptr(1, "hostPath", Msg(HOST_PATH_VOLUME_SOURCE)),
    ptr(2, "emptyDir", Msg(EMPTY_DIR_VOLUME_SOURCE)),
    ptr(6, "secret", Msg(SECRET_VOLUME_SOURCE)),
    ptr(10, "persistentVolumeClaim", Msg(PVC_VOLUME_SOURCE)),
    ptr(16, "downwardAPI", Msg(DOWNWARD_API_VOLUME_SOURCE)),
    ptr(19, "configMap", Msg(CONFIG_MAP_VOLUME_SOURCE)),
    ptr(26, "projected", Msg(PROJECTED_VOLUME_SOURCE)),
];

static VOLUME: &[Field] = &[f(1, "name", Str), f(2, "", Inline(VOLUME_SOURCE))];

static TOLERATION: &[Field] = &[
    f(1, "key", Str),
    f(2, "operator", Str),
    f(3, "value", Str),
    f(4, "effect", Str),
    ptr(5, "tolerationSeconds", Int64),
];

static HOST_ALIAS: &[Field] = &[f(1, "ip", Str), f(2, "hostnames", Strs)];

static POD_DNS_CONFIG_OPTION: &[Field] = &[f(1, "name", Str), ptr(2, "value", Str)];

static POD_DNS_CONFIG: &[Field] = &[
    f(1, "nameservers", Strs),
    f(2, "searches", Strs),
    f(3, "options", Msgs(POD_DNS_CONFIG_OPTION)),
];

static POD_READINESS_GATE: &[Field] = &[f(1, "conditionType", Str)];

static POD_SPEC: &[Field] = &[
    f(1, "volumes", Msgs(VOLUME)),
    f(20, "initContainers", Msgs(CONTAINER)),
    f(2, "containers", Msgs(CONTAINER)),
    f(3, "restartPolicy", Str),
    ptr(4, "terminationGracePeriodSeconds", Int64),
    ptr(5, "activeDeadlineSeconds", Int64),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", StrMap),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    ptr(21, "automountServiceAccountToken", Bool),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    ptr(27, "shareProcessNamespace", Bool),
    ptr(14, "securityContext", Msg(POD_SECURITY_CONTEXT)),
    f(15, "imagePullSecrets", Msgs(LOCAL_OBJECT_REFERENCE)),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    f(22, "tolerations", Msgs(TOLERATION)),
    f(23, "hostAliases", Msgs(HOST_ALIAS)),
    f(24, "priorityClassName", Str),
    ptr(25, "priority", Int32),
    ptr(26, "dnsConfig", Msg(POD_DNS_CONFIG)),
    f(28, "readinessGates", Msgs(POD_READINESS_GATE)),
    ptr(29, "runtimeClassName", Str),
    ptr(30, "enableServiceLinks", Bool),
    ptr(31, "preemptionPolicy", Str),
    ptr(35, "setHostnameAsFQDN", Bool),
    ptr(37, "hostUsers", Bool),
];

static POD_TEMPLATE_SPEC: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];

static ROLLING_UPDATE_DEPLOYMENT: [Field; 2] = [
    ptr(1, "maxUnavailable", IntOrString),
    ptr(2, "maxSurge", IntOrString),
];

static DEPLOYMENT_STRATEGY: [Field; 2] = [
    f(1, "type", Str),
    ptr(2, "rollingUpdate", Msg(&ROLLING_UPDATE_DEPLOYMENT)),
];

static DEPLOYMENT_SPEC: [Field; 8] = [
    ptr(1, "replicas", Int32),
    ptr(2, "selector", Msg(&LABEL_SELECTOR)),
    f(3, "template", Msg(&POD_TEMPLATE_SPEC)),
    f(4, "strategy", Msg(&DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", Int32),
    ptr(6, "revisionHistoryLimit", Int32),
    f(7, "paused", Bool),
    ptr(9, "progressDeadlineSeconds", Int32),
];

static DEPLOYMENT: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&DEPLOYMENT_SPEC)),
];

static POD: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(POD_SPEC)),
];

static CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    ptr(4, "immutable", Bool),
    f(2, "data", StrMap),
    f(3, "binaryData", BytesMap),
];

static SECRET: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    ptr(5, "immutable", Bool),
    f(2, "data", BytesMap),
    f(4, "stringData", StrMap),
    f(3, "type", Str),
];

static OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Str),
    f(2, "namespace", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    f(5, "apiVersion", Str),
    f(6, "resourceVersion", Str),
    f(7, "fieldPath", Str),
];

static SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "secrets", Msgs(OBJECT_REFERENCE)),
    f(3, "imagePullSecrets", Msgs(LOCAL_OBJECT_REFERENCE)),
    ptr(4, "automountServiceAccountToken", Bool),
];

static JOB_SPEC: &[Field] = &[
    ptr(1, "parallelism", Int32),
    ptr(2, "completions", Int32),
    ptr(3, "activeDeadlineSeconds", Int64),
    ptr(7, "backoffLimit", Int32),
    ptr(12, "backoffLimitPerIndex", Int32),
    ptr(13, "maxFailedIndexes", Int32),
    ptr(4, "selector", Msg(&LABEL_SELECTOR)),
    ptr(5, "manualSelector", Bool),
    f(6, "template", Msg(&POD_TEMPLATE_SPEC)),
    ptr(8, "ttlSecondsAfterFinished", Int32),
    ptr(9, "completionMode", Str),
    ptr(10, "suspend", Bool),
    ptr(14, "podReplacementPolicy", Str),
    ptr(15, "managedBy", Str),
];

static JOB: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(JOB_SPEC)),
];

static JOB_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(JOB_SPEC)),
];

static CRON_JOB_SPEC: &[Field] = &[
    f(1, "schedule", Str),
    ptr(8, "timeZone", Str),
    ptr(2, "startingDeadlineSeconds", Int64),
    f(3, "concurrencyPolicy", Str),
    ptr(4, "suspend", Bool),
    f(5, "jobTemplate", Msg(JOB_TEMPLATE_SPEC)),
    ptr(6, "successfulJobsHistoryLimit", Int32),
    ptr(7, "failedJobsHistoryLimit", Int32),
];

static CRON_JOB: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(CRON_JOB_SPEC)),
];

static PDB_SPEC: &[Field] = &[
    ptr(1, "minAvailable", IntOrString),
    ptr(2, "selector", Msg(&LABEL_SELECTOR)),
    ptr(3, "maxUnavailable", IntOrString),
    ptr(4, "unhealthyPodEvictionPolicy", Str),
];

static POD_DISRUPTION_BUDGET: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(PDB_SPEC)),
];

static POLICY_RULE: &[Field] = &[
    f(1, "verbs", Strs),
    f(2, "apiGroups", Strs),
    f(3, "resources", Strs),
    f(4, "resourceNames", Strs),
    f(5, "nonResourceURLs", Strs),
];

static ROLE: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "rules", Msgs(POLICY_RULE)),
];

static AGGREGATION_RULE: &[Field] = &[f(1, "clusterRoleSelectors", Msgs(&LABEL_SELECTOR))];

static CLUSTER_ROLE: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "rules", Msgs(POLICY_RULE)),
    ptr(3, "aggregationRule", Msg(AGGREGATION_RULE)),
];

static SUBJECT: &[Field] = &[
    f(1, "kind", Str),
    f(2, "apiGroup", Str),
    f(3, "name", Str),
    f(4, "namespace", Str),
];

static ROLE_REF: &[Field] = &[f(1, "apiGroup", Str), f(2, "kind", Str), f(3, "name", Str)];

static ROLE_BINDING: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "subjects", Msgs(SUBJECT)),
    f(3, "roleRef", Msg(ROLE_REF)),
];

static PRECONDITIONS: &[Field] = &[ptr(1, "uid", Str), ptr(2, "resourceVersion", Str)];

static DELETE_OPTIONS: &[Field] = &[
    ptr(1, "gracePeriodSeconds", Int64),
    ptr(2, "preconditions", Msg(PRECONDITIONS)),
    ptr(3, "orphanDependents", Bool),
    ptr(4, "propagationPolicy", Str),
    f(5, "dryRun", Strs),
    ptr(6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool),
];

static EVICTION: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    ptr(2, "deleteOptions", Msg(DELETE_OPTIONS)),
];

static RESOURCE_ATTRIBUTES: &[Field] = &[
    f(1, "namespace", Str),
    f(2, "verb", Str),
    f(3, "group", Str),
    f(4, "version", Str),
    f(5, "resource", Str),
    f(6, "subresource", Str),
    f(7, "name", Str),
];

static NON_RESOURCE_ATTRIBUTES: &[Field] = &[f(1, "path", Str), f(2, "verb", Str)];

static SELF_SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    ptr(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
    ptr(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
];

static SELF_SUBJECT_ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
];

static SELF_SUBJECT_RULES_REVIEW_SPEC: &[Field] = &[f(1, "namespace", Str)];

static SELF_SUBJECT_RULES_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(SELF_SUBJECT_RULES_REVIEW_SPEC)),
];

static SUBJECT_ACCESS_REVIEW_SPEC: &[Field] = &[
    ptr(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES)),
    ptr(2, "nonResourceAttributes", Msg(NON_RESOURCE_ATTRIBUTES)),
    f(3, "user", Str),
    f(4, "groups", Strs),
    f(6, "uid", Str),
];

static SUBJECT_ACCESS_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(SUBJECT_ACCESS_REVIEW_SPEC)),
];

static SELF_SUBJECT_REVIEW: &[Field] = &[f(1, "metadata", Msg(&OBJECT_META))];

static BOUND_OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Str),
    f(2, "apiVersion", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
];

static TOKEN_REQUEST_SPEC: &[Field] = &[
    f(1, "audiences", Strs),
    ptr(4, "expirationSeconds", Int64),
    ptr(3, "boundObjectRef", Msg(BOUND_OBJECT_REFERENCE)),
];

static TOKEN_REQUEST: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(TOKEN_REQUEST_SPEC)),
];

static TOKEN_REVIEW_SPEC: &[Field] = &[f(1, "token", Str), f(2, "audiences", Strs)];

static TOKEN_REVIEW: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(TOKEN_REVIEW_SPEC)),
];

static SERVICE_BACKEND_PORT: &[Field] = &[f(1, "name", Str), f(2, "number", Int32)];

static INGRESS_SERVICE_BACKEND: &[Field] =
    &[f(1, "name", Str), f(2, "port", Msg(SERVICE_BACKEND_PORT))];

static TYPED_LOCAL_OBJECT_REFERENCE: &[Field] = &[
    ptr(1, "apiGroup", Str),
    f(2, "kind", Str),
    f(3, "name", Str),
];

static INGRESS_BACKEND: &[Field] = &[
    ptr(4, "service", Msg(INGRESS_SERVICE_BACKEND)),
    ptr(3, "resource", Msg(TYPED_LOCAL_OBJECT_REFERENCE)),
];

static HTTP_INGRESS_PATH: &[Field] = &[
    f(1, "path", Str),
    ptr(3, "pathType", Str),
    f(2, "backend", Msg(INGRESS_BACKEND)),
];

static HTTP_INGRESS_RULE_VALUE: &[Field] = &[f(1, "paths", Msgs(HTTP_INGRESS_PATH))];

static INGRESS_RULE_VALUE: &[Field] = &[ptr(1, "http", Msg(HTTP_INGRESS_RULE_VALUE))];

static INGRESS_RULE: &[Field] = &[f(1, "host", Str), f(2, "", Inline(INGRESS_RULE_VALUE))];

static INGRESS_TLS: &[Field] = &[f(1, "hosts", Strs), f(2, "secretName", Str)];

static INGRESS_SPEC: &[Field] = &[
    ptr(4, "ingressClassName", Str),
    ptr(1, "defaultBackend", Msg(INGRESS_BACKEND)),
    f(2, "tls", Msgs(INGRESS_TLS)),
    f(3, "rules", Msgs(INGRESS_RULE)),
];

static INGRESS: &[Field] = &[
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(INGRESS_SPEC)),
];

/// The kinds kemu decodes, by `apiVersion` and `kind`: what kubectl's typed clients post
/// (generators, `drain`, `debug --copy-to`, `auth`, `create token`).
static KINDS: &[(&str, &str, &[Field])] = &[
    ("v1", "Namespace", &NAMESPACE),
    ("v1", "Service", &SERVICE),
    ("apps/v1", "Deployment", &DEPLOYMENT),
    ("v1", "Pod", POD),
    ("v1", "ConfigMap", CONFIG_MAP),
    ("v1", "Secret", SECRET),
    ("v1", "ServiceAccount", SERVICE_ACCOUNT),
    ("batch/v1", "Job", JOB),
    ("batch/v1", "CronJob", CRON_JOB),
    ("policy/v1", "PodDisruptionBudget", POD_DISRUPTION_BUDGET),
    ("policy/v1", "Eviction", EVICTION),
    ("networking.k8s.io/v1", "Ingress", INGRESS),
    ("rbac.authorization.k8s.io/v1", "Role", ROLE),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", CLUSTER_ROLE),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", ROLE_BINDING),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        ROLE_BINDING,
    ),
    (
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        SELF_SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        SELF_SUBJECT_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        SELF_SUBJECT_RULES_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        SUBJECT_ACCESS_REVIEW,
    ),
    (
        "authorization.k8s.io/v1",
        "LocalSubjectAccessReview",
        SUBJECT_ACCESS_REVIEW,
    ),
    ("authentication.k8s.io/v1", "TokenRequest", TOKEN_REQUEST),
    ("authentication.k8s.io/v1", "TokenReview", TOKEN_REVIEW),
];

/// `runtime.Unknown`: `typeMeta = 1 {apiVersion = 1, kind = 2}`, `raw = 2`.
static TYPE_META: [Field; 2] = [f(1, "apiVersion", Str), f(2, "kind", Str)];

fn malformed(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body is malformed at {what}: {e}"))
}

/// A whole request body: the `k8s\0` envelope around one object.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request(
            "the protobuf body does not start with the Kubernetes magic \"k8s\\0\"",
        )
    })?;
    let (mut type_meta, mut raw) = (Map::new(), None);
    for (tag, value) in fields(envelope).map_err(|e| malformed("the envelope", e))? {
        match (tag, value) {
            (1, Raw::Bytes(b)) => type_meta = decode_message(b, &TYPE_META, "typeMeta")?,
            (2, Raw::Bytes(b)) => raw = Some(b),
            (3, Raw::Bytes(encoding)) if !encoding.is_empty() => {
                return Err(ApiError::unsupported_body(format!(
                    "the protobuf body's object is encoded ({:?}); kemu decodes plain objects only",
                    String::from_utf8_lossy(encoding)
                )));
            }
            _ => {} // contentType is empty for objects
        }
    }
    let api_version = type_meta
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = type_meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // DeleteOptions is registered in every group-version; client-go names the client's.
    let found = if kind == "DeleteOptions" {
        Some(DELETE_OPTIONS)
    } else {
        KINDS
            .iter()
            .find(|(v, k, _)| *v == api_version && *k == kind)
            .map(|(_, _, t)| *t)
    };
    let Some(table) = found else {
        let known: Vec<String> = KINDS.iter().map(|(v, k, _)| format!("{k} ({v})")).collect();
        return Err(ApiError::unsupported_body(format!(
            "kemu decodes protobuf bodies of {} only, not {kind} ({api_version}); send it as JSON or YAML (kubectl create -f)",
            known.join(", ")
        )));
    };
    let mut object = decode_message(raw.unwrap_or_default(), table, kind)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

/// A field's undecoded value.
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn read_value<'a>(buf: &mut &'a [u8], wire: WireType) -> Result<Raw<'a>, String> {
    Ok(match wire {
        WireType::Varint => Raw::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        WireType::LengthDelimited => {
            let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
            if len > buf.len() {
                return Err(format!("a length of {len} with {} bytes left", buf.len()));
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Raw::Bytes(value)
        }
        WireType::SixtyFourBit if buf.len() >= 8 => Raw::Fixed(buf.get_u64_le()),
        WireType::ThirtyTwoBit if buf.len() >= 4 => Raw::Fixed(buf.get_u32_le().into()),
        other => {
            return Err(format!(
                "wire type {other:?} is not used by Kubernetes objects"
            ));
        }
    })
}

/// Whether a field kemu does not know holds only what Go writes for an unset field: zero, an
/// empty string or list, or a message of such fields.
fn is_unset(raw: &Raw, depth: u8) -> bool {
    match raw {
        Raw::Varint(v) | Raw::Fixed(v) => *v == 0,
        Raw::Bytes(b) => {
            b.is_empty()
                || depth < 16
                    && fields(b).is_ok_and(|fs| fs.iter().all(|(_, v)| is_unset(v, depth + 1)))
        }
    }
}

fn decode_message(
    bytes: &[u8],
    table: &[Field],
    path: &str,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (tag, raw) in fields(bytes).map_err(|e| malformed(path, e))? {
        let Some(field) = table.iter().find(|f| f.tag == tag) else {
            if is_unset(&raw, 0) {
                continue;
            }
            return Err(ApiError::unsupported_body(format!(
                "{path} sets protobuf field {tag}, which kemu does not decode; send the object as JSON or YAML (kubectl create ... --dry-run=client -o yaml | kubectl create -f -)"
            )));
        };
        let here = format!("{path}.{}", field.name);
        let value = match (field.ty, raw) {
            (Str, Raw::Bytes(b)) => json!(text(b, &here)?),
            (Strs, Raw::Bytes(b)) => {
                push(&mut out, field.name, json!(text(b, &here)?));
                continue;
            }
            (Int32, Raw::Varint(v)) => json!(v as i64 as i32),
            (Int64, Raw::Varint(v)) => json!(v as i64),
            (Bool, Raw::Varint(v)) => json!(v != 0),
            (StrMap, Raw::Bytes(b)) => {
                let entry = decode_entry(b, &here)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map.as_object_mut()
                    .expect("a map field holds an object")
                    .extend([entry]);
                continue;
            }
            (IntOrString, Raw::Bytes(b)) => int_or_string(b, &here)?,
            (Int64s, Raw::Varint(v)) => {
                push(&mut out, field.name, json!(v as i64));
                continue;
            }
            (Int64s, Raw::Bytes(mut packed)) => {
                while packed.has_remaining() {
                    let v = decode_varint(&mut packed).map_err(|e| malformed(&here, e))?;
                    push(&mut out, field.name, json!(v as i64));
                }
                continue;
            }
            (BytesMap, Raw::Bytes(b)) => {
                let (key, value) = decode_bytes_entry(b, &here)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map.as_object_mut()
                    .expect("a map field holds an object")
                    .insert(key, json!(data_encoding::BASE64.encode(&value)));
                continue;
            }
            (Quantity, Raw::Bytes(b)) => quantity(b, &here)?,
            (QuantityMap, Raw::Bytes(b)) => {
                let (key, value) = decode_bytes_entry(b, &here)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map.as_object_mut()
                    .expect("a map field holds an object")
                    .insert(key, quantity(&value, &here)?);
                continue;
            }
            (Inline(inner), Raw::Bytes(b)) => {
                out.extend(decode_message(b, inner, path)?);
                continue;
            }
            (Time, Raw::Bytes(b)) => time(b, &here)?,
            (Msg(inner), Raw::Bytes(b)) => Value::Object(decode_message(b, inner, &here)?),
            (Msgs(inner), Raw::Bytes(b)) => {
                let index = out
                    .get(field.name)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let item = decode_message(b, inner, &format!("{here}[{index}]"))?;
                push(&mut out, field.name, Value::Object(item));
                continue;
            }
            _ => return Err(malformed(&here, "a value of the wrong wire type")),
        };
        if field.pointer || !is_zero(&value) {
            out.insert(field.name.into(), value);
        }
    }
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn push(out: &mut Map<String, Value>, name: &str, item: Value) {
    let list = out.entry(name).or_insert_with(|| json!([]));
    list.as_array_mut()
        .expect("a repeated field holds an array")
        .push(item);
}

fn text(b: &[u8], path: &str) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|e| malformed(path, e))
}

/// A message's fields in wire order, undecoded.
fn fields(b: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut buf = b;
    let mut out = Vec::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        out.push((tag, read_value(&mut buf, wire)?));
    }
    Ok(out)
}

fn decode_entry(b: &[u8], path: &str) -> Result<(String, Value), ApiError> {
    let (mut key, mut value) = (String::new(), String::new());
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Bytes(k)) => key = text(k, path)?,
            (2, Raw::Bytes(v)) => value = text(v, path)?,
            _ => return Err(malformed(path, "a map entry that is not {key, value}")),
        }
    }
    Ok((key, json!(value)))
}

/// A map entry whose value is bytes (or a message, read as bytes).
fn decode_bytes_entry(b: &[u8], path: &str) -> Result<(String, Vec<u8>), ApiError> {
    let (mut key, mut value) = (String::new(), Vec::new());
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Bytes(k)) => key = text(k, path)?,
            (2, Raw::Bytes(v)) => value = v.to_vec(),
            _ => return Err(malformed(path, "a map entry that is not {key, value}")),
        }
    }
    Ok((key, value))
}

fn quantity(b: &[u8], path: &str) -> Result<Value, ApiError> {
    let mut out = String::new();
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Bytes(s)) => out = text(s, path)?,
            _ => return Err(malformed(path, "a Quantity with an unknown field")),
        }
    }
    Ok(json!(out))
}

fn int_or_string(b: &[u8], path: &str) -> Result<Value, ApiError> {
    let (mut is_string, mut int, mut string) = (false, 0i32, String::new());
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Varint(t)) => is_string = t == 1,
            (2, Raw::Varint(v)) => int = v as i64 as i32,
            (3, Raw::Bytes(s)) => string = text(s, path)?,
            _ => return Err(malformed(path, "an IntOrString with an unknown field")),
        }
    }
    Ok(if is_string { json!(string) } else { json!(int) })
}

fn time(b: &[u8], path: &str) -> Result<Value, ApiError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Varint(s)) => seconds = s as i64,
            (2, Raw::Varint(n)) => nanos = n as i64 as i32,
            _ => return Err(malformed(path, "a Time with an unknown field")),
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    // Kubernetes times have whole seconds in JSON.
    let ts = jiff::Timestamp::new(seconds, 0).map_err(|e| malformed(path, e))?;
    Ok(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/protobuf/{name}.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        decode_body(&std::fs::read(&path).unwrap()).unwrap()
    }

    /// The bodies are what kubectl 1.32 posted for the commands in tests/fixtures/protobuf/README.md.
    #[test]
    fn kubectls_generator_bodies_decode_to_the_json_go_would_write() {
        for name in [
            "namespace-team-a",
            "deployment-web",
            "deployment-zero-replicas-command",
            "service-nodeport",
            "service-headless",
            "service-named-target",
            "service-externalname",
            "service-loadbalancer",
            "configmap-literals",
            "configmap-binary-file",
            "secret-generic",
            "serviceaccount",
            "job-command",
            "cronjob-on-failure",
            "role-verbs-resources",
            "rolebinding-subjects",
            "clusterrole-non-resource-url",
            "clusterrolebinding-group",
            "pdb-max-unavailable",
            "ingress-rule-tls-default-backend",
            "pod-debug-copy-to",
            "deleteoptions-drain",
        ] {
            crate::testing::snapshot_settings()
                .bind(|| insta::assert_json_snapshot!(name, fixture(name)));
        }
    }

    #[test]
    fn a_pointer_field_keeps_its_zero() {
        let zero = fixture("deployment-zero-replicas-command");
        assert_eq!(zero["spec"]["replicas"], 0);
        let pod = fixture("pod-debug-copy-to");
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["runAsUser"],
            0
        );
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        let delete = fixture("deleteoptions-drain");
        assert_eq!(delete["gracePeriodSeconds"], 0);
    }

    #[test]
    fn bytes_are_base64_as_go_writes_them() {
        let binary = fixture("configmap-binary-file");
        assert_eq!(binary["binaryData"]["blob"], "AAH/");
        let secret = fixture("secret-generic");
        assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    }

    /// A `raw` object with the given bytes, wrapped like kubectl wraps it.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        fn ld(tag: u8, b: &[u8]) -> Vec<u8> {
            let mut v = vec![tag << 3 | 2, b.len() as u8];
            v.extend_from_slice(b);
            v
        }
        let type_meta = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), ld(1, &type_meta), ld(2, raw)].concat()
    }

    #[test]
    fn an_unknown_field_with_a_value_is_refused_and_an_unset_one_ignored() {
        // Namespace.status (field 3) empty, as Go writes it: ignored.
        let ok = decode_body(&envelope(
            "v1",
            "Namespace",
            &[0x0a, 0x04, 0x0a, 0x02, b'n', b's', 0x1a, 0x00],
        ))
        .unwrap();
        assert_eq!(ok["metadata"]["name"], "ns");
        // ObjectMeta.managedFields (17) with content: refused, naming the field.
        let raw = [0x0a, 0x06, 0x8a, 0x01, 0x03, 0x0a, 0x01, b'x'];
        let err = decode_body(&envelope("v1", "Namespace", &raw)).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message
                .contains("Namespace.metadata sets protobuf field 17"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_kind_without_a_table_is_refused_with_the_list_of_kinds() {
        let err = decode_body(&envelope("v1", "LimitRange", &[])).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message
                .contains("Namespace (v1), Service (v1), Deployment (apps/v1)"),
            "{}",
            err.message
        );
        assert_eq!(decode_body(b"{}").unwrap_err().code, 400);
        let mut gzipped = envelope("v1", "Namespace", &[]);
        gzipped.extend([0x1a, 0x04, b'g', b'z', b'i', b'p']);
        assert_eq!(decode_body(&gzipped).unwrap_err().code, 415);
    }
}
