//! Image references as kubelet and containerd read them: `nginx` is
//! `docker.io/library/nginx:latest`, a digest pins the content, and a string the docker
//! reference grammar rejects is an `InvalidImageName`. Parsing is oci-spec's port of the
//! docker/distribution grammar.

pub use oci_client::Reference;

use crate::images::store::index::Query;

/// Parse an image reference (docker's normalisation: default registry `docker.io`, the
/// `library/` namespace for single names, tag `latest` when neither tag nor digest is given).
pub fn parse(image: &str) -> Result<Reference, oci_client::ParseError> {
    Reference::try_from(image)
}

/// The fully qualified form kemu stores names in: `docker.io/library/nginx:latest`.
pub fn normalize(image: &str) -> Result<String, String> {
    parse(image)
        .map(|r| r.whole())
        .map_err(|e| format!("couldn't parse image name {image:?}: {e}"))
}

/// How a user names an image on the command line: an image ID (`sha256:<hex>`, or 12 to 64
/// hex digits, as docker accepts) or a reference.
pub fn query(text: &str) -> Result<Query, String> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    let is_hex = hex.len() >= 12
        && hex.len() <= 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_hex && (text.starts_with("sha256:") || parse(text).is_ok()) {
        return Ok(Query::Id(hex.to_string()));
    }
    normalize(text).map(Query::Name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_normalisation() {
        assert_eq!(
            normalize("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            normalize("nginx:1.27").unwrap(),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(
            normalize("192.168.0.100:5000/kemu/hello:1").unwrap(),
            "192.168.0.100:5000/kemu/hello:1"
        );
        let d = format!("sha256:{}", "f".repeat(64));
        assert_eq!(
            normalize(&format!("reg:5000/a@{d}")).unwrap(),
            format!("reg:5000/a@{d}")
        );
        let err = normalize("Nginx:1").unwrap_err();
        assert_eq!(
            err,
            "couldn't parse image name \"Nginx:1\": invalid reference format"
        );
    }

    #[test]
    fn ids_and_names() {
        let hex = "0123456789ab".repeat(5) + "cdef";
        assert_eq!(
            query(&format!("sha256:{hex}")).unwrap(),
            Query::Id(hex.clone())
        );
        assert_eq!(query(&hex[..12]).unwrap(), Query::Id(hex[..12].to_string()));
        assert_eq!(
            query("busybox").unwrap(),
            Query::Name("docker.io/library/busybox:latest".into())
        );
        // Too short to be an ID: a name.
        assert_eq!(
            query("abcdef").unwrap(),
            Query::Name("docker.io/library/abcdef:latest".into())
        );
    }
}
