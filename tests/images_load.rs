//! `kemu image load/ls/rm/gc` on images the test makes itself: an image whose files are
//! kemu's own static binary and a few more, packed as a `docker save` archive, as an OCI
//! layout directory and as an OCI layout tar. The store is a temporary directory
//! (`KEMU_IMAGE_DIR`). Needs root.

mod images_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use images_support::{Entry::*, *};
use kemu::images::store::Store;
use kemu::images::store::index::Query;

/// Two layers that use every rule of the layer format: the second deletes a file of the
/// first (whiteout), empties a directory (opaque), hard-links a file of the first and adds
/// an absolute symlink.
fn layers() -> Vec<Vec<u8>> {
    let bin = kemu_binary();
    let base = layer(&[
        Dir("bin", 0o755),
        File("bin/kemu", 0o755, &bin),
        File("bin/setuid-thing", 0o4755, b"#!/bin/false\n"),
        Dir("etc", 0o755),
        File("etc/motd", 0o644, b"base\n"),
        File("etc/gone", 0o644, b"deleted by the next layer\n"),
        Dir("data", 0o750),
        File("data/old", 0o644, b"hidden by the next layer\n"),
    ]);
    let top = layer(&[
        File("etc/.wh.gone", 0o644, b""),
        HardLink("etc/motd-link", "etc/motd"),
        Dir("data", 0o750),
        File("data/.wh..wh..opq", 0o644, b""),
        File("data/new", 0o600, b"new\n"),
        Symlink("bin/k", "/bin/kemu"),
    ]);
    vec![base, top]
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn one_image_from_a_docker_archive_and_oci_layouts_shares_its_layers() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let work = tempfile::tempdir().unwrap();
    let layers = layers();

    let docker = work.path().join("hello.tar");
    std::fs::write(
        &docker,
        docker_archive(
            &["kemu/hello:1"],
            &layers,
            &["/bin/kemu", "--version"],
            None,
        ),
    )
    .unwrap();
    let out = kemu_ok(store, &["image", "load", docker.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: docker.io/kemu/hello:1\n");

    let layout = work.path().join("layout");
    oci_layout(
        &layout,
        "docker.io/kemu/hello:oci",
        &layers,
        &["/bin/kemu", "--version"],
    );
    let out = kemu_ok(store, &["image", "load", layout.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: docker.io/kemu/hello:oci\n");

    let layout2 = work.path().join("layout2");
    oci_layout(
        &layout2,
        "localhost/hello:tar",
        &layers,
        &["/bin/kemu", "--version"],
    );
    let layout_tar = work.path().join("layout.tar.gz");
    std::fs::write(&layout_tar, gzip(&tar_dir(&layout2))).unwrap();
    let out = kemu_ok(store, &["image", "load", layout_tar.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: localhost/hello:tar\n");

    // One image (one config), three names, two layer directories.
    let ls = kemu_ok(store, &["image", "ls"]);
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["IMAGE", "TAG", "IMAGE", "ID", "SIZE", "LABS"],
        "{ls}"
    );
    let mut names: Vec<String> = rows[1..]
        .iter()
        .map(|r| format!("{}:{}", r[0], r[1]))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "docker.io/kemu/hello:1",
            "docker.io/kemu/hello:oci",
            "localhost/hello:tar"
        ],
        "{ls}"
    );
    let ids: std::collections::BTreeSet<&str> = rows[1..].iter().map(|r| r[2]).collect();
    assert_eq!(ids.len(), 1, "{ls}");
    assert!(rows[1..].iter().all(|r| r[4] == "*"), "{ls}");
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);

    // The layer directories, in overlayfs's format.
    let prepared = Store::open(store)
        .unwrap()
        .prepare(&Query::Name("docker.io/kemu/hello:1".into()), None)
        .unwrap();
    assert_eq!(prepared.layer_dirs.len(), 2);
    assert_eq!(
        prepared
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap(),
        &vec!["/bin/kemu".to_string(), "--version".to_string()]
    );
    let (base, top) = (&prepared.layer_dirs[0], &prepared.layer_dirs[1]);
    assert_eq!(std::fs::read(base.join("bin/kemu")).unwrap(), kemu_binary());
    assert_eq!(
        std::fs::metadata(base.join("bin/kemu"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    // setuid kept (the store is 0700).
    assert_eq!(
        std::fs::metadata(base.join("bin/setuid-thing"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(store).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(base.join("etc/motd")).unwrap().mtime(),
        1_700_000_000
    );
    let whiteout = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        xattr(&top.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(std::fs::read(top.join("etc/motd-link")).unwrap(), b"base\n");
    assert_eq!(
        std::fs::read_link(top.join("bin/k")).unwrap(),
        Path::new("/bin/kemu")
    );
    // `etc` was not in the top layer's tar: it takes the lower layer's attributes.
    assert_eq!(
        std::fs::metadata(top.join("etc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );

    // Mounted as overlayfs (in a private mount namespace), the image is what the layers say,
    // and its static binary runs in it.
    let merged = work.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={} {m} && chroot {m} /bin/kemu --version && \
         ls {m}/etc && ls {m}/data && cat {m}/etc/motd-link && readlink {m}/bin/k",
        prepared.lowerdir(),
        m = merged.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("kemu "), "{text}");
    assert_eq!(
        &lines[1..],
        ["motd", "motd-link", "new", "base", "/bin/kemu"],
        "{text}"
    );
}

#[test]
fn rm_untags_then_deletes_and_collects_the_layers() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("hello.tar");
    std::fs::write(
        &archive,
        docker_archive(
            &["kemu/hello:1", "kemu/hello:2"],
            &layers(),
            &["/bin/kemu"],
            None,
        ),
    )
    .unwrap();
    kemu_ok(store, &["image", "load", archive.to_str().unwrap()]);
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 2);

    assert_eq!(
        kemu_ok(store, &["image", "rm", "kemu/hello:1"]),
        "Untagged: docker.io/kemu/hello:1\n"
    );
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 2);

    let out = kemu_ok(store, &["image", "rm", "kemu/hello:2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Untagged: docker.io/kemu/hello:2");
    assert!(lines[1].starts_with("Deleted: sha256:"), "{out}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("Deleted layer: sha256:"))
            .count(),
        2,
        "{out}"
    );
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("blobs")).unwrap().count(), 0);
    assert_eq!(kemu_ok(store, &["image", "ls", "-q"]), "");

    // Unknown images are an error.
    let out = kemu_at(store, &["image", "rm", "kemu/nothing:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no such image: docker.io/kemu/nothing:1"),
        "{}",
        text(&out)
    );

    // gc clears what a crashed load left in tmp/ and unnamed images.
    std::fs::create_dir_all(store.join("tmp/leftover.1.2/fs/x")).unwrap();
    let layout = work.path().join("layout");
    oci_layout(&layout, "just-a-tag", &layers(), &["/bin/kemu"]);
    let out = kemu_ok(store, &["image", "load", layout.to_str().unwrap()]);
    assert!(out.starts_with("Loaded image ID: sha256:"), "{out}");
    let out = kemu_ok(store, &["image", "gc"]);
    assert!(out.starts_with("Deleted: sha256:"), "{out}");
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 0);
}

#[test]
fn an_image_loaded_for_a_lab_is_present_for_that_lab_only() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("hello.tar");
    std::fs::write(
        &archive,
        docker_archive(&["kemu/hello:1"], &layers(), &["/bin/kemu"], None),
    )
    .unwrap();
    let path = archive.to_str().unwrap();

    kemu_ok(store, &["image", "load", "--lab", "alpha", path]);
    assert!(kemu_ok(store, &["image", "ls", "--lab", "alpha"]).contains("docker.io/kemu/hello"));
    assert!(!kemu_ok(store, &["image", "ls", "--lab", "beta"]).contains("docker.io/kemu/hello"));
    kemu_ok(store, &["image", "load", "--lab", "beta", path]);
    let ls = kemu_ok(store, &["image", "ls"]);
    assert!(ls.lines().nth(1).unwrap().ends_with("alpha,beta"), "{ls}");

    let out = kemu_ok(store, &["image", "rm", "--lab", "alpha", "kemu/hello:1"]);
    assert!(out.starts_with("Removed from lab alpha: sha256:"), "{out}");
    assert!(!kemu_ok(store, &["image", "ls", "--lab", "alpha"]).contains("docker.io/kemu/hello"));
    let out = kemu_ok(store, &["image", "rm", "--lab", "beta", "kemu/hello:1"]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert_eq!(std::fs::read_dir(store.join("layers")).unwrap().count(), 0);
}

#[test]
fn the_store_needs_root_and_says_so() {
    let store_dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_kemu"),
            "image",
            "ls",
        ])
        .env("KEMU_IMAGE_DIR", store_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("kemu image ls needs root"),
        "{}",
        text(&out)
    );
}
