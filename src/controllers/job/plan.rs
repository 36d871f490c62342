//! The pure part of the Job controller: from a Job, its pods and the time, what the status
//! should say and which pods to create and delete (kube's `syncJob`, reduced to a function).
//!
//! Counting is kube's legacy one (the pods present are counted, never fewer than the status
//! already says), without the `batch.kubernetes.io/job-tracking` finalizer: a finished pod that
//! someone deletes before the Job finishes is not counted again, but counts never go down.
//!
//! Order of decisions, as in kube 1.33: a Job already finished changes nothing; a failure
//! (`podFailurePolicy` FailJob rule, more failures than `backoffLimit`, `activeDeadlineSeconds`
//! passed) sets `FailureTarget` and deletes the active pods, and once none is left running the
//! Job gets `Failed`; reaching its completions sets `SuccessCriteriaMet`, then `Complete` when no
//! pod is left running; otherwise pods are created (after the failure back-off) or deleted to
//! match `parallelism`.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::controllers::util;

pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The first pod-failure back-off (`DefaultJobPodFailureBackOff`), doubled per consecutive
/// failure up to [`MAX_BACKOFF`] (`MaxJobPodFailureBackOff`).
pub const BASE_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub const REASON_BACKOFF: &str = "BackoffLimitExceeded";
pub const MESSAGE_BACKOFF: &str = "Job has reached the specified backoff limit";
pub const REASON_DEADLINE: &str = "DeadlineExceeded";
pub const MESSAGE_DEADLINE: &str = "Job was active longer than specified deadline";
pub const REASON_POLICY: &str = "PodFailurePolicy";
pub const REASON_COMPLETIONS: &str = "CompletionsReached";
pub const MESSAGE_COMPLETIONS: &str = "Reached expected number of succeeded pods";

/// An event to record about the Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// What one sync does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The status to write (written only if it differs from the current one).
    pub status: JobStatus,
    /// Pods to create: `None` for a NonIndexed Job, the completion index for an Indexed one.
    pub create: Vec<Option<i32>>,
    /// Pods (by name) to delete.
    pub delete: Vec<String>,
    pub events: Vec<JobEvent>,
    /// Sync again after this long (back-off, deadline, TTL).
    pub requeue: Option<Duration>,
    /// The Job finished and its TTL has run out: delete it.
    pub expired: bool,
}

fn condition_true(status: &JobStatus, ty: &str) -> Option<JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

fn new_condition(ty: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Put `cond` in `conditions`, replacing one of its type whose status differs.
fn set_condition(status: &mut JobStatus, cond: JobCondition) {
    let list = status.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(c) if c.status == cond.status => {}
        Some(c) => *c = cond,
        None => list.push(cond),
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The completion index of an Indexed Job's pod.
pub fn index_of(p: &Pod) -> Option<i32> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(COMPLETION_INDEX))
        })
        .and_then(|v| v.parse().ok())
}

/// When a finished pod finished: the latest container termination, else its creation.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let from_containers = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max();
    from_containers.or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// `"1,3-5"` from a set of indexes (`completedIndexes`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// What a `podFailurePolicy` rule does with a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAction {
    FailJob(String),
    Ignore,
    Count,
}

fn rule_matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<String> {
    if let Some(req) = &rule.on_exit_codes {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten();
        for c in statuses {
            if req.container_name.as_ref().is_some_and(|n| *n != c.name) {
                continue;
            }
            let Some(code) = c
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
            else {
                continue;
            };
            if code == 0 {
                continue;
            }
            let listed = req.values.contains(&code);
            let hit = match req.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            if hit {
                return Some(format!(
                    "Container {} for pod {}/{} failed with exit code {code}",
                    c.name,
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default()
                ));
            }
        }
        return None;
    }
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let hit = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == pattern.type_ && c.status == pattern.status);
        if hit {
            return Some(format!(
                "Pod {}/{} has condition {} matching",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                pattern.type_
            ));
        }
    }
    None
}

/// The first `podFailurePolicy` rule matching a failed pod decides (kube's
/// `matchPodFailurePolicy`); no policy or no match counts the failure.
pub fn policy_action(spec: &JobSpec, pod: &Pod) -> PolicyAction {
    let Some(policy) = &spec.pod_failure_policy else {
        return PolicyAction::Count;
    };
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(why) = rule_matches(rule, pod) {
            return match rule.action.as_str() {
                "FailJob" => {
                    PolicyAction::FailJob(format!("{why} matching FailJob rule at index {i}"))
                }
                "Ignore" => PolicyAction::Ignore,
                _ => PolicyAction::Count,
            };
        }
    }
    PolicyAction::Count
}

/// The back-off before the next pod after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    BASE_BACKOFF
        .saturating_mul(1u32 << (n - 1).min(16))
        .min(MAX_BACKOFF)
}

/// When the Job finished (`Complete` or `Failed`), if it did.
pub fn finished(status: &JobStatus) -> Option<Timestamp> {
    ["Complete", "Failed"].iter().find_map(|ty| {
        condition_true(status, ty).map(|c| {
            status
                .completion_time
                .as_ref()
                .map(|t| t.0)
                .or(c.last_transition_time.map(|t| t.0))
                .unwrap_or(Timestamp::UNIX_EPOCH)
        })
    })
}

/// The sync of `job` with its `pods` (every pod it controls, finished ones included) at `now`.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut out = Plan::default();

    if let Some(done) = finished(&old) {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let expiry = done + SignedDuration::from_secs(i64::from(ttl));
            if expiry <= now {
                out.expired = true;
            } else {
                out.requeue = Some(Duration::try_from(expiry - now).unwrap_or_default());
            }
        }
        out.status = status;
        return out;
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");

    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| util::is_active(p))
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| !util::is_terminated(p) && p.metadata.deletion_timestamp.is_some())
        .count() as i32;
    let succeeded_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Succeeded")
        .collect();
    let mut fail_job: Option<String> = None;
    let mut failed_pods: Vec<&Pod> = Vec::new();
    for p in pods.iter().copied().filter(|p| phase(p) == "Failed") {
        match policy_action(&spec, p) {
            PolicyAction::Ignore => {}
            PolicyAction::Count => failed_pods.push(p),
            PolicyAction::FailJob(why) => {
                failed_pods.push(p);
                fail_job.get_or_insert(why);
            }
        }
    }

    // Counts.
    let completed: BTreeSet<i32> = if indexed {
        succeeded_pods
            .iter()
            .filter_map(|p| index_of(p))
            .filter(|i| completions.is_none_or(|c| *i < c))
            .collect()
    } else {
        BTreeSet::new()
    };
    let succeeded_now = if indexed {
        completed.len() as i32
    } else {
        succeeded_pods.len() as i32
    };
    let succeeded = succeeded_now.max(old.succeeded.unwrap_or(0));
    let failed = (failed_pods.len() as i32).max(old.failed.unwrap_or(0));
    let restarts: i32 = if on_failure {
        active
            .iter()
            .flat_map(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default()
            })
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let ready = active.iter().filter(|p| util::is_ready(p)).count() as i32;

    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.ready = Some(ready);
    status.terminating = Some(terminating);
    if status.uncounted_terminated_pods.is_none() {
        status.uncounted_terminated_pods = Some(Default::default());
    }
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }

    // Suspension: no pods run, the clock stops.
    if spec.suspend == Some(true) {
        let was = condition_true(&old, "Suspended").is_some();
        set_condition(
            &mut status,
            new_condition("Suspended", "JobSuspended", "Job suspended", now),
        );
        if !was {
            out.events.push(JobEvent {
                warning: false,
                reason: "Suspended".into(),
                message: "Job suspended".into(),
            });
        }
        out.delete = active
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        status.active = Some(0);
        out.status = status;
        return out;
    }
    if condition_true(&old, "Suspended").is_some() {
        let mut resumed = new_condition("Suspended", "JobResumed", "Job resumed", now);
        resumed.status = "False".into();
        set_condition(&mut status, resumed);
        status.start_time = Some(Time(now));
        out.events.push(JobEvent {
            warning: false,
            reason: "Resumed".into(),
            message: "Job resumed".into(),
        });
    }
    let start = status.start_time.get_or_insert(Time(now)).0;

    // Failure.
    let mut target = condition_true(&old, "FailureTarget")
        .map(|c| (c.reason.unwrap_or_default(), c.message.unwrap_or_default()));
    if target.is_none() {
        target = if let Some(why) = fail_job {
            Some((REASON_POLICY.into(), why))
        } else if failed + restarts > backoff_limit {
            Some((REASON_BACKOFF.into(), MESSAGE_BACKOFF.into()))
        } else if let Some(deadline) = spec.active_deadline_seconds {
            let at = start + SignedDuration::from_secs(deadline);
            if at <= now {
                Some((REASON_DEADLINE.into(), MESSAGE_DEADLINE.into()))
            } else {
                out.requeue = Some(Duration::try_from(at - now).unwrap_or_default());
                None
            }
        } else {
            None
        };
    }
    if let Some((reason, message)) = target {
        set_condition(
            &mut status,
            new_condition("FailureTarget", &reason, &message, now),
        );
        out.delete = active
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        status.active = Some(active.len() as i32);
        if active.is_empty() && terminating == 0 {
            set_condition(&mut status, new_condition("Failed", &reason, &message, now));
            out.events.push(JobEvent {
                warning: true,
                reason: reason.clone(),
                message: message.clone(),
            });
        }
        out.requeue = None;
        out.status = status;
        return out;
    }

    // Success.
    let complete = match completions {
        Some(c) => succeeded >= c,
        // A work queue: done once one pod succeeded and the others have finished.
        None => succeeded > 0 && active.is_empty(),
    };
    if complete {
        set_condition(
            &mut status,
            new_condition(
                "SuccessCriteriaMet",
                REASON_COMPLETIONS,
                MESSAGE_COMPLETIONS,
                now,
            ),
        );
        out.delete = active
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        status.active = Some(active.len() as i32);
        if active.is_empty() && terminating == 0 {
            set_condition(
                &mut status,
                new_condition("Complete", REASON_COMPLETIONS, MESSAGE_COMPLETIONS, now),
            );
            status.completion_time = Some(Time(now));
            out.events.push(JobEvent {
                warning: false,
                reason: "Completed".into(),
                message: "Job completed".into(),
            });
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                out.requeue = Some(Duration::from_secs(u64::from(ttl.max(0) as u32)));
                out.expired = ttl <= 0;
            }
        }
        out.status = status;
        return out;
    }

    // Keep `parallelism` pods running, never more than the completions still missing.
    let wanted = match completions {
        // A work queue with a success: what runs finishes, nothing new starts.
        None if succeeded > 0 => active.len() as i32,
        None => parallelism,
        Some(c) => parallelism.min((c - succeeded).max(0)),
    } as usize;
    // `podReplacementPolicy: Failed`: a pod still terminating holds its place until it has
    // failed (the default, TerminatingOrFailed, replaces it at once).
    let replace_when_failed = spec.pod_replacement_policy.as_deref() == Some("Failed");
    let occupying: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| {
            util::is_active(p)
                || (replace_when_failed
                    && !util::is_terminated(p)
                    && p.metadata.deletion_timestamp.is_some())
        })
        .collect();
    let mut create = Vec::new();
    let mut delete = Vec::new();
    if active.len() > wanted {
        // Not ready first, then the newest.
        let mut extra = active.clone();
        extra.sort_by_key(|p| {
            (
                util::is_ready(p),
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            )
        });
        delete = extra[..active.len() - wanted]
            .iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
    } else if occupying.len() < wanted {
        let n = wanted - occupying.len();
        if indexed {
            let running: BTreeSet<i32> = occupying.iter().filter_map(|p| index_of(p)).collect();
            create = (0..completions.unwrap_or(0))
                .filter(|i| !completed.contains(i) && !running.contains(i))
                .take(n)
                .map(Some)
                .collect();
        } else {
            create = vec![None; n];
        }
    }
    // Failures since the last success delay the next pods.
    if !create.is_empty() {
        let last_success = succeeded_pods.iter().filter_map(|p| finished_at(p)).max();
        let recent: Vec<Timestamp> = failed_pods
            .iter()
            .filter_map(|p| finished_at(p))
            .filter(|t| last_success.is_none_or(|s| *t > s))
            .collect();
        if let Some(last) = recent.iter().max() {
            let wait = backoff(recent.len() as u32);
            let ready_at = *last + SignedDuration::try_from(wait).unwrap_or_default();
            if ready_at > now {
                create.clear();
                let left = Duration::try_from(ready_at - now).unwrap_or_default();
                out.requeue = Some(out.requeue.map_or(left, |r| r.min(left)));
            }
        }
    }
    status.active = Some(active.len() as i32);
    out.create = create;
    out.delete = delete;
    out.status = status;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NOW: &str = "2026-12-05T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn job(spec: Value, status: Value) -> Job {
        let mut s = json!({"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}, "parallelism": 1,
            "completions": 1, "backoffLimit": 6, "completionMode": "NonIndexed"});
        json_patch::merge(&mut s, &spec);
        serde_json::from_value(json!({"metadata": {"name": "pi", "namespace": "default"},
            "spec": s, "status": status}))
        .unwrap()
    }

    /// A pod: `phase`, finished (or created) `ago` seconds before now, an exit code, an index.
    fn pod(name: &str, phase: &str, ago: i64, exit: Option<i32>, index: Option<i32>) -> Pod {
        let at = (now() - SignedDuration::from_secs(ago)).to_string();
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "creationTimestamp": at},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase}});
        if let Some(code) = exit {
            v["status"]["containerStatuses"] = json!([{"name": "c", "image": "busybox", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "finishedAt": at}}}]);
        }
        if phase == "Running" {
            v["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        }
        if let Some(i) = index {
            v["metadata"]["annotations"] = json!({COMPLETION_INDEX: i.to_string()});
        }
        serde_json::from_value(v).unwrap()
    }

    fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(now()));
        p
    }

    /// A plan in a few words: conditions, counts, creations, deletions, requeue.
    fn summary(p: &Plan) -> String {
        let conds: Vec<String> = p
            .status
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}({})",
                    c.type_,
                    c.status,
                    c.reason.as_deref().unwrap_or("")
                )
            })
            .collect();
        format!(
            "active={} ready={} succeeded={} failed={} terminating={} indexes={:?} conditions=[{}] create={:?} delete={:?} requeue={:?} events={:?} expired={}",
            p.status.active.unwrap_or(0),
            p.status.ready.unwrap_or(0),
            p.status.succeeded.unwrap_or(0),
            p.status.failed.unwrap_or(0),
            p.status.terminating.unwrap_or(0),
            p.status.completed_indexes,
            conds.join(" "),
            p.create,
            p.delete,
            p.requeue,
            p.events
                .iter()
                .map(|e| e.reason.as_str())
                .collect::<Vec<_>>(),
            p.expired,
        )
    }

    fn run(j: &Job, pods: &[Pod]) -> String {
        let refs: Vec<&Pod> = pods.iter().collect();
        summary(&plan(j, &refs, now()))
    }

    #[test]
    fn job_lifecycles() {
        let started = json!({"startTime": "2026-12-05T11:59:00Z"});
        let cases: Vec<(&str, Job, Vec<Pod>)> = vec![
            ("new job", job(json!({}), json!({})), vec![]),
            (
                "parallel 3 of 5, one done",
                job(json!({"parallelism": 3, "completions": 5}), started.clone()),
                vec![
                    pod("a", "Succeeded", 5, Some(0), None),
                    pod("b", "Running", 5, None, None),
                ],
            ),
            (
                "the last completion, pods still running",
                job(json!({"parallelism": 2, "completions": 2}), started.clone()),
                vec![
                    pod("a", "Succeeded", 5, Some(0), None),
                    pod("b", "Succeeded", 5, Some(0), None),
                ],
            ),
            (
                "a failure waits for the back-off",
                job(json!({"backoffLimit": 2}), started.clone()),
                vec![pod("a", "Failed", 4, Some(1), None)],
            ),
            (
                "two failures: 20s back-off",
                job(json!({"backoffLimit": 2}), started.clone()),
                vec![
                    pod("a", "Failed", 30, Some(1), None),
                    pod("b", "Failed", 15, Some(1), None),
                ],
            ),
            (
                "the back-off is over",
                job(json!({"backoffLimit": 2}), started.clone()),
                vec![pod("a", "Failed", 11, Some(1), None)],
            ),
            (
                "over the backoff limit",
                job(json!({"backoffLimit": 1}), started.clone()),
                vec![
                    pod("a", "Failed", 30, Some(1), None),
                    pod("b", "Failed", 1, Some(1), None),
                ],
            ),
            (
                "the deadline passes with a pod running",
                job(json!({"activeDeadlineSeconds": 30}), started.clone()),
                vec![pod("a", "Running", 50, None, None)],
            ),
            (
                "the deadline is ahead",
                job(json!({"activeDeadlineSeconds": 90}), started.clone()),
                vec![pod("a", "Running", 50, None, None)],
            ),
            (
                "FailJob on exit code 42",
                job(
                    json!({"podFailurePolicy": {"rules": [
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}),
                    started.clone(),
                ),
                vec![pod("a", "Failed", 1, Some(42), None)],
            ),
            (
                "an ignored failure is not counted",
                job(
                    json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
                        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}]}}),
                    started.clone(),
                ),
                vec![pod("a", "Failed", 1, Some(3), None)],
            ),
            (
                "indexed: 0 and 2 done, 1 running",
                job(
                    json!({"completionMode": "Indexed", "completions": 5, "parallelism": 3}),
                    started.clone(),
                ),
                vec![
                    pod("pi-0-x", "Succeeded", 5, Some(0), Some(0)),
                    pod("pi-1-x", "Running", 5, None, Some(1)),
                    pod("pi-2-x", "Succeeded", 5, Some(0), Some(2)),
                ],
            ),
            (
                "work queue: one success, one still running",
                job(
                    json!({"completions": null, "parallelism": 2}),
                    started.clone(),
                ),
                vec![
                    pod("a", "Succeeded", 5, Some(0), None),
                    pod("b", "Running", 5, None, None),
                ],
            ),
            (
                "parallelism lowered",
                job(json!({"parallelism": 1, "completions": 4}), started.clone()),
                vec![
                    pod("a", "Running", 50, None, None),
                    pod("b", "Running", 5, None, None),
                ],
            ),
            (
                "a terminating pod is replaced at once",
                job(json!({"parallelism": 2, "completions": 4}), started.clone()),
                vec![
                    pod("a", "Running", 5, None, None),
                    terminating(pod("b", "Running", 5, None, None)),
                ],
            ),
            (
                "podReplacementPolicy Failed waits for it",
                job(
                    json!({"parallelism": 2, "completions": 4, "podReplacementPolicy": "Failed"}),
                    started.clone(),
                ),
                vec![
                    pod("a", "Running", 5, None, None),
                    terminating(pod("b", "Running", 5, None, None)),
                ],
            ),
            (
                "suspended",
                job(json!({"suspend": true}), started.clone()),
                vec![pod("a", "Running", 5, None, None)],
            ),
            (
                "complete, TTL running",
                job(
                    json!({"ttlSecondsAfterFinished": 60}),
                    json!({"completionTime": "2026-12-05T11:59:30Z", "conditions": [
                        {"type": "Complete", "status": "True"}]}),
                ),
                vec![],
            ),
            (
                "complete, TTL over",
                job(
                    json!({"ttlSecondsAfterFinished": 10}),
                    json!({"completionTime": "2026-12-05T11:59:30Z", "conditions": [
                        {"type": "Complete", "status": "True"}]}),
                ),
                vec![],
            ),
        ];
        let mut out = String::new();
        for (what, j, pods) in &cases {
            out.push_str(&format!("{what}:\n  {}\n", run(j, pods)));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn indexes_and_backoff() {
        assert_eq!(
            format_indexes(&BTreeSet::from([0, 1, 2, 4, 6, 7])),
            "0-2,4,6-7"
        );
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
