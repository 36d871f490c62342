//! The one gate through which kemu removes, renames and writes files.
//!
//! kemu runs as root, so a path built from a careless argument (`kemu down /`, a lab called
//! `..`) or from a tampered state file could name any file of the machine. Every such
//! operation therefore goes through an [`OwnedDir`]: a directory kemu owns (the state root,
//! an agent's root directory, `/run/netns`), which proves right before the operation that the
//! path lies strictly inside it:
//! - lexically: the path is the root followed by one or more plain components (no `..`, no
//!   `.`, no second root), checked by the pure [`relative_inside`];
//! - on disk: no component between the root and the path's parent is a symlink, so nothing
//!   planted inside can lead the operation out. (`remove_dir_all` itself never follows
//!   symlinks inside the tree it removes, and a write never follows a symlink as its target.)
//!
//! Refusals are `io::Error`s of kind `PermissionDenied` whose message names the path and the
//! root, so callers report them like any other failed file operation.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A directory whose contents kemu may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDir {
    root: PathBuf,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Escape {
    #[error("{path} is not inside {root}")]
    Outside { path: String, root: String },
    #[error("{path} is {root} itself, not a path inside it")]
    IsRoot { path: String, root: String },
    #[error("{path} has a '{component}' component")]
    Dots { path: String, component: String },
    #[error("{path} leads through the symlink {link}")]
    Symlink { path: String, link: String },
    #[error("{root} cannot be a root of kemu's files: {why}")]
    BadRoot { root: String, why: &'static str },
}

impl From<Escape> for io::Error {
    fn from(e: Escape) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("refused: {e}"))
    }
}

/// Whether `root` can own files: absolute, plain (no `.` or `..`) and not `/` itself.
pub fn check_root(root: &Path) -> Result<(), Escape> {
    let bad = |why| Escape::BadRoot {
        root: root.display().to_string(),
        why,
    };
    if !root.is_absolute() {
        return Err(bad("it is not an absolute path"));
    }
    if dot_component(root).is_some() || has_nul(root) {
        return Err(bad("it has a '.' or '..' component or a NUL byte"));
    }
    let mut normal = 0;
    for c in root.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(_) => normal += 1,
            _ => return Err(bad("it has a '.' or '..' component")),
        }
    }
    if normal == 0 {
        return Err(bad("it is the file system's root"));
    }
    Ok(())
}

/// The part of `path` below `root`: one or more plain components, or why `path` escapes.
/// Pure: looks at the text only.
pub fn relative_inside<'a>(root: &Path, path: &'a Path) -> Result<&'a Path, Escape> {
    let shown = || path.display().to_string();
    // `Path::strip_prefix` compares components, so "/run/kemu2" is not inside "/run/kemu",
    // and it drops the "." components `Path::components` hides; check the raw text for them.
    let rest = path.strip_prefix(root).map_err(|_| Escape::Outside {
        path: shown(),
        root: root.display().to_string(),
    })?;
    if let Some(component) = dot_component(path) {
        return Err(Escape::Dots {
            path: shown(),
            component,
        });
    }
    if has_nul(path) {
        return Err(Escape::Dots {
            path: shown(),
            component: "\\0".to_string(),
        });
    }
    let mut count = 0;
    for c in rest.components() {
        match c {
            Component::Normal(_) => count += 1,
            other => {
                return Err(Escape::Dots {
                    path: shown(),
                    component: other.as_os_str().to_string_lossy().into_owned(),
                });
            }
        }
    }
    if count == 0 {
        return Err(Escape::IsRoot {
            path: shown(),
            root: root.display().to_string(),
        });
    }
    Ok(rest)
}

/// A `.` or `..` component in the raw text (`Path::components` silently drops inner `.`s).
fn dot_component(path: &Path) -> Option<String> {
    path.as_os_str()
        .as_encoded_bytes()
        .split(|b| *b == b'/')
        .find(|part| *part == b"." || *part == b"..")
        .map(|part| String::from_utf8_lossy(part).into_owned())
}

fn has_nul(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().contains(&0)
}

impl OwnedDir {
    /// A directory kemu owns; refused when it is relative, not plain, or `/`.
    pub fn new(root: impl Into<PathBuf>) -> Result<OwnedDir, Escape> {
        let root = root.into();
        check_root(&root)?;
        Ok(OwnedDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Prove that `path` lies strictly inside the root, with no symlink on the way from the
    /// root to the path's parent. The last component may be anything (a removal of a symlink
    /// removes the link); writes check it separately.
    pub fn prove(&self, path: &Path) -> Result<(), Escape> {
        let rest = relative_inside(&self.root, path)?;
        let mut at = self.root.clone();
        let parts: Vec<&OsStr> = rest.iter().collect();
        for part in &parts[..parts.len() - 1] {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Escape::Symlink {
                        path: path.display().to_string(),
                        link: at.display().to_string(),
                    });
                }
                // A missing component: nothing below it exists to be reached.
                _ => {}
            }
        }
        Ok(())
    }

    /// Like `prove`, and the path itself is not a symlink (for writes and directories).
    fn prove_target(&self, path: &Path) -> Result<(), Escape> {
        self.prove(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(Escape::Symlink {
                path: path.display().to_string(),
                link: path.display().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// `std::fs::remove_dir_all`, inside the root only. A missing directory is a success.
    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.prove(path)?;
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// `std::fs::remove_dir` (an empty directory), inside the root only.
    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.prove(path)?;
        std::fs::remove_dir(path)
    }

    /// `std::fs::remove_file`, inside the root only. A missing file is a success.
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.prove(path)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// `std::fs::rename`, both ends inside the root.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.prove(from)?;
        self.prove_target(to)?;
        std::fs::rename(from, to)
    }

    /// Point the symlink `link` at `target` (a relative name, never followed here), replacing
    /// what `link` was atomically: a new link beside it, renamed over it.
    pub fn replace_symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.prove(link)?;
        let mut tmp = link.as_os_str().to_owned();
        tmp.push("_tmp");
        let tmp = PathBuf::from(tmp);
        self.prove_target(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)?;
        std::fs::rename(&tmp, link)
    }

    /// `std::fs::create_dir_all`, inside the root only (the root itself is created too).
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if path != self.root {
            self.prove_target(path)?;
        }
        std::fs::create_dir_all(path)
    }

    /// `std::fs::create_dir` (fails if it exists), inside the root only.
    pub fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.prove_target(path)?;
        std::fs::create_dir(path)
    }

    /// Create or truncate a file and write it, never following a symlink at `path`.
    pub fn write(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.write_mode(path, contents, 0o644)
    }

    /// `write` with the permissions a new file gets (0600 for secrets; an existing file keeps
    /// its own).
    pub fn write_mode(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        self.prove_target(path)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        file.write_all(contents)
    }

    /// Write a file atomically (a temporary file, then a rename), so a crash never leaves
    /// half a file.
    pub fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.write_atomic_mode(path, contents, 0o644)
    }

    /// `write_atomic` with the file's permissions (the new file always gets exactly `mode`).
    pub fn write_atomic_mode(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        // A temporary name per writer: `up` and the supervisor both register the supervisor's
        // PID at the same moment, and a shared `.tmp` let one rename the other's file away.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}.{n}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        self.write_mode(&tmp, contents, mode)?;
        // The umask may have taken bits away; the caller asked for exactly these.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        self.rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Open a file for reading, inside the root only, never following a symlink at `path`:
    /// what kemu shows from its state (logs, kubeconfigs) is never some other file of the
    /// machine that a planted link pointed at.
    pub fn open_read(&self, path: &Path) -> io::Result<File> {
        self.prove_target(path)?;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }

    /// `open_read` and read it all as text.
    pub fn read_to_string(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        self.open_read(path)?.read_to_string(&mut text)?;
        Ok(text)
    }

    /// Open a file for appending (created if missing), never following a symlink at `path`.
    pub fn open_append(&self, path: &Path) -> io::Result<File> {
        self.prove_target(path)?;
        OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }
}

/// The directory `path` lies in, as an [`OwnedDir`]: for an agent that was handed a file
/// path (a status file, flannel's subnet.env) and may write only beside it.
pub fn parent_of(path: &Path) -> io::Result<OwnedDir> {
    let parent = path.parent().unwrap_or(Path::new(""));
    OwnedDir::new(parent).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_must_be_absolute_plain_and_not_slash() {
        for bad in ["", "/", "//", "run/kemu", "/run/../etc", "/run/./kemu", "."] {
            assert!(OwnedDir::new(bad).is_err(), "{bad:?} accepted as a root");
        }
        for good in ["/run/kemu", "/tmp/x/y", "/run/netns"] {
            assert!(OwnedDir::new(good).is_ok(), "{good:?} refused");
        }
    }

    /// The path a command would build from a lab name, `root.join(name)`, with every hostile
    /// name: the guard refuses each one that does not stay strictly inside.
    #[test]
    fn hostile_joins_are_refused() {
        let root = Path::new("/run/kemu");
        let hostile = [
            "",
            ".",
            "..",
            "/",
            "/etc",
            "//etc",
            "/run/kemu",
            "/run/kemu/../x",
            "../x",
            "../../some/dir",
            "./",
            "./.",
            "seed/..",
            "seed/../..",
            "seed/./x",
            "a/../../b",
            "..\0",
            "../kemu2",
        ];
        for name in hostile {
            let path = root.join(name);
            assert!(
                relative_inside(root, &path).is_err(),
                "{name:?} -> {} accepted",
                path.display()
            );
        }
        // Absolute names replace the root altogether in `join`: the guard sees that too.
        #[allow(clippy::join_absolute_paths)]
        let slash = root.join("/");
        assert_eq!(slash, Path::new("/"));
        assert!(matches!(
            relative_inside(root, &slash),
            Err(Escape::Outside { .. })
        ));
        assert!(matches!(
            relative_inside(root, Path::new("/run/kemu2/x")),
            Err(Escape::Outside { .. })
        ));
        assert!(matches!(
            relative_inside(root, Path::new("/run/kemu/")),
            Err(Escape::IsRoot { .. })
        ));
        for good in ["seed", "seed/hosts/a", "seed/pids/123", "a-b/c.d"] {
            assert!(relative_inside(root, &root.join(good)).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_planted_symlink_does_not_lead_out() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "x").unwrap();
        let root = OwnedDir::new(tmp.path()).unwrap();
        // A lab directory that is a symlink to somewhere else, and one that holds one.
        std::os::unix::fs::symlink(&victim, tmp.path().join("lab")).unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("real/hosts")).unwrap();

        // Through a symlink: refused, and nothing outside changed.
        for path in ["lab/keep", "lab/x/y", "real/hosts/keep"] {
            let p = tmp.path().join(path);
            assert!(root.remove_file(&p).is_err(), "{path}");
            assert!(root.remove_dir_all(&p).is_err(), "{path}");
            assert!(root.write(&p, b"y").is_err(), "{path}");
            assert!(root.write_atomic(&p, b"y").is_err(), "{path}");
            assert!(root.create_dir_all(&p).is_err(), "{path}");
            assert!(root.open_append(&p).is_err(), "{path}");
        }
        // Writing onto the symlink itself is refused too.
        assert!(root.write(&tmp.path().join("lab"), b"y").is_err());
        // Removing the symlink removes only the link.
        root.remove_dir_all(&tmp.path().join("lab")).unwrap();
        root.remove_dir_all(&tmp.path().join("real")).unwrap();
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "x");
    }

    #[test]
    fn operations_inside_work() {
        let tmp = tempfile::tempdir().unwrap();
        let root = OwnedDir::new(tmp.path()).unwrap();
        let lab = tmp.path().join("seed");
        root.create_dir(&lab).unwrap();
        root.create_dir_all(&lab.join("hosts/a")).unwrap();
        root.write_atomic(&lab.join("lab.json"), b"{}").unwrap();
        root.write(&lab.join("hosts/a/subnet.env"), b"x").unwrap();
        use std::io::Write;
        root.open_append(&lab.join("journal"))
            .unwrap()
            .write_all(b"1\n")
            .unwrap();
        root.rename(&lab.join("lab.json"), &lab.join("lab2.json"))
            .unwrap();
        root.remove_file(&lab.join("lab2.json")).unwrap();
        root.remove_file(&lab.join("missing")).unwrap();
        root.remove_dir_all(&lab).unwrap();
        assert!(!lab.exists());
        // The root itself is never removed.
        assert!(root.remove_dir_all(tmp.path()).is_err());
        assert!(tmp.path().exists());
    }
}
