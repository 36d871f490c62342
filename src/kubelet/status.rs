//! Pod status as the kubelet reports it, computed purely from what the kubelet knows about the
//! pod's containers: phase (kubelet's `getPhase` rules), conditions (PodReadyToStartContainers,
//! Initialized, ContainersReady, Ready, keeping transition times that did not change),
//! podIP/podIPs, hostIP/hostIPs, startTime and one ContainerStatus per container with state,
//! lastState, ready, started and restartCount.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        /// `<runtime>://<id>` of the container that ended: `kubectl logs --previous` needs it.
        container_id: Option<String>,
    },
}

impl RunState {
    /// `Completed` for exit code 0, `Error` otherwise, as the kubelet names them.
    pub fn terminated(
        exit_code: i32,
        signal: Option<i32>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    ) -> RunState {
        RunState::Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message: None,
            started_at,
            finished_at,
            container_id: None,
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            RunState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            RunState::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: Some(reason.clone()),
                    message: message.clone(),
                    started_at: started_at.map(Time),
                    finished_at: Some(Time(*finished_at)),
                    container_id: container_id.clone(),
                }),
                ..Default::default()
            },
        }
    }
}

/// The kubelet's view of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub container_id: Option<String>,
    pub state: RunState,
    pub last_state: Option<RunState>,
    pub ready: bool,
    pub restart_count: i32,
}

/// The kubelet's view of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    pub start_time: Option<Timestamp>,
    /// The network sandbox exists.
    pub sandbox_ready: bool,
}

/// The phase by the kubelet's rules: a container that never ran is "waiting"; one that ran and
/// is waiting to restart counts as "stopped".
pub fn phase(restart_policy: &str, view: &PodView) -> &'static str {
    let init_pending = view
        .init_containers
        .iter()
        .any(|c| !matches!(c.state, RunState::Terminated { exit_code: 0, .. }));
    if init_pending {
        let failed = view
            .init_containers
            .iter()
            .any(|c| matches!(c.state, RunState::Terminated { exit_code, .. } if exit_code != 0));
        return if failed && restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            RunState::Waiting { .. } => {
                if matches!(c.last_state, Some(RunState::Terminated { .. })) {
                    stopped += 1;
                    if matches!(
                        c.last_state,
                        Some(RunState::Terminated { exit_code: 0, .. })
                    ) {
                        succeeded += 1;
                    }
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        };
    }
    "Pending"
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(String::from) },
        message: if ok { None } else { message },
        last_transition_time: Some(last.unwrap_or(Time(now))),
        last_probe_time: None,
        observed_generation: None,
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("kemu://builtin/{}", c.image),
        container_id: c.container_id.clone(),
        state: Some(c.state.to_api()),
        last_state: Some(
            c.last_state
                .as_ref()
                .map(RunState::to_api)
                .unwrap_or_default(),
        ),
        ready: c.ready,
        started: Some(matches!(c.state, RunState::Running { .. })),
        restart_count: c.restart_count,
        ..Default::default()
    }
}

/// The status to report for `pod`, given the kubelet's view. `previous` is the status last
/// reported, whose conditions keep their transition times; `PodScheduled` is kept from it.
pub fn pod_status(
    pod: &Pod,
    view: &PodView,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let spec = pod.spec.as_ref();
    let restart_policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let phase = phase(restart_policy, view);
    let initialized = view
        .init_containers
        .iter()
        .all(|c| matches!(c.state, RunState::Terminated { exit_code: 0, .. }));
    let unready: Vec<&str> = view
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !view.containers.is_empty();
    let unready_message = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let pending_init: Vec<&str> = view
        .init_containers
        .iter()
        .filter(|c| !matches!(c.state, RunState::Terminated { exit_code: 0, .. }))
        .map(|c| c.name.as_str())
        .collect();
    let ready = containers_ready && phase == "Running";
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            previous,
            now,
        ),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_init.join(" ")
            )),
            previous,
            now,
        ),
        condition(
            "Ready",
            ready,
            Some("ContainersNotReady"),
            unready_message.clone(),
            previous,
            now,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            Some("ContainersNotReady"),
            unready_message,
            previous,
            now,
        ),
    ];
    if let Some(scheduled) = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
    {
        conditions.push(scheduled.clone());
    } else {
        conditions.push(condition(
            "PodScheduled",
            true,
            None,
            None,
            None,
            view.start_time.unwrap_or(now),
        ));
    }
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: view.host_ip.clone(),
        host_ips: view.host_ip.clone().map(|ip| vec![HostIP { ip }]),
        pod_ip: view.pod_ip.clone(),
        pod_ips: view.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: view.start_time.map(Time),
        init_container_statuses: (!view.init_containers.is_empty())
            .then(|| view.init_containers.iter().map(container_status).collect()),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        qos_class: Some("BestEffort".to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn c(
        name: &str,
        state: RunState,
        last: Option<RunState>,
        ready: bool,
        restarts: i32,
    ) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "nginx".into(),
            container_id: Some(format!("kemu://{name}")),
            state,
            last_state: last,
            ready,
            restart_count: restarts,
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let run = RunState::Running {
            started_at: t("2026-01-01T00:00:00Z"),
        };
        let pull = RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        };
        let crash = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        };
        let failed = RunState::terminated(1, None, None, t("2026-01-01T00:00:01Z"));
        let done = RunState::terminated(0, None, None, t("2026-01-01T00:00:01Z"));
        let pod = |cs: Vec<ContainerView>| PodView {
            containers: cs,
            ..Default::default()
        };
        assert_eq!(
            phase("Always", &pod(vec![c("a", pull.clone(), None, false, 0)])),
            "Pending"
        );
        assert_eq!(
            phase("Always", &pod(vec![c("a", run.clone(), None, true, 0)])),
            "Running"
        );
        assert_eq!(
            phase(
                "Always",
                &pod(vec![c("a", crash.clone(), Some(failed.clone()), false, 3)])
            ),
            "Running"
        );
        assert_eq!(
            phase("Never", &pod(vec![c("a", failed.clone(), None, false, 0)])),
            "Failed"
        );
        assert_eq!(
            phase("Never", &pod(vec![c("a", done.clone(), None, false, 0)])),
            "Succeeded"
        );
        assert_eq!(
            phase(
                "OnFailure",
                &pod(vec![c("a", crash, Some(failed), false, 1)])
            ),
            "Running"
        );
        assert_eq!(
            phase(
                "Always",
                &pod(vec![
                    c("a", run, None, true, 0),
                    c("b", pull, None, false, 0)
                ])
            ),
            "Pending"
        );
    }

    #[test]
    fn unready_container_keeps_the_pod_out_of_ready() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}], "restartPolicy": "Always"}
        }))
        .unwrap();
        let view = PodView {
            containers: vec![c(
                "web",
                RunState::Running {
                    started_at: t("2026-01-01T00:00:00Z"),
                },
                None,
                false,
                0,
            )],
            pod_ip: Some("172.16.1.2".into()),
            host_ip: Some("192.168.0.201".into()),
            start_time: Some(t("2026-01-01T00:00:00Z")),
            sandbox_ready: true,
            ..Default::default()
        };
        let status = pod_status(&pod, &view, None, t("2026-01-01T00:00:05Z"));
        let json = serde_json::to_value(&status).unwrap();
        crate::testing::snapshot_settings().bind(|| insta::assert_json_snapshot!(json));
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [web]")
        );
    }
}
