//! Images the tests make themselves (no download): layer tars built entry by entry, packed as
//! a `docker save` archive or as an OCI image layout, and raw tar headers for hostile entries
//! the `tar` crate's builder would refuse to write.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// One entry of a layer tar.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    /// A header claiming `size` bytes, followed by no data.
    Claimed(&'a str, u64),
}

fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    // The name is written raw: the builder refuses `..`, which hostile archives need.
    let name = path.as_bytes();
    assert!(name.len() < 100, "short names only");
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let t = target.as_bytes();
    assert!(t.len() < 100);
    let old = h.as_old_mut();
    old.linkname = [0; 100];
    old.linkname[..t.len()].copy_from_slice(t);
}

/// A layer tar (uncompressed).
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            Entry::Dir(p, mode) => (header(tar::EntryType::Directory, p, *mode, 0), &[]),
            Entry::File(p, mode, data) => (
                header(tar::EntryType::Regular, p, *mode, data.len() as u64),
                data,
            ),
            Entry::Symlink(p, t) => {
                let mut h = header(tar::EntryType::Symlink, p, 0o777, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            Entry::HardLink(p, t) => {
                let mut h = header(tar::EntryType::Link, p, 0o644, 0);
                set_link(&mut h, t);
                (h, &[])
            }
            Entry::CharDev(p, major, minor) => {
                let mut h = header(tar::EntryType::Char, p, 0o666, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (h, &[])
            }
            Entry::Claimed(p, size) => (header(tar::EntryType::Regular, p, 0o644, *size), &[]),
        };
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// An image config for these layers.
pub fn config(layers: &[Vec<u8>], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256_hex(l)))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    }))
    .unwrap()
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    builder.append_data(&mut h, path, data).unwrap();
}

/// A legacy `docker save` archive (Docker < 25): `<id>/layer.tar`, `<config hex>.json`,
/// `manifest.json` last, as docker writes it. `layer_paths` may override the manifest's
/// layer paths (hostile archives).
pub fn docker_archive(
    tags: &[&str],
    layers: &[Vec<u8>],
    cmd: &[&str],
    layer_paths: Option<Vec<String>>,
) -> Vec<u8> {
    docker_archive_with_config(tags, layers, config(layers, cmd), layer_paths)
}

/// `docker_archive` with a given config (one that does not match the layers, say).
pub fn docker_archive_with_config(
    tags: &[&str],
    layers: &[Vec<u8>],
    config: Vec<u8>,
    layer_paths: Option<Vec<String>>,
) -> Vec<u8> {
    let config_name = format!("{}.json", sha256_hex(&config));
    let mut b = tar::Builder::new(Vec::new());
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = format!("{:064x}", i + 1);
        append(&mut b, &format!("{dir}/VERSION"), b"1.0");
        append(&mut b, &format!("{dir}/layer.tar"), l);
        paths.push(format!("{dir}/layer.tar"));
    }
    append(&mut b, &config_name, &config);
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": layer_paths.unwrap_or(paths),
    }]);
    append(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// An OCI image layout in `dir` with gzip-compressed layers, named by the
/// `org.opencontainers.image.ref.name` annotation. Returns the manifest digest.
pub fn oci_layout(dir: &Path, name: &str, layers: &[Vec<u8>], cmd: &[&str]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| -> (String, usize) {
        let hex = sha256_hex(data);
        std::fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };
    let (config_digest, config_size) = put(&config(layers, cmd));
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(&gzip(l));
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_digest
}

/// A directory packed as a tar (an OCI layout as a tar).
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

/// `kemu` with the store at `store`.
pub fn kemu_at(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kemu"))
        .env("KEMU_IMAGE_DIR", store)
        .args(args)
        .output()
        .expect("run kemu")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kemu` that must succeed; returns stdout.
pub fn kemu_ok(store: &Path, args: &[&str]) -> String {
    let out = kemu_at(store, args);
    assert!(
        out.status.success(),
        "kemu {} failed:\n{}",
        args.join(" "),
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path below `dir` (relative), sorted: what a store or a canary holds.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The kemu binary: static, so an image holding only it runs anywhere.
pub fn kemu_binary() -> Vec<u8> {
    std::fs::read(env!("CARGO_BIN_EXE_kemu")).unwrap()
}
