//! `kemu scheduler`: binds pending pods to nodes, like kube-scheduler. It watches pods and
//! nodes, and for every pod without a node (and `schedulerName: default-scheduler`) picks a
//! fitting node with `algorithm`, binds it (`POST pods/NAME/binding`) and records `Scheduled`;
//! when nothing fits it sets `PodScheduled=False` (reason Unschedulable) and records
//! `FailedScheduling`, then tries again when the nodes change. A pod whose claims are bound to
//! volumes with node affinity (local volumes) only goes where those volumes are.

pub mod algorithm;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Node, NodeSelector, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use rand::{Rng, SeedableRng};

use crate::events::{Recorder, reference};

/// How long an unschedulable pod waits before it is tried again without a node change.
const RETRY: Duration = Duration::from_secs(2);

fn active(p: &Pod) -> bool {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    phase != "Succeeded" && phase != "Failed"
}

fn owner(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Run until SIGTERM.
pub async fn run(master: &str, seed: Option<u64>) -> anyhow::Result<()> {
    let client = crate::client::connect(master)?;
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let (pod_store, pod_writer) = reflector::store();
    let (node_store, node_writer) = reflector::store();
    let mut pod_events = reflector(pod_writer, watcher(pods, watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut node_events = reflector(node_writer, watcher(nodes, watcher::Config::default()))
        .default_backoff()
        .boxed();
    // Claims and volumes, for the node affinity of the volumes a pod's claims are bound to.
    let (claim_store, claim_writer) = reflector::store();
    let (volume_store, volume_writer) = reflector::store();
    let mut claim_events = reflector(
        claim_writer,
        watcher(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    let mut volume_events = reflector(
        volume_writer,
        watcher(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    // The caches are usable once both watches have listed everything (awaiting the stores
    // here instead would stop the very streams that fill them).
    let (mut pods_listed, mut nodes_listed) = (false, false);
    let recorder = Recorder::new(client.clone(), "default-scheduler", None);
    let mut rng = match seed {
        Some(s) => rand_chacha::ChaCha8Rng::seed_from_u64(s),
        None => rand_chacha::ChaCha8Rng::from_os_rng(),
    };
    // Pods bound but not yet seen bound in the cache (uid -> node): they count on their node
    // as kube-scheduler's "assumed" pods do, or the next pod would not see them. Pods that
    // did not fit and when.
    let mut bound: HashMap<String, String> = HashMap::new();
    let mut unschedulable: HashMap<String, (Instant, String)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let mut nodes_changed = false;
        tokio::select! {
            _ = term.recv() => return Ok(()),
            e = pod_events.next() => match e {
                Some(Ok(watcher::Event::InitDone)) => pods_listed = true,
                Some(Err(e)) => tracing::warn!("pod watch: {e}"),
                _ => {}
            },
            e = node_events.next() => {
                nodes_changed = true;
                match e {
                    Some(Ok(watcher::Event::InitDone)) => nodes_listed = true,
                    Some(Err(e)) => tracing::warn!("node watch: {e}"),
                    _ => {}
                }
            }
            e = claim_events.next() => if let Some(Err(e)) = e {
                tracing::warn!("claim watch: {e}");
            },
            e = volume_events.next() => if let Some(Err(e)) = e {
                tracing::warn!("volume watch: {e}");
            },
            _ = tick.tick() => {}
        }
        if nodes_changed {
            // A node changed: every unschedulable pod deserves another look.
            unschedulable.retain(|_, (at, _)| at.elapsed() < Duration::ZERO);
        }
        if !(pods_listed && nodes_listed) {
            continue;
        }
        let all_pods = pod_store.state();
        let all_nodes = node_store.state();
        bound.retain(|uid, _| {
            all_pods.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid)
                    && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
            })
        });
        let mut on_node: HashMap<String, usize> = HashMap::new();
        let mut owned: HashMap<(String, String), usize> = HashMap::new();
        for p in all_pods.iter().filter(|p| active(p)) {
            let assumed = p.metadata.uid.as_ref().and_then(|u| bound.get(u)).cloned();
            if let Some(n) = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .or(assumed)
            {
                *on_node.entry(n.clone()).or_default() += 1;
                if let Some(o) = owner(p) {
                    *owned.entry((n, o)).or_default() += 1;
                }
            }
        }
        let mut pending: Vec<&std::sync::Arc<Pod>> = all_pods
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or("default-scheduler")
                    == "default-scheduler"
            })
            .filter(|p| p.metadata.deletion_timestamp.is_none() && active(p))
            .filter(|p| {
                !p.metadata
                    .uid
                    .as_ref()
                    .is_some_and(|u| bound.contains_key(u))
            })
            .collect();
        pending.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    &b.metadata.name,
                ))
        });
        let mut node_list: Vec<&std::sync::Arc<Node>> = all_nodes.iter().collect();
        node_list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for pod in pending {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if unschedulable
                .get(&uid)
                .is_some_and(|(at, _)| at.elapsed() < RETRY)
            {
                continue;
            }
            let pod_owner = owner(pod);
            let volumes = volume_affinities(pod, &claim_store, &volume_store);
            let volume_refs: Vec<&NodeSelector> = volumes.iter().collect();
            let mut candidates = Vec::new();
            let mut unfit = Vec::new();
            for node in &node_list {
                let name = node.metadata.name.clone().unwrap_or_default();
                let count = on_node.get(&name).copied().unwrap_or(0);
                let fit = algorithm::fits(pod, node, count)
                    .and_then(|()| algorithm::fits_volumes(&volume_refs, node));
                match fit {
                    Ok(()) => {
                        let own = pod_owner.as_ref().map_or(0, |o| {
                            owned.get(&(name.clone(), o.clone())).copied().unwrap_or(0)
                        });
                        candidates.push((name, own, count));
                    }
                    Err(u) => unfit.push(u),
                }
            }
            let refs: Vec<(&str, usize, usize)> = candidates
                .iter()
                .map(|(n, o, a)| (n.as_str(), *o, *a))
                .collect();
            let Some(chosen) = algorithm::pick(&refs, |n| rng.random_range(0..n)).map(String::from)
            else {
                let message = algorithm::failed_message(node_list.len(), &unfit);
                let changed = unschedulable.get(&uid).is_none_or(|(_, m)| *m != message);
                unschedulable.insert(uid, (Instant::now(), message.clone()));
                if changed {
                    mark_unschedulable(&client, pod, &message).await;
                    recorder
                        .record(
                            reference(pod.as_ref()),
                            "Warning",
                            "FailedScheduling",
                            message,
                        )
                        .await;
                }
                continue;
            };
            match bind(&client, pod, &chosen).await {
                Ok(()) => {
                    unschedulable.remove(&uid);
                    bound.insert(uid, chosen.clone());
                    *on_node.entry(chosen.clone()).or_default() += 1;
                    if let Some(o) = &pod_owner {
                        *owned.entry((chosen.clone(), o.clone())).or_default() += 1;
                    }
                    let message = format!(
                        "Successfully assigned {}/{} to {chosen}",
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                        pod.metadata.name.as_deref().unwrap_or("")
                    );
                    recorder
                        .record(reference(pod.as_ref()), "Normal", "Scheduled", message)
                        .await;
                }
                Err(e) => tracing::warn!(pod = ?pod.metadata.name, "bind to {chosen}: {e}"),
            }
        }
    }
}

/// The required node affinity of every volume the pod's claims are bound to.
fn volume_affinities(
    pod: &Pod,
    claims: &Store<PersistentVolumeClaim>,
    volumes: &Store<PersistentVolume>,
) -> Vec<NodeSelector> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .filter_map(|c| claims.get(&ObjectRef::new(&c.claim_name).within(&ns)))
        .filter_map(|c| c.spec.as_ref()?.volume_name.clone())
        .filter_map(|v| volumes.get(&ObjectRef::new(&v)))
        .filter_map(|v| v.spec.as_ref()?.node_affinity.as_ref()?.required.clone())
        .collect()
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> anyhow::Result<()> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let _: serde_json::Value = pods
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await?;
    Ok(())
}

async fn mark_unschedulable(client: &kube::Client, pod: &Pod, message: &str) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastTransitionTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    }]}});
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Err(e) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(pod = %name, "mark unschedulable: {e}");
    }
}
