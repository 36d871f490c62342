//! `POST pods/<name>/eviction`: a pod deletion that respects PodDisruptionBudgets, as
//! kube-apiserver's eviction REST handler (`pkg/registry/core/pod/storage/eviction.go`) does it.
//!
//! A pod that is not running (pending, finished, or already being deleted) is deleted at once.
//! Otherwise the one PodDisruptionBudget that selects it must allow a disruption: the server
//! spends one (`status.disruptionsAllowed` down by one, the pod noted in `status.disruptedPods`)
//! and deletes the pod, all in one registry transaction; a budget that allows none, or that the
//! disruption controller has not yet processed, answers 429 and kubectl drain retries.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::object::{now_rfc3339, str_at};
use super::registry::Txn;
use super::request::{Query, Target};
use super::resources::id;
use super::rest::{self, DeleteOptions};
use super::selectors::from_label_selector;
use super::server::Api;
use super::status::{ApiError, ApiResult};

/// `policyv1.DisruptionBudgetCause`.
const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";
/// `MaxDisruptedPodSize`: evictions the disruption controller has not confirmed yet.
const MAX_DISRUPTED_PODS: usize = 2000;
const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

pub fn evict(api: &Api, t: &Target, eviction: &Value, q: &Query) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let kind = str_at(eviction, "/kind");
    if !kind.is_empty() && kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "{kind} is not a policy/v1 Eviction"
        )));
    }
    let named = str_at(eviction, "/metadata/name");
    if !named.is_empty() && named != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let opts = rest::delete_options(eviction.get("deleteOptions").cloned(), q)?;
    api.registry.txn(|txn| evict_in(txn, t, &name, &opts))?;
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok((StatusCode::CREATED, axum::Json(status)).into_response())
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True")
}

fn evict_in(txn: &mut Txn<'_>, t: &Target, name: &str, opts: &DeleteOptions) -> ApiResult<()> {
    let ns = t.ns().to_string();
    let pod = txn
        .get(id::PODS, &ns, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?
        .value();
    let phase = str_at(&pod, "/status/phase");
    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    // `canIgnorePDB`: a pod that does not count for any budget.
    if deleting || matches!(phase, "Succeeded" | "Failed" | "Pending") {
        return delete(txn, t, name, pod, opts);
    }
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    let budgets: Vec<Value> = txn
        .list(id::POD_DISRUPTION_BUDGETS, Some(&ns))
        .iter()
        .map(|b| b.value())
        .filter(
            |b| match b.pointer("/spec/selector").filter(|s| s.is_object()) {
                // policy/v1: a nil selector selects nothing, an empty one every pod.
                None => false,
                Some(sel) => from_label_selector(sel)
                    .matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)),
            },
        )
        .collect();
    let budget = match budgets.as_slice() {
        [] => return delete(txn, t, name, pod, opts),
        [one] => one.clone(),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let status = |f: &str| {
        budget
            .pointer(&format!("/status/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    if !is_ready(&pod) {
        let policy = budget
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            .unwrap_or("IfHealthyBudget");
        let healthy_budget =
            status("currentHealthy") >= status("desiredHealthy") && status("desiredHealthy") > 0;
        if policy == "AlwaysAllow" || healthy_budget {
            return delete(txn, t, name, pod, opts);
        }
    }
    let budget = spend(&budget, name, opts.dry_run)?;
    if !opts.dry_run {
        txn.put(id::POD_DISRUPTION_BUDGETS, budget)?;
    }
    delete(txn, t, name, pod, opts)
}

/// `checkAndDecrement`: the budget after one more disruption, or why there cannot be one.
fn spend(budget: &Value, pod: &str, dry_run: bool) -> ApiResult<Value> {
    let name = str_at(budget, "/metadata/name");
    let n = |p: &str| budget.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    if n("/status/observedGeneration") < n("/metadata/generation") {
        return Err(ApiError::too_many_requests(VIOLATION).with_cause(
            DISRUPTION_BUDGET_CAUSE,
            &format!("The disruption budget {name} is still being processed by the server."),
            None,
        ));
    }
    let allowed = n("/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::forbidden(
            "poddisruptionbudget.policy",
            name,
            "pdb disruptions allowed is negative",
        ));
    }
    let disrupted = budget
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::forbidden(
            "poddisruptionbudget.policy",
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(ApiError::too_many_requests(VIOLATION).with_cause(
            DISRUPTION_BUDGET_CAUSE,
            &format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                n("/status/desiredHealthy"),
                n("/status/currentHealthy")
            ),
            None,
        ));
    }
    let mut out = budget.clone();
    out["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if dry_run {
        return Ok(out);
    }
    if !out["status"]["disruptedPods"].is_object() {
        out["status"]["disruptedPods"] = json!({});
    }
    out["status"]["disruptedPods"][pod] = json!(now_rfc3339());
    if allowed - 1 == 0 {
        set_condition(
            &mut out,
            json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods",
                   "message": "", "observedGeneration": n("/metadata/generation"),
                   "lastTransitionTime": now_rfc3339()}),
        );
    }
    Ok(out)
}

fn set_condition(obj: &mut Value, condition: Value) {
    let ty = condition["type"].clone();
    let list = obj["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = list {
        match list.iter_mut().find(|c| c["type"] == ty) {
            Some(existing) if existing["status"] == condition["status"] => {}
            Some(existing) => *existing = condition,
            None => list.push(condition),
        }
    }
}

/// Mark the pod as disrupted by the eviction (`DisruptionTarget`, kube 1.31+) and delete it with
/// the eviction's options.
fn delete(
    txn: &mut Txn<'_>,
    t: &Target,
    name: &str,
    mut pod: Value,
    opts: &DeleteOptions,
) -> ApiResult<()> {
    if !opts.dry_run {
        if !pod["status"].is_object() {
            pod["status"] = json!({});
        }
        let before = pod.clone();
        set_condition(
            &mut pod,
            json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                   "message": "Eviction API: evicting", "lastTransitionTime": now_rfc3339()}),
        );
        if pod != before {
            txn.put(id::PODS, pod)?;
        }
    }
    rest::delete_in(txn, t, name, opts).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({"metadata": {"name": "web", "generation": generation},
               "status": {"disruptionsAllowed": allowed, "observedGeneration": observed,
                          "currentHealthy": 2, "desiredHealthy": 2}})
    }

    #[test]
    fn a_budget_is_spent_or_refuses() {
        let spent = spend(&budget(1, 1, 1), "p", false).unwrap();
        assert_eq!(spent["status"]["disruptionsAllowed"], 0);
        assert!(spent["status"]["disruptedPods"]["p"].is_string());
        assert_eq!(
            spent["status"]["conditions"][0]["reason"],
            "InsufficientPods"
        );

        let none = spend(&budget(0, 1, 1), "p", false).unwrap_err();
        assert_eq!(
            (none.code, none.reason, none.message.as_str()),
            (429, "TooManyRequests", VIOLATION)
        );
        assert_eq!(
            none.details.unwrap()["causes"][0],
            json!({"reason": "DisruptionBudget", "message": "The disruption budget web needs 2 healthy pods and has 2 currently"})
        );
        let unseen = spend(&budget(5, 2, 1), "p", false).unwrap_err();
        assert!(
            unseen.details.unwrap()["causes"][0]["message"]
                .as_str()
                .unwrap()
                .ends_with("is still being processed by the server.")
        );
        // A dry run spends nothing it keeps.
        let dry = spend(&budget(1, 1, 1), "p", true).unwrap();
        assert!(dry["status"].get("disruptedPods").is_none());
    }
}
