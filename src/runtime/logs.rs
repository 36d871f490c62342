//! Container logs in the CRI log format, the one the kubelet reads from
//! `/var/log/pods/...`: one record per line,
//! `<RFC 3339 timestamp, 9 fraction digits> <stdout|stderr> <F|P> <content>`, where `P` marks
//! a chunk of a line too long for one record and `F` the chunk that ends it.
//!
//! Writing (`cri_record`) happens in the container shim; reading (`read_log`) turns a log file
//! back into what `kubectl logs` prints, with tailLines, sinceTime, timestamps, limitBytes and
//! follow.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{LogOptions, LogStream};

/// Longest content of one record; longer lines are split into `P` records.
pub const MAX_RECORD: usize = 16 * 1024;

/// The timestamp format of a record (and of `kubectl logs --timestamps`).
pub fn format_time(at: Timestamp) -> String {
    at.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S.%9fZ")
        .to_string()
}

/// One record, newline included. `content` must not contain a newline.
pub fn cri_record(at: Timestamp, stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    out.extend_from_slice(format_time(at).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp as written.
    pub time_text: &'a str,
    pub time: Timestamp,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parse one record (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time_text = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or(b"");
    Some(Record {
        time_text,
        time: time_text.parse().ok()?,
        stream,
        partial: tag == b"P",
        content,
    })
}

/// A record as `kubectl logs` prints it.
pub fn render(record: &Record<'_>, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.content.len() + 32);
    if timestamps {
        out.extend_from_slice(record.time_text.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(record.content);
    if !record.partial {
        out.push(b'\n');
    }
    out
}

/// The offset where the last `lines` lines of a file start.
pub fn tail_offset(file: &mut std::fs::File, lines: u64) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut pos = len;
    // The newline that ends the last line does not start a line.
    let mut newlines_to_skip = lines + 1;
    let mut first_chunk = true;
    let mut chunk = vec![0u8; 64 * 1024];
    while pos > 0 {
        let size = (pos as usize).min(chunk.len());
        pos -= size as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk[..size])?;
        let mut data = &chunk[..size];
        if first_chunk {
            first_chunk = false;
            if data.last() != Some(&b'\n') {
                // An unterminated last line counts as a line.
                newlines_to_skip -= 1;
            }
        }
        while let Some(i) = data.iter().rposition(|b| *b == b'\n') {
            newlines_to_skip -= 1;
            if newlines_to_skip == 0 {
                return Ok(pos + i as u64 + 1);
            }
            data = &data[..i];
        }
    }
    Ok(0)
}

/// Stream a CRI log file as `kubectl logs` prints it. With `follow`, keep reading until
/// `finished()` says the writer is done and the file is read to its end.
pub fn read_log(
    path: PathBuf,
    options: LogOptions,
    finished: Arc<dyn Fn() -> bool + Send + Sync>,
) -> io::Result<LogStream> {
    let mut std_file = std::fs::File::open(&path)?;
    let start = match options.tail_lines {
        Some(n) => tail_offset(&mut std_file, n)?,
        None => 0,
    };
    let state = Reader {
        file: tokio::fs::File::from_std(std_file),
        start: Some(start),
        pending: Vec::new(),
        sent: 0,
        since: options.since.map(timestamp_of),
        options,
        finished,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut state| async move {
            match state.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), state)),
                Ok(None) => None,
                Err(err) => {
                    state.done = true;
                    Some((Err(err), state))
                }
            }
        },
    )))
}

fn timestamp_of(at: SystemTime) -> Timestamp {
    Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH)
}

struct Reader {
    file: tokio::fs::File,
    start: Option<u64>,
    /// Bytes read that do not yet end in a newline.
    pending: Vec<u8>,
    sent: u64,
    since: Option<Timestamp>,
    options: LogOptions,
    finished: Arc<dyn Fn() -> bool + Send + Sync>,
    done: bool,
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(start) = self.start.take() {
            self.file.seek(SeekFrom::Start(start)).await?;
        }
        let mut buf = vec![0u8; 32 * 1024];
        while !self.done {
            // Ask before reading: whatever was written before the writer finished is then
            // read by this round.
            let finished = !self.options.follow || (self.finished)();
            let n = self.file.read(&mut buf).await?;
            if n == 0 {
                if finished {
                    self.done = true;
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            self.pending.extend_from_slice(&buf[..n]);
            let out = self.take_complete_lines();
            if !out.is_empty() {
                return Ok(Some(Bytes::from(out)));
            }
        }
        Ok(None)
    }

    fn take_complete_lines(&mut self) -> Vec<u8> {
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.pending.drain(..=end).collect();
        let mut out = Vec::new();
        for line in complete.split(|b| *b == b'\n') {
            let Some(record) = parse_record(line) else {
                continue;
            };
            if self.since.is_some_and(|since| record.time < since) {
                continue;
            }
            out.extend_from_slice(&render(&record, self.options.timestamps));
        }
        if let Some(limit) = self.options.limit_bytes {
            let room = limit.saturating_sub(self.sent) as usize;
            if out.len() >= room {
                out.truncate(room);
                self.done = true;
            }
        }
        self.sent += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn records_round_trip() {
        let line = cri_record(
            at("2016-10-06T00:17:09.669794202Z"),
            "stdout",
            false,
            b"hi there",
        );
        assert_eq!(line, b"2016-10-06T00:17:09.669794202Z stdout F hi there\n");
        let record = parse_record(&line[..line.len() - 1]).unwrap();
        assert_eq!(record.stream, "stdout");
        assert!(!record.partial);
        assert_eq!(record.content, b"hi there");
        assert_eq!(render(&record, false), b"hi there\n");
        assert_eq!(
            render(&record, true),
            b"2016-10-06T00:17:09.669794202Z hi there\n"
        );
        let whole_second = cri_record(at("2016-10-06T00:17:09Z"), "stderr", true, b"");
        assert_eq!(whole_second, b"2016-10-06T00:17:09.000000000Z stderr P \n");
        assert_eq!(
            parse_record(b"2016-10-06T00:17:09.000000000Z stderr F")
                .unwrap()
                .content,
            b""
        );
    }

    fn log_file(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for (i, line) in lines.iter().enumerate() {
            let ts = at(&format!("2024-01-01T00:00:{i:02}Z"));
            let partial = line.ends_with('\\');
            let content = line.trim_end_matches('\\');
            std::io::Write::write_all(
                &mut file,
                &cri_record(ts, "stdout", partial, content.as_bytes()),
            )
            .unwrap();
        }
        file
    }

    #[test]
    fn tail_offsets() {
        let file = log_file(&["a", "b", "c"]);
        let mut f = std::fs::File::open(file.path()).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(tail_offset(&mut f, 0).unwrap(), len);
        assert_eq!(tail_offset(&mut f, 3).unwrap(), 0);
        assert_eq!(tail_offset(&mut f, 10).unwrap(), 0);
        let one = tail_offset(&mut f, 1).unwrap();
        assert_eq!(len - one, len / 3);
    }

    async fn collect(file: &tempfile::NamedTempFile, options: LogOptions) -> String {
        let stream = read_log(file.path().to_path_buf(), options, Arc::new(|| true)).unwrap();
        let chunks: Vec<_> = stream.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn reading_with_options() {
        let file = log_file(&["one", "two\\", "-more", "three"]);
        assert_eq!(
            collect(&file, LogOptions::default()).await,
            "one\ntwo-more\nthree\n"
        );
        let tail = LogOptions {
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(collect(&file, tail).await, "three\n");
        let since = LogOptions {
            since: Some(SystemTime::from(at("2024-01-01T00:00:02Z"))),
            ..Default::default()
        };
        assert_eq!(collect(&file, since).await, "-more\nthree\n");
        let limited = LogOptions {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(collect(&file, limited).await, "one\nt");
        let stamped = LogOptions {
            timestamps: true,
            tail_lines: Some(1),
            ..Default::default()
        };
        assert_eq!(
            collect(&file, stamped).await,
            "2024-01-01T00:00:03.000000000Z three\n"
        );
    }

    #[tokio::test]
    async fn follow_reads_what_is_appended_until_finished() {
        let file = log_file(&["first"]);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        let mut stream = read_log(
            file.path().to_path_buf(),
            options,
            Arc::new(move || flag.load(std::sync::atomic::Ordering::SeqCst)),
        )
        .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "first\n");
        let mut append = std::fs::OpenOptions::new()
            .append(true)
            .open(file.path())
            .unwrap();
        std::io::Write::write_all(
            &mut append,
            &cri_record(Timestamp::now(), "stderr", false, b"second"),
        )
        .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), "second\n");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(stream.next().await.is_none());
    }
}
