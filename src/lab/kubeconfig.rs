//! kubeconfig entries for a lab, the way kind does it: `kemu up` adds a cluster, user and
//! context named `kemu-<lab>` (server `https://127.0.0.1:<port>`, the lab's CA and client
//! certificate embedded) to the user's kubeconfig and makes it current, so plain
//! `kubectl get nodes` works; `kemu down` removes them and gives back the context that was
//! current before. A standalone copy is kept in the lab's state directory.
//!
//! A kubeconfig holds a private key: it is written mode 0600, and under `sudo` it belongs to
//! the user who ran sudo (`SUDO_UID`/`SUDO_GID`) and lives in their home, not root's. Updates
//! take a lock file, as kubectl does, since labs go up in parallel.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use data_encoding::BASE64;
use serde_json::{Value, json};

use super::pki::LabPki;

/// What a kubeconfig needs to reach a lab.
#[derive(Debug, Clone)]
pub struct Credentials<'a> {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub pki: &'a LabPki,
}

/// The user who ran kemu through sudo: their uid and gid, if kemu runs as root under sudo.
pub fn invoking_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid: u32 = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    (uid != 0).then_some((uid, gid))
}

/// The kubeconfig file kemu edits: `$KUBECONFIG`'s first file, else `~/.kube/config` of the
/// user who ran sudo (kind's users expect their own kubeconfig, not root's), else `$HOME`'s.
pub fn default_path() -> Option<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return Some(first);
    }
    if let Some((uid, _)) = invoking_user()
        && let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into())
    {
        return Some(user.dir.join(".kube").join("config"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("config"))
}

/// The context (and cluster and user) name of a lab.
pub fn context_name(lab: &str) -> String {
    format!("kemu-{lab}")
}

/// A kubeconfig holding only this lab.
pub fn standalone(lab: &str, creds: &Credentials) -> String {
    let mut config = empty();
    upsert(&mut config, lab, creds);
    serde_saphyr::to_string(&config).expect("kubeconfig serializes")
}

fn empty() -> Value {
    json!({"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": [], "users": [], "contexts": [], "current-context": ""})
}

fn entries<'a>(config: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !config[key].is_array() {
        config[key] = json!([]);
    }
    config[key].as_array_mut().expect("array")
}

/// Add or replace the lab's entries and make its context current; returns the context that
/// was current before (to give back on `down`).
fn upsert(config: &mut Value, lab: &str, creds: &Credentials) -> Option<String> {
    let name = context_name(lab);
    let put = |list: &mut Vec<Value>, entry: Value| {
        list.retain(|e| e["name"] != name.as_str());
        list.push(entry);
    };
    let b64 = |pem: &str| BASE64.encode(pem.as_bytes());
    put(
        entries(config, "clusters"),
        json!({"name": name, "cluster": {
            "server": creds.server,
            "certificate-authority-data": b64(&creds.pki.ca_cert),
        }}),
    );
    put(
        entries(config, "users"),
        json!({"name": name, "user": {
            "client-certificate-data": b64(&creds.pki.admin_cert),
            "client-key-data": b64(&creds.pki.admin_key),
        }}),
    );
    put(
        entries(config, "contexts"),
        json!({"name": name, "context": {"cluster": name, "user": name}}),
    );
    let previous = config["current-context"]
        .as_str()
        .filter(|c| !c.is_empty() && *c != name)
        .map(String::from);
    config["current-context"] = json!(name);
    previous
}

/// Remove the lab's entries; if its context is current, make `previous` current again when
/// that context still exists.
fn remove(config: &mut Value, lab: &str, previous: Option<&str>) {
    let name = context_name(lab);
    for key in ["clusters", "users", "contexts"] {
        entries(config, key).retain(|e| e["name"] != name.as_str());
    }
    if config["current-context"] == name.as_str() {
        let back = previous.filter(|p| entries(config, "contexts").iter().any(|c| c["name"] == *p));
        config["current-context"] = json!(back.unwrap_or(""));
    }
}

/// Who should own a kubeconfig kemu writes: whoever owns it already, else the user who ran
/// sudo, else kemu's own user (no change).
fn owner_for(path: &Path) -> Option<(u32, u32)> {
    match std::fs::metadata(path) {
        Ok(meta) => Some((meta.uid(), meta.gid())),
        Err(_) => invoking_user(),
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("give {} to uid {uid}", path.display()))?;
    }
    Ok(())
}

/// Read-modify-write `path` under `path.lock`, mode 0600, keeping (or giving) its owner.
fn edit<T>(path: &Path, change: impl FnOnce(&mut Value) -> T) -> anyhow::Result<T> {
    let owner = owner_for(path);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        chown(dir, owner)?;
    }
    let lock_path = path.with_extension("kemu.lock");
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)?;
    chown(&lock_path, owner)?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", lock_path.display()))?;
    let mut config = match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => serde_saphyr::from_str::<Value>(&text)
            .with_context(|| format!("parse the kubeconfig {}", path.display()))?,
        Ok(_) => empty(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let out = change(&mut config);
    let text = serde_saphyr::to_string(&config)?;
    let dir = crate::fsguard::parent_of(path)?;
    dir.write_atomic_mode(path, text.as_bytes(), 0o600)
        .with_context(|| format!("write {}", path.display()))?;
    chown(path, owner)?;
    Ok(out)
}

/// Write the lab's standalone kubeconfig (mode 0600, given to the user who ran sudo, so that
/// `kubectl --kubeconfig /run/kemu/<lab>/kubeconfig` works for them).
pub fn write_standalone(
    dir: &super::state::LabDir,
    lab: &str,
    creds: &Credentials,
) -> anyhow::Result<()> {
    let path = dir.kubeconfig();
    dir.owner
        .write_atomic_mode(&path, standalone(lab, creds).as_bytes(), 0o600)
        .with_context(|| format!("write {}", path.display()))?;
    chown(&path, invoking_user())
}

/// Add the lab to `path` and make it the current context; returns the context that was
/// current before.
pub fn add(path: &Path, lab: &str, creds: &Credentials) -> anyhow::Result<Option<String>> {
    edit(path, |config| upsert(config, lab, creds))
}

/// Point the lab's entries in `path` at a new endpoint (after `kemu repair` had to take
/// another port), leaving the current context as the user set it.
pub fn refresh(path: &Path, lab: &str, creds: &Credentials) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    edit(path, |config| {
        let current = config["current-context"].clone();
        upsert(config, lab, creds);
        config["current-context"] = current;
    })
}

/// Remove the lab from `path` (a missing file or entry is fine), making `previous` the
/// current context again if the lab's still was.
pub fn forget(path: &Path, lab: &str, previous: Option<&str>) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    edit(path, |config| remove(config, lab, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_pki() -> LabPki {
        LabPki {
            ca_cert: "CA CERT".into(),
            ca_key: "CA KEY".into(),
            server_cert: "SERVER CERT".into(),
            server_key: "SERVER KEY".into(),
            lab_server_cert: "LAB SERVER CERT".into(),
            lab_server_key: "LAB SERVER KEY".into(),
            admin_cert: "ADMIN CERT".into(),
            admin_key: "ADMIN KEY".into(),
        }
    }

    #[test]
    fn add_and_forget_keep_other_entries_and_give_back_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: https://10.0.0.1:6443}\ncontexts:\n- name: other\n  context: {cluster: other, user: other}\nusers:\n- name: other\n  user: {}\ncurrent-context: other\n",
        )
        .unwrap();
        let pki = fake_pki();
        let creds = Credentials {
            server: "https://127.0.0.1:40000".into(),
            pki: &pki,
        };
        let previous = add(&path, "seed", &creds).unwrap();
        assert_eq!(previous.as_deref(), Some("other"));
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "a kubeconfig with a key must be private");
        let config: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["current-context"], "kemu-seed");
        assert_eq!(config["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(
            config["clusters"][1]["cluster"]["server"],
            "https://127.0.0.1:40000"
        );
        assert_eq!(
            config["users"][1]["user"]["client-key-data"],
            BASE64.encode(b"ADMIN KEY")
        );
        forget(&path, "seed", previous.as_deref()).unwrap();
        let config: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["current-context"], "other");
        assert_eq!(config["clusters"].as_array().unwrap().len(), 1);
        assert_eq!(config["clusters"][0]["name"], "other");
    }

    #[test]
    fn a_context_switched_away_from_is_left_alone() {
        let mut config = empty();
        let pki = fake_pki();
        let creds = Credentials {
            server: "https://127.0.0.1:1".into(),
            pki: &pki,
        };
        upsert(&mut config, "seed", &creds);
        config["current-context"] = json!("mine");
        remove(&mut config, "seed", Some("other"));
        assert_eq!(config["current-context"], "mine");
        // A previous context that was deleted meanwhile is not restored.
        upsert(&mut config, "seed", &creds);
        remove(&mut config, "seed", Some("gone"));
        assert_eq!(config["current-context"], "");
    }

    #[test]
    fn standalone_config_names_the_lab() {
        let pki = fake_pki();
        let creds = Credentials {
            server: "https://127.0.0.1:40000".into(),
            pki: &pki,
        };
        crate::testing::snapshot_settings().bind(|| {
            insta::assert_snapshot!(standalone("seed", &creds));
        });
    }
}
