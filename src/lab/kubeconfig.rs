//! kubeconfig entries for a lab, the way kind does it: `kemu up` adds a cluster, user and
//! context named `kemu-<lab>` (server `http://127.0.0.1:<forwarded port>`) to the user's
//! kubeconfig (`$KUBECONFIG`'s first file, else `~/.kube/config`) and makes it current, so plain
//! `kubectl get nodes` works; `kemu down` removes them. A standalone copy is kept in the lab's
//! state directory. Updates take a lock file, as kubectl does, since labs go up in parallel.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

/// The kubeconfig file kemu edits.
pub fn default_path() -> Option<PathBuf> {
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return Some(first);
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("config"))
}

/// The context (and cluster and user) name of a lab.
pub fn context_name(lab: &str) -> String {
    format!("kemu-{lab}")
}

/// A kubeconfig holding only this lab.
pub fn standalone(lab: &str, server: &str) -> String {
    let mut config = empty();
    upsert(&mut config, lab, server);
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

fn upsert(config: &mut Value, lab: &str, server: &str) {
    let name = context_name(lab);
    let put = |list: &mut Vec<Value>, entry: Value| {
        list.retain(|e| e["name"] != name.as_str());
        list.push(entry);
    };
    put(
        entries(config, "clusters"),
        json!({"name": name, "cluster": {"server": server}}),
    );
    put(entries(config, "users"), json!({"name": name, "user": {}}));
    put(
        entries(config, "contexts"),
        json!({"name": name, "context": {"cluster": name, "user": name}}),
    );
    config["current-context"] = json!(name);
}

fn remove(config: &mut Value, lab: &str) {
    let name = context_name(lab);
    for key in ["clusters", "users", "contexts"] {
        entries(config, key).retain(|e| e["name"] != name.as_str());
    }
    if config["current-context"] == name.as_str() {
        config["current-context"] = json!("");
    }
}

/// Read-modify-write `path` under `path.lock`.
fn edit(path: &Path, change: impl FnOnce(&mut Value)) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let lock_path = path.with_extension("kemu.lock");
    let lock = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&lock_path)?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("lock {}: {e}", lock_path.display()))?;
    let mut config = match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => serde_saphyr::from_str::<Value>(&text)
            .with_context(|| format!("parse the kubeconfig {}", path.display()))?,
        Ok(_) => empty(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    change(&mut config);
    let text = serde_saphyr::to_string(&config)?;
    crate::fsguard::parent_of(path)?
        .write_atomic(path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// Add the lab to `path` and make it the current context.
pub fn add(path: &Path, lab: &str, server: &str) -> anyhow::Result<()> {
    edit(path, |config| upsert(config, lab, server))
}

/// Remove the lab from `path` (a missing file or entry is fine).
pub fn forget(path: &Path, lab: &str) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    edit(path, |config| remove(config, lab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_forget_keep_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: https://10.0.0.1:6443}\ncontexts:\n- name: other\n  context: {cluster: other, user: other}\nusers:\n- name: other\n  user: {}\ncurrent-context: other\n",
        )
        .unwrap();
        add(&path, "seed", "http://127.0.0.1:40000").unwrap();
        let config: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["current-context"], "kemu-seed");
        assert_eq!(config["clusters"].as_array().unwrap().len(), 2);
        assert_eq!(
            config["clusters"][1]["cluster"]["server"],
            "http://127.0.0.1:40000"
        );
        forget(&path, "seed").unwrap();
        let config: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["current-context"], "");
        assert_eq!(config["clusters"].as_array().unwrap().len(), 1);
        assert_eq!(config["clusters"][0]["name"], "other");
    }

    #[test]
    fn standalone_config_names_the_lab() {
        crate::testing::snapshot_settings().bind(|| {
            insta::assert_snapshot!(standalone("seed", "http://127.0.0.1:40000"));
        });
    }
}
