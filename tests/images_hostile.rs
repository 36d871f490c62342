//! Crafted hostile archives are refused with a clear error and leave both the store and the
//! host untouched: `..` paths, writes, whiteouts and hard links through symlinks (absolute and
//! relative, made by the same layer or a lower one), device nodes, oversized entries,
//! manifests that point outside the archive, and layers that do not match their digest.
//! Each runs `kemu image load` as root against a temporary store and a canary directory that
//! every attack aims at. Needs root.

mod images_support;

use std::path::Path;

use images_support::{Entry::*, *};

struct Canary {
    dir: tempfile::TempDir,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim"), "keep").unwrap();
        Canary { dir }
    }

    fn abs(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The canary's path from `/` without the leading slash (for `../../..` climbs).
    fn rel(&self) -> String {
        self.abs().trim_start_matches('/').to_string()
    }

    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            tree(self.dir.path()),
            [Path::new("victim")],
            "{case}: the canary directory changed"
        );
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("victim")).unwrap(),
            "keep",
            "{case}"
        );
        let meta = std::fs::symlink_metadata(self.dir.path()).unwrap();
        assert!(meta.is_dir(), "{case}");
    }
}

fn assert_store_empty(store: &Path, case: &str) {
    for sub in ["layers", "blobs", "tmp", "leases"] {
        let left = tree(&store.join(sub));
        assert!(left.is_empty(), "{case}: {sub}/ holds {left:?}");
    }
    let index = std::fs::read(store.join("index.json")).unwrap_or_else(|_| b"{}".to_vec());
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let images = index["images"].as_array().map_or(0, |a| a.len());
    assert_eq!(images, 0, "{case}: an image was recorded");
}

/// Load `archive` (one image of `layers`) and check that it is refused with `expected`.
fn refused(case: &str, archive: Vec<u8>, expected: &str, canary: &Canary) {
    let store_dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("hostile.tar");
    std::fs::write(&file, archive).unwrap();
    let out = kemu_at(store_dir.path(), &["image", "load", file.to_str().unwrap()]);
    let text = text(&out);
    assert!(!out.status.success(), "{case}: loaded:\n{text}");
    assert!(
        text.contains(expected),
        "{case}: expected {expected:?} in:\n{text}"
    );
    assert_store_empty(store_dir.path(), case);
    canary.assert_untouched(case);
}

fn image(layers: &[Vec<u8>]) -> Vec<u8> {
    docker_archive(&["evil/image:1"], layers, &["/x"], None)
}

#[test]
fn hostile_layers_are_refused_and_touch_nothing() {
    let canary = Canary::new();
    let abs = canary.abs();
    let climb = format!("../../../../../../../../../../{}", canary.rel());
    let cases: Vec<(&str, Vec<Vec<u8>>, String)> = vec![
        (
            "a '..' path",
            vec![layer(&[File(&format!("{climb}/pwned"), 0o644, b"x")])],
            "its path has a '..' component".into(),
        ),
        (
            "an absolute symlink, then a file written through it",
            vec![layer(&[
                Symlink("link", &abs),
                File("link/pwned", 0o644, b"x"),
            ])],
            "it lies beneath the symlink \"link\"; kemu never writes through a symlink".into(),
        ),
        (
            "a relative symlink that climbs out, then a file written through it",
            vec![layer(&[
                Symlink("up", &climb),
                File("up/pwned", 0o644, b"x"),
            ])],
            "it lies beneath the symlink \"up\"".into(),
        ),
        (
            "a symlink, then a directory made through it",
            vec![layer(&[Symlink("link", &abs), Dir("link/sub", 0o755)])],
            "it lies beneath the symlink \"link\"".into(),
        ),
        (
            "a symlink, then a whiteout through it (would delete the victim)",
            vec![layer(&[
                Symlink("link", &abs),
                File("link/.wh.victim", 0o644, b""),
            ])],
            "it lies beneath the symlink \"link\"".into(),
        ),
        (
            "a symlink, then an opaque marker through it (would set an xattr outside)",
            vec![layer(&[
                Symlink("link", &abs),
                File("link/.wh..wh..opq", 0o644, b""),
            ])],
            "it lies beneath the symlink \"link\"".into(),
        ),
        (
            "a symlink, then a hard link to a host file through it",
            vec![layer(&[
                Symlink("etc", &abs),
                HardLink("stolen", "etc/victim"),
            ])],
            "its target lies beneath the symlink \"etc\"".into(),
        ),
        (
            "a hard link whose target climbs out",
            vec![layer(&[HardLink("stolen", &format!("{climb}/victim"))])],
            "its path has a '..' component".into(),
        ),
        (
            "a symlink made by a lower layer, written through by the next",
            vec![
                layer(&[Symlink("link", &abs)]),
                layer(&[File("link/pwned", 0o644, b"x")]),
            ],
            "a symlink in a lower layer; kemu never writes through a symlink".into(),
        ),
        (
            "a device node",
            vec![layer(&[Dir("dev", 0o755), CharDev("dev/mem", 1, 1)])],
            "it is a character device node (1:1); kemu never creates device nodes".into(),
        ),
        (
            "an entry claiming 16 GiB",
            vec![layer(&[Claimed("big", 16 << 30)])],
            "it is 17179869184 bytes, over the limit of 8589934592 bytes for one file".into(),
        ),
        (
            "a whiteout of '..'",
            vec![layer(&[File(".wh...", 0o644, b"")])],
            "a whiteout that names no file".into(),
        ),
    ];
    for (case, layers, expected) in cases {
        refused(case, image(&layers), &expected, &canary);
    }
}

#[test]
fn hostile_archives_are_refused_and_touch_nothing() {
    let canary = Canary::new();
    let good = vec![layer(&[File("hello", 0o644, b"hi")])];

    // manifest.json pointing at a path outside the archive: only members are ever read.
    let escape = format!("../../../../../../../{}/victim", canary.rel());
    refused(
        "a manifest layer path outside the archive",
        docker_archive(
            &["evil/image:1"],
            &good,
            &["/x"],
            Some(vec![escape.clone()]),
        ),
        &format!("the archive has no file {escape:?}"),
        &canary,
    );

    // A layer that is not the one its config names.
    let other = layer(&[File("hello", 0o644, b"something else")]);
    refused(
        "a layer that does not match its diff ID",
        docker_archive_with_config(&["evil/image:1"], &good, config(&[other], &["/x"]), None),
        "layer content does not match its digest",
        &canary,
    );

    // A config whose file name is not its digest.
    let mut archive = docker_archive(&["evil/image:1"], &good, &["/x"], None);
    let cfg = config(&good, &["/x"]);
    let name = format!("{}.json", sha256_hex(&cfg));
    let fake = format!("{}.json", "0".repeat(64));
    let at = archive
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    archive[at..at + name.len()].copy_from_slice(fake.as_bytes());
    // Both mentions (member name and manifest.json) now say the wrong digest; fix the
    // member header's checksum by rebuilding it the simple way: the manifest mention.
    let at2 = archive
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    archive[at2..at2 + name.len()].copy_from_slice(fake.as_bytes());
    let block = at - at % 512;
    let mut header = tar::Header::new_old();
    header
        .as_mut_bytes()
        .copy_from_slice(&archive[block..block + 512]);
    header.set_cksum();
    archive[block..block + 512].copy_from_slice(header.as_bytes());
    refused(
        "a config that is not its digest",
        archive,
        "does not match its digest",
        &canary,
    );

    // Not an image at all.
    refused(
        "a tar that is no image",
        layer(&[File("hello", 0o644, b"hi")]),
        "is neither a `docker save` archive",
        &canary,
    );
}
