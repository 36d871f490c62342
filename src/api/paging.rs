//! Paginated lists (`limit` and `continue`), as kube-apiserver serves them from etcd: a page
//! holds at most `limit` matching objects in key order, and when more remain its
//! `metadata.continue` names the resourceVersion of the first page and the key to resume after.
//! Later pages are served at that resourceVersion, so the pages together are one consistent
//! list; once the changes since then have left the history (kube: etcd compacted them), the
//! token is expired (410) and the error offers a token that continues at the current state.
//!
//! The token is kube's: base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`, the
//! key being `namespace/name` below a cluster-wide list and `name` below a namespace's.

use std::sync::Arc;

use data_encoding::BASE64;
use serde_json::{Value, json};

use super::object::Stored;
use super::status::ApiError;

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

/// A decoded `continue`: where the list resumes, and at which resourceVersion (`None`: the
/// current state, for the inconsistent continuation an expired token offers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    pub rv: Option<u64>,
    /// (namespace, name) of the last object already returned.
    pub after: (String, String),
}

/// The `continue` of the page that ended with `last`, for a list in `namespace` (or all).
pub fn encode(rv: Option<u64>, namespace: Option<&str>, last: (&str, &str)) -> String {
    let key = match namespace {
        Some(_) => last.1.to_string(),
        None => format!("{}/{}", last.0, last.1),
    };
    let rv = rv.map_or(-1, |rv| rv as i64);
    let token = json!({"v": TOKEN_VERSION, "rv": rv, "start": format!("{key}\u{0}")});
    BASE64.encode(token.to_string().as_bytes())
}

fn invalid(why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "invalid continue token: continue key is not valid: {why}"
    ))
}

/// The `continue` parameter of a list in `namespace` (or all).
pub fn decode(token: &str, namespace: Option<&str>) -> Result<Continue, ApiError> {
    let bytes = BASE64
        .decode(token.as_bytes())
        .or_else(|_| data_encoding::BASE64URL.decode(token.as_bytes()))
        .map_err(|_| invalid("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    if v["v"] != TOKEN_VERSION {
        return Err(invalid(&format!(
            "server does not recognize this encoded key version {}",
            v["v"]
        )));
    }
    let rv = match v["rv"].as_i64() {
        Some(-1) => None,
        Some(rv) if rv > 0 => Some(rv as u64),
        _ => return Err(invalid("incorrect encoded start resourceVersion")),
    };
    let start = v["start"]
        .as_str()
        .and_then(|s| s.strip_suffix('\u{0}'))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("the start key is missing"))?;
    let after = match namespace {
        Some(ns) if !start.contains('/') => (ns.to_string(), start.to_string()),
        None => match start.split_once('/') {
            Some((ns, name)) if !name.contains('/') => (ns.to_string(), name.to_string()),
            // A cluster-scoped object's key has no namespace.
            None => (String::new(), start.to_string()),
            Some(_) => return Err(invalid("the start key is not a key of this list")),
        },
        Some(_) => return Err(invalid("the start key is not a key of this list")),
    };
    Ok(Continue { rv, after })
}

/// The 410 for a token whose resourceVersion is no longer kept, offering the rest of the list
/// at the current state.
pub fn expired(namespace: Option<&str>, after: (&str, &str)) -> ApiError {
    let mut e = ApiError::expired(
        "The provided continue parameter is too old to display a consistent list result. You \
         can start a new list without the continue parameter, or use the continue token in this \
         response to retrieve the remainder of the results. Continuing with the provided token \
         results in an inconsistent list - objects that were created, modified, or deleted \
         between the time the first chunk was returned and now may show up in the list.",
    );
    e.continue_token = Some(encode(None, namespace, after));
    e
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Stored>>,
    /// (namespace, name) of the last item, when matching objects remain after it.
    pub more_after: Option<(String, String)>,
    /// How many objects remain after the page (kube counts them only for lists without
    /// selectors).
    pub remaining: Option<u64>,
}

/// The page of `objects` (in key order) after `after`, of at most `limit` (0: all) objects
/// that `matches` selects. `selective`: the list has selectors, and gets no remaining count.
pub fn page(
    objects: Vec<Arc<Stored>>,
    after: Option<&(String, String)>,
    limit: usize,
    selective: bool,
    matches: impl Fn(&Stored) -> bool,
) -> Page {
    let mut rest = objects
        .into_iter()
        .filter(|o| {
            after.is_none_or(|(ns, name)| (&*o.namespace, &*o.name) > (ns.as_str(), name.as_str()))
        })
        .filter(|o| matches(o));
    let items: Vec<Arc<Stored>> = if limit == 0 {
        rest.by_ref().collect()
    } else {
        rest.by_ref().take(limit).collect()
    };
    let remaining = rest.count() as u64;
    let more_after = (remaining > 0)
        .then(|| {
            items
                .last()
                .map(|o| (o.namespace.to_string(), o.name.to_string()))
        })
        .flatten();
    Page {
        items,
        more_after,
        remaining: (remaining > 0 && !selective).then_some(remaining),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{RESOURCES, id};

    fn pod(ns: &str, name: &str, app: &str) -> Arc<Stored> {
        let v = json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}});
        Arc::new(Stored::new(&RESOURCES[id::PODS], &v, 1))
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_400() {
        let token = encode(Some(12), None, ("default", "web-1"));
        let raw = String::from_utf8(BASE64.decode(token.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            raw,
            r#"{"rv":12,"start":"default/web-1\u0000","v":"meta.k8s.io/v1"}"#
        );
        assert_eq!(
            decode(&token, None).unwrap(),
            Continue {
                rv: Some(12),
                after: ("default".into(), "web-1".into())
            }
        );
        let in_ns = encode(None, Some("team"), ("team", "db"));
        assert_eq!(
            decode(&in_ns, Some("team")).unwrap(),
            Continue {
                rv: None,
                after: ("team".into(), "db".into())
            }
        );
        let node = encode(Some(3), None, ("", "n1"));
        assert_eq!(
            decode(&node, None).unwrap().after,
            (String::new(), "n1".into())
        );
        for bad in [
            "%%%",
            "bm90IGpzb24=",
            &BASE64.encode(br#"{"v":"x","rv":1,"start":"a\u0000"}"#),
        ] {
            let e = decode(bad, None).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
            assert!(
                e.message.starts_with("invalid continue token: "),
                "{}",
                e.message
            );
        }
        // A cluster-wide token does not continue a namespace's list.
        assert_eq!(decode(&token, Some("default")).unwrap_err().code, 400);
    }

    #[test]
    fn pages_follow_key_order_and_count_what_remains() {
        let all = vec![
            pod("a", "p1", "web"),
            pod("a", "p2", "db"),
            pod("b", "p1", "web"),
            pod("b", "p3", "web"),
        ];
        let first = page(all.clone(), None, 2, false, |_| true);
        let names = |p: &Page| {
            p.items
                .iter()
                .map(|o| format!("{}/{}", o.namespace, o.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&first), ["a/p1", "a/p2"]);
        assert_eq!(first.more_after, Some(("a".into(), "p2".into())));
        assert_eq!(first.remaining, Some(2));
        let second = page(all.clone(), first.more_after.as_ref(), 2, false, |_| true);
        assert_eq!(names(&second), ["b/p1", "b/p3"]);
        assert_eq!((second.more_after, second.remaining), (None, None));
        // With a selector: `limit` matching objects, no count.
        let web = |o: &Stored| o.value()["metadata"]["labels"]["app"] == "web";
        let first = page(all.clone(), None, 1, true, web);
        assert_eq!(names(&first), ["a/p1"]);
        assert_eq!((first.more_after.is_some(), first.remaining), (true, None));
        let second = page(all.clone(), first.more_after.as_ref(), 2, true, web);
        assert_eq!(names(&second), ["b/p1", "b/p3"]);
        assert!(second.more_after.is_none());
        // No limit: everything.
        assert_eq!(page(all, None, 0, false, |_| true).items.len(), 4);
    }

    #[test]
    fn an_expired_token_offers_an_inconsistent_continuation() {
        let e = expired(Some("default"), ("default", "p2"));
        assert_eq!((e.code, e.reason), (410, "Expired"));
        let status = e.to_status();
        let offered = status["metadata"]["continue"].as_str().unwrap();
        assert_eq!(
            decode(offered, Some("default")).unwrap(),
            Continue {
                rv: None,
                after: ("default".into(), "p2".into())
            }
        );
    }
}
