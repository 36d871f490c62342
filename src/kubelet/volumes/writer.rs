//! Writing a volume's files as the kubelet's AtomicWriter does, so that a container reading
//! them while they change sees the old set or the new one, never a mix:
//!
//! ```text
//! <volume dir>/
//!   ..2026_12_05_21_40_00.123456789/   the files of one version
//!   ..data -> ..2026_12_05_21_40_00.123456789
//!   app.conf -> ..data/app.conf        one link per top-level entry
//! ```
//!
//! A new version is written beside the old one, `..data` is swapped by a rename, then the
//! links are brought up to date and the old version removed.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::content::Files;
use crate::fsguard::OwnedDir;

const DATA: &str = "..data";

/// Who the files belong to on the host: the container's root (the first id of the pod's user
/// namespace) and the pod's `fsGroup`, as the kubelet chowns them; `None` keeps the
/// kubelet's own (a runtime without user namespaces).
pub type FileOwner = Option<(u32, u32)>;

/// Bring `dir` to hold exactly `files`; false when it already did (nothing written).
pub fn write(owner: &OwnedDir, dir: &Path, files: &Files, ids: FileOwner) -> io::Result<bool> {
    owner.create_dir_all(dir)?;
    let data = dir.join(DATA);
    let current = std::fs::read_link(&data).ok();
    if let Some(version) = &current
        && same(&dir.join(version), files)
    {
        return Ok(false);
    }
    let stamp = jiff::Zoned::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let version = dir.join(&stamp);
    owner.create_dir(&version)?;
    for (path, file) in files {
        let target = version.join(path);
        if let Some(parent) = target.parent() {
            owner.create_dir_all(parent)?;
        }
        owner.write_mode(&target, &file.data, file.mode)?;
        // The umask may have taken bits away.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        }
    }
    if let Some((uid, gid)) = ids {
        chown_dirs(&version, uid, gid)?;
    }
    // Directories of the version are readable by every user of the pod.
    owner.replace_symlink(Path::new(&stamp), &data)?;
    let top: BTreeSet<&str> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for entry in &top {
        let link = dir.join(entry);
        let target = PathBuf::from(DATA).join(entry);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            owner.replace_symlink(&target, &link)?;
        }
    }
    // Links of entries gone from the new version, and the old version.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("..") {
            if name != DATA && name != stamp.as_str() {
                owner.remove_dir_all(&entry.path())?;
            }
        } else if !top.contains(name.as_ref()) {
            owner.remove_file(&entry.path())?;
        }
    }
    Ok(true)
}

/// The version's directories belong to the container's root too.
fn chown_dirs(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_dirs(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Does `version` hold exactly `files` (paths, bytes and modes)?
fn same(version: &Path, files: &Files) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mut found = 0;
    let mut stack = vec![version.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else {
                return false;
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(version)
                .unwrap_or(&path)
                .to_string_lossy();
            let Some(want) = files.get(rel.as_ref()) else {
                return false;
            };
            if meta.permissions().mode() & 0o777 != want.mode
                || std::fs::read(&path).ok().as_deref() != Some(want.data.as_slice())
            {
                return false;
            }
            found += 1;
        }
    }
    found == files.len()
}

#[cfg(test)]
mod tests {
    use super::super::content::FileContent;
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(p, d)| {
                (
                    p.to_string(),
                    FileContent {
                        data: d.as_bytes().to_vec(),
                        mode: 0o644,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn versions_swap_atomically_and_leave_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let owner = OwnedDir::new(root.path()).unwrap();
        let dir = root.path().join("vol");
        assert!(write(&owner, &dir, &files(&[("a", "1"), ("conf/b", "2")]), None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("conf/b")).unwrap(), "2");
        assert!(!write(&owner, &dir, &files(&[("a", "1"), ("conf/b", "2")]), None).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(write(&owner, &dir, &files(&[("a", "3")]), None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert!(!dir.join("conf").exists());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        names.sort();
        assert_eq!(names, ["..data", "a"]);
        assert_eq!(
            std::fs::read_dir(&dir)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("..2"))
                .count(),
            1
        );
    }
}
