//! The status conditions of a namespace being deleted, worded as kube's namespace deleter words
//! them (`status_condition_utils.go`): five condition types, each `False` with its "ok" reason
//! and message, or `True` with what went wrong or what remains. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NamespaceCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What one pass over a namespace's content found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Content {
    pub discovery_error: Option<String>,
    /// `plural.group` of each resource whose deletion failed, with the error.
    pub delete_errors: Vec<String>,
    /// Objects left, by `plural.group`.
    pub remaining: BTreeMap<String, usize>,
    /// Objects left, by finalizer they carry.
    pub finalizers: BTreeMap<String, usize>,
}

impl Content {
    /// Nothing left and nothing failed: the namespace can be finalized.
    pub fn is_empty(&self) -> bool {
        self.discovery_error.is_none()
            && self.delete_errors.is_empty()
            && self.remaining.values().all(|n| *n == 0)
    }
}

/// (type, ok reason, ok message), in kube's order.
const TYPES: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
];

/// The failing conditions `content` shows: (type, reason, message).
fn failing(content: &Content) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    if let Some(e) = &content.discovery_error {
        out.push((TYPES[0].0, "DiscoveryFailed", e.clone()));
    }
    if !content.delete_errors.is_empty() {
        let mut msgs = content.delete_errors.clone();
        msgs.sort();
        out.push((
            TYPES[2].0,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                msgs.len(),
                msgs.join(", ")
            ),
        ));
    }
    let mut left: Vec<String> = content
        .remaining
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(gr, n)| format!("{gr} has {n} resource instances"))
        .collect();
    if !left.is_empty() {
        left.sort();
        out.push((
            TYPES[3].0,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", left.join(", ")),
        ));
    }
    let mut held: Vec<String> = content
        .finalizers
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect();
    if !held.is_empty() {
        held.sort();
        out.push((
            TYPES[4].0,
            "SomeFinalizerRemain",
            format!("Some finalizers are remaining: {}", held.join(", ")),
        ));
    }
    out
}

/// The new conditions, if they differ from `old` (`updateConditions`): every type present, a
/// changed status gets a new transition time.
pub fn update(
    old: &[NamespaceCondition],
    content: &Content,
    now: jiff::Timestamp,
) -> Option<Vec<NamespaceCondition>> {
    let failing = failing(content);
    let mut out: Vec<NamespaceCondition> = old.to_vec();
    let mut changed = false;
    for (ty, ok_reason, ok_message) in TYPES {
        let (status, reason, message) = match failing.iter().find(|f| f.0 == ty) {
            Some((_, r, m)) => ("True", *r, m.clone()),
            None => ("False", ok_reason, ok_message.to_string()),
        };
        match out.iter_mut().find(|c| c.type_ == ty) {
            None => {
                out.push(NamespaceCondition {
                    type_: ty.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
            Some(c) => {
                if c.status != status
                    || c.reason.as_deref() != Some(reason)
                    || c.message.as_deref() != Some(message.as_str())
                {
                    if c.status != status {
                        c.last_transition_time = Some(Time(now));
                    }
                    c.status = status.into();
                    c.reason = Some(reason.into());
                    c.message = Some(message);
                    changed = true;
                }
            }
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_remains() {
        let now: jiff::Timestamp = "2026-12-05T12:00:00Z".parse().unwrap();
        let content = Content {
            remaining: BTreeMap::from([("pods.".into(), 2), ("jobs.batch".into(), 1)]),
            finalizers: BTreeMap::from([("foregroundDeletion".into(), 1)]),
            ..Default::default()
        };
        let first = update(&[], &content, now).expect("new conditions");
        let shown: Vec<String> = first
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {}",
                    c.type_,
                    c.status,
                    c.reason.as_deref().unwrap_or(""),
                    c.message.as_deref().unwrap_or("")
                )
            })
            .collect();
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(shown.join("\n")));
        assert_eq!(update(&first, &content, now), None, "nothing changed");
        let later: jiff::Timestamp = "2026-12-05T12:00:05Z".parse().unwrap();
        let done = update(&first, &Content::default(), later).expect("changed");
        let remaining = done
            .iter()
            .find(|c| c.type_ == "NamespaceContentRemaining")
            .unwrap();
        assert_eq!(remaining.status, "False");
        assert_eq!(remaining.reason.as_deref(), Some("ContentRemoved"));
        assert_eq!(remaining.last_transition_time, Some(Time(later)));
        let discovered = done
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionDiscoveryFailure")
            .unwrap();
        assert_eq!(discovered.last_transition_time, Some(Time(now)));
        assert!(Content::default().is_empty());
        assert!(!content.is_empty());
    }
}
