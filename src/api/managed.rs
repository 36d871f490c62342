//! Field management (`metadata.managedFields`) and server-side apply, after kube-apiserver's
//! structured-merge-diff: every write records which fields its manager set, an apply conflicts
//! with other managers over fields whose values it would change (409 unless `force`), and a
//! field an applier stops applying is removed unless another manager still owns it.
//!
//! A field set is a set of [`Path`]s: the leaves of an object (scalars, empty maps and atomic
//! lists), the items of associative lists (`k:{"name":"web"}`, merged by the key of
//! [`list_strategy`]) and of set lists (`v:"x"`); it is stored as kube's FieldsV1 trie. Not
//! tracked, as kube strips them: apiVersion, kind, the server's metadata and, where the kind has
//! a status subresource, the status of the main resource.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::patch::strategic::{ListStrategy, list_strategy};
use super::status::ApiError;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Field(String),
    /// An associative list item by its key (`{"name":"web"}` as canonical JSON).
    Key(String),
    /// A set list item (its JSON).
    Value(String),
}

pub type Path = Vec<Elem>;
pub type FieldSet = BTreeSet<Path>;

/// Metadata fields the server owns (kube's field manager strips them).
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// The field set of `obj` (an object of `kind`); `status` is left out when `skip_status`.
pub fn fields_of(kind: &str, obj: &Value, skip_status: bool) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return set;
    };
    for (k, v) in map {
        let skip = matches!(k.as_str(), "apiVersion" | "kind") || (skip_status && k == "status");
        if skip || v.is_null() {
            continue;
        }
        let mut path = vec![Elem::Field(k.clone())];
        if k == "metadata"
            && let Some(meta) = v.as_object()
        {
            for (mk, mv) in meta {
                if SERVER_META.contains(&mk.as_str()) || mv.is_null() {
                    continue;
                }
                path.push(Elem::Field(mk.clone()));
                walk(
                    kind,
                    &mut vec!["metadata", mk.as_str()],
                    mv,
                    &mut path,
                    &mut set,
                );
                path.pop();
            }
            continue;
        }
        walk(kind, &mut vec![k.as_str()], v, &mut path, &mut set);
    }
    set
}

fn key_of(item: &Value, key: &str) -> Option<String> {
    let v = item.get(key)?;
    Some(json!({ key: v }).to_string())
}

fn walk<'a>(
    kind: &str,
    names: &mut Vec<&'a str>,
    v: &'a Value,
    path: &mut Path,
    set: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                names.push(k);
                path.push(Elem::Field(k.clone()));
                walk(kind, names, child, path, set);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => match list_strategy(kind, names) {
            ListStrategy::MergeByKey(key) if items.iter().all(|i| key_of(i, key).is_some()) => {
                for item in items {
                    path.push(Elem::Key(key_of(item, key).expect("checked above")));
                    set.insert(path.clone());
                    if let Some(m) = item.as_object() {
                        for (k, child) in m {
                            if child.is_null() {
                                continue;
                            }
                            names.push(k);
                            path.push(Elem::Field(k.clone()));
                            walk(kind, names, child, path, set);
                            path.pop();
                            names.pop();
                        }
                    }
                    path.pop();
                }
            }
            ListStrategy::MergePrimitives => {
                for item in items {
                    path.push(Elem::Value(item.to_string()));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            // Atomic: the list is one value.
            _ => {
                set.insert(path.clone());
            }
        },
        _ => {
            set.insert(path.clone());
        }
    }
}

/// The value at `path` in `obj`, if there is one.
pub fn get<'a>(obj: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut cur = obj;
    for e in path {
        cur = match e {
            Elem::Field(f) => cur.get(f)?,
            Elem::Key(k) => {
                let (key, want) = parse_key(k)?;
                cur.as_array()?
                    .iter()
                    .find(|i| i.get(&key) == Some(&want))?
            }
            Elem::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
        };
    }
    Some(cur)
}

fn parse_key(k: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(k).ok()?;
    let (key, want) = v.as_object()?.iter().next()?;
    Some((key.clone(), want.clone()))
}

/// Remove the value at `path` from `obj` (nothing if absent).
fn remove(obj: &mut Value, path: &[Elem]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for e in parents {
        let next = match e {
            Elem::Field(f) => cur.get_mut(f),
            Elem::Key(k) => parse_key(k).and_then(|(key, want)| {
                cur.as_array_mut()?
                    .iter_mut()
                    .find(|i| i.get(&key) == Some(&want))
            }),
            Elem::Value(_) => None,
        };
        let Some(next) = next else { return };
        cur = next;
    }
    match last {
        Elem::Field(f) => {
            cur.as_object_mut().map(|m| m.remove(f));
        }
        Elem::Key(k) => {
            if let (Some((key, want)), Some(list)) = (parse_key(k), cur.as_array_mut()) {
                list.retain(|i| i.get(&key) != Some(&want));
            }
        }
        Elem::Value(v) => {
            if let (Ok(want), Some(list)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
                list.retain(|i| *i != want);
            }
        }
    }
}

/// `.spec.containers[name="web"].image`, as kube prints a path.
pub fn path_string(path: &[Elem]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                let (key, v) = parse_key(k).unwrap_or_default();
                s.push_str(&format!("[{key}={v}]"));
            }
            Elem::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

// ----- FieldsV1 -----

fn elem_key(e: &Elem) -> String {
    match e {
        Elem::Field(f) => format!("f:{f}"),
        Elem::Key(k) => format!("k:{k}"),
        Elem::Value(v) => format!("v:{v}"),
    }
}

/// The FieldsV1 trie of `set`: a member with children is marked `".": {}`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for e in path {
            node = node
                .entry(elem_key(e))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("trie nodes are objects");
        }
    }
    // Members that gained children need their mark.
    for path in set {
        let mut node = &mut root;
        for e in path {
            node = node
                .get_mut(&elem_key(e))
                .and_then(Value::as_object_mut)
                .expect("inserted above");
        }
        if !node.is_empty() {
            node.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// The set a FieldsV1 trie holds.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn visit(node: &Map<String, Value>, path: &mut Path, set: &mut FieldSet) {
        for (k, child) in node {
            if k == "." {
                continue;
            }
            let e = if let Some(f) = k.strip_prefix("f:") {
                Elem::Field(f.into())
            } else if let Some(key) = k.strip_prefix("k:") {
                Elem::Key(key.into())
            } else if let Some(val) = k.strip_prefix("v:") {
                Elem::Value(val.into())
            } else {
                continue;
            };
            path.push(e);
            let empty = Map::new();
            let children = child.as_object().unwrap_or(&empty);
            if children.is_empty() || children.contains_key(".") {
                set.insert(path.clone());
            }
            visit(children, path, set);
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    if let Some(m) = v.as_object() {
        visit(m, &mut Vec::new(), &mut set);
    }
    set
}

// ----- managers -----

/// Who wrote, how, and through which subresource: one `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Manager {
    pub name: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub subresource: String,
}

/// The entries of `managedFields` with their sets, and their other attributes.
pub struct Managed {
    entries: BTreeMap<Manager, (FieldSet, Value)>,
}

impl Managed {
    pub fn read(obj: &Value) -> Managed {
        let mut entries = BTreeMap::new();
        for e in obj
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let m = Manager {
                name: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
            };
            let set = from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null));
            entries.insert(m, (set, e.clone()));
        }
        Managed { entries }
    }

    fn owned_by_others(&self, me: &Manager) -> FieldSet {
        self.entries
            .iter()
            .filter(|(m, _)| *m != me)
            .flat_map(|(_, (s, _))| s.iter().cloned())
            .collect()
    }

    /// Give `me` the set `set`, taking every path in `taken` away from the others.
    fn assign(
        &mut self,
        me: &Manager,
        set: FieldSet,
        taken: &FieldSet,
        api_version: &str,
        now: &str,
    ) {
        for (m, (s, e)) in self.entries.iter_mut() {
            if m != me && s.iter().any(|p| taken.contains(p)) {
                s.retain(|p| !taken.contains(p));
                e["fieldsV1"] = to_fields_v1(s);
            }
        }
        let changed = self.entries.get(me).is_none_or(|(s, _)| *s != set);
        let mut entry = json!({"manager": me.name, "operation": me.operation,
            "apiVersion": api_version, "time": now, "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&set)});
        if !me.subresource.is_empty() {
            entry["subresource"] = json!(me.subresource);
        }
        if !changed && let Some((_, old)) = self.entries.get(me) {
            entry["time"] = old["time"].clone();
        }
        self.entries.insert(me.clone(), (set, entry));
    }

    /// Write the entries back into `obj` (none left: no `managedFields`).
    pub fn write(self, obj: &mut Value) {
        let list: Vec<Value> = self
            .entries
            .into_values()
            .filter(|(s, _)| !s.is_empty())
            .map(|(_, e)| e)
            .collect();
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Whether a leaf or item at `path` differs between two objects (an item only by presence:
/// its fields are paths of their own).
fn differs(a: &Value, b: &Value, path: &[Elem]) -> bool {
    match path.last() {
        Some(Elem::Key(_) | Elem::Value(_)) => get(a, path).is_some() != get(b, path).is_some(),
        _ => get(a, path) != get(b, path),
    }
}

/// Record a non-apply write (create, update, patch) by `me`: the fields it set or changed
/// become its own, fields it removed are nobody's. `old` is `None` for a create.
#[allow(clippy::too_many_arguments)]
pub fn track_update(
    kind: &str,
    skip_status: bool,
    old: Option<&Value>,
    new: &mut Value,
    me: &Manager,
    api_version: &str,
    now: &str,
) {
    let mut managed = match old {
        Some(old) => Managed::read(old),
        None => Managed {
            entries: BTreeMap::new(),
        },
    };
    let new_set = fields_of(kind, new, skip_status);
    let old_set = old
        .map(|o| fields_of(kind, o, skip_status))
        .unwrap_or_default();
    let empty = json!({});
    let old_value = old.unwrap_or(&empty);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || differs(old_value, new, p))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    for (s, e) in managed.entries.values_mut() {
        if s.iter().any(|p| removed.contains(p)) {
            s.retain(|p| !removed.contains(p));
            e["fieldsV1"] = to_fields_v1(s);
        }
    }
    if !changed.is_empty() {
        let mut mine = managed
            .entries
            .get(me)
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        mine.extend(changed.iter().cloned());
        managed.assign(me, mine, &changed, api_version, now);
    }
    managed.write(new);
}

/// The 409 of an apply that would change fields other managers own.
fn conflict_error(conflicts: &[(Manager, Value, Path)]) -> ApiError {
    let show = |m: &Manager, entry: &Value| {
        let mut s = format!("{:?}", m.name);
        if !m.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", m.subresource));
        }
        if m.operation == "Update" {
            s.push_str(&format!(
                " using {}",
                entry["apiVersion"].as_str().unwrap_or_default()
            ));
            if let Some(t) = entry["time"].as_str() {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, e, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", show(m, e)),
                "field": path_string(p)})
        })
        .collect();
    let message = if let [(m, e, p)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            show(m, e),
            path_string(p)
        )
    } else {
        let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (m, e, p) in conflicts {
            by_manager
                .entry(show(m, e))
                .or_default()
                .push(format!("- {}", path_string(p)));
        }
        let lines: Vec<String> = by_manager
            .into_iter()
            .flat_map(|(m, paths)| std::iter::once(format!("conflicts with {m}:")).chain(paths))
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::apply_conflict(message, causes)
}

/// Server-side apply of `applied` by `manager` onto `live` (`None`: the object is new): the
/// object to store, with its `managedFields`. Without `force`, a field another manager owns
/// and `applied` would change is a conflict.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    kind: &str,
    skip_status: bool,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Value, ApiError> {
    let me = Manager {
        name: manager.to_string(),
        operation: "Apply".into(),
        subresource: String::new(),
    };
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut managed = Managed::read(live);
    let applied_set = fields_of(kind, applied, skip_status);

    // Conflicts: paths others own whose value the apply would change.
    let mut conflicts = Vec::new();
    let mut taken = FieldSet::new();
    for (m, (set, entry)) in &managed.entries {
        if *m == me {
            continue;
        }
        for p in set.intersection(&applied_set) {
            if differs(live, applied, p) {
                conflicts.push((m.clone(), entry.clone(), p.clone()));
                taken.insert(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }

    // Fields this manager applied before and no longer does, and nobody else owns, go.
    let mut out = live.clone();
    let others = managed.owned_by_others(&me);
    let before = managed
        .entries
        .get(&me)
        .map(|(s, _)| s.clone())
        .unwrap_or_default();
    for p in before.difference(&applied_set) {
        let shared = others.iter().any(|o| o.starts_with(p));
        if !shared {
            remove(&mut out, p);
            prune_empty_parents(&mut out, p, &others);
        }
    }
    // Then the applied configuration merges in: maps by key, associative and set lists by
    // item, everything else replaced.
    let mut config = applied.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(patch) = config.as_object() {
        super::patch::strategic::merge(kind, &mut out, patch).map_err(ApiError::bad_request)?;
    }
    managed.assign(&me, applied_set, &taken, api_version, now);
    managed.write(&mut out);
    Ok(out)
}

/// After a removal at `path`, remove the maps and lists it left empty, up to one that someone
/// owns as a value of its own.
fn prune_empty_parents(obj: &mut Value, path: &[Elem], owned: &FieldSet) {
    let mut end = path.len();
    while end > 1 {
        end -= 1;
        let parent = &path[..end];
        if !matches!(parent.last(), Some(Elem::Field(_))) || owned.contains(parent) {
            return;
        }
        let empty = match get(obj, parent) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty {
            return;
        }
        remove(obj, parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    fn apply_as(
        live: Option<&Value>,
        applied: &Value,
        who: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        apply(
            "Deployment",
            true,
            live,
            applied,
            who,
            force,
            "apps/v1",
            NOW,
        )
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let obj = json!({"metadata": {"name": "x", "finalizers": ["a/b"], "labels": {"k": "v"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80}]}]}}, "strategy": {}, "args": ["x"]}});
        let set = fields_of("Deployment", &obj, true);
        let v1 = to_fields_v1(&set);
        insta::assert_json_snapshot!(v1, @r#"
        {
          "f:metadata": {
            "f:finalizers": {
              "v:\"a/b\"": {}
            },
            "f:labels": {
              "f:k": {}
            }
          },
          "f:spec": {
            "f:args": {},
            "f:strategy": {},
            "f:template": {
              "f:spec": {
                "f:containers": {
                  "k:{\"name\":\"c\"}": {
                    ".": {},
                    "f:image": {},
                    "f:name": {},
                    "f:ports": {
                      "k:{\"containerPort\":80}": {
                        ".": {},
                        "f:containerPort": {}
                      }
                    }
                  }
                }
              }
            }
          }
        }
        "#);
        assert_eq!(from_fields_v1(&v1), set);
        let image = vec![
            Elem::Field("spec".into()),
            Elem::Field("template".into()),
            Elem::Field("spec".into()),
            Elem::Field("containers".into()),
            Elem::Key(r#"{"name":"c"}"#.into()),
            Elem::Field("image".into()),
        ];
        assert!(set.contains(&image));
        assert_eq!(get(&obj, &image), Some(&json!("i")));
        assert_eq!(
            path_string(&image),
            r#".spec.template.spec.containers[name="c"].image"#
        );
    }

    #[test]
    fn a_second_manager_conflicts_unless_forced() {
        let first = apply_as(None, &deployment(2, "nginx:1"), "alice", false).unwrap();
        // The same values: no conflict, and both own them.
        let shared = apply_as(Some(&first), &deployment(2, "nginx:1"), "bob", false).unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Other values: a conflict per field, kube's message.
        let e = apply_as(Some(&shared), &deployment(3, "nginx:2"), "bob", false).unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        assert_eq!(
            e.message,
            "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"web\"].image"
        );
        let one = apply_as(Some(&shared), &deployment(3, "nginx:1"), "bob", false).unwrap_err();
        assert_eq!(
            one.message,
            "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
        );
        assert_eq!(one.details.unwrap()["causes"][0]["field"], ".spec.replicas");
        // Forced: bob takes the fields over.
        let forced = apply_as(Some(&shared), &deployment(3, "nginx:1"), "bob", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let alice = Managed::read(&forced);
        let (alice_set, _) = &alice.entries[&Manager {
            name: "alice".into(),
            operation: "Apply".into(),
            subresource: String::new(),
        }];
        assert!(!alice_set.contains(&vec![
            Elem::Field("spec".into()),
            Elem::Field("replicas".into())
        ]));
    }

    #[test]
    fn fields_an_applier_drops_are_removed_unless_another_owns_them() {
        let mut with_label = deployment(1, "nginx");
        with_label["metadata"]["labels"]["tier"] = json!("front");
        with_label["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        let live = apply_as(None, &with_label, "alice", false).unwrap();
        let dropped = apply_as(Some(&live), &deployment(1, "nginx"), "alice", false).unwrap();
        assert_eq!(dropped["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            dropped["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // When bob also applied the label, alice dropping it leaves it to bob.
        let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"tier": "front"}}});
        let shared = apply_as(Some(&live), &bob, "bob", false).unwrap();
        let kept = apply_as(Some(&shared), &deployment(1, "nginx"), "alice", false).unwrap();
        assert_eq!(kept["metadata"]["labels"]["tier"], "front");
    }

    #[test]
    fn updates_take_what_they_change_and_conflict_with_appliers() {
        let mut live = deployment(2, "nginx");
        let creator = Manager {
            name: "kubectl-create".into(),
            operation: "Update".into(),
            subresource: String::new(),
        };
        track_update(
            "Deployment",
            true,
            None,
            &mut live,
            &creator,
            "apps/v1",
            NOW,
        );
        let entries = live["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        // kubectl scale (an update) takes replicas; the next apply conflicts with it.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let scaler = Manager {
            name: "kubectl-scale".into(),
            ..creator.clone()
        };
        track_update(
            "Deployment",
            true,
            Some(&live),
            &mut scaled,
            &scaler,
            "apps/v1",
            NOW,
        );
        let e = apply_as(Some(&scaled), &deployment(2, "nginx"), "kubectl", false).unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1 at 2026-01-01T00:00:00Z: .spec.replicas"
        );
        // An update that changes nothing records nothing new.
        let mut same = scaled.clone();
        track_update(
            "Deployment",
            true,
            Some(&scaled),
            &mut same,
            &creator,
            "apps/v1",
            "later",
        );
        assert_eq!(
            same["metadata"]["managedFields"],
            scaled["metadata"]["managedFields"]
        );
    }
}
