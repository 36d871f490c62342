//! The embedded store: a snapshot file plus an append-only log of mutations.
//!
//! Why this design: the server already holds every object in memory, so the disk only has to
//! replay history at start. Appending one JSON line per mutation (`write(2)` before the reply) is
//! the cheapest durable write there is, and survives SIGKILL because the data is in the kernel
//! once `write` returns (`fsync: true` also survives power loss, at a large cost per write).
//! When the log grows past twice the snapshot (and at least 8 MiB), the whole state is written
//! to `snapshot.json.tmp`, synced, renamed over `snapshot.json`, and the log is truncated.
//! A crash between rename and truncate is harmless: log entries at or below the snapshot's
//! resourceVersion are skipped on load. A torn last line (a crash in the middle of a write) is
//! cut off on load.
//!
//! Files in the data directory:
//! - `snapshot.json`: first line `{"rv":N}`, then one `{"r":"<resource>","o":<object>}` per line;
//! - `log.jsonl`: lines `{"rv":N,"r":"<resource>","o":<object>}` (put) or
//!   `{"rv":N,"r":"<resource>","d":"<namespace/name>"}` (delete).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Loaded, Mutation, Store, object_key};
use crate::fsguard::OwnedDir;

const MIN_COMPACTION_BYTES: u64 = 8 << 20;

/// File-backed store in one directory.
#[derive(Debug)]
pub struct LogStore {
    /// Every file of the store is written and renamed through it.
    owned: OwnedDir,
    dir: PathBuf,
    log: File,
    log_bytes: u64,
    snapshot_bytes: u64,
    fsync: bool,
}

#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(default)]
    rv: u64,
    #[serde(borrow, default)]
    r: Option<&'a str>,
    #[serde(borrow, default)]
    o: Option<&'a RawValue>,
    #[serde(borrow, default)]
    d: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    metadata: MetaInner<'a>,
}

#[derive(Deserialize, Default)]
struct MetaInner<'a> {
    #[serde(borrow, default)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

fn key_of(json: &str) -> io::Result<String> {
    let meta: Meta = serde_json::from_str(json).map_err(io::Error::other)?;
    Ok(object_key(
        meta.metadata.namespace.as_deref().unwrap_or_default(),
        meta.metadata.name.as_deref().unwrap_or_default(),
    ))
}

impl LogStore {
    /// Open (creating) the store in `dir`.
    pub fn open(dir: &Path, fsync: bool) -> io::Result<LogStore> {
        let owned = OwnedDir::new(dir)?;
        owned.create_dir_all(dir)?;
        // Every object of the cluster is in here (Secrets too): root's alone.
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let log_path = dir.join("log.jsonl");
        owned.prove(&log_path)?;
        let log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(log_path)?;
        let log_bytes = log.metadata()?.len();
        let snapshot_bytes = fs::metadata(dir.join("snapshot.json"))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(LogStore {
            owned,
            dir: dir.to_path_buf(),
            log,
            log_bytes,
            snapshot_bytes,
            fsync,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        // One write(2) per mutation: either the whole line reaches the kernel or nothing does.
        self.log.write_all(line)?;
        if self.fsync {
            self.log.sync_data()?;
        }
        self.log_bytes += line.len() as u64;
        Ok(())
    }
}

type State = BTreeMap<(String, String), Vec<u8>>;

fn apply_line(state: &mut State, rv: &mut u64, line: &str, min_rv: u64) -> io::Result<()> {
    let parsed: LogLine = serde_json::from_str(line).map_err(io::Error::other)?;
    if parsed.rv <= min_rv && min_rv > 0 {
        return Ok(());
    }
    *rv = (*rv).max(parsed.rv);
    let resource = parsed.r.unwrap_or_default().to_string();
    if let Some(obj) = parsed.o {
        let key = key_of(obj.get())?;
        state.insert((resource, key), obj.get().as_bytes().to_vec());
    } else if let Some(key) = parsed.d {
        state.remove(&(resource, key.into_owned()));
    }
    Ok(())
}

impl Store for LogStore {
    fn load(&mut self) -> io::Result<Loaded> {
        let mut state = State::new();
        let mut rv = 0u64;
        let snapshot_path = self.dir.join("snapshot.json");
        if snapshot_path.exists() {
            let reader = BufReader::new(File::open(&snapshot_path)?);
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if i == 0 {
                    let head: LogLine = serde_json::from_str(&line).map_err(io::Error::other)?;
                    rv = head.rv;
                    continue;
                }
                apply_line(&mut state, &mut 0, &line, 0)?;
            }
        }
        let snapshot_rv = rv;
        // Replay the log, cutting off a torn last line.
        let content = fs::read(self.dir.join("log.jsonl"))?;
        let mut good = 0usize;
        for chunk in content.split_inclusive(|b| *b == b'\n') {
            if !chunk.ends_with(b"\n") {
                break;
            }
            let Ok(line) = std::str::from_utf8(chunk) else {
                break;
            };
            if apply_line(&mut state, &mut rv, line.trim_end(), snapshot_rv).is_err() {
                break;
            }
            good += chunk.len();
        }
        if good < content.len() {
            tracing::warn!(
                dropped = content.len() - good,
                "cutting a torn tail off {}",
                self.dir.join("log.jsonl").display()
            );
            self.log.set_len(good as u64)?;
            self.log_bytes = good as u64;
        }
        let objects = state.into_iter().map(|((r, _), json)| (r, json)).collect();
        Ok(Loaded { rv, objects })
    }

    fn append(&mut self, mutation: Mutation<'_>) -> io::Result<()> {
        let mut line = Vec::with_capacity(128);
        match mutation {
            Mutation::Put { rv, resource, json } => {
                write!(
                    line,
                    "{{\"rv\":{rv},\"r\":{},\"o\":",
                    serde_json::to_string(resource)?
                )?;
                line.extend_from_slice(json);
                line.extend_from_slice(b"}\n");
            }
            Mutation::Delete { rv, resource, key } => {
                writeln!(
                    line,
                    "{{\"rv\":{rv},\"r\":{},\"d\":{}}}",
                    serde_json::to_string(resource)?,
                    serde_json::to_string(key)?
                )?;
            }
        }
        self.write_line(&line)
    }

    fn wants_compaction(&self) -> bool {
        self.log_bytes > MIN_COMPACTION_BYTES.max(2 * self.snapshot_bytes)
    }

    fn compact(
        &mut self,
        rv: u64,
        objects: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> io::Result<()> {
        let tmp = self.dir.join("snapshot.json.tmp");
        self.owned.prove(&tmp)?;
        let mut out = io::BufWriter::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?,
        );
        writeln!(out, "{{\"rv\":{rv}}}")?;
        for (resource, json) in objects {
            write!(out, "{{\"r\":{},\"o\":", serde_json::to_string(resource)?)?;
            out.write_all(json)?;
            out.write_all(b"}\n")?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        self.snapshot_bytes = file.metadata()?.len();
        self.owned.rename(&tmp, &self.dir.join("snapshot.json"))?;
        File::open(&self.dir)?.sync_all()?;
        self.log.set_len(0)?;
        self.log.sync_all()?;
        self.log_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(rv: u64, json: &'a str) -> Mutation<'a> {
        Mutation::Put {
            rv,
            resource: "pods",
            json: json.as_bytes(),
        }
    }

    #[test]
    fn replays_log_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = LogStore::open(dir.path(), false).unwrap();
            assert_eq!(s.load().unwrap().rv, 0);
            s.append(put(1, r#"{"metadata":{"name":"a","namespace":"d"}}"#))
                .unwrap();
            s.append(put(2, r#"{"metadata":{"name":"b","namespace":"d"}}"#))
                .unwrap();
            s.append(Mutation::Delete {
                rv: 3,
                resource: "pods",
                key: "d/a",
            })
            .unwrap();
        }
        let mut s = LogStore::open(dir.path(), false).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.rv, 3);
        assert_eq!(loaded.objects.len(), 1);
        // Compact, then add more; a reload sees both.
        let objs = loaded.objects.clone();
        s.compact(3, &mut objs.iter().map(|(r, j)| (r.as_str(), j.as_slice())))
            .unwrap();
        s.append(put(4, r#"{"metadata":{"name":"c","namespace":"d"}}"#))
            .unwrap();
        drop(s);
        // A torn tail is dropped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log.jsonl"))
            .unwrap();
        f.write_all(br#"{"rv":5,"r":"pods","o":{"metadata""#)
            .unwrap();
        let mut s = LogStore::open(dir.path(), false).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.rv, 4);
        let names: Vec<String> = loaded
            .objects
            .iter()
            .map(|(_, j)| key_of(std::str::from_utf8(j).unwrap()).unwrap())
            .collect();
        assert_eq!(names, vec!["d/b", "d/c"]);
        s.append(put(5, r#"{"metadata":{"name":"e","namespace":"d"}}"#))
            .unwrap();
        assert_eq!(
            LogStore::open(dir.path(), false)
                .unwrap()
                .load()
                .unwrap()
                .objects
                .len(),
            3
        );
    }
}
