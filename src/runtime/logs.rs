//! Container logs in the CRI format the kubelet reads (`<RFC3339Nano time> <stream> <tag>
//! <message>`, tag `F` for a full line and `P` for a partial one), and the pure rendering of a
//! `kubectl logs` request (since, tail, timestamps, limit).

use jiff::Timestamp;

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: Timestamp,
    pub stream: String,
    pub partial: bool,
    pub message: String,
}

/// A log line in the CRI format (no trailing newline in `message`).
pub fn format_line(time: Timestamp, stream: &str, partial: bool, message: &str) -> String {
    format!(
        "{} {stream} {} {message}\n",
        time.strftime("%Y-%m-%dT%H:%M:%S%.fZ"),
        if partial { "P" } else { "F" }
    )
}

/// Parse one CRI line.
pub fn parse_line(line: &str) -> Option<LogLine> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.parse().ok()?;
    let stream = parts.next()?.to_string();
    let partial = parts.next()? == "P";
    let message = parts
        .next()
        .unwrap_or("")
        .trim_end_matches('\n')
        .to_string();
    Some(LogLine {
        time,
        stream,
        partial,
        message,
    })
}

/// Join partial lines into whole lines (the time is the first part's).
pub fn whole_lines(text: &str) -> Vec<LogLine> {
    let mut out: Vec<LogLine> = Vec::new();
    let mut pending: Option<LogLine> = None;
    for line in text.lines().filter_map(parse_line) {
        match pending.as_mut() {
            Some(p) => {
                p.message.push_str(&line.message);
                if !line.partial {
                    out.push(pending.take().expect("pending"));
                }
            }
            None if line.partial => pending = Some(line),
            None => out.push(line),
        }
    }
    out.extend(pending);
    out
}

/// What `kubectl logs` prints for `text` (a whole CRI file): lines since `since`, the last
/// `tail` of them, each prefixed with its RFC 3339 time when `timestamps`, at most
/// `limit_bytes` bytes.
pub fn render(
    text: &str,
    since: Option<Timestamp>,
    tail: Option<usize>,
    timestamps: bool,
    limit_bytes: Option<usize>,
) -> String {
    let lines: Vec<LogLine> = whole_lines(text)
        .into_iter()
        .filter(|l| since.is_none_or(|s| l.time >= s))
        .collect();
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = String::new();
    for line in &lines[skip..] {
        out.push_str(&render_line(line, timestamps));
    }
    if let Some(limit) = limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// One line as `kubectl logs` prints it.
pub fn render_line(line: &LogLine, timestamps: bool) -> String {
    if timestamps {
        format!(
            "{} {}\n",
            line.time.strftime("%Y-%m-%dT%H:%M:%S%.fZ"),
            line.message
        )
    } else {
        format!("{}\n", line.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips_and_joins_partials() {
        let mut text = String::new();
        text.push_str(&format_line(
            t("2026-01-01T00:00:00.5Z"),
            "stdout",
            false,
            "one",
        ));
        text.push_str(&format_line(
            t("2026-01-01T00:00:01Z"),
            "stderr",
            true,
            "tw",
        ));
        text.push_str(&format_line(
            t("2026-01-01T00:00:02Z"),
            "stderr",
            false,
            "o",
        ));
        text.push_str(&format_line(
            t("2026-01-01T00:00:03Z"),
            "stdout",
            false,
            "three",
        ));
        assert!(
            text.starts_with("2026-01-01T00:00:00.5Z stdout F one\n"),
            "{text}"
        );
        assert_eq!(render(&text, None, None, false, None), "one\ntwo\nthree\n");
        assert_eq!(render(&text, None, Some(2), false, None), "two\nthree\n");
        assert_eq!(
            render(&text, Some(t("2026-01-01T00:00:02.5Z")), None, false, None),
            "three\n"
        );
        assert_eq!(
            render(&text, None, Some(1), true, None),
            "2026-01-01T00:00:03Z three\n"
        );
        assert_eq!(render(&text, None, None, false, Some(6)), "one\ntw");
    }
}
