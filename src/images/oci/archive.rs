//! `kemu image load`: `docker save` archives (both the legacy layout and Docker 25's OCI one)
//! and OCI image layouts, as a directory or a tar (plain, gzip or zstd).
//!
//! An archive is read in place, never extracted: a tar is indexed once (member name →
//! offset and size) and its layers are then read from those offsets. So a member named
//! `../../etc/x` or a `manifest.json` pointing at one only ever names a member of the archive.
//! Facts: shared/research/proxy-dns-image-facts.md, "docker save" and "OCI image layout".

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::images::store::digest::{Digest, HashingReader, chain_ids};
use crate::images::store::index::{ImageRecord, Scope};
use crate::images::store::unpack::{self, components};
use crate::images::store::{Store, StoreError, TempFile};

/// The most a JSON file of an archive (manifest, config, index) may weigh.
const MAX_JSON: u64 = 16 << 20;

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::Invalid(msg.into())
}

/// Where an archive's files come from.
enum Source {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        /// Member name → (offset of its data, size).
        members: HashMap<String, (u64, u64)>,
        /// Decompressed copy, removed on drop.
        _temp: Option<TempFile>,
    },
}

/// A member name as the index keys it: plain components joined by `/`.
fn member_key(raw: &[u8]) -> Option<String> {
    let comps = components(raw).ok()?;
    let parts: Vec<String> = comps
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Source {
    fn open_path(store: &Store, path: &Path) -> Result<Source, StoreError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut reader = BufReader::new(
            File::open(path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?,
        );
        let head = reader
            .fill_buf()
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let compressed =
            head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let (file, temp) = if compressed {
            // Layers are read by offset: decompress the archive once into the store's tmp/.
            let temp = store.temp_file("archive")?;
            let mut out = temp
                .create()
                .map_err(|e| invalid(format!("cannot write {}: {e}", temp.path.display())))?;
            let mut input = unpack::decompress(reader)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
            io::copy(&mut input, &mut out)
                .map_err(|e| invalid(format!("cannot decompress {}: {e}", path.display())))?;
            (temp.path.clone(), Some(temp))
        } else {
            (path.to_path_buf(), None)
        };
        let members = index_tar(&file).map_err(|e| {
            invalid(format!(
                "{} is not a readable tar archive: {e}",
                path.display()
            ))
        })?;
        Ok(Source::Tar {
            file,
            members,
            _temp: temp,
        })
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Tar { members, .. } => members.contains_key(name),
        }
    }

    /// A member's contents as a reader, with its size.
    fn open(&self, name: &str) -> Result<(Box<dyn BufRead + '_>, u64), StoreError> {
        let missing = || invalid(format!("the archive has no file {name:?}"));
        match self {
            Source::Dir(dir) => {
                let key = member_key(name.as_bytes()).ok_or_else(missing)?;
                let path = dir.join(key);
                let file = File::open(&path).map_err(|_| missing())?;
                let size = file.metadata().map_err(|_| missing())?.len();
                Ok((Box::new(BufReader::with_capacity(1 << 20, file)), size))
            }
            Source::Tar { file, members, .. } => {
                let key = member_key(name.as_bytes()).ok_or_else(missing)?;
                let &(offset, size) = members.get(&key).ok_or_else(missing)?;
                let mut f =
                    File::open(file).map_err(|e| invalid(format!("reading the archive: {e}")))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| invalid(format!("reading the archive: {e}")))?;
                Ok((
                    Box::new(BufReader::with_capacity(1 << 20, f.take(size))),
                    size,
                ))
            }
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<(T, Vec<u8>), StoreError> {
        let (mut reader, size) = self.open(name)?;
        if size > MAX_JSON {
            return Err(invalid(format!(
                "{name} is {size} bytes, more than a JSON file of an image may be"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(format!("reading {name}: {e}")))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{name}: {e}")))?;
        Ok((value, bytes))
    }

    /// Check that a member's contents have `digest`.
    fn verify(&self, name: &str, digest: &Digest) -> Result<u64, StoreError> {
        let (reader, _) = self.open(name)?;
        let (actual, size) = HashingReader::new(reader)
            .finish()
            .map_err(|e| invalid(format!("reading {name}: {e}")))?;
        if &actual != digest {
            return Err(invalid(format!(
                "{name} does not match its digest {digest} (it is {actual})"
            )));
        }
        Ok(size)
    }
}

/// Index a tar: regular members by name, with symlinked and hard-linked members resolved
/// to the regular member they name (docker save links identical layers).
fn index_tar(path: &Path) -> io::Result<HashMap<String, (u64, u64)>> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
    let mut members = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let Some(name) = member_key(&entry.path_bytes()) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() || kind == tar::EntryType::Continuous {
            members.insert(name, (entry.raw_file_position(), entry.size()));
        } else if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            // A symlink is relative to its directory, a hard link to the archive's root.
            let target = if kind.is_symlink() && !target.starts_with(b"/") {
                let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                [dir.as_bytes(), b"/", &target].concat()
            } else {
                target.into_owned()
            };
            if let Some(target) = resolve_lexically(&target) {
                links.push((name, target));
            }
        }
    }
    // Links to links: a few rounds settle any sane archive.
    for _ in 0..8 {
        for (name, target) in &links {
            if let Some(found) = members.get(target).copied() {
                members.entry(name.clone()).or_insert(found);
            }
        }
    }
    Ok(members)
}

/// `a/b/../c` → `a/c`; `None` when it climbs above the root.
fn resolve_lexically(path: &[u8]) -> Option<String> {
    let mut out: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    let parts: Vec<String> = out
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An image an archive held: its ID and the names the archive gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub id: Digest,
    pub names: BTreeSet<String>,
}

fn loaded(record: ImageRecord, names: BTreeSet<String>) -> Loaded {
    Loaded {
        id: record.id,
        names,
    }
}

/// Load every image of an archive into the store.
pub fn load(store: &Store, path: &Path, scope: &Scope) -> Result<Vec<Loaded>, StoreError> {
    let result = load_locked(store, path, scope);
    if result.is_err() {
        // Layers unpacked before the failure belong to no image: take them out again, so a
        // refused archive leaves the store as it was.
        store.discard_unreferenced()?;
    }
    result
}

fn load_locked(store: &Store, path: &Path, scope: &Scope) -> Result<Vec<Loaded>, StoreError> {
    // Before anything is written to the store's tmp/, which `gc` empties.
    let _shared = store.lock_shared()?;
    let source = Source::open_path(store, path)?;
    // Docker 25 archives are OCI layouts too; their manifest.json is the simpler guide.
    if source.exists("manifest.json") {
        load_docker(store, &source, scope)
    } else if source.exists("oci-layout") && source.exists("index.json") {
        load_oci(store, &source, scope)
    } else {
        Err(invalid(format!(
            "{} is neither a `docker save` archive (it has no manifest.json) nor an OCI image layout (it has no oci-layout and index.json)",
            path.display()
        )))
    }
}

fn parse_config(
    bytes: &[u8],
    what: &str,
) -> Result<(oci_spec::image::ImageConfiguration, Vec<Digest>), StoreError> {
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("image config {what}: {e}")))?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| invalid(format!("image config {what}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, diff_ids))
}

fn normalize_names(
    names: impl IntoIterator<Item = String>,
) -> Result<BTreeSet<String>, StoreError> {
    names
        .into_iter()
        .map(|n| super::reference::normalize(&n).map_err(invalid))
        .collect()
}

/// Unpack the layers of an image (those not in the store yet).
fn add_layers(
    store: &Store,
    source: &Source,
    layer_names: &[String],
    diff_ids: &[Digest],
) -> Result<u64, StoreError> {
    let chains = chain_ids(diff_ids);
    let mut size = 0;
    for (i, (name, diff_id)) in layer_names.iter().zip(diff_ids).enumerate() {
        let (reader, bytes) = source.open(name)?;
        size += bytes;
        if store.has_layer(&chains[i]) {
            continue;
        }
        store
            .add_layer(reader, diff_id, &chains[i], &chains[..i])
            .map_err(|e| match e {
                StoreError::Unpack(u) => invalid(format!("layer {name}: {u}")),
                other => other,
            })?;
    }
    Ok(size)
}

fn load_docker(store: &Store, source: &Source, scope: &Scope) -> Result<Vec<Loaded>, StoreError> {
    let (items, _) = source.read_json::<Vec<DockerManifestItem>>("manifest.json")?;
    let mut out = Vec::new();
    for item in items {
        let (_, config_bytes) = source.read_json::<serde_json::Value>(&item.config)?;
        let id = Digest::of(&config_bytes);
        // The config's file name is its digest (`<hex>.json`, or `blobs/sha256/<hex>`).
        let stem = item.config.rsplit('/').next().unwrap_or(&item.config);
        let stem = stem.strip_suffix(".json").unwrap_or(stem);
        if Digest::from_hex(stem).is_some_and(|named| named != id) {
            return Err(invalid(format!(
                "{} does not match its digest (it is {id})",
                item.config
            )));
        }
        let (_, diff_ids) = parse_config(&config_bytes, &item.config)?;
        if diff_ids.len() != item.layers.len() {
            return Err(invalid(format!(
                "manifest.json lists {} layers for {} but its config has {}",
                item.layers.len(),
                item.config,
                diff_ids.len()
            )));
        }
        let names = normalize_names(item.repo_tags.unwrap_or_default())?;
        let layer_bytes = add_layers(store, source, &item.layers, &diff_ids)?;
        store.put_blob(&config_bytes)?;
        let record = ImageRecord {
            id,
            names: names.clone(),
            repo_digests: BTreeSet::new(),
            manifests: BTreeSet::new(),
            labs: None,
            layers: Store::layer_refs(&diff_ids),
            size: config_bytes.len() as u64 + layer_bytes,
            added: jiff::Timestamp::now(),
        };
        out.push(loaded(store.add_image(record, scope)?, names));
    }
    Ok(out)
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// This machine's platform in OCI's words.
pub fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn load_oci(store: &Store, source: &Source, scope: &Scope) -> Result<Vec<Loaded>, StoreError> {
    let (layout, _) = source.read_json::<serde_json::Value>("oci-layout")?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(invalid("oci-layout has no imageLayoutVersion"));
    }
    let (index, _) = source.read_json::<oci_spec::image::ImageIndex>("index.json")?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let annotations = desc.annotations().clone().unwrap_or_default();
        // containerd and Docker write the full name; skopeo and others may write only a tag
        // in ref.name, which names no repository and so no image.
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains('/') || n.contains(':'))
            .cloned();
        out.push(load_oci_descriptor(store, source, desc, name, scope, 0)?);
    }
    Ok(out)
}

fn load_oci_descriptor(
    store: &Store,
    source: &Source,
    desc: &oci_spec::image::Descriptor,
    name: Option<String>,
    scope: &Scope,
    depth: usize,
) -> Result<Loaded, StoreError> {
    let digest = Digest::parse(desc.digest().as_ref()).map_err(|e| invalid(e.to_string()))?;
    let media = desc.media_type().to_string();
    if depth > 4 {
        return Err(invalid("image indexes nested too deep"));
    }
    source.verify(&blob_name(&digest), &digest)?;
    if INDEX_TYPES.contains(&media.as_str()) {
        let (nested, _) = source.read_json::<oci_spec::image::ImageIndex>(&blob_name(&digest))?;
        let chosen = nested
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == platform_arch()
                })
            })
            .ok_or_else(|| {
                invalid(format!(
                    "index {digest} has no image for linux/{}",
                    platform_arch()
                ))
            })?;
        return load_oci_descriptor(store, source, chosen, name, scope, depth + 1);
    }
    let (manifest, manifest_bytes) =
        source.read_json::<oci_spec::image::ImageManifest>(&blob_name(&digest))?;
    let config_digest =
        Digest::parse(manifest.config().digest().as_ref()).map_err(|e| invalid(e.to_string()))?;
    source.verify(&blob_name(&config_digest), &config_digest)?;
    let (_, config_bytes) = source.read_json::<serde_json::Value>(&blob_name(&config_digest))?;
    let (_, diff_ids) = parse_config(&config_bytes, &config_digest.to_string())?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(format!(
            "manifest {digest} lists {} layers but its config has {}",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layer_names = Vec::new();
    for layer in manifest.layers() {
        let d = Digest::parse(layer.digest().as_ref()).map_err(|e| invalid(e.to_string()))?;
        source.verify(&blob_name(&d), &d)?;
        layer_names.push(blob_name(&d));
    }
    let layer_bytes = add_layers(store, source, &layer_names, &diff_ids)?;
    store.put_blob(&config_bytes)?;
    store.put_blob(&manifest_bytes)?;
    let names = normalize_names(name)?;
    let repo_digests = names
        .iter()
        .map(|n| format!("{}@{digest}", crate::images::store::index::strip_tag(n)))
        .collect();
    let record = ImageRecord {
        id: config_digest,
        names: names.clone(),
        repo_digests,
        manifests: BTreeSet::from([digest]),
        labs: None,
        layers: Store::layer_refs(&diff_ids),
        size: config_bytes.len() as u64 + layer_bytes,
        added: jiff::Timestamp::now(),
    };
    Ok(loaded(store.add_image(record, scope)?, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolution_stays_inside() {
        assert_eq!(resolve_lexically(b"a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(resolve_lexically(b"/x/./y").as_deref(), Some("x/y"));
        assert_eq!(resolve_lexically(b"a/../../etc/passwd"), None);
        assert_eq!(resolve_lexically(b".."), None);
    }
}
