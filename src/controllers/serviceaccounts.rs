//! Two small per-namespace controllers of kube-controller-manager: `serviceaccount-controller`
//! (every active namespace has a `default` ServiceAccount, made again when deleted) and
//! `root-ca-cert-publisher` (every namespace has the ConfigMap `kube-root-ca.crt` with the
//! cluster CA, which pods' token volumes carry as `ca.crt`).
//!
//! Both are keyed by namespace and read the API directly: namespaces are few and change
//! rarely, and the objects are looked up by name.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::api::admission::ROOT_CA_CONFIG_MAP;

/// The description kube's publisher puts on the ConfigMap.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Namespaces waiting for a sync.
#[derive(Default)]
struct Pending {
    keys: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Pending {
    fn add(&self, ns: String) {
        self.keys.lock().expect("pending").insert(ns);
        self.wake.notify_one();
    }
    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.keys.lock().expect("pending"))
    }
}

/// Run both controllers until the process ends. `root_ca` is the cluster CA in PEM (`None`:
/// no ConfigMap is published).
pub async fn run(client: kube::Client, root_ca: Option<String>) {
    let pending = Arc::new(Pending::default());
    // Namespaces, and deletions or edits of the objects these controllers keep.
    let watch_names =
        |what: &'static str| watcher::Config::default().fields(&format!("metadata.name={what}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let p = pending.clone();
    tokio::spawn(async move {
        let mut events = watcher(namespaces, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) = event
                && let Some(name) = ns.metadata.name
            {
                p.add(name);
            }
        }
    });
    let p = pending.clone();
    tokio::spawn(async move {
        let mut events = watcher(accounts, watch_names("default")).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Delete(sa)) = event
                && let Some(ns) = sa.metadata.namespace
            {
                p.add(ns);
            }
        }
    });
    if root_ca.is_some() {
        let p = pending.clone();
        tokio::spawn(async move {
            let mut events = watcher(maps, watch_names(ROOT_CA_CONFIG_MAP)).boxed();
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Delete(cm) | watcher::Event::Apply(cm)) = event
                    && let Some(ns) = cm.metadata.namespace
                {
                    p.add(ns);
                }
            }
        });
    }
    loop {
        pending.wake.notified().await;
        for ns in pending.take() {
            if let Err(e) = sync(&client, &ns, root_ca.as_deref()).await {
                tracing::warn!("namespace {ns}: {e:#}");
                // Try again shortly (the API server may be restarting).
                let p = pending.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    p.add(ns);
                });
            }
        }
    }
}

/// Bring one namespace's `default` account and CA ConfigMap into being.
async fn sync(client: &kube::Client, ns: &str, root_ca: Option<&str>) -> anyhow::Result<()> {
    let namespace = match Api::<Namespace>::all(client.clone()).get_opt(ns).await? {
        Some(n) => n,
        None => return Ok(()),
    };
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.and_then(|s| s.phase).as_deref() == Some("Terminating");
    if terminating {
        return Ok(());
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    if accounts.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        ignore_exists(accounts.create(&PostParams::default(), &sa).await)?;
    }
    let Some(ca) = root_ca else {
        return Ok(());
    };
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data = BTreeMap::from([("ca.crt".to_string(), ca.to_string())]);
    match maps.get_opt(ROOT_CA_CONFIG_MAP).await? {
        Some(cm) if cm.data.as_ref() == Some(&data) => {}
        Some(mut cm) => {
            cm.data = Some(data);
            maps.replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &cm)
                .await?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIG_MAP.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            ignore_exists(maps.create(&PostParams::default(), &cm).await)?;
        }
    }
    Ok(())
}

/// Another writer made it first: as good as ours.
fn ignore_exists<T>(result: Result<T, kube::Error>) -> anyhow::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
