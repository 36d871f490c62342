//! The CronJob controller (kube's `cronjob_controllerv2.go`): at each time its schedule
//! ([`schedule`], evaluated in `spec.timeZone` or the controller's zone) names, a CronJob
//! creates a Job `<cronjob>-<minutes since the epoch>` from its `jobTemplate` — unless it is
//! suspended, the time is older than `startingDeadlineSeconds`, or `concurrencyPolicy: Forbid`
//! finds one running (`Replace` deletes the running ones first). The status keeps the active
//! Jobs, `lastScheduleTime` and `lastSuccessfulTime`; finished Jobs beyond the history limits
//! are deleted, oldest first. Events are kube's (`SuccessfulCreate`, `SawCompletedJob`,
//! `SuccessfulDelete`, `JobAlreadyActive`, `UnparseableSchedule`, `TooManyMissedTimes`, ...).

pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use super::Shared;
use super::informer::{Change, Key};
use super::queue::{WorkQueue, run_worker};
use super::replication::plan::controller_reference;
use super::util;
use crate::events::{Recorder, reference};

const COMPONENT: &str = "cronjob-controller";
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

fn owning_cronjob(j: &Job) -> Option<Key> {
    util::controller_ref(&j.metadata)
        .filter(|r| r.kind == "CronJob" && r.api_version == "batch/v1")
        .map(|r| Key::new(j.namespace().unwrap_or_default(), r.name.clone()))
}

/// The finished condition of a Job (`Complete` or `Failed`) and when.
fn finished(j: &Job) -> Option<(&'static str, Option<Timestamp>)> {
    let conds = j.status.as_ref()?.conditions.as_ref()?;
    for ty in ["Complete", "Failed"] {
        if let Some(c) = conds.iter().find(|c| c.type_ == ty && c.status == "True") {
            let at = j
                .status
                .as_ref()
                .and_then(|s| s.completion_time.as_ref())
                .or(c.last_transition_time.as_ref())
                .map(|t| t.0);
            return Some((ty, at));
        }
    }
    None
}

/// `<cronjob>-<scheduled time in minutes since the epoch>` (`getJobName`).
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The Job a CronJob makes for `scheduled` (`getJobFromTemplate2`).
pub fn job_for(cj: &CronJob, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let name = cj.name_any();
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tm = template.metadata.clone().unwrap_or_default();
    let mut annotations = tm.annotations.clone().unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tm.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_reference(
                "batch/v1",
                "CronJob",
                &cj.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Register the handlers now; the future syncs CronJobs forever once the caches are synced.
pub fn run(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    let queue: WorkQueue = WorkQueue::new();
    {
        let queue = queue.clone();
        shared.cronjobs.on_change(move |change| {
            if let Change::Applied { new, .. } = change {
                queue.add(Key::of(*new));
            }
        });
    }
    {
        let queue = queue.clone();
        shared.jobs.on_change(move |change| {
            let j = match change {
                Change::Applied { new, .. } => *new,
                Change::Deleted(j) => *j,
            };
            if let Some(cj) = owning_cronjob(j) {
                queue.add(cj);
            }
        });
    }
    async move {
        shared.synced().await;
        let recorder = Recorder::new(shared.client.clone(), COMPONENT, None);
        run_worker(COMPONENT, queue, move |key| {
            let (s, r) = (shared.clone(), recorder.clone());
            async move { sync(&s, &r, &key).await }
        })
        .await;
    }
}

async fn delete_job(api: &Api<Job>, j: &Job) -> anyhow::Result<()> {
    let params = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(&j.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => anyhow::bail!("delete job {}: {e}", j.name_any()),
    }
}

/// An event about the CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

fn event(warning: bool, reason: &'static str, message: String) -> CronEvent {
    CronEvent {
        warning,
        reason,
        message,
    }
}

/// What one sync of a CronJob does (kube's `syncCronJob`), decided purely.
#[derive(Debug, Clone, PartialEq)]
pub struct CronPlan {
    /// The active list after bookkeeping (and after `Replace` took the running Jobs out).
    pub active: Vec<ObjectReference>,
    pub last_successful_time: Option<Time>,
    /// Jobs (by name) to delete: beyond the history limits, or replaced.
    pub delete: Vec<String>,
    /// Create the Job of this scheduled time.
    pub create: Option<Timestamp>,
    pub events: Vec<CronEvent>,
    /// Look again after this long (the next scheduled time).
    pub requeue: Option<Duration>,
    /// The zone the schedule is read in.
    pub tz: TimeZone,
}

/// Plan the sync of `cj` whose Jobs are `children` at `now`; `local` is the controller's zone
/// (used when the CronJob names none).
pub fn plan(cj: &CronJob, children: &[&Job], now: Timestamp, local: &TimeZone) -> CronPlan {
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut last_successful_time = status.last_successful_time.clone();

    // The active list: running children in, finished and vanished ones out.
    let mut active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
    for j in children {
        let listed = active.iter().any(|r| r.uid == j.metadata.uid);
        match finished(j) {
            None if !listed && j.metadata.deletion_timestamp.is_none() => {
                active.push(job_ref(j));
            }
            Some((ty, at)) if listed => {
                active.retain(|r| r.uid != j.metadata.uid);
                events.push(event(
                    false,
                    "SawCompletedJob",
                    format!("Saw completed job: {}, condition: {ty}", j.name_any()),
                ));
                if ty == "Complete"
                    && let Some(at) = at
                    && last_successful_time.as_ref().is_none_or(|t| t.0 < at)
                {
                    last_successful_time = Some(Time(at));
                }
            }
            _ => {}
        }
    }
    active.retain(|r| {
        let there = children.iter().any(|j| j.metadata.uid == r.uid);
        if !there {
            events.push(event(
                false,
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    r.name.clone().unwrap_or_default()
                ),
            ));
        }
        there
    });

    // History limits: the oldest finished Jobs beyond them go.
    let mut delete = Vec::new();
    for (ty, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&&Job> = children
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter(|j| finished(j).is_some_and(|(t, _)| t == ty))
            .collect();
        done.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0),
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        delete.extend(done.into_iter().take(extra).map(|j| j.name_any()));
    }

    let tz = match spec.time_zone.as_deref() {
        Some(name) => TimeZone::get(name).unwrap_or(TimeZone::UTC),
        None => local.clone(),
    };
    let mut out = CronPlan {
        active,
        last_successful_time,
        delete,
        create: None,
        events,
        requeue: None,
        tz: tz.clone(),
    };
    if spec.suspend == Some(true) {
        return out;
    }
    let sched = match schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            out.events.push(event(
                true,
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            ));
            return out;
        }
    };
    let earliest = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or(cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    let due = schedule::due(&sched, &tz, earliest, now, spec.starting_deadline_seconds);
    if due.missed > 100 {
        out.events.push(event(
            true,
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    if let Some(next) = due.next {
        // A little after the time, so that the time has come when we look.
        let wait = Duration::try_from(next - now).unwrap_or_default();
        out.requeue = Some(wait + Duration::from_millis(100));
    }
    let Some(scheduled) = due.most_recent else {
        return out;
    };
    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        "Forbid" if !out.active.is_empty() => {
            out.events.push(event(
                false,
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            ));
            return out;
        }
        "Replace" => {
            for r in std::mem::take(&mut out.active) {
                if let Some(name) = r.name {
                    out.delete.push(name);
                }
            }
        }
        _ => {}
    }
    out.create = Some(scheduled);
    out
}

async fn sync(shared: &Shared, recorder: &Recorder, key: &Key) -> anyhow::Result<Option<Duration>> {
    let Some(cj) = shared.cronjobs.get(key) else {
        return Ok(None);
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let cj_ref = reference(cj.as_ref());
    let jobs_api: Api<Job> = Api::namespaced(shared.client.clone(), &key.namespace);
    let old_status = cj.status.clone().unwrap_or_default();
    let children: Vec<Arc<Job>> = shared
        .jobs
        .list_namespace(&key.namespace)
        .into_iter()
        .filter(|j| util::controller_uid(&j.metadata).as_deref() == Some(uid.as_str()))
        .collect();
    let refs: Vec<&Job> = children.iter().map(|j| j.as_ref()).collect();
    let plan = plan(&cj, &refs, Timestamp::now(), &TimeZone::system());
    for e in &plan.events {
        if e.warning {
            recorder.warning(&cj_ref, e.reason, e.message.clone());
        } else {
            recorder.normal(&cj_ref, e.reason, e.message.clone());
        }
    }
    for name in &plan.delete {
        if let Some(j) = children.iter().find(|j| j.name_any() == *name) {
            delete_job(&jobs_api, j).await?;
            recorder.normal(&cj_ref, "SuccessfulDelete", format!("Deleted job {name}"));
        }
    }
    let mut status = old_status.clone();
    let mut active = plan.active.clone();
    status.last_successful_time = plan.last_successful_time.clone();
    if let Some(scheduled) = plan.create {
        let job = job_for(&cj, scheduled, &plan.tz);
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                recorder.normal(
                    &cj_ref,
                    "SuccessfulCreate",
                    format!("Created job {}", created.name_any()),
                );
                active.push(job_ref(&created));
                shared.jobs.observe(created);
            }
            // Made already (by an earlier sync whose status write was lost).
            Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => {}
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                return Ok(None);
            }
            Err(e) => {
                recorder.warning(&cj_ref, "FailedCreate", format!("Error creating job: {e}"));
                anyhow::bail!("create job for cronjob {key}: {e}");
            }
        }
        status.last_schedule_time = Some(Time(scheduled));
    }

    status.active = (!active.is_empty()).then_some(active);
    if status != old_status {
        let api: Api<CronJob> = Api::namespaced(shared.client.clone(), &key.namespace);
        // `active: null` must clear the list: a merge patch of the whole status does it.
        let mut body = serde_json::to_value(&status)?;
        if status.active.is_none() {
            body["active"] = serde_json::Value::Null;
        }
        let patch = serde_json::json!({ "status": body });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => shared.cronjobs.observe(updated),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => anyhow::bail!("update status of cronjob {key}: {e}"),
        }
    }
    Ok(plan.requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_named_by_their_minute() {
        let cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default", "uid": "u"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {"template": {"spec": {"containers": []}}}}}}))
        .unwrap();
        let t: Timestamp = "2026-12-05T12:01:00Z".parse().unwrap();
        let j = job_for(&cj, t, &TimeZone::UTC);
        assert_eq!(j.metadata.name.as_deref(), Some("hello-29941201"));
        assert_eq!(
            j.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIMESTAMP],
            "2026-12-05T12:01:00+00:00"
        );
        assert_eq!(j.metadata.labels.as_ref().unwrap()["app"], "hello");
        let owner = &j.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
    }

    fn cronjob(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut v = serde_json::json!({"metadata": {"name": "tick", "namespace": "default", "uid": "cj",
                "creationTimestamp": "2026-12-05T11:00:00Z"},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "UTC", "concurrencyPolicy": "Allow",
                "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
                "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}}},
            "status": status});
        json_patch::merge(&mut v["spec"], &spec);
        serde_json::from_value(v).unwrap()
    }

    /// A child Job: running (`None`) or finished with a condition, started `at`.
    fn child(name: &str, done: Option<&str>, at: &str) -> Job {
        let mut v = serde_json::json!({"metadata": {"name": name, "namespace": "default", "uid": name,
                "creationTimestamp": at},
            "status": {"startTime": at}});
        if let Some(ty) = done {
            v["status"]["conditions"] = serde_json::json!([{"type": ty, "status": "True"}]);
            v["status"]["completionTime"] = serde_json::json!(at);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cronjob_plans() {
        let now: Timestamp = "2026-12-05T12:05:30Z".parse().unwrap();
        let listed = |names: &[&str]| -> serde_json::Value {
            serde_json::json!({"lastScheduleTime": "2026-12-05T12:00:00Z",
                "active": names.iter().map(|n| serde_json::json!({"kind": "Job", "name": n, "uid": n})).collect::<Vec<_>>()})
        };
        let cases: Vec<(&str, CronJob, Vec<Job>)> = vec![
            (
                "first run",
                cronjob(serde_json::json!({}), serde_json::json!({})),
                vec![],
            ),
            (
                "Allow with one running",
                cronjob(serde_json::json!({}), listed(&["tick-1"])),
                vec![child("tick-1", None, "2026-12-05T12:00:00Z")],
            ),
            (
                "Forbid with one running",
                cronjob(
                    serde_json::json!({"concurrencyPolicy": "Forbid"}),
                    listed(&["tick-1"]),
                ),
                vec![child("tick-1", None, "2026-12-05T12:00:00Z")],
            ),
            (
                "Replace with one running",
                cronjob(
                    serde_json::json!({"concurrencyPolicy": "Replace"}),
                    listed(&["tick-1"]),
                ),
                vec![child("tick-1", None, "2026-12-05T12:00:00Z")],
            ),
            (
                "a finished job, the history limit and a vanished one",
                cronjob(serde_json::json!({}), listed(&["tick-2", "gone"])),
                vec![
                    child("tick-0", Some("Complete"), "2026-12-05T11:50:00Z"),
                    child("tick-1", Some("Complete"), "2026-12-05T11:55:00Z"),
                    child("tick-2", Some("Complete"), "2026-12-05T12:00:00Z"),
                    child("tick-f", Some("Failed"), "2026-12-05T11:45:00Z"),
                ],
            ),
            (
                "suspended",
                cronjob(serde_json::json!({"suspend": true}), listed(&[])),
                vec![],
            ),
            (
                "too late for the starting deadline",
                cronjob(
                    serde_json::json!({"startingDeadlineSeconds": 10}),
                    listed(&[]),
                ),
                vec![],
            ),
            (
                "unparseable",
                cronjob(serde_json::json!({"schedule": "often"}), listed(&[])),
                vec![],
            ),
        ];
        let mut out = String::new();
        for (what, cj, children) in &cases {
            let refs: Vec<&Job> = children.iter().collect();
            let p = plan(cj, &refs, now, &TimeZone::UTC);
            let active: Vec<String> = p.active.iter().filter_map(|r| r.name.clone()).collect();
            let events: Vec<String> = p
                .events
                .iter()
                .map(|e| format!("{}: {}", e.reason, e.message))
                .collect();
            out.push_str(&format!(
                "{what}:\n  active={active:?} delete={:?} create={:?} lastSuccessful={:?} requeue={:?}\n  events={events:#?}\n",
                p.delete,
                p.create.map(|t| t.to_string()),
                p.last_successful_time.map(|t| t.0.to_string()),
                p.requeue,
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }
}
