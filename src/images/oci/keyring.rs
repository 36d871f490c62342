//! Pull secrets as the kubelet reads them (`pkg/credentialprovider`): a
//! `kubernetes.io/dockerconfigjson` secret's `.dockerconfigjson` (`{"auths": {...}}`) or a
//! `kubernetes.io/dockercfg` secret's `.dockercfg` (the map itself). Each key is a registry,
//! optionally with a path (`registry.example/team`) and glob patterns in the host
//! (`*.example.com`); the credentials of every matching key are tried, most specific first.
//! Pure.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One set of credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// A pull secret's data, as the kubelet hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullSecret {
    /// `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` secret.
    DockerConfigJson(Vec<u8>),
    /// `.dockercfg` of a `kubernetes.io/dockercfg` secret.
    DockerCfg(Vec<u8>),
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// The credentials of a set of pull secrets, indexed by registry key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    /// Key (host, host:port or host/path) → credentials, in the order added.
    creds: BTreeMap<String, Vec<Credentials>>,
}

fn decode_entry(key: &str, e: Entry) -> Result<Credentials, String> {
    if e.auth.is_empty() {
        return Ok(Credentials {
            username: e.username,
            password: e.password,
        });
    }
    // `auth`, when present, wins (as in the kubelet's DockerConfigEntry).
    let raw = data_encoding::BASE64
        .decode(e.auth.as_bytes())
        .map_err(|_| {
            format!(
                "{key}: unable to parse auth field, must be formatted as base64(username:password)"
            )
        })?;
    let text = String::from_utf8(raw).map_err(|_| {
        format!("{key}: unable to parse auth field, must be formatted as base64(username:password)")
    })?;
    let (user, pass) = text.split_once(':').ok_or_else(|| {
        format!("{key}: unable to parse auth field, must be formatted as base64(username:password)")
    })?;
    Ok(Credentials {
        username: user.to_string(),
        password: pass.to_string(),
    })
}

/// The kubelet's key for a config entry: scheme dropped, `/v1/` or `/v2/` dropped, host plus
/// any other path.
fn key_of(location: &str) -> String {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = if path.starts_with("/v2/") || path.starts_with("/v1/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

/// Shell-style glob of one host label (`*`, `?`, `[...]` as Go's `filepath.Match`; `[`
/// classes are rare in registry names and are matched literally here).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

fn split_host(url: &str) -> (&str, &str, &str) {
    let (hostport, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (hostport, ""),
    };
    (host, port, path)
}

/// Whether a key (with globs in its host) matches an image's `registry/repository`.
fn key_matches(key: &str, image: &str) -> bool {
    let (khost, kport, kpath) = split_host(key);
    let (ihost, iport, ipath) = split_host(image);
    if kport != iport || !ipath.starts_with(kpath) {
        return false;
    }
    let kparts: Vec<&str> = khost.split('.').collect();
    let iparts: Vec<&str> = ihost.split('.').collect();
    kparts.len() == iparts.len()
        && kparts
            .iter()
            .zip(&iparts)
            .all(|(k, i)| glob(k.as_bytes(), i.as_bytes()))
}

/// Whether an image name (as written) pulls from Docker Hub.
fn is_default_registry(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some(("", _)) => false,
        Some((first, _)) => {
            first == "docker.io" || first == "index.docker.io" || !first.contains(['.', ':'])
        }
    }
}

impl Keyring {
    /// The keyring of a pod's pull secrets. A secret that does not parse is an error, as in
    /// the kubelet (the pull fails with it).
    pub fn from_secrets(secrets: &[PullSecret]) -> Result<Keyring, String> {
        let mut ring = Keyring::default();
        for secret in secrets {
            let entries: BTreeMap<String, Entry> = match secret {
                PullSecret::DockerConfigJson(bytes) => {
                    serde_json::from_slice::<ConfigJson>(bytes)
                        .map_err(|e| format!("reading .dockerconfigjson: {e}"))?
                        .auths
                }
                PullSecret::DockerCfg(bytes) => {
                    serde_json::from_slice(bytes).map_err(|e| format!("reading .dockercfg: {e}"))?
                }
            };
            for (location, entry) in entries {
                let creds = decode_entry(&location, entry)?;
                ring.creds.entry(key_of(&location)).or_default().push(creds);
            }
        }
        Ok(ring)
    }

    /// The credentials to try for an image repository (`registry/repository`, e.g.
    /// `docker.io/library/nginx`), most specific key first.
    pub fn lookup(&self, repository: &str) -> Vec<Credentials> {
        let mut out = Vec::new();
        // Reverse order: `quay.io/coreos` before `quay.io`.
        for (key, creds) in self.creds.iter().rev() {
            if key_matches(key, repository) {
                out.extend(creds.iter().cloned());
            }
        }
        if out.is_empty()
            && is_default_registry(repository)
            && let Some(creds) = self.creds.get("index.docker.io")
        {
            out.extend(creds.iter().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Keyring {
        Keyring::from_secrets(&[PullSecret::DockerConfigJson(json.as_bytes().to_vec())]).unwrap()
    }

    fn users(ring: &Keyring, image: &str) -> Vec<String> {
        ring.lookup(image).into_iter().map(|c| c.username).collect()
    }

    #[test]
    fn auth_field_wins_and_is_base64_user_colon_password() {
        let auth = data_encoding::BASE64.encode(b"alice:s3:cret");
        let ring = cfg(&format!(
            r#"{{"auths": {{"reg.example:5000": {{"username": "x", "password": "y", "auth": "{auth}"}}}}}}"#
        ));
        assert_eq!(
            ring.lookup("reg.example:5000/team/app"),
            vec![Credentials {
                username: "alice".into(),
                password: "s3:cret".into()
            }]
        );
        let bad = Keyring::from_secrets(&[PullSecret::DockerConfigJson(
            br#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#.to_vec(),
        )]);
        assert!(bad.unwrap_err().contains("base64(username:password)"));
    }

    #[test]
    fn matching_is_by_host_port_and_path_prefix_most_specific_first() {
        let ring = cfg(r#"{"auths": {
            "https://quay.io/v2/": {"username": "host"},
            "quay.io/coreos": {"username": "path"},
            "*.example.com": {"username": "glob"},
            "192.168.0.100:5000": {"username": "lab"}
        }}"#);
        assert_eq!(users(&ring, "quay.io/coreos/etcd"), ["path", "host"]);
        assert_eq!(users(&ring, "quay.io/other/x"), ["host"]);
        assert_eq!(users(&ring, "a.example.com/x"), ["glob"]);
        // A glob matches one label only.
        assert!(users(&ring, "a.b.example.com/x").is_empty());
        assert_eq!(users(&ring, "192.168.0.100:5000/kemu/hello"), ["lab"]);
        // The port must match.
        assert!(users(&ring, "192.168.0.100/kemu/hello").is_empty());
        assert!(users(&ring, "192.168.0.100:5001/kemu/hello").is_empty());
    }

    #[test]
    fn docker_hub_credentials_and_dockercfg() {
        let ring = Keyring::from_secrets(&[PullSecret::DockerCfg(
            br#"{"https://index.docker.io/v1/": {"username": "hub", "password": "p"}}"#.to_vec(),
        )])
        .unwrap();
        assert_eq!(users(&ring, "docker.io/library/nginx"), ["hub"]);
        assert!(users(&ring, "ghcr.io/x/y").is_empty());
    }
}
