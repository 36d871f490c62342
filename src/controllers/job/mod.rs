//! The Job controller (kube's `pkg/controller/job`, with the TTL-after-finished controller):
//! runs a Job's pods until enough succeed or the Job fails. The decisions are pure
//! ([`plan`]); a sync applies them: it creates pods from the template (named `<job>-<random>`,
//! `<job>-<index>-<random>` for Indexed Jobs, with the completion index as annotation, label,
//! `JOB_COMPLETION_INDEX` and hostname), deletes the pods the plan names, writes the status and
//! records kube's events (`SuccessfulCreate`, `SuccessfulDelete`, `Completed`,
//! `BackoffLimitExceeded`, `DeadlineExceeded`, ...). A finished Job with
//! `ttlSecondsAfterFinished` is deleted (propagation Foreground) once its time is up.
//!
//! Expectations ([`super::expectations`]) keep a lagging informer from making a Job create its
//! pods twice, as for ReplicaSets.

pub mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};

use super::Shared;
use super::expectations::Expectations;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::replication::plan::{controller_reference, pod_from_template, pod_prefix};
use super::util;
use crate::events::{Recorder, reference};

const COMPONENT: &str = "job-controller";

/// The Job a pod belongs to, if its controller is one.
pub fn owning_job(p: &Pod) -> Option<Key> {
    util::controller_ref(&p.metadata)
        .filter(|r| r.kind == "Job" && r.api_version == "batch/v1")
        .map(|r| Key::new(p.namespace().unwrap_or_default(), r.name.clone()))
}

struct Controller {
    shared: Arc<Shared>,
    recorder: Recorder,
    expectations: Arc<Mutex<Expectations>>,
}

/// Register the handlers now; the future syncs Jobs forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    let expectations = Arc::new(Mutex::new(Expectations::default()));
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        shared.jobs.on_change(move |change| match change {
            Change::Applied { new, .. } => queue.add(Key::of(*new)),
            Change::Deleted(old) => expectations
                .lock()
                .expect("expectations lock")
                .forget(&Key::of(*old)),
        });
    }
    {
        let queue = queue.clone();
        let expectations = expectations.clone();
        shared.pods.on_change(move |change| {
            let pod = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(p) => *p,
            };
            let Some(job) = owning_job(pod) else { return };
            {
                let mut e = expectations.lock().expect("expectations lock");
                match change {
                    Change::Applied { old: None, .. } => e.creation_observed(&job),
                    Change::Applied { old: Some(o), new }
                        if new.metadata.deletion_timestamp.is_some()
                            && o.metadata.deletion_timestamp.is_none() =>
                    {
                        e.deletion_observed(&job, &Key::of(*new))
                    }
                    Change::Deleted(p) => e.deletion_observed(&job, &Key::of(*p)),
                    _ => {}
                }
            }
            queue.add(job);
        });
    }
    async move {
        shared.synced().await;
        let controller = Arc::new(Controller {
            recorder: Recorder::new(shared.client.clone(), COMPONENT, None),
            shared,
            expectations,
        });
        run_worker(COMPONENT, queue, move |key| {
            let c = controller.clone();
            async move { c.sync(&key).await }
        })
        .await;
    }
}

impl Controller {
    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().expect("expectations lock")
    }

    async fn sync(&self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(job) = self.shared.jobs.get(key) else {
            self.expectations().forget(key);
            return Ok(None);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .shared
            .pods
            .list_namespace(&key.namespace)
            .into_iter()
            .filter(|p| util::controller_uid(&p.metadata).as_deref() == Some(uid.as_str()))
            .collect();
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let now = jiff::Timestamp::now();
        let plan = plan::plan(&job, &refs, now);
        let jobs: Api<Job> = Api::namespaced(self.shared.client.clone(), &key.namespace);

        if plan.expired {
            let params = DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            tracing::info!(job = %key, "TTL after finished expired: deleting");
            match jobs.delete(&key.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => anyhow::bail!("delete job {key}: {e}"),
            }
            return Ok(None);
        }

        let satisfied = self.expectations().satisfied(key, Instant::now());
        let pods_api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &key.namespace);
        let job_ref = reference(job.as_ref());
        let mut status = plan.status.clone();
        let mut failure = None;
        if satisfied {
            if !plan.delete.is_empty() {
                self.expectations().expect_deletions(
                    key,
                    plan.delete
                        .iter()
                        .map(|n| Key::new(key.namespace.clone(), n)),
                    Instant::now(),
                );
                let victims: Vec<&Pod> = refs
                    .iter()
                    .copied()
                    .filter(|p| plan.delete.contains(&p.name_any()))
                    .collect();
                let results = join_all(victims.iter().map(|p| delete_pod(&pods_api, p))).await;
                for (pod, r) in victims.iter().zip(results) {
                    match r {
                        Ok(true) => self.recorder.normal(
                            &job_ref,
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", pod.name_any()),
                        ),
                        Ok(false) => self.expectations().deletion_observed(key, &Key::of(*pod)),
                        Err(e) => {
                            self.expectations().deletion_observed(key, &Key::of(*pod));
                            self.recorder.warning(
                                &job_ref,
                                "FailedDelete",
                                format!("Error deleting: {e}"),
                            );
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
            if !plan.create.is_empty() {
                let n = plan.create.len();
                self.expectations().expect_creations(key, n, Instant::now());
                let results = join_all(
                    plan.create
                        .iter()
                        .map(|index| self.create_pod(&pods_api, &job, *index)),
                )
                .await;
                let mut created = 0;
                for r in results {
                    match r {
                        Ok(name) => {
                            created += 1;
                            self.recorder.normal(
                                &job_ref,
                                "SuccessfulCreate",
                                format!("Created pod: {name}"),
                            );
                        }
                        Err(e) => {
                            self.expectations().creation_observed(key);
                            self.recorder.warning(
                                &job_ref,
                                "FailedCreate",
                                format!("Error creating: {e}"),
                            );
                            failure.get_or_insert(e);
                        }
                    }
                }
                status.active = Some(status.active.unwrap_or(0) + created);
            }
        } else {
            // Until the informer shows what was asked for, only the status is written.
            status.active = job.status.as_ref().and_then(|s| s.active).or(status.active);
        }

        if job.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({ "status": status });
            match jobs
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    self.shared.jobs.observe(updated);
                    for e in &plan.events {
                        if e.warning {
                            self.recorder
                                .warning(&job_ref, &e.reason, e.message.clone());
                        } else {
                            self.recorder.normal(&job_ref, &e.reason, e.message.clone());
                        }
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => anyhow::bail!("update status of job {key}: {e}"),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(plan.requeue)
    }

    async fn create_pod(
        &self,
        api: &Api<Pod>,
        job: &Job,
        index: Option<i32>,
    ) -> anyhow::Result<String> {
        let meta = job.meta();
        let name = meta.name.clone().unwrap_or_default();
        let prefix = match index {
            Some(i) => pod_prefix(&format!("{name}-{i}")),
            None => pod_prefix(&name),
        };
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let reference = controller_reference("batch/v1", "Job", meta);
        let ns = meta.namespace.clone().unwrap_or_default();
        let mut last = None;
        for _ in 0..4 {
            let pod_name = self.shared.generate_name(&prefix);
            let mut pod = pod_from_template(&template, &ns, &prefix, &pod_name, reference.clone());
            if let Some(i) = index {
                with_index(&mut pod, &name, i);
            }
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => return Ok(pod_name),
                Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {
                    last = Some(s.message)
                }
                Err(kube::Error::Api(s)) => anyhow::bail!("{}", s.message),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        anyhow::bail!("{}", last.unwrap_or_default())
    }
}

/// Mark an Indexed Job's pod with its completion index (`addCompletionIndexEnvVariables`,
/// `addCompletionIndexAnnotation`, the index label and the `<job>-<index>` hostname).
fn with_index(pod: &mut Pod, job: &str, index: i32) {
    let value = index.to_string();
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(plan::COMPLETION_INDEX.into(), value.clone());
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(plan::COMPLETION_INDEX.into(), value);
    if let Some(spec) = pod.spec.as_mut() {
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{job}-{index}"));
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{}']", plan::COMPLETION_INDEX),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == env.name) {
                list.push(env.clone());
            }
        }
    }
}

/// Delete a pod (its uid as precondition); whether it was still there.
pub async fn delete_pod(api: &Api<Pod>, pod: &Pod) -> anyhow::Result<bool> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(kube::Error::Api(s)) => anyhow::bail!("{}", s.message),
        Err(e) => anyhow::bail!("{e}"),
    }
}
