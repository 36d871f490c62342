//! Label and field selectors, parsed from the query string and matched against stored objects.
//!
//! Label selectors take the full syntax (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
//! `!a`); field selectors take `=`, `==`, `!=` on the kind's selectable fields.

use super::object::Stored;
use super::resources::ResourceType;
use super::status::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector (all requirements must hold). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

impl LabelSelector {
    /// Parse the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(term).map_err(|why| {
                ApiError::bad_request(format!("unable to parse requirement: {why}"))
            })?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether labels given by `get` satisfy every requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Split on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(term: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::DoesNotExist(check_key(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelRequirement::NotEquals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelRequirement::Equals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!(
                "found '{rest}', expected: in, notin, =, ==, !=, gt, lt"
            ));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("found '{list}', expected: '('"))?;
        let values = inner
            .split(',')
            .map(|v| check_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let key = check_key(words[0])?;
        return Ok(if op == "in" {
            LabelRequirement::In(key, values)
        } else {
            LabelRequirement::NotIn(key, values)
        });
    }
    Ok(LabelRequirement::Exists(check_key(term)?))
}

fn check_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn check_value(v: &str) -> Result<String, String> {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label value: {v:?}"))
    }
}

/// One field requirement: `field = value` or `field != value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parse `fieldSelector` and check each field is selectable for `rt`.
    pub fn parse(s: &str, rt: &ResourceType) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, negated) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !rt.fields.contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push(FieldRequirement {
                field: field.to_string(),
                value: value.trim().to_string(),
                negated,
            });
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Stored) -> bool {
        self.0.iter().all(|r| {
            let v = obj.field(&r.field).unwrap_or_default();
            (v == r.value) != r.negated
        })
    }

    /// A single `metadata.name=X` requirement, if present (used to short-cut lookups).
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }
}

/// Label and field selectors together.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn matches(&self, obj: &Stored) -> bool {
        self.labels.matches(|k| obj.label(k)) && self.fields.matches(obj)
    }
}

/// Render a `matchLabels` map as `a=b,c=d` (sorted), `<none>` when empty.
pub fn format_labels(map: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    let mut pairs: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs.join(",")
    }
}

/// Render a `metav1.LabelSelector` the way `FormatLabelSelector` does.
pub fn format_label_selector(sel: Option<&serde_json::Value>) -> String {
    let Some(sel) = sel.filter(|s| s.is_object()) else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(|m| m.as_object()) {
        let mut pairs: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        pairs.sort();
        parts.extend(pairs);
    }
    for e in sel
        .get("matchExpressions")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(|k| k.as_str()).unwrap_or_default();
        let mut values: Vec<&str> = e
            .get("values")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        values.sort();
        match e
            .get("operator")
            .and_then(|o| o.as_str())
            .unwrap_or_default()
        {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// Convert a `metav1.LabelSelector` object into a [`LabelSelector`].
pub fn from_label_selector(sel: &serde_json::Value) -> LabelSelector {
    let mut reqs = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(|m| m.as_object()) {
        for (k, v) in m {
            reqs.push(LabelRequirement::Equals(
                k.clone(),
                v.as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let key = e
            .get("key")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let values: Vec<String> = e
            .get("values")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        match e
            .get("operator")
            .and_then(|o| o.as_str())
            .unwrap_or_default()
        {
            "In" => reqs.push(LabelRequirement::In(key, values)),
            "NotIn" => reqs.push(LabelRequirement::NotIn(key, values)),
            "Exists" => reqs.push(LabelRequirement::Exists(key)),
            "DoesNotExist" => reqs.push(LabelRequirement::DoesNotExist(key)),
            _ => {}
        }
    }
    LabelSelector(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{RESOURCES, id};
    use serde_json::json;

    fn labels(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<&'static str> {
        let pairs = pairs.to_vec();
        move |k| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
    }

    #[test]
    fn label_selector_syntax() {
        let cases = [
            "app=web",
            "app==web",
            "app!=web",
            "app in (web, db)",
            "app notin (db)",
            "tier",
            "!tier",
            "app=web,tier in (front),!canary",
            "environment in (production,qa),tier notin (frontend,backend),partition",
        ];
        let objects = [
            labels(&[("app", "web"), ("tier", "front")]),
            labels(&[("app", "db")]),
            labels(&[]),
        ];
        let mut out = String::new();
        for c in cases {
            let sel = LabelSelector::parse(c).unwrap();
            let hits: Vec<bool> = objects.iter().map(|o| sel.matches(o)).collect();
            out.push_str(&format!("{c:60} {:?}\n    {:?}\n", hits, sel.0));
        }
        for bad in ["app in web", "a b c", "app=(", "=x"] {
            out.push_str(&format!(
                "{bad:60} {}\n",
                LabelSelector::parse(bad).unwrap_err().message
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn field_selectors() {
        let rt = &RESOURCES[id::PODS];
        let pod = Stored::new(
            rt,
            &json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}),
            1,
        );
        let yes = [
            "metadata.name=p",
            "spec.nodeName==n1,status.phase!=Succeeded",
            "metadata.namespace=default",
        ];
        let no = ["metadata.name!=p", "status.phase=Pending", "spec.nodeName="];
        for s in yes {
            assert!(FieldSelector::parse(s, rt).unwrap().matches(&pod), "{s}");
        }
        for s in no {
            assert!(!FieldSelector::parse(s, rt).unwrap().matches(&pod), "{s}");
        }
        let err = FieldSelector::parse("spec.foo=x", rt).unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
        let ev = &RESOURCES[id::EVENTS];
        let event = Stored::new(
            ev,
            &json!({"metadata": {"name": "e", "namespace": "default"}, "involvedObject": {"kind": "Pod", "name": "p", "uid": "u1"}, "reason": "Scheduled", "type": "Normal"}),
            2,
        );
        let sel = FieldSelector::parse("involvedObject.name=p,involvedObject.kind=Pod,involvedObject.uid=u1,reason=Scheduled,type=Normal", ev).unwrap();
        assert!(sel.matches(&event));
    }

    #[test]
    fn formats_selectors() {
        let sel = json!({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
            {"key": "t", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "DoesNotExist"}]});
        assert_eq!(format_label_selector(Some(&sel)), "a=1,b=2,t in (x,y),!c");
        assert_eq!(format_label_selector(None), "<none>");
        let ls = from_label_selector(&sel);
        assert!(ls.matches(labels(&[("a", "1"), ("b", "2"), ("t", "x")])));
        assert!(!ls.matches(labels(&[("a", "1"), ("b", "2"), ("t", "x"), ("c", "")])));
    }
}
