//! Pulling an image from a registry into the store with oci-client (the OCI distribution
//! protocol: token or basic auth, manifest lists resolved to this machine's platform, blobs
//! checked against their digests). Layers already in the store are not downloaded again.
//!
//! The network is the calling thread's: a pull for a lab host runs on a thread that entered
//! that host's network namespace (see `kemu image pull --node`).
//!
//! Errors read as containerd's do (the kubelet shows them after `Failed to pull image "…": `).

use std::collections::BTreeSet;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::images::store::digest::{Digest, chain_ids};
use crate::images::store::index::{ImageRecord, Scope};
use crate::images::store::{Store, StoreError};

use super::keyring::Credentials;

/// How registries are reached.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host:port`) spoken to over plain HTTP, like containerd's
    /// `config_path` hosts with `http://` or Docker's insecure registries.
    pub plain_http: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            plain_http: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A failed pull, in containerd's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PullError(pub String);

/// The gRPC status code containerd's CRI plugin gives a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NotFound,
    Unknown,
}

/// `rpc error: code = … desc = failed to pull and unpack image "<ref>": <detail>`. Pure.
pub fn containerd_message(code: Code, full: &str, detail: &str) -> String {
    let code = match code {
        Code::NotFound => "NotFound",
        Code::Unknown => "Unknown",
    };
    format!("rpc error: code = {code} desc = failed to pull and unpack image \"{full}\": {detail}")
}

/// containerd's wording for a failure to fetch the manifest. Pure.
pub fn resolve_failure(full: &str, err: &OciDistributionError) -> String {
    let resolve = |detail: String| format!("failed to resolve reference \"{full}\": {detail}");
    let not_found =
        || containerd_message(Code::NotFound, full, &resolve(format!("{full}: not found")));
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) =>
        {
            not_found()
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::UnauthorizedError { url } => containerd_message(
            Code::Unknown,
            full,
            &resolve(format!(
                "unexpected status from GET request to {url}: 401 Unauthorized"
            )),
        ),
        OciDistributionError::RequestError(e) => containerd_message(
            Code::Unknown,
            full,
            &resolve(format!("failed to do request: {e}")),
        ),
        other => containerd_message(Code::Unknown, full, &resolve(other.to_string())),
    }
}

/// The client for one pull attempt (credentials are cached per client, and each set of
/// credentials is tried afresh).
fn client(options: &RegistryOptions) -> Client {
    // oci-client's TLS is rustls without a provider: kemu's is ring.
    let _ = crate::lab::forward::crypto_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(options.plain_http.clone()),
        connect_timeout: Some(options.connect_timeout),
        read_timeout: Some(options.read_timeout),
        ..ClientConfig::default()
    })
}

/// Pull `image` (as the pod names it) with `creds` (anonymous when `None`) and record it
/// for `scope`. Returns the image and its content size.
pub async fn pull(
    store: &Store,
    image: &str,
    scope: &Scope,
    creds: Option<&Credentials>,
    options: &RegistryOptions,
) -> Result<ImageRecord, PullError> {
    let reference = Reference::try_from(image)
        .map_err(|e| PullError(format!("couldn't parse image name {image:?}: {e}")))?;
    let full = reference.whole();
    let fail = |detail: String| PullError(containerd_message(Code::Unknown, &full, &detail));
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let client = client(options);
    let (manifest, manifest_digest) = client
        .pull_image_manifest(&reference, &auth)
        .await
        .map_err(|e| PullError(resolve_failure(&full, &e)))?;

    let mut config_bytes = Vec::new();
    client
        .pull_blob(&reference, &manifest.config, &mut config_bytes)
        .await
        .map_err(|e| {
            fail(format!(
                "failed to fetch config {}: {e}",
                manifest.config.digest
            ))
        })?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| fail(format!("invalid image config: {e}")))?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| fail(format!("invalid image config: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(fail(format!(
            "the manifest has {} layers but the config {}",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(&diff_ids);
    let manifest_digest =
        Digest::parse(&manifest_digest).map_err(|e| fail(format!("manifest digest: {e}")))?;

    let store_err = |e: StoreError| fail(e.to_string());
    let _shared = store.lock_shared().map_err(store_err)?;
    let mut size = config_bytes.len() as u64;
    for (i, layer) in manifest.layers.iter().enumerate() {
        size += layer.size.max(0) as u64;
        if store.has_layer(&chains[i]) {
            continue;
        }
        let temp = store.temp_file("layer").map_err(store_err)?;
        let file = temp
            .create()
            .map_err(|e| fail(format!("failed to write layer {}: {e}", layer.digest)))?;
        client
            .pull_blob(&reference, layer, tokio::fs::File::from_std(file))
            .await
            .map_err(|e| fail(format!("failed to copy: {} {e}", layer.digest)))?;
        let (store2, diff, chain, parents) = (
            store.clone(),
            diff_ids[i].clone(),
            chains[i].clone(),
            chains[..i].to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            let reader = temp.open()?;
            store2
                .add_layer(reader, &diff, &chain, &parents)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("failed to extract layer {}: {e}", diff_ids[i])))?;
    }
    store.put_blob(&config_bytes).map_err(store_err)?;
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    let names: BTreeSet<String> = reference
        .tag()
        .filter(|_| reference.digest().is_none())
        .map(|_| full.clone())
        .into_iter()
        .collect();
    let record = ImageRecord {
        id: Digest::of(&config_bytes),
        names,
        repo_digests: BTreeSet::from([format!("{repository}@{manifest_digest}")]),
        manifests: BTreeSet::new(),
        labs: None,
        layers: Store::layer_refs(&diff_ids),
        size,
        added: jiff::Timestamp::now(),
    };
    store.add_image(record, scope).map_err(store_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_wording() {
        let full = "192.168.0.100:5000/kemu/hello:nope";
        let err = OciDistributionError::RegistryError {
            envelope: serde_json::from_str(
                r#"{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}"#,
            )
            .unwrap(),
            url: "http://x".into(),
        };
        assert_eq!(
            resolve_failure(full, &err),
            "rpc error: code = NotFound desc = failed to pull and unpack image \
             \"192.168.0.100:5000/kemu/hello:nope\": failed to resolve reference \
             \"192.168.0.100:5000/kemu/hello:nope\": 192.168.0.100:5000/kemu/hello:nope: not found"
        );
        let unauthorized = OciDistributionError::UnauthorizedError {
            url: "http://192.168.0.100:5000/v2/kemu/hello/manifests/1".into(),
        };
        assert!(resolve_failure(full, &unauthorized).ends_with(
            "unexpected status from GET request to http://192.168.0.100:5000/v2/kemu/hello/manifests/1: 401 Unauthorized"
        ));
    }
}
