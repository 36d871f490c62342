//! The namespace controller (kube's `pkg/controller/namespace`): a namespace being deleted
//! (phase `Terminating`, set by the API server) has every namespaced object of every served
//! resource deleted (found through discovery, so custom resources are included); while some
//! remain its status conditions say which and how many, and it is looked at again shortly; once
//! nothing is left its `kubernetes` finalizer is removed through `namespaces/NAME/finalize` and it
//! is deleted again, which removes it.

pub mod conditions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiResource, Discovery, Scope, verbs};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use conditions::Content;

const COMPONENT: &str = "namespace-controller";
/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content is still going away is looked at again.
const RECHECK: Duration = Duration::from_millis(500);

/// Register the handlers now; the future finalizes namespaces forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let queue = queue.clone();
        shared.namespaces.on_change(move |change| {
            if let Change::Applied { new, .. } = change
                && new.metadata.deletion_timestamp.is_some()
            {
                queue.add(Key::of(*new));
            }
        });
    }
    async move {
        shared.synced().await;
        let shared2 = shared.clone();
        run_worker(COMPONENT, queue, move |key| {
            let s = shared2.clone();
            async move { sync(&s, &key).await }
        })
        .await;
    }
}

/// The namespaced resources that can be listed and deleted, from discovery.
async fn namespaced_resources(client: &kube::Client) -> anyhow::Result<Vec<ApiResource>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope == Scope::Namespaced
                && caps.supports_operation(verbs::LIST)
                && caps.supports_operation(verbs::DELETE)
                && ar.plural != "events"
            {
                out.push(ar);
            }
        }
    }
    // Events go last: the deletions above record some.
    if let Some(ev) = discovery.resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Event")) {
        out.push(ev.0);
    }
    Ok(out)
}

async fn sync(shared: &Shared, key: &Key) -> anyhow::Result<Option<Duration>> {
    let Some(ns) = shared.namespaces.get(key) else {
        return Ok(None);
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(None);
    }
    let name = key.name.clone();
    let api: Api<Namespace> = Api::all(shared.client.clone());
    let finalizers: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        // Finalized: deleting it again removes it (once no other finalizer holds it).
        return delete_namespace(&api, &name).await;
    }

    let mut content = Content::default();
    match namespaced_resources(&shared.client).await {
        Err(e) => content.discovery_error = Some(e.to_string()),
        Ok(resources) => {
            for ar in resources {
                let dynamic: Api<DynamicObject> =
                    Api::namespaced_with(shared.client.clone(), &name, &ar);
                if let Err(e) = delete_all(&dynamic).await {
                    content
                        .delete_errors
                        .push(format!("{}.{}: {e}", ar.plural, ar.group));
                }
                match dynamic.list(&ListParams::default()).await {
                    Ok(list) if !list.items.is_empty() => {
                        let gr = format!("{}.{}", ar.plural, ar.group);
                        content.remaining.insert(gr, list.items.len());
                        for item in &list.items {
                            for f in item.metadata.finalizers.iter().flatten() {
                                *content.finalizers.entry(f.clone()).or_default() += 1;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => content
                        .delete_errors
                        .push(format!("{}.{}: {e}", ar.plural, ar.group)),
                }
            }
        }
    }

    let now = jiff::Timestamp::now();
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(new) = conditions::update(&old, &content, now) {
        let patch = serde_json::json!({"status": {"conditions": new}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => shared.namespaces.observe(updated),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => anyhow::bail!("update status of namespace {name}: {e}"),
        }
    }
    if !content.is_empty() {
        return Ok(Some(RECHECK));
    }

    // Empty: give up the finalizer, then delete the namespace for good.
    let mut finalized = (*ns).clone();
    finalized
        .spec
        .get_or_insert_with(Default::default)
        .finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    match api
        .replace_subresource::<Namespace>("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(updated) => shared.namespaces.observe(updated),
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Some(RECHECK)),
        Err(e) => anyhow::bail!("finalize namespace {name}: {e}"),
    }
    tracing::info!(namespace = %name, "content deleted, namespace finalized");
    delete_namespace(&api, &name).await
}

async fn delete_namespace(api: &Api<Namespace>, name: &str) -> anyhow::Result<Option<Duration>> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => anyhow::bail!("delete namespace {name}: {e}"),
    }
}

/// Delete every object of one resource in the namespace: one `deletecollection` when the
/// resource serves it, else one DELETE per object.
async fn delete_all(api: &Api<DynamicObject>) -> anyhow::Result<()> {
    let params = DeleteParams::background();
    match api.delete_collection(&params, &ListParams::default()).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 405 || s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let list = api.list(&ListParams::default()).await?;
    let mut pending: BTreeMap<String, ()> = BTreeMap::new();
    for item in list.items {
        if item.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = item.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                pending.insert(format!("{name}: {e}"), ());
            }
        }
    }
    if let Some((first, _)) = pending.into_iter().next() {
        anyhow::bail!("{first}");
    }
    Ok(())
}
