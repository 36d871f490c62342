//! kube's pod-template-hash hashes the text go-spew prints for the Go `v1.PodTemplateSpec`
//! (`hashutil.DeepHashObject`: `%#v` with sorted map keys and methods disabled). To get the same
//! names as a real cluster, this module prints a pod template (JSON) the way go-spew prints the
//! decoded Go struct, from the Go field layout in `gotypes.txt`:
//!
//! - every field of every struct that is present, in Go order, as `Name:(type)value` separated by
//!   spaces; zero values included (`(string)`, `(int32)0`, `(*int64)<nil>`, `([]v1.Volume)<nil>`);
//! - values inside slices and maps without their type; map keys sorted;
//! - lists and maps that are empty are nil, as after the API server's protobuf round trip;
//! - the internals of `metav1.Time`, `intstr.IntOrString` and `resource.Quantity`.
//!
//! Quantities are printed from kube's fast parsing path (integer mantissa and decimal scale);
//! quantities that need its arbitrary-precision path (huge values, fractions of binary suffixes)
//! may hash differently from kube. Fields kemu does not know (newer than k8s.io/api v0.32) make
//! [`print_template`] fail, and the caller falls back to hashing the JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::Value;

const GO_TYPES: &str = include_str!("gotypes.txt");

/// A Go type as the schema names it.
#[derive(Debug, Clone, PartialEq)]
enum GoType {
    Ptr(Box<GoType>),
    Slice(Box<GoType>),
    Map(Box<GoType>, Box<GoType>),
    /// A builtin (`string`, `int32`, `int64`, `bool`).
    Builtin(&'static str),
    /// A named type (struct or alias of another type), by its qualified schema name.
    Named(String),
}

struct Field {
    name: String,
    /// `None` for an inlined embedded struct.
    json: Option<String>,
    ty: GoType,
}

#[derive(Default)]
struct Schema {
    structs: HashMap<String, Vec<Field>>,
    named: HashMap<String, GoType>,
}

fn builtin(s: &str) -> Option<&'static str> {
    ["string", "int32", "int64", "bool", "uint64"]
        .into_iter()
        .find(|b| *b == s)
}

/// Parse a Go type expression of `package` (`""` for core/v1, `"metav1"` for apimachinery's).
fn parse_type(s: &str, package: &str) -> GoType {
    if let Some(rest) = s.strip_prefix('*') {
        return GoType::Ptr(Box::new(parse_type(rest, package)));
    }
    if let Some(rest) = s.strip_prefix("[]") {
        return GoType::Slice(Box::new(parse_type(rest, package)));
    }
    if let Some(rest) = s.strip_prefix("map[") {
        let (k, v) = rest.split_once(']').unwrap_or((rest, ""));
        return GoType::Map(
            Box::new(parse_type(k, package)),
            Box::new(parse_type(v, package)),
        );
    }
    if let Some(b) = builtin(s) {
        return GoType::Builtin(b);
    }
    if s.contains('.') || package.is_empty() {
        GoType::Named(s.to_string())
    } else {
        GoType::Named(format!("{package}.{s}"))
    }
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = Schema::default();
        for line in GO_TYPES.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            if line.starts_with("= ") {
                words.next();
                let (Some(name), Some(under)) = (words.next(), words.next()) else {
                    continue;
                };
                let package = name.split_once('.').map_or("", |(p, _)| p);
                schema
                    .named
                    .insert(name.to_string(), parse_type(under, package));
                continue;
            }
            let Some(name) = words.next() else { continue };
            let package = name.split_once('.').map_or("", |(p, _)| p);
            let fields = words
                .filter_map(|w| {
                    let mut parts = w.splitn(3, ':');
                    let (f, j, t) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(Field {
                        name: f.to_string(),
                        json: (j != "-").then(|| j.to_string()),
                        ty: parse_type(t, package),
                    })
                })
                .collect();
            schema.structs.insert(name.to_string(), fields);
        }
        schema
    })
}

/// The name Go's `reflect.Type.String()` gives a type: package name, dot, type name.
fn type_string(ty: &GoType) -> String {
    match ty {
        GoType::Ptr(t) => format!("*{}", type_string(t)),
        GoType::Slice(t) => format!("[]{}", type_string(t)),
        GoType::Map(k, v) => format!("map[{}]{}", type_string(k), type_string(v)),
        GoType::Builtin(b) => b.to_string(),
        GoType::Named(n) => match n.split_once('.') {
            Some(("metav1", rest)) => format!("v1.{rest}"),
            Some(_) => n.clone(),
            None => format!("v1.{n}"),
        },
    }
}

/// Something the schema does not cover.
#[derive(Debug)]
pub struct Unsupported(pub String);

struct Printer<'a> {
    schema: &'a Schema,
    out: String,
}

fn is_nil(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

impl Printer<'_> {
    fn paren(&mut self, ty: &GoType, show: bool) {
        if show {
            let _ = write!(self.out, "({})", type_string(ty));
        }
    }

    fn value(&mut self, ty: &GoType, v: Option<&Value>, show: bool) -> Result<(), Unsupported> {
        match ty {
            GoType::Ptr(inner) => {
                let nil = matches!(v, None | Some(Value::Null));
                if show {
                    let _ = write!(self.out, "({})", type_string(ty));
                } else {
                    self.out.push_str(if nil { "" } else { "<*>" });
                }
                if nil {
                    self.out.push_str("<nil>");
                    return Ok(());
                }
                self.value(inner, v, false)
            }
            GoType::Slice(elem) => {
                self.paren(ty, show);
                if is_nil(v) {
                    self.out.push_str("<nil>");
                    return Ok(());
                }
                let Some(Value::Array(items)) = v else {
                    return Err(Unsupported(format!("{} is not a list", type_string(ty))));
                };
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(' ');
                    }
                    self.value(elem, Some(item), false)?;
                }
                self.out.push(']');
                Ok(())
            }
            GoType::Map(k, val) => {
                self.paren(ty, show);
                self.map(k, val, v)
            }
            GoType::Builtin(b) => {
                self.paren(ty, show);
                self.scalar(b, v)
            }
            GoType::Named(name) => self.named(ty, name, v, show),
        }
    }

    fn map(&mut self, k: &GoType, val: &GoType, v: Option<&Value>) -> Result<(), Unsupported> {
        if is_nil(v) {
            self.out.push_str("<nil>");
            return Ok(());
        }
        let Some(Value::Object(m)) = v else {
            return Err(Unsupported("a map is not an object".into()));
        };
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        self.out.push_str("map[");
        for (i, key) in keys.into_iter().enumerate() {
            if i > 0 {
                self.out.push(' ');
            }
            self.value(k, Some(&Value::String(key.clone())), false)?;
            self.out.push(':');
            self.value(val, m.get(key), false)?;
        }
        self.out.push(']');
        Ok(())
    }

    fn scalar(&mut self, b: &str, v: Option<&Value>) -> Result<(), Unsupported> {
        match (b, v) {
            ("string", None | Some(Value::Null)) => {}
            ("string", Some(Value::String(s))) => self.out.push_str(s),
            ("bool", None | Some(Value::Null)) => self.out.push_str("false"),
            ("bool", Some(Value::Bool(x))) => {
                let _ = write!(self.out, "{x}");
            }
            (_, None | Some(Value::Null)) => self.out.push('0'),
            (_, Some(Value::Number(n))) => {
                let _ = write!(self.out, "{n}");
            }
            (b, Some(other)) => return Err(Unsupported(format!("{other} is not a {b}"))),
        }
        Ok(())
    }

    fn named(
        &mut self,
        ty: &GoType,
        name: &str,
        v: Option<&Value>,
        show: bool,
    ) -> Result<(), Unsupported> {
        match name {
            "metav1.Time" => {
                self.paren(ty, show);
                if !is_nil(v) {
                    return Err(Unsupported("a time in a pod template".into()));
                }
                self.out.push_str(
                    "{Time:(time.Time){wall:(uint64)0 ext:(int64)0 loc:(*time.Location)<nil>}}",
                );
                Ok(())
            }
            "types.UID" => {
                self.paren(ty, show);
                self.scalar("string", v)
            }
            "intstr.IntOrString" => {
                self.paren(ty, show);
                let (kind, int, s) = match v {
                    Some(Value::String(s)) => (1, 0, s.as_str()),
                    Some(Value::Number(n)) => (0, n.as_i64().unwrap_or(0), ""),
                    _ => (0, 0, ""),
                };
                let _ = write!(
                    self.out,
                    "{{Type:(intstr.Type){kind} IntVal:(int32){int} StrVal:(string){s}}}"
                );
                Ok(())
            }
            "resource.Quantity" => {
                self.paren(ty, show);
                let text = match v {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "0".into(),
                };
                let (value, scale, format) = parse_quantity(&text)
                    .ok_or_else(|| Unsupported(format!("quantity {text:?}")))?;
                let _ = write!(
                    self.out,
                    "{{i:(resource.int64Amount){{value:(int64){value} scale:(resource.Scale){scale}}} \
                     d:(resource.infDecAmount){{Dec:(*inf.Dec)<nil>}} s:(string) Format:(resource.Format){format}}}"
                );
                Ok(())
            }
            _ => {
                if let Some(fields) = self.schema.structs.get(name) {
                    self.paren(ty, show);
                    let obj = match v {
                        None | Some(Value::Null) => None,
                        Some(Value::Object(o)) => Some(o),
                        Some(other) => {
                            return Err(Unsupported(format!("{other} is not a {name}")));
                        }
                    };
                    if let Some(o) = obj {
                        let known = |k: &String| known_key(self.schema, fields, k);
                        if let Some(unknown) = o.keys().find(|k| !known(k)) {
                            return Err(Unsupported(format!("field {unknown} of {name}")));
                        }
                    }
                    self.out.push('{');
                    for (i, f) in fields.iter().enumerate() {
                        if i > 0 {
                            self.out.push(' ');
                        }
                        self.out.push_str(&f.name);
                        self.out.push(':');
                        let fv = match &f.json {
                            Some(j) => obj.and_then(|o| o.get(j)),
                            // Inlined: the embedded struct reads the same object.
                            None => v,
                        };
                        self.value(&f.ty, fv, true)?;
                    }
                    self.out.push('}');
                    return Ok(());
                }
                match self.schema.named.get(name) {
                    Some(under) => {
                        self.paren(ty, show);
                        match under {
                            GoType::Builtin(b) => self.scalar(b, v),
                            GoType::Map(k, val) => self.map(k, val, v),
                            other => Err(Unsupported(format!("{name} = {other:?}"))),
                        }
                    }
                    None => Err(Unsupported(format!("type {name}"))),
                }
            }
        }
    }
}

/// Whether a JSON key belongs to the struct (directly or through an inlined embedded struct).
fn known_key(schema: &Schema, fields: &[Field], key: &str) -> bool {
    fields.iter().any(|f| match &f.json {
        Some(j) => j == key,
        None => match &f.ty {
            GoType::Named(n) => schema
                .structs
                .get(n)
                .is_some_and(|inner| known_key(schema, inner, key)),
            _ => false,
        },
    })
}

/// kube's fast quantity parse: (mantissa, decimal scale, format).
fn parse_quantity(s: &str) -> Option<(i64, i32, &'static str)> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (int_part, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = format!("{int_part}{frac}");
    let mut mantissa: i64 = digits.trim_start_matches('+').parse().ok()?;
    let mut scale = -(frac.len() as i32);
    let format = match suffix {
        "" => "DecimalSI",
        "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => "DecimalSI",
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => "BinarySI",
        _ if suffix.starts_with(['e', 'E']) => "DecimalExponent",
        _ => return None,
    };
    match suffix {
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        "" => {}
        s if format == "DecimalExponent" => scale += s[1..].parse::<i32>().ok()?,
        binary => {
            if !frac.is_empty() {
                return None;
            }
            let power = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .iter()
                .position(|b| *b == binary)? as u32
                + 1;
            mantissa = mantissa.checked_mul(1i64.checked_shl(10 * power)?)?;
        }
    }
    Some((mantissa, scale, format))
}

/// go-spew's `%#v` text of a `v1.PodTemplateSpec` given as JSON.
pub fn print_template(template: &Value) -> Result<String, Unsupported> {
    let mut p = Printer {
        schema: schema(),
        out: String::new(),
    };
    p.value(
        &GoType::Named("PodTemplateSpec".into()),
        Some(template),
        true,
    )?;
    Ok(p.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_type_is_declared() {
        let s = schema();
        fn check(s: &Schema, t: &GoType, from: &str) {
            match t {
                GoType::Ptr(t) | GoType::Slice(t) => check(s, t, from),
                GoType::Map(k, v) => {
                    check(s, k, from);
                    check(s, v, from);
                }
                GoType::Builtin(_) => {}
                GoType::Named(n) => {
                    let special = [
                        "metav1.Time",
                        "types.UID",
                        "intstr.IntOrString",
                        "resource.Quantity",
                        "metav1.OwnerReference",
                        "metav1.ManagedFieldsEntry",
                    ];
                    assert!(
                        s.structs.contains_key(n)
                            || s.named.contains_key(n)
                            || special.contains(&n.as_str()),
                        "{n} (used by {from}) is not declared"
                    );
                }
            }
        }
        for (name, fields) in &s.structs {
            for f in fields {
                check(s, &f.ty, name);
            }
        }
        assert!(s.structs.len() > 100);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some((100, -3, "DecimalSI")));
        assert_eq!(parse_quantity("1Gi"), Some((1 << 30, 0, "BinarySI")));
        assert_eq!(parse_quantity("0.5"), Some((5, -1, "DecimalSI")));
        assert_eq!(parse_quantity("2"), Some((2, 0, "DecimalSI")));
        assert_eq!(parse_quantity("1.5Gi"), None);
    }
}
