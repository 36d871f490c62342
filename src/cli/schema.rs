//! `kemu schema [--reference]`: the topology file's JSON Schema, made from the parser's own
//! types (`topology::raw`, with `deny_unknown_fields`), so that editors complete and check
//! topology files and the README's field reference cannot drift: `--reference` prints that
//! reference (a Markdown table), and a test compares it with the README.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

/// Print the topology file's JSON Schema.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Print the field reference (Markdown) the README shows instead.
    #[arg(long)]
    pub reference: bool,
}

/// The JSON Schema of a topology file.
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(crate::topology::raw::RawTopology))
        .expect("a schema serializes")
}

/// One field of the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `hosts[].roles`.
    pub path: String,
    /// `string`, `integer`, `list of string`, `one of: a, b` ...
    pub kind: String,
    pub required: bool,
    pub description: String,
}

/// `schema` with `$ref`s into `$defs` followed and `Option`'s null alternative dropped.
fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default();
            s = &root["$defs"][name];
            continue;
        }
        if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            let real: Vec<&Value> = alts.iter().filter(|a| a["type"] != "null").collect();
            if let [one] = real[..] {
                s = one;
                continue;
            }
        }
        return s;
    }
}

/// The values an enum schema allows (`oneOf` of `const`s, or `enum`).
fn choices(s: &Value) -> Option<Vec<String>> {
    let values: Vec<String> = if let Some(list) = s.get("enum").and_then(Value::as_array) {
        list.iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    } else {
        s.get("oneOf")?
            .as_array()?
            .iter()
            .filter_map(|v| v.get("const")?.as_str().map(String::from))
            .collect()
    };
    (!values.is_empty()).then_some(values)
}

fn kind_of(root: &Value, s: &Value) -> String {
    let s = resolve(root, s);
    if let Some(values) = choices(s) {
        return format!("one of: {}", values.join(", "));
    }
    let ty = match &s["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any")
            .to_string(),
        _ => "any".into(),
    };
    match ty.as_str() {
        "array" => format!("list of {}", kind_of(root, &s["items"])),
        "object" => "mapping".into(),
        other => other.into(),
    }
}

/// Every field of the schema, depth first in the types' order.
pub fn fields(root: &Value) -> Vec<Field> {
    fn walk(root: &Value, s: &Value, prefix: &str, out: &mut Vec<Field>) {
        let s = resolve(root, s);
        let required: Vec<&str> = s["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let Some(props) = s["properties"].as_object() else {
            return;
        };
        for (name, p) in props {
            let path = format!("{prefix}{name}");
            let description = p["description"]
                .as_str()
                .or_else(|| resolve(root, p)["description"].as_str())
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            out.push(Field {
                path: path.clone(),
                kind: kind_of(root, p),
                required: required.contains(&name.as_str()),
                description,
            });
            let inner = resolve(root, p);
            if inner["type"] == "array" {
                walk(root, &inner["items"], &format!("{path}[]."), out);
            } else {
                walk(root, inner, &format!("{path}."), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, "", &mut out);
    out
}

/// The field reference as a Markdown table.
pub fn reference(root: &Value) -> String {
    let mut out = String::from("| field | type | |\n|---|---|---|\n");
    for f in fields(root) {
        out.push_str(&format!(
            "| `{}` | {}{} | {} |\n",
            f.path,
            f.kind,
            if f.required { ", required" } else { "" },
            f.description.replace('|', "\\|")
        ));
    }
    out
}

pub fn run(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    let schema = schema();
    if args.reference {
        print!("{}", reference(&schema));
    } else {
        println!("{}", serde_json::to_string_pretty(&schema)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_parser_is_in_the_schema_with_a_description() {
        let fields = fields(&schema());
        let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        for path in [
            "name",
            "hosts[].roles",
            "hosts[].daemons[].command",
            "services.clusterIPRange",
            "kubelet.restartBackOff",
            "kubelet.maxPods",
            "controlPlane.seed",
        ] {
            assert!(paths.contains(&path), "{path} not in {paths:?}");
        }
        let undocumented: Vec<&str> = fields
            .iter()
            .filter(|f| f.description.is_empty())
            .map(|f| f.path.as_str())
            .collect();
        assert!(undocumented.is_empty(), "no description: {undocumented:?}");
        let roles = fields.iter().find(|f| f.path == "hosts[].roles").unwrap();
        assert_eq!(roles.kind, "list of one of: master, minion, client");
        let name = fields.iter().find(|f| f.path == "name").unwrap();
        assert!(name.required && name.kind == "string");
    }
}
