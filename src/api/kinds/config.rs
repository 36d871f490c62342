//! core/v1 ConfigMap, Secret and ServiceAccount.
//!
//! ConfigMaps and Secrets share key rules, the 1 MiB limit and `immutable`; a Secret's
//! `stringData` is folded into `data` (base64) on every write, as the real server's conversion
//! does, and its type fixes which keys it must hold.

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Hooks, immutable, no_checks, nothing};
use crate::api::status::FieldError;
use crate::api::table::{AGE, NAME, age, name};

/// `MaxSecretSize`, the limit of a ConfigMap's or Secret's data too.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// Errors of one data key (`IsConfigMapKey`).
pub fn check_key(field: &str, key: &str, errs: &mut Vec<FieldError>) {
    if key.len() > 253 {
        errs.push(FieldError::invalid(
            field,
            key,
            "must be no more than 253 characters",
        ));
    }
    let valid = !key.is_empty()
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.');
    if !valid {
        errs.push(FieldError::invalid(field, key, CONFIG_KEY_MSG));
    }
    match key {
        "." => errs.push(FieldError::invalid(field, key, "must not be '.'")),
        ".." => errs.push(FieldError::invalid(field, key, "must not be '..'")),
        _ if key.starts_with("..") => {
            errs.push(FieldError::invalid(field, key, "must not start with '..'"))
        }
        _ => {}
    }
}

fn keys(obj: &Value, field: &str) -> Vec<String> {
    obj.get(field)
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `immutable: true` freezes the data and itself.
fn check_immutable(obj: &Value, old: Option<&Value>, fields: &[&str], errs: &mut Vec<FieldError>) {
    let Some(old) = old else { return };
    if old.get("immutable") != Some(&json!(true)) {
        return;
    }
    for f in fields {
        if obj.get(*f) != old.get(*f) {
            errs.push(FieldError::forbidden(
                *f,
                "field is immutable when `immutable` is set",
            ));
        }
    }
    if obj.get("immutable") != Some(&json!(true)) {
        errs.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
}

// ----- ConfigMap -----

fn validate_config_map(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let data = keys(obj, "data");
    let binary = keys(obj, "binaryData");
    let mut size = 0;
    for k in &data {
        check_key(&format!("data[{k}]"), k, errs);
        size += k.len() + obj["data"][k].as_str().map_or(0, str::len);
    }
    for k in &binary {
        check_key(&format!("binaryData[{k}]"), k, errs);
        if data.contains(k) {
            errs.push(FieldError::invalid(
                format!("binaryData[{k}]"),
                k.as_str(),
                "duplicate of key present in data",
            ));
        }
        // Stored base64: the decoded size counts.
        size += k.len() + obj["binaryData"][k].as_str().map_or(0, |s| s.len() / 4 * 3);
    }
    if size > MAX_DATA_BYTES {
        errs.push(FieldError::too_long("", MAX_DATA_BYTES));
    }
    check_immutable(obj, old, &["data", "binaryData"], errs);
}

fn config_map_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let count = keys(obj, "data").len() + keys(obj, "binaryData").len();
    vec![name(obj), json!(count), age(obj, now)]
}

pub static CONFIG_MAP: Hooks = Hooks {
    defaults: nothing,
    initial_status: nothing,
    validate: validate_config_map,
    columns: &[
        NAME,
        (
            "Data",
            "string",
            "",
            0,
            "Data contains the configuration data.",
        ),
        AGE,
    ],
    cells: config_map_cells,
};

// ----- Secret -----

/// The key each typed Secret must carry, by type.
const REQUIRED_KEYS: &[(&str, &[&str])] = &[
    ("kubernetes.io/dockercfg", &[".dockercfg"]),
    ("kubernetes.io/dockerconfigjson", &[".dockerconfigjson"]),
    ("kubernetes.io/ssh-auth", &["ssh-privatekey"]),
    ("kubernetes.io/tls", &["tls.crt", "tls.key"]),
];

/// Fold `stringData` into `data` (its values win) and default the type.
fn secret_defaults(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(strings)) = map.remove("stringData") {
        let data = map.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        let data = data.as_object_mut().expect("made an object above");
        for (k, v) in strings {
            let text = v.as_str().unwrap_or_default();
            data.insert(k, json!(data_encoding::BASE64.encode(text.as_bytes())));
        }
    }
    match map.get("type") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => {
            map.insert("type".into(), json!("Opaque"));
        }
    }
}

/// Where Go's base64 decoder stops on `s` (`illegal base64 data at input byte N`), if it does.
pub fn base64_error(s: &str) -> Option<usize> {
    // Go skips CR and LF inside base64 text.
    let chars: Vec<(usize, u8)> = s
        .bytes()
        .enumerate()
        .filter(|(_, c)| *c != b'\r' && *c != b'\n')
        .collect();
    let alphabet = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let mut pad_from = None;
    for (n, (i, c)) in chars.iter().enumerate() {
        match (*c, pad_from) {
            (b'=', None) if n % 4 >= 2 => pad_from = Some(n),
            (b'=', Some(_)) => {}
            (c, None) if alphabet(c) => {}
            // One pad after two characters must be followed by a second one.
            (_, Some(p)) if p % 4 == 2 && n == p + 1 => return Some(chars[p].0),
            _ => return Some(*i),
        }
    }
    let len = chars.len();
    match pad_from {
        // Padding must complete the quantum, and only 1 or 2 pad characters.
        Some(p) if !len.is_multiple_of(4) || len - p > 2 => Some(chars[p].0),
        Some(_) => None,
        None if !len.is_multiple_of(4) => {
            Some(chars.get(len - len % 4).map_or(s.len(), |(i, _)| *i))
        }
        None => None,
    }
}

fn validate_secret(obj: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let data = keys(obj, "data");
    let mut size = 0;
    for k in &data {
        check_key(&format!("data[{k}]"), k, errs);
        size += k.len() + obj["data"][k].as_str().map_or(0, |s| s.len() / 4 * 3);
    }
    if size > MAX_DATA_BYTES {
        errs.push(FieldError::too_long("data", MAX_DATA_BYTES));
    }
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    if let Some((_, required)) = REQUIRED_KEYS.iter().find(|(t, _)| *t == ty) {
        for key in *required {
            if !data.iter().any(|k| k == key) {
                errs.push(FieldError::required(format!("data[{key}]"), ""));
            }
        }
    }
    match ty {
        "kubernetes.io/service-account-token" => {
            let sa = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if sa.is_empty() {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/basic-auth" if !data.iter().any(|k| k == "username" || k == "password") => {
            errs.push(FieldError::required("data[username]", ""));
            errs.push(FieldError::required("data[password]", ""));
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable("type", obj.get("type"), old.get("type"), errs);
    }
    check_immutable(obj, old, &["data"], errs);
}

fn secret_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(obj),
        json!(obj.get("type").and_then(Value::as_str).unwrap_or_default()),
        json!(keys(obj, "data").len()),
        age(obj, now),
    ]
}

pub static SECRET: Hooks = Hooks {
    defaults: secret_defaults,
    initial_status: nothing,
    validate: validate_secret,
    columns: &[
        NAME,
        (
            "Type",
            "string",
            "",
            0,
            "Used to facilitate programmatic handling of secret data.",
        ),
        ("Data", "string", "", 0, "Data contains the secret data."),
        AGE,
    ],
    cells: secret_cells,
};

/// The decoder's message for undecodable base64 in the bytes map `field`, as Go's: the first bad
/// value wins.
pub fn base64_problem(obj: &Value, field: &str) -> Option<String> {
    let data: &Map<String, Value> = obj.get(field)?.as_object()?;
    for v in data.values() {
        if let Some(at) = v.as_str().and_then(base64_error) {
            return Some(format!("illegal base64 data at input byte {at}"));
        }
    }
    None
}

// ----- ServiceAccount -----

fn service_account_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    let secrets = obj
        .get("secrets")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    vec![name(obj), json!(secrets), age(obj, now)]
}

pub static SERVICE_ACCOUNT: Hooks = Hooks {
    defaults: nothing,
    initial_status: nothing,
    validate: no_checks,
    columns: &[
        NAME,
        (
            "Secrets",
            "string",
            "",
            0,
            "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
        ),
        AGE,
    ],
    cells: service_account_cells,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_errors_where_go_reports_them() {
        assert_eq!(base64_error("aGVsbG8="), None);
        assert_eq!(base64_error("aGVs\nbG8="), None);
        assert_eq!(base64_error(""), None);
        assert_eq!(base64_error("aG!s"), Some(2));
        assert_eq!(base64_error("abc"), Some(0));
        assert_eq!(base64_error("abcdef"), Some(4));
        assert_eq!(base64_error("ab=c"), Some(2));
        assert_eq!(base64_error("a==="), Some(1));
        assert_eq!(base64_error("ab==cd"), Some(4));
    }

    #[test]
    fn string_data_becomes_data() {
        let mut s = json!({"data": {"a": "eA=="}, "stringData": {"b": "hi", "a": "y"}});
        secret_defaults(&mut s);
        assert_eq!(
            s,
            json!({"data": {"a": "eQ==", "b": "aGk="}, "type": "Opaque"})
        );
    }
}
