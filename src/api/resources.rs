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
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Binding => "binding",
        }
    }
    /// (group, version, kind) answered by the subresource; `None` means the parent's kind.
    pub fn response_kind(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Subresource::Scale => Some(("autoscaling", "v1", "Scale")),
            Subresource::Exec => Some(("", "v1", "PodExecOptions")),
            Subresource::Binding => Some(("", "v1", "Binding")),
            _ => None,
        }
    }
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Log => &["get"],
            Subresource::Exec => &["create", "get"],
            Subresource::Binding => &["create"],
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
        subresources: &[Status],
        fields: &["status.phase"],
        generation: false,
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
        subresources: &[Binding, Exec, Log, Status],
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
        if self.plural == "namespaces" {
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
                ("coordination.k8s.io", "v1")
            ]
        );
    }
}
