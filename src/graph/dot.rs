//! The graph as Graphviz DOT (`dot -Tsvg`, `-Tpng` ...).

use std::fmt::Write;

use super::{Graph, fill};

/// A DOT string literal: quotes and backslashes escaped.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A multi-line, left-justified label (`\l` ends each line).
fn label(lines: &[String]) -> String {
    let body: String = lines
        .iter()
        .map(|l| l.replace('\\', "\\\\").replace('"', "\\\"") + "\\l")
        .collect();
    format!("\"{body}\"")
}

/// The graph in DOT: an undirected graph, layered top to bottom as `svg` draws it.
pub fn dot(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", quoted(&format!("kemu-{}", g.lab)));
    let _ = writeln!(
        out,
        "  graph [label={}, labelloc=t, rankdir=TB, fontname=\"monospace\"];",
        quoted(&g.title())
    );
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\", fontsize=11];"
    );
    let _ = writeln!(out, "  edge [fontname=\"monospace\", fontsize=10];");
    let _ = writeln!(
        out,
        "  router [label={}, fillcolor=\"{}\"];",
        label(&g.router_lines()),
        fill("router")
    );
    for (s, seg) in g.segments.iter().enumerate() {
        let _ = writeln!(
            out,
            "  segment{s} [label={}, fillcolor=\"{}\"];",
            label(&seg.lines()),
            fill("segment")
        );
        let _ = writeln!(
            out,
            "  router -- segment{s} [label={}];",
            quoted(&seg.gateway.to_string())
        );
    }
    for (h, host) in g.hosts.iter().enumerate() {
        let _ = writeln!(
            out,
            "  host{h} [label={}, fillcolor=\"{}\"];",
            label(&host.lines()),
            fill(host.class())
        );
        if let Some(s) = g.segments.iter().position(|s| s.name == host.segment) {
            let _ = writeln!(out, "  segment{s} -- host{h};");
        }
    }
    let _ = writeln!(
        out,
        "  overlay [shape=ellipse, style=\"dashed,filled\", label={}, fillcolor=\"{}\"];",
        label(&g.overlay.lines()),
        fill("overlay")
    );
    for (h, host) in g.hosts.iter().enumerate() {
        if let Some(subnet) = host.subnet {
            let _ = writeln!(
                out,
                "  host{h} -- overlay [style=dashed, label={}];",
                quoted(&subnet.to_string())
            );
        }
    }
    // The hosts on one row, whatever their segment.
    let hosts: Vec<String> = (0..g.hosts.len()).map(|h| format!("host{h};")).collect();
    let _ = writeln!(out, "  {{ rank=same; {} }}", hosts.join(" "));
    out.push_str("}\n");
    out
}
