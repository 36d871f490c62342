//! The Endpoints and EndpointSlice controllers (one controller writing both): for every Service
//! with a selector, the Endpoints object of the same name and the EndpointSlices labelled
//! `kubernetes.io/service-name` hold the addresses of the pods it selects ([`compute`]).
//!
//! Resynced when the Service changes, when a pod it selects (before or after the change) changes
//! (readiness, IP, labels, deletion), and when someone else changes its Endpoints or slices.
//! Services without a selector (such as `default/kubernetes`, which the API server owns) are left
//! alone. A deleted Service's Endpoints and slices are deleted (the slices also carry an owner
//! reference to the Service for the garbage collector).
//!
//! Not done: topology hints and zones, dual-stack (slices are `IPv4`), the
//! `last-change-trigger-time` annotation, mirroring of selector-less Endpoints into slices.

pub mod compute;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::util::Selector;

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

/// Register the handlers now; the future keeps endpoints forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let q = queue.clone();
        shared.services.on_change(move |change| match change {
            Change::Applied { new, .. } => q.add(Key::of(*new)),
            Change::Deleted(old) => q.add(Key::of(*old)),
        });
    }
    {
        let q = queue.clone();
        let services = shared.services.clone();
        shared.pods.on_change(move |change| {
            let (old, new) = match change {
                Change::Applied { old, new } => (*old, *new),
                Change::Deleted(p) => (None, *p),
            };
            let ns = new.namespace().unwrap_or_default();
            for svc in services.list_namespace(&ns) {
                if !has_selector(&svc) {
                    continue;
                }
                let sel = Selector::from_map(svc.spec.as_ref().and_then(|s| s.selector.as_ref()));
                let selected = |p: &Pod| sel.matches(p.metadata.labels.as_ref());
                if selected(new) || old.is_some_and(selected) {
                    q.add(Key::of(svc.as_ref()));
                }
            }
        });
    }
    {
        let q = queue.clone();
        shared.endpoints.on_change(move |change| {
            let e = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(e) => *e,
            };
            q.add(Key::of(e));
        });
    }
    {
        let q = queue.clone();
        shared.slices.on_change(move |change| {
            let s = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(s) => *s,
            };
            let labels = s.metadata.labels.as_ref();
            if labels
                .and_then(|l| l.get(compute::MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(compute::MANAGED_BY)
                && let Some(svc) = labels.and_then(|l| l.get(compute::SERVICE_NAME_LABEL))
            {
                q.add(Key::new(s.namespace().unwrap_or_default(), svc.clone()));
            }
        });
    }
    async move {
        shared.synced().await;
        let c = Arc::new(Controller { shared });
        run_worker("endpoint-controller", queue, move |key| {
            let c = c.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

struct Controller {
    shared: Arc<Shared>,
}

impl Controller {
    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let svc = self.shared.services.get(key);
        let managed_slices: Vec<Arc<EndpointSlice>> = self
            .shared
            .slices
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|s| {
                let l = s.metadata.labels.as_ref();
                l.and_then(|l| l.get(compute::SERVICE_NAME_LABEL)) == Some(&key.name)
                    && l.and_then(|l| l.get(compute::MANAGED_BY_LABEL))
                        .map(String::as_str)
                        == Some(compute::MANAGED_BY)
            })
            .collect();
        let Some(svc) = svc.filter(|s| has_selector(s)) else {
            // No Service (or no selector any more): its endpoints go, if we made them.
            if self.shared.services.get(key).is_none() && self.shared.endpoints.get(key).is_some() {
                let api: Api<Endpoints> =
                    Api::namespaced(self.shared.client.clone(), &key.namespace);
                ignore_missing(
                    api.delete(&key.name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )?;
            }
            for s in managed_slices {
                self.delete_slice(&s).await?;
            }
            return Ok(None);
        };
        let pods = self.shared.pods.list_namespace(&key.namespace);
        let pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        self.sync_endpoints(&svc, &pods).await?;
        self.sync_slices(&svc, &pods, managed_slices).await?;
        Ok(None)
    }

    async fn sync_endpoints(&self, svc: &Service, pods: &[&Pod]) -> anyhow::Result<()> {
        let key = Key::of(svc);
        let eps = compute::pod_endpoints(svc, pods, false);
        let subsets = compute::subsets(svc, &eps);
        let subsets = (!subsets.is_empty()).then_some(subsets);
        let labels = compute::endpoints_labels(svc);
        let api: Api<Endpoints> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        let current = self.shared.endpoints.get(&key);
        if let Some(cur) = &current
            && cur.subsets == subsets
            && cur.metadata.labels.clone().unwrap_or_default() == labels
        {
            return Ok(());
        }
        let mut wanted = Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                labels: (!labels.is_empty()).then_some(labels),
                ..Default::default()
            },
            subsets,
        };
        let result = match &current {
            Some(cur) => {
                wanted.metadata.resource_version = cur.metadata.resource_version.clone();
                wanted.metadata.annotations = cur.metadata.annotations.clone();
                api.replace(&key.name, &PostParams::default(), &wanted)
                    .await
            }
            None => api.create(&PostParams::default(), &wanted).await,
        };
        match result {
            Ok(written) => {
                self.shared.endpoints.observe(written);
                Ok(())
            }
            Err(e) => anyhow::bail!("write endpoints {key}: {e}"),
        }
    }

    async fn sync_slices(
        &self,
        svc: &Service,
        pods: &[&Pod],
        existing: Vec<Arc<EndpointSlice>>,
    ) -> anyhow::Result<()> {
        let key = Key::of(svc);
        let eps = compute::pod_endpoints(svc, pods, true);
        let wanted = compute::slices(&eps);
        let labels = compute::slice_labels(svc);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: key.name.clone(),
            uid: svc.meta().uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let existing_ports: Vec<_> = existing
            .iter()
            .map(|s| compute::existing_ports(s))
            .collect();
        let (pairs, leftover) = compute::match_slices(&wanted, &existing_ports);
        let api: Api<EndpointSlice> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        for (content, pair) in wanted.iter().zip(pairs) {
            let ports = content.ports_field();
            let ports = (!ports.is_empty()).then_some(ports);
            match pair.map(|i| &existing[i]) {
                Some(cur)
                    if cur.endpoints == content.endpoints
                        && cur.ports == ports
                        && cur.metadata.labels.as_ref() == Some(&labels)
                        && cur.address_type == "IPv4" => {}
                Some(cur) => {
                    let mut slice = cur.as_ref().clone();
                    slice.endpoints = content.endpoints.clone();
                    slice.ports = ports;
                    slice.metadata.labels = Some(labels.clone());
                    slice.metadata.owner_references = Some(vec![owner.clone()]);
                    match api
                        .replace(&slice.name_any(), &PostParams::default(), &slice)
                        .await
                    {
                        Ok(written) => self.shared.slices.observe(written),
                        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                            anyhow::bail!("update endpoint slice of {key}: {}", s.message)
                        }
                        Err(e) => anyhow::bail!("update endpoint slice of {key}: {e}"),
                    }
                }
                None => {
                    let prefix = format!("{}-", key.name);
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            name: Some(self.shared.generate_name(&prefix)),
                            generate_name: Some(prefix),
                            namespace: Some(key.namespace.clone()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        address_type: "IPv4".into(),
                        endpoints: content.endpoints.clone(),
                        ports,
                    };
                    match api.create(&PostParams::default(), &slice).await {
                        Ok(written) => self.shared.slices.observe(written),
                        Err(e) => anyhow::bail!("create endpoint slice of {key}: {e}"),
                    }
                }
            }
        }
        for i in leftover {
            self.delete_slice(&existing[i]).await?;
        }
        Ok(())
    }

    async fn delete_slice(&self, slice: &EndpointSlice) -> anyhow::Result<()> {
        let api: Api<EndpointSlice> = Api::namespaced(
            self.shared.client.clone(),
            &slice.namespace().unwrap_or_default(),
        );
        match api
            .delete(&slice.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                self.shared.slices.observe_deleted(slice);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.shared.slices.observe_deleted(slice);
                Ok(())
            }
            Err(e) => anyhow::bail!("delete endpoint slice {}: {e}", Key::of(slice)),
        }
    }
}

fn ignore_missing(r: Result<(), kube::Error>) -> anyhow::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
