//! What the benchmarks share: raw calls to a lab's API server and writing their section of
//! BENCHMARKS.md. Not every benchmark uses every helper.

#![allow(dead_code)]

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

/// A lab's API server as its hosts reach it (`http://<master>:8080`, over the master's
/// network namespace). Leaked: a benchmark uses its labs until it exits.
pub type LabApi = &'static kemu::lab::health::LabApi;

/// The API server of the running lab `lab`.
pub fn lab_api(lab: &str) -> LabApi {
    let name = kemu::topology::LabName::parse(lab).expect("a lab name");
    let (_, record) = kemu::lab::state::LabRecord::open(&name).expect("the lab is up");
    Box::leak(Box::new(
        kemu::lab::health::LabApi::of(&record.topology).expect("the master's namespace"),
    ))
}

/// One HTTP/1.1 request to a lab's API server, with no client library in the measured path:
/// the status code and the body. PATCH bodies are merge patches.
pub fn api(lab: LabApi, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = lab.connect(std::time::Duration::from_secs(5)).unwrap();
    let body = body.unwrap_or("");
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
