//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded to the JSON that the
//! rest of the API server handles.
//!
//! kubectl's generators (`create deployment`, `create namespace`, `create service ...`) post
//! through client-go's typed clients, which send protobuf and never fall back to JSON. The body
//! is the magic `k8s\0` and a `runtime.Unknown` envelope whose `raw` field holds the object.
//! kemu decodes the kinds those generators create, with the field numbers of k8s.io/api's
//! `generated.proto` for the fields they can set, into the JSON Go would write for the same
//! object: Go writes every non-pointer field, so a zero value there means "unset" and is left
//! out, while a pointer field that is present keeps its value, zero or not (`--replicas=0`).
//! A field outside these tables that carries a value is refused, never dropped.

use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// How a field's value is encoded and turned into JSON.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    Strs,
    Int32,
    Int64,
    Bool,
    /// `map<string, string>`: repeated entries `{key = 1, value = 2}`.
    StrMap,
    /// `IntOrString {type = 1, intVal = 2, strVal = 3}`.
    IntOrString,
    /// `Time {seconds = 1, nanos = 2}`, written as RFC 3339.
    Time,
    Msg(&'static [Field]),
    Msgs(&'static [Field]),
}

/// One field of a message: its number, its JSON name, and whether Go holds it as a pointer.
struct Field {
    tag: u32,
    name: &'static str,
    ty: Ty,
    pointer: bool,
}

const fn f(tag: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        pointer: false,
    }
}

const fn ptr(tag: u32, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        pointer: true,
    }
}

use Ty::*;

static OWNER_REFERENCE: [Field; 6] = [
    f(5, "apiVersion", Str),
    f(1, "kind", Str),
    f(3, "name", Str),
    f(4, "uid", Str),
    ptr(6, "controller", Bool),
    ptr(7, "blockOwnerDeletion", Bool),
];

static OBJECT_META: [Field; 14] = [
    f(1, "name", Str),
    f(2, "generateName", Str),
    f(3, "namespace", Str),
    f(4, "selfLink", Str),
    f(5, "uid", Str),
    f(6, "resourceVersion", Str),
    f(7, "generation", Int64),
    f(8, "creationTimestamp", Time),
    ptr(9, "deletionTimestamp", Time),
    ptr(10, "deletionGracePeriodSeconds", Int64),
    f(11, "labels", StrMap),
    f(12, "annotations", StrMap),
    f(13, "ownerReferences", Msgs(&OWNER_REFERENCE)),
    f(14, "finalizers", Strs),
];

static LABEL_SELECTOR_REQUIREMENT: [Field; 3] = [
    f(1, "key", Str),
    f(2, "operator", Str),
    f(3, "values", Strs),
];

static LABEL_SELECTOR: [Field; 2] = [
    f(1, "matchLabels", StrMap),
    f(2, "matchExpressions", Msgs(&LABEL_SELECTOR_REQUIREMENT)),
];

static NAMESPACE_SPEC: [Field; 1] = [f(1, "finalizers", Strs)];

static NAMESPACE: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&NAMESPACE_SPEC)),
];

static SERVICE_PORT: [Field; 6] = [
    f(1, "name", Str),
    f(2, "protocol", Str),
    ptr(6, "appProtocol", Str),
    f(3, "port", Int32),
    f(4, "targetPort", IntOrString),
    f(5, "nodePort", Int32),
];

static SERVICE_SPEC: [Field; 19] = [
    f(1, "ports", Msgs(&SERVICE_PORT)),
    f(2, "selector", StrMap),
    f(3, "clusterIP", Str),
    f(18, "clusterIPs", Strs),
    f(4, "type", Str),
    f(5, "externalIPs", Strs),
    f(7, "sessionAffinity", Str),
    f(8, "loadBalancerIP", Str),
    f(9, "loadBalancerSourceRanges", Strs),
    f(10, "externalName", Str),
    f(11, "externalTrafficPolicy", Str),
    f(12, "healthCheckNodePort", Int32),
    f(13, "publishNotReadyAddresses", Bool),
    f(19, "ipFamilies", Strs),
    ptr(17, "ipFamilyPolicy", Str),
    ptr(20, "allocateLoadBalancerNodePorts", Bool),
    ptr(21, "loadBalancerClass", Str),
    ptr(22, "internalTrafficPolicy", Str),
    ptr(23, "trafficDistribution", Str),
];

static SERVICE: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&SERVICE_SPEC)),
];

static CONTAINER_PORT: [Field; 5] = [
    f(1, "name", Str),
    f(2, "hostPort", Int32),
    f(3, "containerPort", Int32),
    f(4, "protocol", Str),
    f(5, "hostIP", Str),
];

static OBJECT_FIELD_SELECTOR: [Field; 2] = [f(1, "apiVersion", Str), f(2, "fieldPath", Str)];

static ENV_VAR_SOURCE: [Field; 1] = [ptr(1, "fieldRef", Msg(&OBJECT_FIELD_SELECTOR))];

static ENV_VAR: [Field; 3] = [
    f(1, "name", Str),
    f(2, "value", Str),
    ptr(3, "valueFrom", Msg(&ENV_VAR_SOURCE)),
];

static CONTAINER: [Field; 13] = [
    f(1, "name", Str),
    f(2, "image", Str),
    f(3, "command", Strs),
    f(4, "args", Strs),
    f(5, "workingDir", Str),
    f(6, "ports", Msgs(&CONTAINER_PORT)),
    f(7, "env", Msgs(&ENV_VAR)),
    f(13, "terminationMessagePath", Str),
    f(20, "terminationMessagePolicy", Str),
    f(14, "imagePullPolicy", Str),
    f(16, "stdin", Bool),
    f(17, "stdinOnce", Bool),
    f(18, "tty", Bool),
];

static POD_SPEC: [Field; 20] = [
    f(20, "initContainers", Msgs(&CONTAINER)),
    f(2, "containers", Msgs(&CONTAINER)),
    f(3, "restartPolicy", Str),
    ptr(4, "terminationGracePeriodSeconds", Int64),
    ptr(5, "activeDeadlineSeconds", Int64),
    f(6, "dnsPolicy", Str),
    f(7, "nodeSelector", StrMap),
    f(8, "serviceAccountName", Str),
    f(9, "serviceAccount", Str),
    ptr(21, "automountServiceAccountToken", Bool),
    f(10, "nodeName", Str),
    f(11, "hostNetwork", Bool),
    f(12, "hostPID", Bool),
    f(13, "hostIPC", Bool),
    f(16, "hostname", Str),
    f(17, "subdomain", Str),
    f(19, "schedulerName", Str),
    f(24, "priorityClassName", Str),
    ptr(25, "priority", Int32),
    ptr(30, "enableServiceLinks", Bool),
];

static POD_TEMPLATE_SPEC: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&POD_SPEC)),
];

static ROLLING_UPDATE_DEPLOYMENT: [Field; 2] = [
    ptr(1, "maxUnavailable", IntOrString),
    ptr(2, "maxSurge", IntOrString),
];

static DEPLOYMENT_STRATEGY: [Field; 2] = [
    f(1, "type", Str),
    ptr(2, "rollingUpdate", Msg(&ROLLING_UPDATE_DEPLOYMENT)),
];

static DEPLOYMENT_SPEC: [Field; 8] = [
    ptr(1, "replicas", Int32),
    ptr(2, "selector", Msg(&LABEL_SELECTOR)),
    f(3, "template", Msg(&POD_TEMPLATE_SPEC)),
    f(4, "strategy", Msg(&DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", Int32),
    ptr(6, "revisionHistoryLimit", Int32),
    f(7, "paused", Bool),
    ptr(9, "progressDeadlineSeconds", Int32),
];

static DEPLOYMENT: [Field; 2] = [
    f(1, "metadata", Msg(&OBJECT_META)),
    f(2, "spec", Msg(&DEPLOYMENT_SPEC)),
];

/// The kinds kemu decodes, by `apiVersion` and `kind`.
static KINDS: [(&str, &str, &[Field]); 3] = [
    ("v1", "Namespace", &NAMESPACE),
    ("v1", "Service", &SERVICE),
    ("apps/v1", "Deployment", &DEPLOYMENT),
];

/// `runtime.Unknown`: `typeMeta = 1 {apiVersion = 1, kind = 2}`, `raw = 2`.
static TYPE_META: [Field; 2] = [f(1, "apiVersion", Str), f(2, "kind", Str)];

fn malformed(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("the protobuf body is malformed at {what}: {e}"))
}

/// A whole request body: the `k8s\0` envelope around one object.
pub fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request(
            "the protobuf body does not start with the Kubernetes magic \"k8s\\0\"",
        )
    })?;
    let (mut type_meta, mut raw) = (Map::new(), None);
    for (tag, value) in fields(envelope).map_err(|e| malformed("the envelope", e))? {
        match (tag, value) {
            (1, Raw::Bytes(b)) => type_meta = decode_message(b, &TYPE_META, "typeMeta")?,
            (2, Raw::Bytes(b)) => raw = Some(b),
            (3, Raw::Bytes(encoding)) if !encoding.is_empty() => {
                return Err(ApiError::unsupported_body(format!(
                    "the protobuf body's object is encoded ({:?}); kemu decodes plain objects only",
                    String::from_utf8_lossy(encoding)
                )));
            }
            _ => {} // contentType is empty for objects
        }
    }
    let api_version = type_meta
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = type_meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some((_, _, table)) = KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
    else {
        let known: Vec<String> = KINDS.iter().map(|(v, k, _)| format!("{k} ({v})")).collect();
        return Err(ApiError::unsupported_body(format!(
            "kemu decodes protobuf bodies of {} only, not {kind} ({api_version}); send it as JSON or YAML (kubectl create -f)",
            known.join(", ")
        )));
    };
    let mut object = decode_message(raw.unwrap_or_default(), table, kind)?;
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

/// A field's undecoded value.
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn read_value<'a>(buf: &mut &'a [u8], wire: WireType) -> Result<Raw<'a>, String> {
    Ok(match wire {
        WireType::Varint => Raw::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        WireType::LengthDelimited => {
            let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
            if len > buf.len() {
                return Err(format!("a length of {len} with {} bytes left", buf.len()));
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Raw::Bytes(value)
        }
        WireType::SixtyFourBit if buf.len() >= 8 => Raw::Fixed(buf.get_u64_le()),
        WireType::ThirtyTwoBit if buf.len() >= 4 => Raw::Fixed(buf.get_u32_le().into()),
        other => {
            return Err(format!(
                "wire type {other:?} is not used by Kubernetes objects"
            ));
        }
    })
}

/// Whether a field kemu does not know holds only what Go writes for an unset field: zero, an
/// empty string or list, or a message of such fields.
fn is_unset(raw: &Raw, depth: u8) -> bool {
    match raw {
        Raw::Varint(v) | Raw::Fixed(v) => *v == 0,
        Raw::Bytes(b) => {
            b.is_empty()
                || depth < 16
                    && fields(b).is_ok_and(|fs| fs.iter().all(|(_, v)| is_unset(v, depth + 1)))
        }
    }
}

fn decode_message(
    bytes: &[u8],
    table: &[Field],
    path: &str,
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (tag, raw) in fields(bytes).map_err(|e| malformed(path, e))? {
        let Some(field) = table.iter().find(|f| f.tag == tag) else {
            if is_unset(&raw, 0) {
                continue;
            }
            return Err(ApiError::unsupported_body(format!(
                "{path} sets protobuf field {tag}, which kemu does not decode; send the object as JSON or YAML (kubectl create ... --dry-run=client -o yaml | kubectl create -f -)"
            )));
        };
        let here = format!("{path}.{}", field.name);
        let value = match (field.ty, raw) {
            (Str, Raw::Bytes(b)) => json!(text(b, &here)?),
            (Strs, Raw::Bytes(b)) => {
                push(&mut out, field.name, json!(text(b, &here)?));
                continue;
            }
            (Int32, Raw::Varint(v)) => json!(v as i64 as i32),
            (Int64, Raw::Varint(v)) => json!(v as i64),
            (Bool, Raw::Varint(v)) => json!(v != 0),
            (StrMap, Raw::Bytes(b)) => {
                let entry = decode_entry(b, &here)?;
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                map.as_object_mut()
                    .expect("a map field holds an object")
                    .extend([entry]);
                continue;
            }
            (IntOrString, Raw::Bytes(b)) => int_or_string(b, &here)?,
            (Time, Raw::Bytes(b)) => time(b, &here)?,
            (Msg(inner), Raw::Bytes(b)) => Value::Object(decode_message(b, inner, &here)?),
            (Msgs(inner), Raw::Bytes(b)) => {
                let index = out
                    .get(field.name)
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let item = decode_message(b, inner, &format!("{here}[{index}]"))?;
                push(&mut out, field.name, Value::Object(item));
                continue;
            }
            _ => return Err(malformed(&here, "a value of the wrong wire type")),
        };
        if field.pointer || !is_zero(&value) {
            out.insert(field.name.into(), value);
        }
    }
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn push(out: &mut Map<String, Value>, name: &str, item: Value) {
    let list = out.entry(name).or_insert_with(|| json!([]));
    list.as_array_mut()
        .expect("a repeated field holds an array")
        .push(item);
}

fn text(b: &[u8], path: &str) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|e| malformed(path, e))
}

/// A message's fields in wire order, undecoded.
fn fields(b: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut buf = b;
    let mut out = Vec::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        out.push((tag, read_value(&mut buf, wire)?));
    }
    Ok(out)
}

fn decode_entry(b: &[u8], path: &str) -> Result<(String, Value), ApiError> {
    let (mut key, mut value) = (String::new(), String::new());
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Bytes(k)) => key = text(k, path)?,
            (2, Raw::Bytes(v)) => value = text(v, path)?,
            _ => return Err(malformed(path, "a map entry that is not {key, value}")),
        }
    }
    Ok((key, json!(value)))
}

fn int_or_string(b: &[u8], path: &str) -> Result<Value, ApiError> {
    let (mut is_string, mut int, mut string) = (false, 0i32, String::new());
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Varint(t)) => is_string = t == 1,
            (2, Raw::Varint(v)) => int = v as i64 as i32,
            (3, Raw::Bytes(s)) => string = text(s, path)?,
            _ => return Err(malformed(path, "an IntOrString with an unknown field")),
        }
    }
    Ok(if is_string { json!(string) } else { json!(int) })
}

fn time(b: &[u8], path: &str) -> Result<Value, ApiError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for (tag, raw) in fields(b).map_err(|e| malformed(path, e))? {
        match (tag, raw) {
            (1, Raw::Varint(s)) => seconds = s as i64,
            (2, Raw::Varint(n)) => nanos = n as i64 as i32,
            _ => return Err(malformed(path, "a Time with an unknown field")),
        }
    }
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    // Kubernetes times have whole seconds in JSON.
    let ts = jiff::Timestamp::new(seconds, 0).map_err(|e| malformed(path, e))?;
    Ok(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/protobuf/{name}.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        decode_body(&std::fs::read(&path).unwrap()).unwrap()
    }

    /// The bodies are what kubectl 1.32 posted for the commands in tests/fixtures/protobuf/README.md.
    #[test]
    fn kubectls_generator_bodies_decode_to_the_json_go_would_write() {
        for name in [
            "namespace-team-a",
            "deployment-web",
            "deployment-zero-replicas-command",
            "service-nodeport",
            "service-headless",
            "service-named-target",
            "service-externalname",
            "service-loadbalancer",
        ] {
            crate::testing::snapshot_settings()
                .bind(|| insta::assert_json_snapshot!(name, fixture(name)));
        }
    }

    #[test]
    fn a_pointer_field_keeps_its_zero() {
        let zero = fixture("deployment-zero-replicas-command");
        assert_eq!(zero["spec"]["replicas"], 0);
    }

    /// A `raw` object with the given bytes, wrapped like kubectl wraps it.
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        fn ld(tag: u8, b: &[u8]) -> Vec<u8> {
            let mut v = vec![tag << 3 | 2, b.len() as u8];
            v.extend_from_slice(b);
            v
        }
        let type_meta = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), ld(1, &type_meta), ld(2, raw)].concat()
    }

    #[test]
    fn an_unknown_field_with_a_value_is_refused_and_an_unset_one_ignored() {
        // Namespace.status (field 3) empty, as Go writes it: ignored.
        let ok = decode_body(&envelope(
            "v1",
            "Namespace",
            &[0x0a, 0x04, 0x0a, 0x02, b'n', b's', 0x1a, 0x00],
        ))
        .unwrap();
        assert_eq!(ok["metadata"]["name"], "ns");
        // ObjectMeta.managedFields (17) with content: refused, naming the field.
        let raw = [0x0a, 0x06, 0x8a, 0x01, 0x03, 0x0a, 0x01, b'x'];
        let err = decode_body(&envelope("v1", "Namespace", &raw)).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message
                .contains("Namespace.metadata sets protobuf field 17"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_kind_without_a_table_is_refused_with_the_list_of_kinds() {
        let err = decode_body(&envelope("v1", "ConfigMap", &[])).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(
            err.message
                .contains("Namespace (v1), Service (v1), Deployment (apps/v1)"),
            "{}",
            err.message
        );
        assert_eq!(decode_body(b"{}").unwrap_err().code, 400);
        let mut gzipped = envelope("v1", "Namespace", &[]);
        gzipped.extend([0x1a, 0x04, b'g', b'z', b'i', b'p']);
        assert_eq!(decode_body(&gzipped).unwrap_err().code, 415);
    }
}
