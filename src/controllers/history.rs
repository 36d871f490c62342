//! ControllerRevisions of DaemonSets and StatefulSets (kube's `controller/history` and the
//! controllers' `constructHistory`/`truncateHistory`): one revision per pod template the owner
//! has had, named `<owner>-<hash>`, whose `data` is the strategic merge patch that puts that
//! template back (`{"spec": {"template": {..., "$patch": "replace"}}}`, what `kubectl rollout
//! undo` applies). Going back to an earlier template gives its revision the next number; the
//! oldest revisions no pod uses are deleted beyond `revisionHistoryLimit`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use super::Shared;
use super::util;

pub const REVISION_HASH: &str = "controller-revision-hash";

/// The patch that restores `template` (`getPatch`).
pub fn revision_data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), "replace".into());
    }
    serde_json::json!({"spec": {"template": t}})
}

/// The template a revision restores.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// What to do to an owner's history so that `current` is its newest revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryPlan {
    /// Create `current` with this revision number.
    pub create: Option<i64>,
    /// Renumber `current` (an earlier template back in use).
    pub renumber: Option<i64>,
    /// Old revisions to delete, oldest first.
    pub delete: Vec<String>,
}

/// Plan the history of an owner whose revisions are `owned` (name, revision number), whose
/// current revision is named `current`, keeping `limit` old revisions besides those `in_use`
/// by pods. Pure.
pub fn plan(owned: &[(String, i64)], current: &str, limit: i32, in_use: &[String]) -> HistoryPlan {
    let max = owned.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let mut out = HistoryPlan::default();
    match owned.iter().find(|(n, _)| n == current) {
        None => out.create = Some(max + 1),
        Some((_, r)) if *r < max => out.renumber = Some(max + 1),
        Some(_) => {}
    }
    let mut old: Vec<&(String, i64)> = owned
        .iter()
        .filter(|(n, _)| n != current && !in_use.contains(n))
        .collect();
    old.sort_by_key(|(_, r)| *r);
    let extra = old.len().saturating_sub(limit.max(0) as usize);
    out.delete = old
        .into_iter()
        .take(extra)
        .map(|(n, _)| n.clone())
        .collect();
    out
}

/// Bring the history of an owner up to date and return its current revision. `labels` are
/// the revision's labels, `in_use` the revisions live pods were made from.
#[allow(clippy::too_many_arguments)]
pub async fn sync(
    shared: &Shared,
    owner: &OwnerReference,
    namespace: &str,
    name: &str,
    template: &PodTemplateSpec,
    labels: BTreeMap<String, String>,
    limit: i32,
    in_use: &[String],
) -> anyhow::Result<Arc<ControllerRevision>> {
    let owned: Vec<Arc<ControllerRevision>> = shared
        .revisions
        .list_namespace(namespace)
        .into_iter()
        .filter(|r| util::controller_uid(&r.metadata).as_deref() == Some(owner.uid.as_str()))
        .collect();
    let numbers: Vec<(String, i64)> = owned.iter().map(|r| (r.name_any(), r.revision)).collect();
    let p = plan(&numbers, name, limit, in_use);
    let api: Api<ControllerRevision> = Api::namespaced(shared.client.clone(), namespace);
    for old in &p.delete {
        match api.delete(old, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => anyhow::bail!("delete revision {namespace}/{old}: {e}"),
        }
    }
    if let Some(revision) = p.create {
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            data: Some(RawExtension(revision_data(template))),
            revision,
        };
        let created = match api.create(&PostParams::default(), &rev).await {
            Ok(c) => c,
            // Made by an earlier sync the cache has not shown yet.
            Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await?,
            Err(e) => anyhow::bail!("create revision {namespace}/{name}: {e}"),
        };
        shared.revisions.observe(created.clone());
        return Ok(Arc::new(created));
    }
    let Some(current) = owned.into_iter().find(|r| r.name_any() == name) else {
        anyhow::bail!("revision {namespace}/{name} went missing");
    };
    if let Some(revision) = p.renumber {
        let patch = serde_json::json!({ "revision": revision });
        let updated = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        shared.revisions.observe(updated.clone());
        return Ok(Arc::new(updated));
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_plans() {
        let owned = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
            v.iter().map(|(n, r)| (n.to_string(), *r)).collect()
        };
        assert_eq!(
            plan(&[], "a-1", 10, &[]),
            HistoryPlan {
                create: Some(1),
                ..Default::default()
            }
        );
        // Back to the first template: it becomes revision 3.
        assert_eq!(
            plan(&owned(&[("a-1", 1), ("a-2", 2)]), "a-1", 10, &[]),
            HistoryPlan {
                renumber: Some(3),
                ..Default::default()
            }
        );
        // A limit of 1 keeps the newest old revision and those pods use.
        assert_eq!(
            plan(
                &owned(&[("a-1", 1), ("a-2", 2), ("a-3", 3), ("a-4", 4)]),
                "a-5",
                1,
                &["a-1".into()]
            ),
            HistoryPlan {
                create: Some(5),
                renumber: None,
                delete: vec!["a-2".into(), "a-3".into()],
            }
        );
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}))
        .unwrap();
        let data = revision_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let rev = ControllerRevision {
            data: Some(RawExtension(data)),
            ..Default::default()
        };
        assert_eq!(template_of(&rev), Some(t));
    }
}
