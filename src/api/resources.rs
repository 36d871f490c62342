//! The kind table: every resource the server serves, with what discovery, OpenAPI, routing,
//! selectors and tables need to know about it. One generic handler works from this table, so
//! adding a kind is one entry here (plus, optionally, defaults, validation and a table printer).

/// A subresource reachable as `<resource>/<name>/<subresource>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `status`: writes change only `.status` (and metadata); the main resource ignores `.status`.
    Status,
    /// `scale`: an `autoscaling/v1 Scale` view of `spec.replicas`.
    Scale,
    /// `pods/log`: streamed from the kubelet.
    Log,
    /// `pods/exec`: WebSocket relayed to the kubelet.
    Exec,
    /// `pods/binding`: the scheduler's `Binding` sets `spec.nodeName`.
    Binding,
    /// `pods/eviction`: a `policy/v1 Eviction` deletes the pod if its disruption budget allows.
    Eviction,
    /// `namespaces/finalize`: writes `spec.finalizers` of a namespace (the namespace controller
    /// empties it once the namespace's content is gone).
    Finalize,
    /// `serviceaccounts/token`: a `TokenRequest` answered with a signed token.
    Token,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Token => "token",
        }
    }
    /// (group, version, kind) answered by the subresource; `None` means the parent's kind.
    pub fn response_kind(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Subresource::Scale => Some(("autoscaling", "v1", "Scale")),
            Subresource::Exec => Some(("", "v1", "PodExecOptions")),
            Subresource::Binding => Some(("", "v1", "Binding")),
            Subresource::Eviction => Some(("policy", "v1", "Eviction")),
            Subresource::Token => Some(("authentication.k8s.io", "v1", "TokenRequest")),
            _ => None,
        }
    }
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Log => &["get"],
            Subresource::Exec => &["create", "get"],
            Subresource::Binding | Subresource::Eviction | Subresource::Token => &["create"],
            Subresource::Finalize => &["update"],
        }
    }
}

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    /// Plural resource name used in URLs (`pods`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Field-selector keys besides `metadata.name` / `metadata.namespace`.
    pub fields: &'static [&'static str],
    /// Whether `metadata.generation` tracks spec changes.
    pub generation: bool,
    /// The round trip through the kind's k8s-openapi type: strict decoding finds unknown fields
    /// by what does not survive it.
    pub typed: fn(&Value) -> Result<Value, String>,
    /// Defaults, validation and table of the kinds declared in [`super::kinds`]; the original
    /// kinds have theirs in `defaults`, `validation` and `table`.
    pub hooks: Option<&'static Hooks>,
    /// False for the reviews, which are answered (POST only) and never stored.
    pub stored: bool,
}

/// The standard verbs of a collection resource.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces have no `deletecollection` in the real server.
pub const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

use Subresource::*;

use k8s_openapi::api::{
    apps, authentication, authorization, batch, coordination, core, discovery, networking, policy,
    rbac, storage,
};
use serde_json::Value;

use super::kinds::{self, Hooks};
use super::strict::round_trip;

const WORKLOAD_SUBS: &[Subresource] = &[Scale, Status];

/// Every served resource. The index of an entry is its stable id inside the server.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
        subresources: &[Finalize, Status],
        fields: &["status.phase"],
        generation: false,
        typed: round_trip::<core::v1::Namespace>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
        categories: &[],
        subresources: &[Status],
        fields: &["spec.unschedulable"],
        generation: false,
        typed: round_trip::<core::v1::Node>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[Binding, Eviction, Exec, Log, Status],
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        generation: false,
        typed: round_trip::<core::v1::Pod>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[Status],
        fields: &["spec.clusterIP", "spec.type"],
        generation: false,
        typed: round_trip::<core::v1::Service>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<core::v1::Endpoints>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        kind: "ReplicationController",
        namespaced: true,
        short_names: &["rc"],
        categories: &["all"],
        subresources: WORKLOAD_SUBS,
        fields: &["status.replicas"],
        generation: true,
        typed: round_trip::<core::v1::ReplicationController>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
        fields: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        generation: false,
        typed: round_trip::<core::v1::Event>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: WORKLOAD_SUBS,
        fields: &[],
        generation: true,
        typed: round_trip::<apps::v1::Deployment>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: WORKLOAD_SUBS,
        fields: &["status.replicas"],
        generation: true,
        typed: round_trip::<apps::v1::ReplicaSet>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &["addressType"],
        generation: true,
        typed: round_trip::<discovery::v1::EndpointSlice>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<coordination::v1::Lease>,
        hooks: None,
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<core::v1::ConfigMap>,
        hooks: Some(&kinds::config::CONFIG_MAP),
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &["type"],
        generation: false,
        typed: round_trip::<core::v1::Secret>,
        hooks: Some(&kinds::config::SECRET),
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[Token],
        fields: &[],
        generation: false,
        typed: round_trip::<core::v1::ServiceAccount>,
        hooks: Some(&kinds::config::SERVICE_ACCOUNT),
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        kind: "PersistentVolume",
        namespaced: false,
        short_names: &["pv"],
        categories: &[],
        subresources: &[Status],
        fields: &["spec.storageClassName", "status.phase"],
        generation: false,
        typed: round_trip::<core::v1::PersistentVolume>,
        hooks: Some(&kinds::storage::PERSISTENT_VOLUME),
        stored: true,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        kind: "PersistentVolumeClaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: &[],
        subresources: &[Status],
        fields: &["spec.storageClassName", "spec.volumeName", "status.phase"],
        generation: false,
        typed: round_trip::<core::v1::PersistentVolumeClaim>,
        hooks: Some(&kinds::storage::PERSISTENT_VOLUME_CLAIM),
        stored: true,
    },
    ResourceType {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        namespaced: true,
        short_names: &[],
        categories: &["all"],
        subresources: &[Status],
        fields: &["status.successful"],
        generation: true,
        typed: round_trip::<batch::v1::Job>,
        hooks: Some(&kinds::batch::JOB),
        stored: true,
    },
    ResourceType {
        group: "batch",
        version: "v1",
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        namespaced: true,
        short_names: &["cj"],
        categories: &["all"],
        subresources: &[Status],
        fields: &[],
        generation: true,
        typed: round_trip::<batch::v1::CronJob>,
        hooks: Some(&kinds::batch::CRON_JOB),
        stored: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[Status],
        fields: &[],
        generation: true,
        typed: round_trip::<apps::v1::DaemonSet>,
        hooks: Some(&kinds::apps::DAEMON_SET),
        stored: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        short_names: &["sts"],
        categories: &["all"],
        subresources: &[Scale, Status],
        fields: &[],
        generation: true,
        typed: round_trip::<apps::v1::StatefulSet>,
        hooks: Some(&kinds::apps::STATEFUL_SET),
        stored: true,
    },
    ResourceType {
        group: "storage.k8s.io",
        version: "v1",
        plural: "storageclasses",
        singular: "storageclass",
        kind: "StorageClass",
        namespaced: false,
        short_names: &["sc"],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<storage::v1::StorageClass>,
        hooks: Some(&kinds::storage::STORAGE_CLASS),
        stored: true,
    },
    ResourceType {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
        categories: &[],
        subresources: &[Status],
        fields: &[],
        generation: true,
        typed: round_trip::<policy::v1::PodDisruptionBudget>,
        hooks: Some(&kinds::policy::POD_DISRUPTION_BUDGET),
        stored: true,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        kind: "NetworkPolicy",
        namespaced: true,
        short_names: &["netpol"],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: true,
        typed: round_trip::<networking::v1::NetworkPolicy>,
        hooks: Some(&kinds::networking::NETWORK_POLICY),
        stored: true,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingresses",
        singular: "ingress",
        kind: "Ingress",
        namespaced: true,
        short_names: &["ing"],
        categories: &[],
        subresources: &[Status],
        fields: &[],
        generation: true,
        typed: round_trip::<networking::v1::Ingress>,
        hooks: Some(&kinds::networking::INGRESS),
        stored: true,
    },
    ResourceType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "ingressclasses",
        singular: "ingressclass",
        kind: "IngressClass",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<networking::v1::IngressClass>,
        hooks: Some(&kinds::networking::INGRESS_CLASS),
        stored: true,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<rbac::v1::Role>,
        hooks: Some(&kinds::rbac::ROLE),
        stored: true,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<rbac::v1::RoleBinding>,
        hooks: Some(&kinds::rbac::ROLE_BINDING),
        stored: true,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<rbac::v1::ClusterRole>,
        hooks: Some(&kinds::rbac::CLUSTER_ROLE),
        stored: true,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<rbac::v1::ClusterRoleBinding>,
        hooks: Some(&kinds::rbac::CLUSTER_ROLE_BINDING),
        stored: true,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        kind: "ControllerRevision",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<apps::v1::ControllerRevision>,
        hooks: Some(&kinds::apps::CONTROLLER_REVISION),
        stored: true,
    },
    ResourceType {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        singular: "tokenreview",
        kind: "TokenReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authentication::v1::TokenReview>,
        hooks: None,
        stored: false,
    },
    ResourceType {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authentication::v1::SelfSubjectReview>,
        hooks: None,
        stored: false,
    },
    ResourceType {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authorization::v1::SelfSubjectAccessReview>,
        hooks: None,
        stored: false,
    },
    ResourceType {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authorization::v1::SelfSubjectRulesReview>,
        hooks: None,
        stored: false,
    },
    ResourceType {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authorization::v1::SubjectAccessReview>,
        hooks: None,
        stored: false,
    },
    ResourceType {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        kind: "LocalSubjectAccessReview",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
        fields: &[],
        generation: false,
        typed: round_trip::<authorization::v1::LocalSubjectAccessReview>,
        hooks: None,
        stored: false,
    },
];

/// Stable ids of the resources the server code refers to by name.
pub mod id {
    pub const NAMESPACES: usize = 0;
    pub const NODES: usize = 1;
    pub const PODS: usize = 2;
    pub const SERVICES: usize = 3;
    pub const ENDPOINTS: usize = 4;
    pub const REPLICATION_CONTROLLERS: usize = 5;
    pub const EVENTS: usize = 6;
    pub const DEPLOYMENTS: usize = 7;
    pub const REPLICA_SETS: usize = 8;
    pub const ENDPOINT_SLICES: usize = 9;
    pub const LEASES: usize = 10;
    pub const CONFIG_MAPS: usize = 11;
    pub const SECRETS: usize = 12;
    pub const SERVICE_ACCOUNTS: usize = 13;
    pub const PERSISTENT_VOLUMES: usize = 14;
    pub const PERSISTENT_VOLUME_CLAIMS: usize = 15;
    pub const JOBS: usize = 16;
    pub const CRON_JOBS: usize = 17;
    pub const DAEMON_SETS: usize = 18;
    pub const STATEFUL_SETS: usize = 19;
    pub const STORAGE_CLASSES: usize = 20;
    pub const POD_DISRUPTION_BUDGETS: usize = 21;
    pub const NETWORK_POLICIES: usize = 22;
    pub const INGRESSES: usize = 23;
    pub const INGRESS_CLASSES: usize = 24;
    pub const ROLES: usize = 25;
    pub const ROLE_BINDINGS: usize = 26;
    pub const CLUSTER_ROLES: usize = 27;
    pub const CLUSTER_ROLE_BINDINGS: usize = 28;
    pub const CONTROLLER_REVISIONS: usize = 29;
    pub const TOKEN_REVIEWS: usize = 30;
    pub const SELF_SUBJECT_REVIEWS: usize = 31;
    pub const SELF_SUBJECT_ACCESS_REVIEWS: usize = 32;
    pub const SELF_SUBJECT_RULES_REVIEWS: usize = 33;
    pub const SUBJECT_ACCESS_REVIEWS: usize = 34;
    pub const LOCAL_SUBJECT_ACCESS_REVIEWS: usize = 35;
}

impl ResourceType {
    /// Stable id (index in [`RESOURCES`]).
    pub fn id(&'static self) -> usize {
        RESOURCES
            .iter()
            .position(|r| std::ptr::eq(r, self))
            .expect("resource from the table")
    }
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `pods` or `deployments.apps`: how error messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
    pub fn verbs(&self) -> &'static [&'static str] {
        if !self.stored {
            &["create"]
        } else if self.plural == "namespaces" {
            NAMESPACE_VERBS
        } else {
            VERBS
        }
    }
    /// URL prefix of the group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// Find a resource by group, version and plural name.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a resource by its kind and apiVersion (`v1`, `apps/v1`).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The served API groups (besides the core group), in discovery order, with their version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The resources of one group-version.
pub fn in_group(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceType> {
    let (group, version) = (group.to_string(), version.to_string());
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_table() {
        assert_eq!(RESOURCES[id::PODS].plural, "pods");
        assert_eq!(RESOURCES[id::LEASES].plural, "leases");
        assert_eq!(RESOURCES[id::ENDPOINT_SLICES].plural, "endpointslices");
        assert_eq!(RESOURCES[id::DEPLOYMENTS].id(), id::DEPLOYMENTS);
        assert_eq!(
            RESOURCES[id::CLUSTER_ROLE_BINDINGS].plural,
            "clusterrolebindings"
        );
        assert_eq!(RESOURCES.len(), id::LOCAL_SUBJECT_ACCESS_REVIEWS + 1);
        assert_eq!(
            RESOURCES[id::SELF_SUBJECT_ACCESS_REVIEWS].kind,
            "SelfSubjectAccessReview"
        );
        // Every kind declared in `kinds` has its hooks, and only those.
        for r in RESOURCES {
            let declared = r.id() > id::LEASES && r.id() <= id::CONTROLLER_REVISIONS;
            assert_eq!(r.hooks.is_some(), declared, "{}", r.plural);
            assert_eq!(r.stored, r.id() <= id::CONTROLLER_REVISIONS, "{}", r.plural);
        }
        assert_eq!(
            find("apps", "v1", "replicasets").unwrap().kind,
            "ReplicaSet"
        );
        assert_eq!(
            by_kind("v1", "ReplicationController").unwrap().plural,
            "replicationcontrollers"
        );
        assert_eq!(
            groups(),
            vec![
                ("apps", "v1"),
                ("discovery.k8s.io", "v1"),
                ("coordination.k8s.io", "v1"),
                ("batch", "v1"),
                ("storage.k8s.io", "v1"),
                ("policy", "v1"),
                ("networking.k8s.io", "v1"),
                ("rbac.authorization.k8s.io", "v1"),
                ("authentication.k8s.io", "v1"),
                ("authorization.k8s.io", "v1"),
            ]
        );
    }
}
