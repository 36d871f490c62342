//! policy/v1 PodDisruptionBudget. Its status is the disruption controller's; the eviction
//! subresource ([`crate::api::eviction`]) reads and spends it.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::{Hooks, nothing, str_of};
use crate::api::object::{ensure_map, set_default};
use crate::api::status::FieldError;
use crate::api::table::{AGE, NAME, age, name};

fn pdb_status(obj: &mut Value) {
    let status = ensure_map(obj, "status");
    for f in [
        "disruptionsAllowed",
        "currentHealthy",
        "desiredHealthy",
        "expectedPods",
    ] {
        set_default(status, f, json!(0));
    }
}

/// An IntOrString that must be a non-negative number or a percentage of at most 100%.
fn int_or_percent(field: &str, v: &Value, errs: &mut Vec<FieldError>) {
    match v {
        Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => {
            errs.push(FieldError::invalid(field, v.clone(), "must be greater than or equal to 0"))
        }
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            None => errs.push(FieldError::invalid(
                field,
                v.clone(),
                "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
            )),
            Some(p) if p > 100 => errs.push(FieldError::invalid(field, v.clone(), "must not be greater than 100%")),
            Some(_) => {}
        },
        _ => {}
    }
}

fn validate_pdb(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        errs.push(FieldError::invalid_go(
            "spec",
            "policy.PodDisruptionBudgetSpec{...}",
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    if let Some(v) = min {
        int_or_percent("spec.minAvailable", v, errs);
    }
    if let Some(v) = max {
        int_or_percent("spec.maxUnavailable", v, errs);
    }
    if let Some(p) = str_of(&spec, "unhealthyPodEvictionPolicy")
        && p != "IfHealthyBudget"
        && p != "AlwaysAllow"
    {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            p,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
}

fn intstr(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".into(),
    }
}

fn pdb_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(obj),
        json!(intstr(obj.pointer("/spec/minAvailable"))),
        json!(intstr(obj.pointer("/spec/maxUnavailable"))),
        json!(
            obj.pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0)
        ),
        age(obj, now),
    ]
}

pub static POD_DISRUPTION_BUDGET: Hooks = Hooks {
    defaults: nothing,
    initial_status: pdb_status,
    validate: validate_pdb,
    columns: &[
        NAME,
        (
            "Min Available",
            "string",
            "",
            0,
            "The minimum number of pods that must be available.",
        ),
        (
            "Max Unavailable",
            "string",
            "",
            0,
            "The maximum number of pods that may be unavailable.",
        ),
        (
            "Allowed Disruptions",
            "integer",
            "",
            0,
            "Calculated number of pods that may be disrupted at this time.",
        ),
        AGE,
    ],
    cells: pdb_cells,
};
