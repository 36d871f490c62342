//! Small facts about objects that several controllers (and the scheduler) share: controller
//! references, pod phases and readiness, label selectors.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use rand::Rng;

use crate::api::selectors::{self, LabelRequirement};

/// The owner reference with `controller: true`, if any.
pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// The uid of the object's controller, if any.
pub fn controller_uid(meta: &ObjectMeta) -> Option<String> {
    controller_ref(meta).map(|o| o.uid.clone())
}

/// `Succeeded` or `Failed`: the pod will not run again.
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Not terminated and not being deleted (`controller.IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    !is_terminated(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// The pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// When the pod became Ready (the Ready condition's `lastTransitionTime`), if it is Ready.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Ready for at least `min_ready_seconds` at `now` (`podutil.IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(since) => since + jiff::SignedDuration::from_secs(i64::from(min_ready_seconds)) <= now,
    }
}

/// A label selector that can match label maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    inner: selectors::LabelSelector,
    /// An empty `matchLabels` selector matches nothing for controllers (a nil RC selector too).
    empty_matches_nothing: bool,
}

impl Selector {
    /// An RC's `spec.selector` map (empty: matches nothing, as the controller treats it).
    pub fn from_map(map: Option<&BTreeMap<String, String>>) -> Selector {
        let reqs = map
            .into_iter()
            .flatten()
            .map(|(k, v)| LabelRequirement::Equals(k.clone(), v.clone()))
            .collect();
        Selector {
            inner: selectors::LabelSelector(reqs),
            empty_matches_nothing: true,
        }
    }

    /// A `metav1.LabelSelector` (empty matches everything, as `LabelSelectorAsSelector`).
    pub fn from_label_selector(sel: &LabelSelector) -> Selector {
        let value = serde_json::to_value(sel).unwrap_or_default();
        Selector {
            inner: selectors::from_label_selector(&value),
            empty_matches_nothing: false,
        }
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        if self.inner.is_empty() {
            return !self.empty_matches_nothing;
        }
        self.inner
            .matches(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
    }
}

/// Whether the pod's labels contain every template label (`fullyLabeledReplicas`).
pub fn fully_labeled(
    pod_labels: Option<&BTreeMap<String, String>>,
    template: Option<&BTreeMap<String, String>>,
) -> bool {
    template
        .into_iter()
        .flatten()
        .all(|(k, v)| pod_labels.and_then(|l| l.get(k)) == Some(v))
}

/// The alphabet of generated name suffixes (`k8s.io/apimachinery/pkg/util/rand`): no vowels, no
/// characters that look alike.
pub const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `<prefix><5 random characters>`, as the API server's `generateName`.
pub fn generate_name(prefix: &str, rng: &mut impl Rng) -> String {
    let mut name = String::with_capacity(prefix.len() + 5);
    name.push_str(prefix);
    for _ in 0..5 {
        name.push(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn selectors_and_names() {
        let labels = BTreeMap::from([("name".to_string(), "nginx".to_string())]);
        let rc = Selector::from_map(Some(&labels));
        assert!(rc.matches(Some(&labels)));
        assert!(!rc.matches(None));
        assert!(!Selector::from_map(None).matches(Some(&labels)));
        let rs: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "name", "operator": "In", "values": ["nginx", "web"]}]
        }))
        .unwrap();
        assert!(Selector::from_label_selector(&rs).matches(Some(&labels)));
        assert!(Selector::from_label_selector(&LabelSelector::default()).matches(None));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let name = generate_name("nginx-controller-", &mut rng);
        assert_eq!(name.len(), "nginx-controller-".len() + 5);
        assert!(name[17..].bytes().all(|b| NAME_ALPHABET.contains(&b)));
    }
}
