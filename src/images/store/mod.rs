//! The image store shared by all labs: content-addressed, on disk under
//! `/var/lib/kemu/images` (or `$KEMU_IMAGE_DIR`).
//!
//! ```text
//! <root>/                    0700: setuid files of images live below, out of every user's reach
//!   index.json               the images (names, labs, layers), see `index`
//!   blobs/<hex>              image configs and manifests, named by their sha256
//!   layers/<chain>/fs/       one unpacked layer, ready to be an overlayfs lower directory
//!   layers/<chain>/layer.json  its diff ID and size
//!   leases/<name>.json       an image a container is using (kept by `gc` while it exists)
//!   tmp/                     work in progress (layers are unpacked here, then renamed in)
//!   lock, index.lock         flock(2) locks: adders share `lock`, removal and gc take it alone
//! ```
//!
//! Every change to the store's own files goes through [`OwnedDir`]; the inside of a layer is
//! written by `unpack`, confined to the layer's directory by file descriptors.
//!
//! What the process runtime asks for ("this image, for this lab") and gets back is a
//! [`PreparedImage`]: the image config and its unpacked layer directories, base first.

pub mod digest;
pub mod index;
pub mod unpack;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::fsguard::OwnedDir;

use digest::Digest;
use index::{ImageRecord, Index, IndexError, LayerRef, Query, Removal, Scope};
use unpack::{Limits, UnpackError};

/// Where the store lives unless `KEMU_IMAGE_DIR` says otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/kemu/images";
/// The environment variable that moves the store (tests point it at a temporary directory).
pub const ROOT_ENV: &str = "KEMU_IMAGE_DIR";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// A layer directory's record of what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerMeta {
    pub diff_id: Digest,
    pub chain_id: Digest,
    /// Bytes of the uncompressed tar.
    pub tar_bytes: u64,
    /// Bytes of the files unpacked.
    pub file_bytes: u64,
}

/// An image ready to become a container's root filesystem.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub record: ImageRecord,
    /// The image config (entrypoint, env, user, working directory, ...).
    pub config: oci_spec::image::ImageConfiguration,
    /// The unpacked layer directories, base first. overlayfs lists lower directories
    /// top-most first: see [`PreparedImage::lowerdir`].
    pub layer_dirs: Vec<PathBuf>,
}

impl PreparedImage {
    /// The `lowerdir=` value of an overlay mount of this image.
    pub fn lowerdir(&self) -> String {
        let dirs: Vec<String> = self
            .layer_dirs
            .iter()
            .rev()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub images: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub blobs: usize,
    /// Bytes of the removed layers' files.
    pub bytes: u64,
}

/// The image store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: OwnedDir,
    limits: Limits,
}

/// A held flock; released on drop.
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

impl Store {
    /// The store's root: `$KEMU_IMAGE_DIR`, else `/var/lib/kemu/images`.
    pub fn default_root() -> PathBuf {
        std::env::var_os(ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    /// Open the store at the default root, creating it if needed.
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(Store::default_root())
    }

    /// Open (and create) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        let dir = OwnedDir::new(&root).map_err(|e| StoreError::Invalid(e.to_string()))?;
        dir.create_dir_all(&root)
            .map_err(io_ctx(format!("creating {}", root.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_ctx(format!("securing {}", root.display())))?;
        for sub in ["blobs", "layers", "leases", "tmp"] {
            let p = root.join(sub);
            dir.create_dir_all(&p)
                .map_err(io_ctx(format!("creating {}", p.display())))?;
        }
        Ok(Store {
            dir,
            limits: Limits::default(),
        })
    }

    /// The same store with other size limits.
    pub fn with_limits(mut self, limits: Limits) -> Store {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.root()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.root().join(rel)
    }

    /// The unpacked directory of a layer (the overlayfs lower directory).
    pub fn layer_fs(&self, chain: &Digest) -> PathBuf {
        self.path(&format!("layers/{}/fs", chain.hex()))
    }

    fn lock(&self, name: &str, arg: FlockArg) -> Result<StoreLock, StoreError> {
        let path = self.path(name);
        self.dir
            .prove(&path)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_ctx(format!("opening {}", path.display())))?;
        Flock::lock(file, arg)
            .map(StoreLock)
            .map_err(|(_, e)| io_ctx(format!("locking {}", path.display()))(e.into()))
    }

    /// Held while adding layers and images: `gc` waits for every adder.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        self.lock("lock", FlockArg::LockShared)
    }

    fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        self.lock("lock", FlockArg::LockExclusive)
    }

    /// The images.
    pub fn index(&self) -> Result<Index, StoreError> {
        let path = self.path("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Invalid(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_ctx(format!("reading {}", path.display()))(e)),
        }
    }

    /// Read, change and write the index under its lock.
    fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Index) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.lock("index.lock", FlockArg::LockExclusive)?;
        let mut index = self.index()?;
        let out = change(&mut index)?;
        let bytes = serde_json::to_vec_pretty(&index).expect("the index serialises");
        let path = self.path("index.json");
        self.dir
            .write_atomic_mode(&path, &bytes, 0o600)
            .map_err(io_ctx(format!("writing {}", path.display())))?;
        Ok(out)
    }

    /// Find an image a lab sees (`lab: None`: any image).
    pub fn find(&self, query: &Query, lab: Option<&str>) -> Result<ImageRecord, StoreError> {
        Ok(self.index()?.find(query, lab)?.clone())
    }

    /// A blob (config or manifest) of the store.
    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.path(&format!("blobs/{}", digest.hex()));
        std::fs::read(&path).map_err(io_ctx(format!("reading {}", path.display())))
    }

    /// Store a small blob (a config or a manifest) under its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let path = self.path(&format!("blobs/{}", digest.hex()));
        if !path.exists() {
            self.dir
                .write_atomic_mode(&path, bytes, 0o600)
                .map_err(io_ctx(format!("writing {}", path.display())))?;
        }
        Ok(digest)
    }

    /// Whether a layer (by chain ID) is unpacked.
    pub fn has_layer(&self, chain: &Digest) -> bool {
        self.path(&format!("layers/{}/layer.json", chain.hex()))
            .exists()
    }

    fn layer_meta(&self, chain: &Digest) -> Option<LayerMeta> {
        let bytes = std::fs::read(self.path(&format!("layers/{}/layer.json", chain.hex()))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Open a directory inside the store as a file descriptor, refusing symlinks.
    fn open_dir(&self, path: &Path) -> Result<OwnedFd, StoreError> {
        self.dir
            .prove(path)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_ctx(format!("opening {}", path.display()))(e.into()))
    }

    /// Unpack a layer blob (plain, gzip or zstd tar) whose uncompressed digest must be
    /// `diff_id`, on top of the layers `parents` (chain IDs, base first). A layer already
    /// unpacked is not read again. The caller holds [`Store::lock_shared`].
    pub fn add_layer(
        &self,
        blob: impl BufRead,
        diff_id: &Digest,
        chain: &Digest,
        parents: &[Digest],
    ) -> Result<LayerMeta, StoreError> {
        if let Some(meta) = self.layer_meta(chain) {
            return Ok(meta);
        }
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.path(&format!("tmp/{}.{}.{n}", chain.hex(), std::process::id()));
        let result = self.unpack_into(&tmp, blob, diff_id, chain, parents);
        if result.is_err() {
            let _ = self.dir.remove_dir_all(&tmp);
        }
        result
    }

    fn unpack_into(
        &self,
        tmp: &Path,
        blob: impl BufRead,
        diff_id: &Digest,
        chain: &Digest,
        parents: &[Digest],
    ) -> Result<LayerMeta, StoreError> {
        let fs = tmp.join("fs");
        self.dir
            .create_dir_all(&fs)
            .map_err(io_ctx(format!("creating {}", fs.display())))?;
        let dest = self.open_dir(&fs)?;
        nix::sys::stat::fchmod(&dest, Mode::from_bits_truncate(0o755))
            .map_err(|e| io_ctx("chmod")(e.into()))?;
        let mut lowers = Vec::with_capacity(parents.len());
        for parent in parents {
            lowers.push(self.open_dir(&self.layer_fs(parent))?);
        }
        let reader = unpack::decompress(blob).map_err(io_ctx("reading the layer"))?;
        let unpacked = unpack::unpack_layer(reader, &dest, &lowers, &self.limits)?;
        if &unpacked.diff_id != diff_id {
            return Err(StoreError::Invalid(format!(
                "layer content does not match its digest: the image config says {diff_id}, the layer is {}",
                unpacked.diff_id
            )));
        }
        let meta = LayerMeta {
            diff_id: diff_id.clone(),
            chain_id: chain.clone(),
            tar_bytes: unpacked.tar_bytes,
            file_bytes: unpacked.file_bytes,
        };
        let meta_path = tmp.join("layer.json");
        self.dir
            .write(
                &meta_path,
                &serde_json::to_vec_pretty(&meta).expect("serialises"),
            )
            .map_err(io_ctx(format!("writing {}", meta_path.display())))?;
        let target = self.path(&format!("layers/{}", chain.hex()));
        match self.dir.rename(tmp, &target) {
            Ok(()) => Ok(meta),
            // Another loader unpacked the same layer meanwhile: theirs is as good.
            Err(_) if self.has_layer(chain) => {
                self.dir
                    .remove_dir_all(tmp)
                    .map_err(io_ctx(format!("removing {}", tmp.display())))?;
                Ok(meta)
            }
            Err(e) => Err(io_ctx(format!("moving the layer to {}", target.display()))(
                e,
            )),
        }
    }

    /// Record an image whose config and layers are in the store.
    pub fn add_image(&self, record: ImageRecord, scope: &Scope) -> Result<ImageRecord, StoreError> {
        for layer in &record.layers {
            if !self.has_layer(&layer.chain_id) {
                return Err(StoreError::Invalid(format!(
                    "layer {} of image {} is not in the store",
                    layer.diff_id, record.id
                )));
            }
        }
        self.update_index(|index| Ok(index.add(record, scope).clone()))
    }

    /// The config and layer directories of an image a lab sees.
    pub fn prepare(&self, query: &Query, lab: Option<&str>) -> Result<PreparedImage, StoreError> {
        let record = self.find(query, lab)?;
        let config_bytes = self.blob(&record.id)?;
        let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::Invalid(format!("image config {}: {e}", record.id)))?;
        let layer_dirs = record
            .layers
            .iter()
            .map(|l| self.layer_fs(&l.chain_id))
            .collect();
        Ok(PreparedImage {
            record,
            config,
            layer_dirs,
        })
    }

    /// Keep an image's layers while a container uses them: `gc` and `rm` leave a leased
    /// image's layers in place. `name` is the container's ID.
    pub fn lease(&self, name: &str, image: &Digest) -> Result<(), StoreError> {
        let path = self.lease_path(name)?;
        let body = serde_json::to_vec(&serde_json::json!({ "image": image })).expect("serialises");
        self.dir
            .write_atomic_mode(&path, &body, 0o600)
            .map_err(io_ctx(format!("writing {}", path.display())))
    }

    /// End a lease.
    pub fn release(&self, name: &str) -> Result<(), StoreError> {
        let path = self.lease_path(name)?;
        self.dir
            .remove_file(&path)
            .map_err(io_ctx(format!("removing {}", path.display())))
    }

    fn lease_path(&self, name: &str) -> Result<PathBuf, StoreError> {
        let plain = !name.is_empty()
            && name.len() <= 200
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.starts_with('.');
        if !plain {
            return Err(StoreError::Invalid(format!("{name:?} cannot name a lease")));
        }
        Ok(self.path(&format!("leases/{name}.json")))
    }

    fn leased_images(&self) -> Result<BTreeSet<Digest>, StoreError> {
        #[derive(Deserialize)]
        struct Lease {
            image: Digest,
        }
        let dir = self.path("leases");
        let mut out = BTreeSet::new();
        for entry in
            std::fs::read_dir(&dir).map_err(io_ctx(format!("reading {}", dir.display())))?
        {
            let entry = entry.map_err(io_ctx("reading leases"))?;
            if let Ok(bytes) = std::fs::read(entry.path())
                && let Ok(lease) = serde_json::from_slice::<Lease>(&bytes)
            {
                out.insert(lease.image);
            }
        }
        Ok(out)
    }

    /// Remove an image (see [`Index::remove`]), then the layers no image needs any more.
    pub fn remove(
        &self,
        query: &Query,
        lab: Option<&str>,
    ) -> Result<(Removal, GcReport), StoreError> {
        let _guard = self.lock_exclusive()?;
        let removal = self.update_index(|index| Ok(index.remove(query, lab)?))?;
        let report = self.collect(false)?;
        Ok((removal, report))
    }

    /// Garbage collection: images without a name (replaced by a newer image of the same
    /// name, or loaded without one) unless a container uses them, then every layer, blob and
    /// temporary file no image needs.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _guard = self.lock_exclusive()?;
        self.collect(true)
    }

    /// Remove every layer, blob and temporary file no image or lease needs (what `rm` does
    /// after removing an image), waiting for adders to finish first.
    pub fn discard_unreferenced(&self) -> Result<GcReport, StoreError> {
        let _guard = self.lock_exclusive()?;
        self.collect(false)
    }

    /// The body of `gc` and `rm`; the caller holds the exclusive lock, so no adder is
    /// running and everything in `tmp/` is left over from a crash.
    fn collect(&self, dangling: bool) -> Result<GcReport, StoreError> {
        let leased = self.leased_images()?;
        let mut report = GcReport::default();
        let index = self.update_index(|index| {
            if dangling {
                index.images.retain(|r| {
                    let keep =
                        !r.names.is_empty() || !r.repo_digests.is_empty() || leased.contains(&r.id);
                    if !keep {
                        report.images.push(r.id.clone());
                    }
                    keep
                });
            }
            Ok(index.clone())
        })?;
        let mut chains = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for record in &index.images {
            chains.extend(record.layers.iter().map(|l| l.chain_id.hex().to_string()));
            blobs.insert(record.id.hex().to_string());
            blobs.extend(record.manifests.iter().map(|m| m.hex().to_string()));
        }
        // A leased image that was removed from the index still needs its layers: they are
        // found through its config, which is kept too.
        for id in &leased {
            if blobs.contains(id.hex()) {
                continue;
            }
            if let Ok(bytes) = self.blob(id)
                && let Ok(config) =
                    serde_json::from_slice::<oci_spec::image::ImageConfiguration>(&bytes)
            {
                let diffs: Vec<Digest> = config
                    .rootfs()
                    .diff_ids()
                    .iter()
                    .filter_map(|d| Digest::parse(d).ok())
                    .collect();
                chains.extend(
                    digest::chain_ids(&diffs)
                        .iter()
                        .map(|c| c.hex().to_string()),
                );
                blobs.insert(id.hex().to_string());
            }
        }
        for entry in self.list("layers")? {
            if chains.contains(&entry) {
                continue;
            }
            let Some(chain) = Digest::from_hex(&entry) else {
                continue;
            };
            if let Some(meta) = self.layer_meta(&chain) {
                report.bytes += meta.file_bytes;
            }
            let path = self.path(&format!("layers/{entry}"));
            self.dir
                .remove_dir_all(&path)
                .map_err(io_ctx(format!("removing {}", path.display())))?;
            report.layers.push(chain);
        }
        for entry in self.list("blobs")? {
            if blobs.contains(&entry) || Digest::from_hex(&entry).is_none() {
                continue;
            }
            let path = self.path(&format!("blobs/{entry}"));
            self.dir
                .remove_file(&path)
                .map_err(io_ctx(format!("removing {}", path.display())))?;
            report.blobs += 1;
        }
        for entry in self.list("tmp")? {
            let path = self.path(&format!("tmp/{entry}"));
            self.dir
                .remove_dir_all(&path)
                .or_else(|_| self.dir.remove_file(&path))
                .map_err(io_ctx(format!("removing {}", path.display())))?;
        }
        Ok(report)
    }

    fn list(&self, sub: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.path(sub);
        let mut out = Vec::new();
        for entry in
            std::fs::read_dir(&dir).map_err(io_ctx(format!("reading {}", dir.display())))?
        {
            let entry = entry.map_err(io_ctx(format!("reading {}", dir.display())))?;
            if let Ok(name) = entry.file_name().into_string() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// A temporary file inside the store (for a download or a decompressed archive),
    /// removed when dropped.
    pub fn temp_file(&self, what: &str) -> Result<TempFile, StoreError> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.path(&format!("tmp/{what}.{}.{n}", std::process::id()));
        self.dir
            .write_mode(&path, b"", 0o600)
            .map_err(io_ctx(format!("creating {}", path.display())))?;
        Ok(TempFile {
            dir: self.dir.clone(),
            path,
        })
    }

    /// The layers of an image, for a record.
    pub fn layer_refs(diff_ids: &[Digest]) -> Vec<LayerRef> {
        diff_ids
            .iter()
            .zip(digest::chain_ids(diff_ids))
            .map(|(diff_id, chain_id)| LayerRef {
                diff_id: diff_id.clone(),
                chain_id,
            })
            .collect()
    }

    /// The unpacked size of an image's layers.
    pub fn unpacked_bytes(&self, record: &ImageRecord) -> u64 {
        record
            .layers
            .iter()
            .filter_map(|l| self.layer_meta(&l.chain_id))
            .map(|m| m.file_bytes)
            .sum()
    }
}

/// A file in the store's `tmp/`, removed on drop.
pub struct TempFile {
    dir: OwnedDir,
    pub path: PathBuf,
}

impl TempFile {
    pub fn open(&self) -> io::Result<BufReader<File>> {
        Ok(BufReader::with_capacity(1 << 20, File::open(&self.path)?))
    }

    pub fn create(&self) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.path);
    }
}
