//! batch/v1 Job and CronJob.
//!
//! A Job without `manualSelector` gets the selector the real server generates from its uid
//! (`batch.kubernetes.io/controller-uid`), with the matching labels on its pod template.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Hooks, arr, immutable, non_negative, nothing, str_of};
use crate::api::defaults::{ensure_map_in, pod_spec as default_pod_spec};
use crate::api::object::{ensure_map, set_default, str_at};
use crate::api::selectors::format_label_selector;
use crate::api::status::FieldError;
use crate::api::table::{
    AGE, CONTAINERS, IMAGES, NAME, age, human_duration, name, parse_since, template_containers,
};
use crate::api::validation;

pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

/// Defaults of a Job's pod template and the fields a JobSpec has (`SetDefaults_Job`).
fn job_spec_defaults(spec: &mut Map<String, Value>) {
    let completions = spec.get("completions").is_some_and(|v| !v.is_null());
    let parallelism = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !completions && !parallelism {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|v| !v.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    let template = ensure_map_in(spec, "template");
    default_pod_spec(ensure_map_in(template, "spec"));
}

fn job_defaults(obj: &mut Value) {
    let uid = str_at(obj, "/metadata/uid").to_string();
    let job_name = str_at(obj, "/metadata/name").to_string();
    let spec = ensure_map(obj, "spec");
    job_spec_defaults(spec);
    let manual = spec.get("manualSelector") == Some(&json!(true));
    // The generated selector, once the server has given the Job its uid.
    if !manual && !uid.is_empty() && spec.get("selector").is_none_or(Value::is_null) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {CONTROLLER_UID: uid}}),
        );
        let labels = ensure_map_in(
            ensure_map_in(ensure_map_in(spec, "template"), "metadata"),
            "labels",
        );
        for (k, v) in [
            (CONTROLLER_UID, &uid),
            (JOB_NAME, &job_name),
            ("controller-uid", &uid),
            ("job-name", &job_name),
        ] {
            labels.entry(k).or_insert_with(|| json!(v));
        }
    }
    // A Job without labels carries its pods' (`SetDefaults_Job`).
    let template_labels = obj.pointer("/spec/template/metadata/labels").cloned();
    let meta = ensure_map(obj, "metadata");
    let unlabelled = meta
        .get("labels")
        .and_then(Value::as_object)
        .is_none_or(|l| l.is_empty());
    if unlabelled
        && let Some(labels) =
            template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
    {
        meta.insert("labels".into(), labels);
    }
}

/// A Job's or a job template's pods must not restart in place.
fn job_template(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    match spec.get("template").filter(|t| t.is_object()) {
        None => errs.push(FieldError::required(format!("{path}.template"), "")),
        Some(t) => {
            let pod = t.get("spec").cloned().unwrap_or(Value::Null);
            let policy = str_of(&pod, "restartPolicy").unwrap_or("Always");
            let mut without_policy = pod.clone();
            if let Some(m) = without_policy.as_object_mut() {
                m.remove("restartPolicy");
            }
            validation::pod_spec(
                &format!("{path}.template.spec"),
                &without_policy,
                false,
                errs,
            );
            if policy != "OnFailure" && policy != "Never" {
                errs.push(FieldError::not_supported(
                    format!("{path}.template.spec.restartPolicy"),
                    policy,
                    &["OnFailure", "Never"],
                ));
            }
        }
    }
    for f in ["parallelism", "completions", "backoffLimit"] {
        non_negative(spec, &format!("/{f}"), &format!("{path}.{f}"), errs);
    }
    if let Some(n) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && n <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            n,
            "must be greater than 0",
        ));
    }
    if let Some(mode) = str_of(spec, "completionMode")
        && mode != "NonIndexed"
        && mode != "Indexed"
    {
        errs.push(FieldError::not_supported(
            format!("{path}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    if str_of(spec, "completionMode") == Some("Indexed")
        && spec.get("completions").is_none_or(Value::is_null)
    {
        errs.push(FieldError::required(
            format!("{path}.completions"),
            "when completion mode is Indexed",
        ));
    }
}

fn validate_job(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    job_template("spec", &spec, errs);
    match spec.get("selector").filter(|s| s.is_object()) {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            let selector = crate::api::selectors::from_label_selector(sel);
            let labels = spec
                .pointer("/template/metadata/labels")
                .and_then(Value::as_object);
            if !selector.matches(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)) {
                errs.push(FieldError::invalid_go(
                    "spec.template.metadata.labels",
                    validation::go_map(labels),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
    if let Some(old) = old {
        let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        immutable(
            "spec.selector",
            spec.get("selector"),
            old_spec.get("selector"),
            errs,
        );
        immutable(
            "spec.completionMode",
            spec.get("completionMode"),
            old_spec.get("completionMode"),
            errs,
        );
        // The template may change only while the Job is suspended (for its scheduling fields);
        // kemu keeps the plain rule.
        immutable(
            "spec.template",
            spec.get("template"),
            old_spec.get("template"),
            errs,
        );
        if str_of(&spec, "completionMode") != Some("Indexed") {
            immutable(
                "spec.completions",
                spec.get("completions"),
                old_spec.get("completions"),
                errs,
            );
        }
    }
}

fn has_condition(obj: &Value, ty: &str) -> bool {
    arr(obj, "/status/conditions")
        .iter()
        .any(|c| str_of(c, "type") == Some(ty) && str_of(c, "status") == Some("True"))
}

fn job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = obj
        .pointer("/status/succeeded")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match obj
            .pointer("/spec/parallelism")
            .and_then(Value::as_i64)
            .unwrap_or(0)
        {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = parse_since(obj, "/status/startTime");
    let end = parse_since(obj, "/status/completionTime");
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.as_second() - s.as_second()),
        (Some(s), Some(e)) => human_duration(e.as_second() - s.as_second()),
    };
    let deleting = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let status = if has_condition(obj, "Complete") {
        "Complete"
    } else if has_condition(obj, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if has_condition(obj, "Suspended") {
        "Suspended"
    } else if has_condition(obj, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (containers, images) = template_containers(obj, "/spec/template/spec/containers");
    vec![
        name(obj),
        json!(status),
        json!(completions),
        json!(duration),
        age(obj, now),
        json!(containers),
        json!(images),
        json!(format_label_selector(obj.pointer("/spec/selector"))),
    ]
}

pub static JOB: Hooks = Hooks {
    defaults: job_defaults,
    initial_status: nothing,
    validate: validate_job,
    columns: &[
        NAME,
        ("Status", "string", "", 0, "Status of the job."),
        (
            "Completions",
            "string",
            "",
            0,
            "The number of pods which reached phase Succeeded.",
        ),
        (
            "Duration",
            "string",
            "",
            0,
            "Time required to complete the job.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        (
            "Selector",
            "string",
            "",
            1,
            "A label query over pods that should match the pod count.",
        ),
    ],
    cells: job_cells,
};

// ----- CronJob -----

fn cron_job_defaults(obj: &mut Value) {
    let spec = ensure_map(obj, "spec");
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    let job_spec = ensure_map_in(ensure_map_in(spec, "jobTemplate"), "spec");
    let template = ensure_map_in(job_spec, "template");
    default_pod_spec(ensure_map_in(template, "spec"));
}

const MACROS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// One field of a five-field schedule: `*`, `*/n`, `a`, `a-b`, `a-b/n`, lists of those, and
/// month or weekday names where they apply.
fn cron_field(field: &str, min: u32, max: u32, names: &[&str]) -> bool {
    let value = |s: &str| -> Option<u32> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Some(i as u32 + min);
        }
        s.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
    };
    field.split(',').all(|part| {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if step.is_some_and(|s| s.parse::<u32>().map_or(true, |n| n == 0)) {
            return false;
        }
        match range {
            "*" | "?" => true,
            r => match r.split_once('-') {
                Some((a, b)) => matches!((value(a), value(b)), (Some(a), Some(b)) if a <= b),
                None => value(r).is_some(),
            },
        }
    })
}

/// Whether `schedule` parses as robfig/cron's standard parser reads it.
pub fn valid_schedule(schedule: &str) -> bool {
    let s = schedule.trim();
    if MACROS.contains(&s) {
        return true;
    }
    if let Some(every) = s.strip_prefix("@every ") {
        return every.trim().parse::<jiff::Span>().is_ok()
            || every.trim().parse::<jiff::SignedDuration>().is_ok();
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && cron_field(fields[0], 0, 59, &[])
        && cron_field(fields[1], 0, 23, &[])
        && cron_field(fields[2], 1, 31, &[])
        && cron_field(fields[3], 1, 12, MONTHS)
        && cron_field(fields[4], 0, 6, DAYS)
}

fn validate_cron_job(obj: &Value, _old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let name = str_at(obj, "/metadata/name");
    // The Job names it creates get an 11-character suffix.
    if name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    match str_of(&spec, "schedule") {
        None | Some("") => errs.push(FieldError::required("spec.schedule", "")),
        Some(s) if s.contains("TZ=") || s.contains("CRON_TZ=") => errs.push(FieldError::invalid(
            "spec.schedule",
            s,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(s) if !valid_schedule(s) => errs.push(FieldError::invalid(
            "spec.schedule",
            s,
            "unparseable cron schedule",
        )),
        _ => {}
    }
    if let Some(tz) = str_of(&spec, "timeZone")
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            tz,
            "unknown time zone",
        ));
    }
    let policy = str_of(&spec, "concurrencyPolicy").unwrap_or("Allow");
    if !["Allow", "Forbid", "Replace"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            policy,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for f in [
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
        "startingDeadlineSeconds",
    ] {
        non_negative(&spec, &format!("/{f}"), &format!("spec.{f}"), errs);
    }
    let job_spec = spec
        .pointer("/jobTemplate/spec")
        .cloned()
        .unwrap_or(Value::Null);
    job_template("spec.jobTemplate.spec", &job_spec, errs);
}

fn cron_job_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let last = match parse_since(obj, "/status/lastScheduleTime") {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<none>".into(),
    };
    let suspend = obj
        .pointer("/spec/suspend")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (containers, images) =
        template_containers(obj, "/spec/jobTemplate/spec/template/spec/containers");
    vec![
        name(obj),
        json!(str_at(obj, "/spec/schedule")),
        json!(
            obj.pointer("/spec/timeZone")
                .and_then(Value::as_str)
                .unwrap_or("<none>")
        ),
        json!(suspend.to_string()),
        json!(arr(obj, "/status/active").len()),
        json!(last),
        age(obj, now),
        json!(containers),
        json!(images),
        json!(format_label_selector(
            obj.pointer("/spec/jobTemplate/spec/selector")
        )),
    ]
}

pub static CRON_JOB: Hooks = Hooks {
    defaults: cron_job_defaults,
    initial_status: nothing,
    validate: validate_cron_job,
    columns: &[
        NAME,
        (
            "Schedule",
            "string",
            "",
            0,
            "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        ),
        (
            "Timezone",
            "string",
            "",
            0,
            "The time zone name for the given schedule.",
        ),
        (
            "Suspend",
            "boolean",
            "",
            0,
            "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.",
        ),
        (
            "Active",
            "integer",
            "",
            0,
            "A list of pointers to currently running jobs.",
        ),
        (
            "Last Schedule",
            "string",
            "",
            0,
            "Information when was the last time the job was successfully scheduled.",
        ),
        AGE,
        CONTAINERS,
        IMAGES,
        (
            "Selector",
            "string",
            "",
            1,
            "A label query over pods that should match the pod count.",
        ),
    ],
    cells: cron_job_cells,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        for ok in [
            "*/1 * * * *",
            "0 3 * * 1-5",
            "@hourly",
            "5,10 0-6/2 1 jan-mar sun",
            "@every 1h30m",
        ] {
            assert!(valid_schedule(ok), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* * * * 7x",
            "*/0 * * * *",
            "@often",
        ] {
            assert!(!valid_schedule(bad), "{bad}");
        }
    }

    #[test]
    fn a_job_gets_its_generated_selector() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u1"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}});
        job_defaults(&mut job);
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "u1"}})
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"][JOB_NAME],
            "pi"
        );
        assert_eq!(
            (
                job["spec"]["completions"].clone(),
                job["spec"]["backoffLimit"].clone()
            ),
            (json!(1), json!(6))
        );
        let mut errs = Vec::new();
        validate_job(&job, None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }
}
