//! Unpacking one layer tar into a directory of its own, in the format overlayfs reads as a
//! lower layer: a whiteout `.wh.NAME` becomes overlayfs's whiteout (a 0/0 character device,
//! which names no device) and an opaque marker `.wh..wh..opq` becomes the directory's
//! `trusted.overlay.opaque` attribute. Facts: image-spec `layer.md`, containerd
//! `archive/tar.go` (summarised in shared/research/proxy-dns-image-facts.md).
//!
//! Confinement. An archive is hostile input unpacked as root, so nothing here takes a path:
//! every operation is relative to a directory file descriptor reached from the layer's root
//! one component at a time with `O_NOFOLLOW | O_DIRECTORY`, each component checked to be a
//! plain name (no `/`, `.` or `..`). A symlink on the way is refused, whether this layer made
//! it (`link -> /etc` then `link/passwd`) or a lower layer did; the last component is created
//! with `O_EXCL`/`mknodat`/`symlinkat`, which never follow. So no entry, link or whiteout can
//! reach anything outside the layer's directory.
//!
//! Refused outright: `..` components, device nodes (kemu never creates one; whiteouts are
//! overlayfs's own marker, not a device), hard links to directories or to missing files,
//! entries larger than [`Limits`] allow, and tar entry types kemu does not know. Kept, for
//! fidelity: owners, modes including setuid/setgid (the store's root is 0700, so no user of
//! the host can reach those files), mtimes, FIFOs, `user.*` and `security.capability`
//! extended attributes (never `trusted.*`, which would let an archive forge overlayfs markers).

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fstatat, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::digest::{Digest, HashingReader};

/// The xattr overlayfs reads to know a directory hides the layers below it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Size limits for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file.
    pub max_entry_bytes: u64,
    /// Largest sum of a layer's file sizes.
    pub max_layer_bytes: u64,
    /// Most entries in one layer.
    pub max_entries: u64,
}

impl Default for Limits {
    /// Far above real images (the largest files in common images are a few hundred MB, and
    /// CUDA images hold single layers of several GB) and far below what would fill a disk.
    fn default() -> Limits {
        Limits {
            max_entry_bytes: 8 << 30,
            max_layer_bytes: 32 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// Why a layer was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive asks for something kemu refuses.
    #[error("refused entry {path:?}: {why}")]
    Refused { path: String, why: String },
    /// The tar stream itself is broken.
    #[error("reading the layer: {0}")]
    Read(io::Error),
    /// A file operation failed.
    #[error("unpacking {path:?}: {source}")]
    Io { path: String, source: io::Error },
}

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The digest of the uncompressed tar (the image config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub tar_bytes: u64,
    /// Bytes of the files written.
    pub file_bytes: u64,
    pub entries: u64,
}

/// The decompressed stream of a layer blob: gzip and zstd are recognised by their magic
/// bytes (as containerd does), anything else is read as a plain tar.
pub fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

/// Unpack the uncompressed layer tar `tar` into the empty directory `dest`. `lowers` are the
/// unpacked directories of the layers below, base first: hard links to their files are
/// copied, and parent directories this layer does not list take their attributes.
pub fn unpack_layer(
    tar: impl Read,
    dest: &OwnedFd,
    lowers: &[OwnedFd],
    limits: &Limits,
) -> Result<Unpacked, UnpackError> {
    let mut hashing = HashingReader::new(tar);
    let mut unpacker = Unpacker {
        root: dest,
        lowers,
        limits,
        file_bytes: 0,
        entries: 0,
        dir_times: Vec::new(),
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            unpacker.entry(&mut entry)?;
        }
    }
    unpacker.finish_dir_times()?;
    let (diff_id, tar_bytes) = hashing.finish().map_err(UnpackError::Read)?;
    Ok(Unpacked {
        diff_id,
        tar_bytes,
        file_bytes: unpacker.file_bytes,
        entries: unpacker.entries,
    })
}

/// An entry's path as plain components: a leading `/` or `./` is dropped (as tar and
/// containerd do: names are relative to the image's root), `.` components are skipped and
/// `..` is refused. Pure.
pub fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.len() > 4096 {
        return Err(format!(
            "its path is {} bytes long (the limit is 4096)",
            raw.len()
        ));
    }
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("its path has a '..' component".into()),
            name => out.push(OsString::from_vec(name.to_vec())),
        }
    }
    Ok(out)
}

/// What the layers below show at a path.
#[derive(Debug)]
enum Lower {
    /// Nothing (absent, deleted by a whiteout, or hidden by an opaque directory).
    Absent,
    /// Found in lower layer `layer` (an index into `lowers`).
    Found { layer: usize, stat: FileStat },
    /// The first `depth` components lead to a symlink.
    ThroughSymlink { depth: usize },
}

struct Unpacker<'a> {
    root: &'a OwnedFd,
    lowers: &'a [OwnedFd],
    limits: &'a Limits,
    file_bytes: u64,
    entries: u64,
    /// Directory mtimes, set last (adding a child changes its directory's mtime).
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
}

/// The attributes an entry carries.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn shown(comps: &[OsString]) -> String {
    let parts: Vec<String> = comps
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn is_whiteout(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && stat.st_rdev == 0
}

fn is_dir(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// Open a subdirectory, never following a symlink. A symlink gives `ELOOP` (the kernel
/// answers `ENOTDIR` for `O_DIRECTORY | O_NOFOLLOW` on a symlink; it is told apart here), any
/// other non-directory `ENOTDIR`.
fn open_dir(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(&dir, name, flags, Mode::empty()) {
        Err(Errno::ENOTDIR | Errno::ELOOP) => match lstat_at(&dir, name) {
            Ok(stat) if file_type(&stat) == SFlag::S_IFLNK => Err(Errno::ELOOP),
            _ => Err(Errno::ENOTDIR),
        },
        other => other,
    }
}

fn lstat_at(dir: impl AsFd, name: &OsStr) -> nix::Result<FileStat> {
    fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn get_xattr(fd: &OwnedFd, name: &str) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: the buffer and its length are valid for the call.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

fn set_xattr(fd: &OwnedFd, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: name is NUL-terminated, value and its length are valid for the call.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_opaque(fd: &OwnedFd) -> bool {
    get_xattr(fd, OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

/// Remove `name` from `dir`, recursively for a directory, never following a symlink.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(()),
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let child = open_dir(dir, name)?;
    let names: Vec<OsString> = {
        let dup = child.try_clone()?;
        let mut listing = nix::dir::Dir::from_fd(dup)?;
        listing
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    for n in names {
        remove_at(&child, &n)?;
    }
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

impl Unpacker<'_> {
    fn refuse<T>(&self, comps: &[OsString], why: impl Into<String>) -> Result<T, UnpackError> {
        Err(UnpackError::Refused {
            path: shown(comps),
            why: why.into(),
        })
    }

    fn io_err(comps: &[OsString]) -> impl Fn(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Io {
            path: shown(comps),
            source,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let comps = components(&raw).map_err(|why| UnpackError::Refused {
            path: String::from_utf8_lossy(&raw).into_owned(),
            why,
        })?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return self.refuse(
                &comps,
                format!(
                    "the layer has more than {} entries",
                    self.limits.max_entries
                ),
            );
        }
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let Some((name, parents)) = comps.split_last() else {
            // The root itself ("./"): the layer's directory keeps its own attributes.
            return if kind.is_dir() {
                Ok(())
            } else {
                self.refuse(&comps, "it names the image's root but is not a directory")
            };
        };
        if let Some(rest) = name.as_bytes().strip_prefix(b".wh.") {
            return self.whiteout(&comps, parents, rest);
        }

        let attrs = self.attrs(entry, &comps)?;
        match kind {
            tar::EntryType::Directory => self.directory(&comps, parents, name, &attrs),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular(entry, &comps, parents, name, &attrs)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                match target {
                    Some(t) if !t.is_empty() => self.symlink(&comps, parents, name, &t, &attrs),
                    _ => self.refuse(&comps, "a symlink without a target"),
                }
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned());
                match target {
                    Some(t) if !t.is_empty() => self.hard_link(&comps, parents, name, &t),
                    _ => self.refuse(&comps, "a hard link without a target"),
                }
            }
            tar::EntryType::Fifo => {
                let dir = self.dir(parents, &comps)?;
                self.clear(&dir, name, &comps)?;
                mknodat(
                    &dir,
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(attrs.mode & 0o777),
                    0,
                )
                .map_err(|e| Self::io_err(&comps)(e.into()))?;
                self.apply_at(&dir, name, &attrs, &comps)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let what = if kind == tar::EntryType::Char {
                    "character"
                } else {
                    "block"
                };
                self.refuse(
                    &comps,
                    format!(
                        "it is a {what} device node ({major}:{minor}); kemu never creates device nodes"
                    ),
                )
            }
            other => self.refuse(&comps, format!("unsupported tar entry type {other:?}")),
        }
    }

    fn attrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[OsString],
    ) -> Result<Attrs, UnpackError> {
        let header = entry.header();
        let bad = |what: &str| UnpackError::Refused {
            path: shown(comps),
            why: format!("its header has an unreadable {what}"),
        };
        let mut attrs = Attrs {
            uid: header.uid().map_err(|_| bad("uid"))? as u32,
            gid: header.gid().map_err(|_| bad("gid"))? as u32,
            mode: header.mode().map_err(|_| bad("mode"))?,
            mtime: TimeSpec::new(header.mtime().map_err(|_| bad("mtime"))? as i64, 0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Read)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::Read)?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    "uid" => attrs.uid = text.parse().map_err(|_| bad("PAX uid"))?,
                    "gid" => attrs.gid = text.parse().map_err(|_| bad("PAX gid"))?,
                    "mtime" => {
                        let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
                        let secs: i64 = secs.parse().map_err(|_| bad("PAX mtime"))?;
                        let nanos: i64 = format!("{frac:0<9}")[..9].parse().unwrap_or(0);
                        attrs.mtime = TimeSpec::new(secs, nanos);
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                            && (name.starts_with("user.") || name == "security.capability")
                        {
                            attrs.xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        Ok(attrs)
    }

    /// The directory holding an entry, reached from the layer's root without following any
    /// symlink; missing directories are created (with the attributes a lower layer gives the
    /// same directory, else root's 0755).
    fn dir(&self, parents: &[OsString], comps: &[OsString]) -> Result<OwnedFd, UnpackError> {
        let io_err = Self::io_err(comps);
        let mut cur = self.root.try_clone().map_err(&io_err)?;
        for (i, part) in parents.iter().enumerate() {
            match open_dir(&cur, part) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::ELOOP) => {
                    return self.refuse(
                        comps,
                        format!(
                            "it lies beneath the symlink {:?}; kemu never writes through a symlink",
                            shown(&parents[..=i])
                        ),
                    );
                }
                Err(Errno::ENOTDIR) => {
                    let stat = lstat_at(&cur, part).map_err(|e| io_err(e.into()))?;
                    if !is_whiteout(&stat) {
                        return self.refuse(
                            comps,
                            format!("{:?} is not a directory", shown(&parents[..=i])),
                        );
                    }
                    // Deleted earlier in this layer, now recreated: a directory that hides
                    // what the layers below had there.
                    nix::unistd::unlinkat(&cur, part.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| io_err(e.into()))?;
                    mkdirat(&cur, part.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| io_err(e.into()))?;
                    let fd = open_dir(&cur, part).map_err(|e| io_err(e.into()))?;
                    set_xattr(&fd, OPAQUE_XATTR, b"y").map_err(&io_err)?;
                    cur = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err(e.into())),
            }
            // Missing in this layer: what do the layers below have there?
            let lower = self.lower(&parents[..=i]);
            let template = match lower {
                Lower::ThroughSymlink { depth } => {
                    return self.refuse(
                        comps,
                        format!(
                            "it lies beneath {:?}, a symlink in a lower layer; kemu never writes through a symlink",
                            shown(&parents[..depth])
                        ),
                    );
                }
                Lower::Found { stat, .. } if file_type(&stat) == SFlag::S_IFLNK => {
                    return self.refuse(
                        comps,
                        format!(
                            "it lies beneath {:?}, a symlink in a lower layer; kemu never writes through a symlink",
                            shown(&parents[..=i])
                        ),
                    );
                }
                Lower::Found { stat, .. } if !is_dir(&stat) => {
                    return self.refuse(
                        comps,
                        format!(
                            "{:?} is not a directory in the layers below",
                            shown(&parents[..=i])
                        ),
                    );
                }
                Lower::Found { stat, .. } => Some(stat),
                Lower::Absent => None,
            };
            let mode = template.map_or(0o755, |s| s.st_mode & 0o7777);
            mkdirat(&cur, part.as_os_str(), Mode::from_bits_truncate(mode))
                .map_err(|e| io_err(e.into()))?;
            let fd = open_dir(&cur, part).map_err(|e| io_err(e.into()))?;
            if let Some(stat) = template {
                nix::unistd::fchown(
                    &fd,
                    Some(Uid::from_raw(stat.st_uid)),
                    Some(Gid::from_raw(stat.st_gid)),
                )
                .map_err(|e| io_err(e.into()))?;
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))
                    .map_err(|e| io_err(e.into()))?;
            }
            cur = fd;
        }
        Ok(cur)
    }

    /// Like [`Self::dir`] but only finds directories this layer already has.
    fn find_dir(
        &self,
        parents: &[OsString],
        comps: &[OsString],
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let mut cur = self.root.try_clone().map_err(Self::io_err(comps))?;
        for (i, part) in parents.iter().enumerate() {
            match open_dir(&cur, part) {
                Ok(fd) => cur = fd,
                Err(Errno::ELOOP) => {
                    return self.refuse(
                        comps,
                        format!(
                            "its target lies beneath the symlink {:?}; kemu never follows a symlink",
                            shown(&parents[..=i])
                        ),
                    );
                }
                Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
                Err(e) => return Err(Self::io_err(comps)(e.into())),
            }
        }
        Ok(Some(cur))
    }

    /// What the merged lower layers show at `path`.
    fn lower(&self, path: &[OsString]) -> Lower {
        for (layer, root) in self.lowers.iter().enumerate().rev() {
            let Ok(mut cur) = root.try_clone() else {
                return Lower::Absent;
            };
            let mut hidden_below = is_opaque(&cur);
            let mut found = None;
            for (i, part) in path.iter().enumerate() {
                if i + 1 == path.len() {
                    if let Ok(stat) = lstat_at(&cur, part) {
                        found = Some(stat);
                    }
                    break;
                }
                match open_dir(&cur, part) {
                    Ok(fd) => {
                        hidden_below |= is_opaque(&fd);
                        cur = fd;
                    }
                    Err(Errno::ELOOP) => return Lower::ThroughSymlink { depth: i + 1 },
                    Err(Errno::ENOTDIR) => return Lower::Absent,
                    Err(_) => break,
                }
            }
            match found {
                Some(stat) if is_whiteout(&stat) => return Lower::Absent,
                Some(stat) => return Lower::Found { layer, stat },
                None if hidden_below => return Lower::Absent,
                None => {}
            }
        }
        Lower::Absent
    }

    /// Remove whatever this layer has at `name` (an entry replaces an earlier one).
    fn clear(&self, dir: &OwnedFd, name: &OsStr, comps: &[OsString]) -> Result<(), UnpackError> {
        remove_at(dir, name).map_err(Self::io_err(comps))
    }

    fn whiteout(
        &self,
        comps: &[OsString],
        parents: &[OsString],
        rest: &[u8],
    ) -> Result<(), UnpackError> {
        if rest == b".wh..opq" {
            let dir = self.dir(parents, comps)?;
            return set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(Self::io_err(comps));
        }
        if rest.starts_with(b".wh.") {
            // aufs's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): ignored, as containerd does.
            return Ok(());
        }
        if rest.is_empty() || rest == b"." || rest == b".." {
            return self.refuse(comps, "a whiteout that names no file");
        }
        let dir = self.dir(parents, comps)?;
        let target = OsStr::from_bytes(rest);
        match lstat_at(&dir, target) {
            // Added by this layer: a whiteout hides only what the layers below have.
            Ok(_) => Ok(()),
            Err(Errno::ENOENT) => mknodat(&dir, target, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| Self::io_err(comps)(e.into())),
            Err(e) => Err(Self::io_err(comps)(e.into())),
        }
    }

    fn directory(
        &mut self,
        comps: &[OsString],
        parents: &[OsString],
        name: &OsStr,
        attrs: &Attrs,
    ) -> Result<(), UnpackError> {
        let io_err = Self::io_err(comps);
        let dir = self.dir(parents, comps)?;
        let mut opaque = false;
        match lstat_at(&dir, name) {
            Ok(stat) if is_dir(&stat) => {}
            Ok(stat) => {
                // A file or a whiteout of this layer gives way to the directory; after a
                // whiteout the directory hides the layers below.
                opaque = is_whiteout(&stat);
                self.clear(&dir, name, comps)?;
                mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err(e.into()))?;
            }
            Err(Errno::ENOENT) => {
                mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| io_err(e.into()))?;
            }
            Err(e) => return Err(io_err(e.into())),
        }
        let fd = open_dir(&dir, name).map_err(|e| io_err(e.into()))?;
        if opaque {
            set_xattr(&fd, OPAQUE_XATTR, b"y").map_err(&io_err)?;
        }
        self.apply_fd(&fd, attrs, comps, false)?;
        self.dir_times.push((comps.to_vec(), attrs.mtime));
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        comps: &[OsString],
        parents: &[OsString],
        name: &OsStr,
        attrs: &Attrs,
    ) -> Result<(), UnpackError> {
        let size = entry.size();
        if size > self.limits.max_entry_bytes {
            return self.refuse(
                comps,
                format!(
                    "it is {size} bytes, over the limit of {} bytes for one file",
                    self.limits.max_entry_bytes
                ),
            );
        }
        if self.file_bytes.saturating_add(size) > self.limits.max_layer_bytes {
            return self.refuse(
                comps,
                format!(
                    "the layer's files come to more than the limit of {} bytes",
                    self.limits.max_layer_bytes
                ),
            );
        }
        let io_err = Self::io_err(comps);
        let dir = self.dir(parents, comps)?;
        self.clear(&dir, name, comps)?;
        let fd = openat(
            &dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(e.into()))?;
        let mut file = std::fs::File::from(fd);
        let written = io::copy(&mut entry.take(size), &mut file).map_err(UnpackError::Read)?;
        if written != size {
            return Err(UnpackError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: the archive ends inside this file", shown(comps)),
            )));
        }
        file.flush().map_err(&io_err)?;
        self.file_bytes += size;
        let fd = OwnedFd::from(file);
        self.apply_fd(&fd, attrs, comps, true)
    }

    fn symlink(
        &mut self,
        comps: &[OsString],
        parents: &[OsString],
        name: &OsStr,
        target: &[u8],
        attrs: &Attrs,
    ) -> Result<(), UnpackError> {
        let dir = self.dir(parents, comps)?;
        self.clear(&dir, name, comps)?;
        // The target is stored as text and never followed here, absolute or not.
        nix::unistd::symlinkat(OsStr::from_bytes(target), &dir, name)
            .map_err(|e| Self::io_err(comps)(e.into()))?;
        self.apply_at(&dir, name, attrs, comps)
    }

    fn hard_link(
        &mut self,
        comps: &[OsString],
        parents: &[OsString],
        name: &OsStr,
        target: &[u8],
    ) -> Result<(), UnpackError> {
        // The link name is a path from the image's root, not from the entry's directory.
        let target_comps = components(target).map_err(|why| UnpackError::Refused {
            path: shown(comps),
            why: format!(
                "its hard link target {:?}: {why}",
                String::from_utf8_lossy(target)
            ),
        })?;
        let Some((target_name, target_parents)) = target_comps.split_last() else {
            return self.refuse(comps, "a hard link to the image's root");
        };
        if target_comps == comps {
            return self.refuse(comps, "a hard link to itself");
        }
        let io_err = Self::io_err(comps);
        let dir = self.dir(parents, comps)?;
        // In this layer: link it.
        if let Some(target_dir) = self.find_dir(target_parents, comps)? {
            match lstat_at(&target_dir, target_name) {
                Ok(stat) if is_dir(&stat) => {
                    return self.refuse(comps, "a hard link to a directory");
                }
                Ok(stat) if !is_whiteout(&stat) => {
                    self.clear(&dir, name, comps)?;
                    return nix::unistd::linkat(
                        &target_dir,
                        target_name.as_os_str(),
                        &dir,
                        name,
                        nix::fcntl::AtFlags::empty(),
                    )
                    .map_err(|e| io_err(e.into()));
                }
                _ => {}
            }
        }
        // In a layer below: overlayfs cannot link across layers, so the file is copied (as a
        // copy-up would), with its attributes.
        match self.lower(&target_comps) {
            Lower::Found { layer, stat } => self.copy_up(layer, &stat, &target_comps, &dir, name, comps),
            Lower::ThroughSymlink { depth } => self.refuse(
                comps,
                format!(
                    "its hard link target lies beneath the symlink {:?}; kemu never follows a symlink",
                    shown(&target_comps[..depth])
                ),
            ),
            Lower::Absent => self.refuse(
                comps,
                format!(
                    "a hard link to {:?}, which the image does not have",
                    shown(&target_comps)
                ),
            ),
        }
    }

    fn copy_up(
        &mut self,
        layer: usize,
        stat: &FileStat,
        target: &[OsString],
        dir: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
    ) -> Result<(), UnpackError> {
        let io_err = Self::io_err(comps);
        let (tname, tparents) = target.split_last().expect("a target has a name");
        let mut src_dir = self.lowers[layer].try_clone().map_err(&io_err)?;
        for part in tparents {
            src_dir = open_dir(&src_dir, part).map_err(|e| io_err(e.into()))?;
        }
        let attrs = Attrs {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
            mtime: TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
            xattrs: Vec::new(),
        };
        self.clear(dir, name, comps)?;
        match file_type(stat) {
            SFlag::S_IFREG => {
                if self.file_bytes.saturating_add(stat.st_size as u64) > self.limits.max_layer_bytes
                {
                    return self.refuse(comps, "the layer's files come to more than the limit");
                }
                let src = openat(
                    &src_dir,
                    tname.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io_err(e.into()))?;
                let dst = openat(
                    dir,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err(e.into()))?;
                let mut src = std::fs::File::from(src);
                let mut dst = std::fs::File::from(dst);
                let n = io::copy(&mut src, &mut dst).map_err(&io_err)?;
                self.file_bytes += n;
                self.apply_fd(&OwnedFd::from(dst), &attrs, comps, true)
            }
            SFlag::S_IFLNK => {
                let link = nix::fcntl::readlinkat(&src_dir, tname.as_os_str())
                    .map_err(|e| io_err(e.into()))?;
                nix::unistd::symlinkat(link.as_os_str(), dir, name)
                    .map_err(|e| io_err(e.into()))?;
                self.apply_at(dir, name, &attrs, comps)
            }
            SFlag::S_IFIFO => {
                mknodat(
                    dir,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(attrs.mode & 0o777),
                    0,
                )
                .map_err(|e| io_err(e.into()))?;
                self.apply_at(dir, name, &attrs, comps)
            }
            _ => self.refuse(comps, "a hard link to something that is not a file"),
        }
    }

    /// Owner, mode, xattrs and (for files) mtime of an open file or directory.
    fn apply_fd(
        &self,
        fd: &OwnedFd,
        attrs: &Attrs,
        comps: &[OsString],
        times: bool,
    ) -> Result<(), UnpackError> {
        let io_err = Self::io_err(comps);
        nix::unistd::fchown(
            fd,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
        )
        .map_err(|e| io_err(e.into()))?;
        // After chown, which clears setuid/setgid bits.
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(attrs.mode & 0o7777))
            .map_err(|e| io_err(e.into()))?;
        for (name, value) in &attrs.xattrs {
            set_xattr(fd, name, value).map_err(&io_err)?;
        }
        if times {
            nix::sys::stat::futimens(fd, &attrs.mtime, &attrs.mtime)
                .map_err(|e| io_err(e.into()))?;
        }
        Ok(())
    }

    /// Owner and mtime of a symlink or FIFO, by name, never following it.
    fn apply_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        attrs: &Attrs,
        comps: &[OsString],
    ) -> Result<(), UnpackError> {
        let io_err = Self::io_err(comps);
        nix::unistd::fchownat(
            dir,
            name,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(e.into()))?;
        nix::sys::stat::utimensat(
            dir,
            name,
            &attrs.mtime,
            &attrs.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(e.into()))
    }

    fn finish_dir_times(&mut self) -> Result<(), UnpackError> {
        // Deepest first, so setting a directory's time does not disturb its parent's.
        self.dir_times
            .sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let (name, parents) = comps.split_last().expect("not the root");
            let Some(parent) = self.find_dir(parents, &comps)? else {
                continue;
            };
            match open_dir(&parent, name) {
                Ok(fd) => nix::sys::stat::futimens(&fd, &mtime, &mtime)
                    .map_err(|e| Self::io_err(&comps)(e.into()))?,
                // Replaced by a later entry.
                Err(_) => continue,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_plain_names() {
        let c = |s: &str| components(s.as_bytes());
        assert_eq!(c("./usr/bin/x").unwrap(), ["usr", "bin", "x"]);
        assert_eq!(c("/etc//passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("a/./b/").unwrap(), ["a", "b"]);
        assert!(c("./").unwrap().is_empty());
        for bad in ["../x", "a/../../x", "a/..", ".."] {
            assert!(c(bad).is_err(), "{bad}");
        }
        assert!(components(&vec![b'a'; 5000]).is_err());
    }
}
