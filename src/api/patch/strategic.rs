//! Strategic merge patch over JSON values.
//!
//! Maps merge recursively and `null` deletes a key. Lists whose field has a *patch merge key* in
//! the Kubernetes schema (containers by `name`, container ports by `containerPort`, service ports
//! by `port`, ...) merge element by element; `metadata.finalizers` merges as a set; every other
//! list is replaced whole. Directives: `$patch: delete|replace|merge` (in maps and list elements),
//! `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>` and `$retainKeys`.
//! The merge keys come from a static table for the kinds kemu serves ([`list_strategy`]).

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replace the whole list (atomic lists, the default).
    Replace,
    /// Merge elements that share the value of this key.
    MergeByKey(&'static str),
    /// A list of scalars merged as a set (`metadata.finalizers`).
    MergePrimitives,
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// The merge strategy of the list at `path` (field names from the object root, no indices).
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    let Some((field, parents)) = path.split_last() else {
        return Replace;
    };
    let parent = parents.last().copied().unwrap_or_default();
    match *field {
        "containers" | "initContainers" | "ephemeralContainers" => MergeByKey("name"),
        "env" | "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims" => {
            MergeByKey("name")
        }
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        "ports" if CONTAINER_LISTS.contains(&parent) => MergeByKey("containerPort"),
        "ports" if kind == "Service" && path == ["spec", "ports"] => MergeByKey("port"),
        "conditions" => MergeByKey("type"),
        "ownerReferences" => MergeByKey("uid"),
        "topologySpreadConstraints" => MergeByKey("topologyKey"),
        "hostAliases" => MergeByKey("ip"),
        "podIPs" | "hostIPs" if parents.first() == Some(&"status") => MergeByKey("ip"),
        "addresses" if kind == "Node" && parents == ["status"] => MergeByKey("type"),
        "finalizers" if parents == ["metadata"] => MergePrimitives,
        _ => Replace,
    }
}

/// Apply the strategic merge patch `patch` to `target` in place.
pub fn merge(kind: &str, target: &mut Value, patch: &Map<String, Value>) -> Result<(), String> {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    let mut path = Vec::new();
    match merge_map(kind, &mut path, map, patch)? {
        MapOutcome::Keep => Ok(()),
        MapOutcome::Delete => {
            *target = Value::Object(Map::new());
            Ok(())
        }
    }
}

enum MapOutcome {
    Keep,
    Delete,
}

fn merge_map<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    target: &mut Map<String, Value>,
    patch: &'a Map<String, Value>,
) -> Result<MapOutcome, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(MapOutcome::Delete),
        // Replace: drop what is there, then merge into the empty map (which strips directives).
        Some("replace") => target.clear(),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?}")),
    }
    let mut orders: Vec<(&str, &Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let list = value
                .as_array()
                .ok_or_else(|| format!("{key} must be a list"))?;
            orders.push((field, list));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value
                .as_array()
                .ok_or_else(|| format!("{key} must be a list"))?;
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        path.push(key.as_str());
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(sub) => {
                let entry = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let inner = entry.as_object_mut().expect("made an object above");
                if let MapOutcome::Delete = merge_map(kind, path, inner, sub)? {
                    target.remove(key);
                }
            }
            Value::Array(items) => {
                let strategy = list_strategy(kind, path);
                let current = match target.remove(key) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                let merged = merge_list(kind, path, strategy, current, items)?;
                target.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        path.push(field);
        let strategy = list_strategy(kind, path);
        path.pop();
        if let Some(Value::Array(list)) = target.get_mut(field) {
            reorder(list, order, strategy);
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(MapOutcome::Keep)
}

fn merge_list<'a>(
    kind: &str,
    path: &mut Vec<&'a str>,
    strategy: ListStrategy,
    mut current: Vec<Value>,
    patch: &'a [Value],
) -> Result<Vec<Value>, String> {
    let replace_all = patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"));
    match strategy {
        ListStrategy::Replace => Ok(patch.iter().map(strip_directives).collect()),
        _ if replace_all => Ok(patch
            .iter()
            .filter(|v| v.get("$patch").and_then(Value::as_str) != Some("replace"))
            .map(strip_directives)
            .collect()),
        ListStrategy::MergePrimitives => {
            for v in patch {
                if !current.contains(v) {
                    current.push(v.clone());
                }
            }
            Ok(current)
        }
        ListStrategy::MergeByKey(merge_key) => {
            for item in patch {
                let Some(item_map) = item.as_object() else {
                    if !current.contains(item) {
                        current.push(item.clone());
                    }
                    continue;
                };
                let key_value = item_map.get(merge_key);
                let position = key_value
                    .and_then(|kv| current.iter().position(|c| c.get(merge_key) == Some(kv)));
                if item_map.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(kv) = key_value {
                        current.retain(|c| c.get(merge_key) != Some(kv));
                    }
                    continue;
                }
                match position {
                    Some(i) => {
                        let existing = current[i]
                            .as_object_mut()
                            .ok_or("list element is not an object")?;
                        if let MapOutcome::Delete = merge_map(kind, path, existing, item_map)? {
                            current.remove(i);
                        }
                    }
                    None => {
                        let mut fresh = Map::new();
                        merge_map(kind, path, &mut fresh, item_map)?;
                        current.push(Value::Object(fresh));
                    }
                }
            }
            Ok(current)
        }
    }
}

/// Order `list` as `order` says; elements not named keep their relative order, after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let key_of = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeByKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(key_of).collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest: Vec<Value> = Vec::new();
    for v in list.drain(..) {
        match wanted.iter().position(|w| *w == key_of(&v)) {
            Some(i) => named.push((i, v)),
            None => rest.push(v),
        }
    }
    named.sort_by_key(|(i, _)| *i);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

/// A patch value used as new content: directives and nulls removed.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: &str, target: Value, patch: Value) -> String {
        let mut t = target;
        merge(kind, &mut t, patch.as_object().unwrap()).unwrap();
        serde_json::to_string_pretty(&t).unwrap()
    }

    fn deployment() -> Value {
        json!({"spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "a", "image": "nginx:1.25", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
             "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}]},
            {"name": "b", "image": "busybox", "args": ["sleep", "1"]}]}}}})
    }

    #[test]
    fn kubectl_apply_patch() {
        // The patch kubectl sent when changing replicas, one image and one env var (research note §7).
        let patch = json!({"spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "nginx:1.27",
                "$setElementOrder/env": [{"name": "X"}, {"name": "Z"}],
                "env": [{"name": "Z", "value": "3"}, {"$patch": "delete", "name": "Y"}]}]}}}});
        let out = run("Deployment", deployment(), patch);
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn directives() {
        let cases = [
            // A container removed, a new one added in a given order.
            json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [{"name": "b", "$patch": "delete"}, {"name": "c", "image": "redis"}]}}}}),
            // Ports merge by containerPort; a null deletes a field.
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a",
                "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 8080}], "image": null}]}}}}),
            // $patch: replace on a list and on a map.
            json!({"spec": {"template": {"spec": {"containers": [{"name": "z", "image": "x"}, {"$patch": "replace"}]}}}}),
            json!({"spec": {"template": {"metadata": {"labels": {"$patch": "replace", "new": "1"}}}}}),
            // Atomic lists are replaced whole.
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "args": ["sleep", "9"]}]}}}}),
            // $retainKeys drops the keys not listed.
            json!({"spec": {"$retainKeys": ["template", "strategy"], "strategy": {"type": "Recreate"}}}),
        ];
        let mut out = String::new();
        for patch in cases {
            out.push_str(&format!(
                "--- {patch}\n{}\n",
                run("Deployment", deployment(), patch.clone())
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn service_ports_and_finalizers() {
        let svc = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": 8080}, {"name": "https", "port": 443}]}});
        let patch = json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 8443, "name": "alt"}]}});
        let out = run("Service", svc, patch);
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn strategies() {
        assert_eq!(
            list_strategy("Pod", &["spec", "containers", "ports"]),
            ListStrategy::MergeByKey("containerPort")
        );
        assert_eq!(
            list_strategy("Service", &["spec", "ports"]),
            ListStrategy::MergeByKey("port")
        );
        assert_eq!(
            list_strategy("EndpointSlice", &["ports"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy("Pod", &["spec", "containers", "args"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy("Node", &["status", "conditions"]),
            ListStrategy::MergeByKey("type")
        );
    }
}
