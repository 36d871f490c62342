//! Stored objects and small helpers over JSON objects.
//!
//! An object is kept as its compact JSON bytes (serialised once, on write) plus the few values that
//! lists and watches filter on (labels and selectable fields). This keeps memory low (no JSON tree
//! per object), makes a list a concatenation of byte slices, and lets one serialisation serve every
//! watcher. Handlers that need the tree parse the bytes on demand.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::resources::ResourceType;

/// One object at one resourceVersion.
#[derive(Debug)]
pub struct Stored {
    /// Compact JSON of the whole object, `metadata.resourceVersion` included.
    pub json: Bytes,
    pub rv: u64,
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// Selectable fields of the kind (see [`ResourceType::fields`]), as strings.
    pub fields: Box<[(&'static str, Box<str>)]>,
}

impl Stored {
    /// Index `obj` (already carrying its resourceVersion) for resource type `rt`.
    pub fn new(rt: &ResourceType, obj: &Value, rv: u64) -> Stored {
        let json = Bytes::from(serde_json::to_vec(obj).expect("JSON values serialise"));
        Self::with_json(rt, obj, json, rv)
    }

    /// Like [`Stored::new`] when the bytes are already at hand.
    pub fn with_json(rt: &ResourceType, obj: &Value, json: Bytes, rv: u64) -> Stored {
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().unwrap_or_default().into()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let fields = rt
            .fields
            .iter()
            .map(|f| (*f, field_value(obj, f).into()))
            .collect::<Vec<_>>();
        Stored {
            json,
            rv,
            namespace: str_at(obj, "/metadata/namespace").into(),
            name: str_at(obj, "/metadata/name").into(),
            labels: labels.into(),
            fields: fields.into(),
        }
    }

    /// Parse the stored bytes.
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("stored objects are valid JSON")
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// The value of a field selector key (`metadata.name`, `spec.nodeName`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        match key {
            "metadata.name" => Some(&self.name),
            "metadata.namespace" => Some(&self.namespace),
            _ => self
                .fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| &**v),
        }
    }
}

/// The string form of a selectable field, as the real server's field-label conversion gives it.
fn field_value(obj: &Value, field: &str) -> String {
    let path = if field == "source" {
        "source.component".to_string()
    } else {
        field.to_string()
    };
    let pointer = format!("/{}", path.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.unschedulable" || field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

/// The string at a JSON pointer, or "".
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata` as a mutable map, created when missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    ensure_map(obj, "metadata")
}

/// The map at `obj[key]`, created (or replaced, if not a map) when needed.
pub fn ensure_map<'a>(obj: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("made an object above")
}

/// Set `map[key] = value` unless a non-null value is present.
pub fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(key.to_string(), value);
        }
    }
}

/// The current time as the API formats it (`2024-05-01T12:00:00Z`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parse an API timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A random `uid` (UUID v4 form) from the server's RNG.
pub fn new_uid(rng: &mut impl rand::RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = data_encoding::HEXLOWER.encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random 5-character suffix for `generateName`, from the alphabet the real server uses
/// (no vowels, no look-alike digits).
pub fn name_suffix(rng: &mut impl rand::RngCore) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::{RESOURCES, id};
    use serde_json::json;

    #[test]
    fn indexes_labels_and_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"}},
                         "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = Stored::new(&RESOURCES[id::PODS], &pod, 7);
        assert_eq!(s.label("app"), Some("web"));
        assert_eq!(s.field("spec.nodeName"), Some("n1"));
        assert_eq!(s.field("status.phase"), Some("Running"));
        assert_eq!(s.field("metadata.namespace"), Some("ns"));
        assert_eq!(s.field("spec.hostNetwork"), Some("false"));
        assert_eq!(s.field("nope"), None);
        assert_eq!(s.value(), pod);
    }

    #[test]
    fn uid_shape() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let uid = new_uid(&mut rng);
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_eq!(name_suffix(&mut rng).len(), 5);
    }
}
