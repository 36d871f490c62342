//! What the benchmarks share: writing their section of BENCHMARKS.md.

/// Replace (or append) the `<!-- name:begin -->` … `<!-- name:end -->` section of BENCHMARKS.md.
pub fn write_section(name: &str, section: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# kemu benchmarks\n\nEvery figure comes from a script under bench/ or a cargo bench that rewrites its own section.\n\n".into()
    });
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->\n"),
    );
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) => format!("{}{}{}", &text[..b], section, &text[e + end.len()..]),
        _ => format!("{text}\n{section}"),
    };
    std::fs::write(path, new).unwrap();
}
