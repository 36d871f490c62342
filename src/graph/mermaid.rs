//! The graph as a Mermaid flowchart (GitHub renders ```mermaid blocks).

use std::fmt::Write;

use super::{Graph, fill};

/// A quoted Mermaid label: lines joined by `<br/>`, Mermaid's entity codes for the
/// characters that would end the label or open markup.
fn label(lines: &[String]) -> String {
    let body: Vec<String> = lines
        .iter()
        .map(|l| {
            l.replace('#', "#35;")
                .replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        })
        .collect();
    format!("\"{}\"", body.join("<br/>"))
}

/// The graph as `flowchart TB`: router, segments, hosts, overlay; dotted lines are the overlay.
pub fn mermaid(g: &Graph) -> String {
    let mut out = String::new();
    // YAML front matter; a quoted title, whatever the lab is called.
    let _ = writeln!(
        out,
        "---\ntitle: {}\n---",
        serde_json::to_string(&g.title()).unwrap_or_default()
    );
    let _ = writeln!(out, "flowchart TB");
    let _ = writeln!(out, "  router{{{{{}}}}}", label(&g.router_lines()));
    for (s, seg) in g.segments.iter().enumerate() {
        let _ = writeln!(out, "  segment{s}[{}]", label(&seg.lines()));
        let _ = writeln!(
            out,
            "  router ---|{}| segment{s}",
            label(&[seg.gateway.to_string()])
        );
    }
    for (h, host) in g.hosts.iter().enumerate() {
        let _ = writeln!(out, "  host{h}[{}]", label(&host.lines()));
        if let Some(s) = g.segments.iter().position(|s| s.name == host.segment) {
            let _ = writeln!(out, "  segment{s} --- host{h}");
        }
    }
    let _ = writeln!(out, "  overlay([{}])", label(&g.overlay.lines()));
    for (h, host) in g.hosts.iter().enumerate() {
        if host.subnet.is_some() {
            let _ = writeln!(out, "  host{h} -.- overlay");
        }
    }
    for class in ["router", "segment", "master", "minion", "client", "overlay"] {
        let _ = writeln!(
            out,
            "  classDef {class} fill:{},stroke:#555,color:#000",
            fill(class)
        );
    }
    let _ = writeln!(out, "  class router router");
    let segments: Vec<String> = (0..g.segments.len())
        .map(|s| format!("segment{s}"))
        .collect();
    let _ = writeln!(out, "  class {} segment", segments.join(","));
    for class in ["master", "minion", "client"] {
        let hosts: Vec<String> = g
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.class() == class)
            .map(|(h, _)| format!("host{h}"))
            .collect();
        if !hosts.is_empty() {
            let _ = writeln!(out, "  class {} {class}", hosts.join(","));
        }
    }
    let _ = writeln!(out, "  class overlay overlay");
    out
}
