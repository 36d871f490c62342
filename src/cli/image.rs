//! `kemu image load|ls|rm|pull|gc`: the image store shared by all labs
//! (`/var/lib/kemu/images`, or `$KEMU_IMAGE_DIR`), in the manner of `kind load`, `crictl
//! images` / `crictl rmi` and `crictl pull`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};

use crate::images::manager::{EnsureRequest, EventType, ImageManager, PullPolicy};
use crate::images::oci::keyring::PullSecret;
use crate::images::oci::registry::RegistryOptions;
use crate::images::oci::{archive, reference};
use crate::images::store::index::{Removal, Scope};
use crate::images::store::{GcReport, Store};
use crate::topology::LabName;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load `docker save` archives and OCI image layouts (a directory or a tar, plain, gzip
    /// or zstd) into the store. Without --lab the images are there for every lab.
    Load {
        /// Make the images present for this lab only (a lab that is not up yet is fine).
        #[arg(long)]
        lab: Option<LabName>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the store's images.
    #[command(visible_alias = "list")]
    Ls {
        /// Only the images present for this lab.
        #[arg(long)]
        lab: Option<LabName>,
        /// Only the image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (by name or ID) and then every layer no image needs. With --lab, only
    /// take the images away from that lab.
    #[command(visible_alias = "rmi")]
    Rm {
        #[arg(long)]
        lab: Option<LabName>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Pull an image from a registry as a node's kubelet does, printing the kubelet's events.
    Pull {
        image: String,
        /// Pull for this lab (the image is then present for it only).
        #[arg(long)]
        lab: Option<LabName>,
        /// Pull over the emulated network, from this host of the lab (name or IP); without
        /// it the pull uses the machine's network.
        #[arg(long, requires = "lab")]
        node: Option<String>,
        /// imagePullPolicy (default: Always for `:latest` or no tag, else IfNotPresent).
        #[arg(long, value_enum)]
        policy: Option<Policy>,
        /// A pull secret: a `.dockerconfigjson` file (`{"auths": {...}}`, e.g.
        /// ~/.docker/config.json) or a `.dockercfg` one. May be repeated.
        #[arg(long = "pull-secret")]
        pull_secrets: Vec<PathBuf>,
        /// A registry (host:port) spoken to over plain HTTP. May be repeated.
        #[arg(long = "plain-http")]
        plain_http: Vec<String>,
    },
    /// Remove images without a name, and every layer, blob and leftover no image needs.
    Gc,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Policy {
    Always,
    IfNotPresent,
    Never,
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "kemu image {what} needs root: the store ({}) keeps image files with their owners and modes, readable by root only (run it with sudo)",
            Store::default_root().display()
        );
    }
    Ok(())
}

pub fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ImageCommand::Load { lab, files } => {
            need_root("load")?;
            let store = Store::open_default()?;
            let scope = scope_of(lab.as_ref());
            for file in &files {
                let records = archive::load(&store, file, &scope)
                    .map_err(|e| anyhow::anyhow!("loading {}: {e}", file.display()))?;
                for record in records {
                    if record.names.is_empty() {
                        println!("Loaded image ID: {}", record.id);
                    }
                    for name in &record.names {
                        println!("Loaded image: {name}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Ls { lab, quiet } => {
            need_root("ls")?;
            let store = Store::open_default()?;
            print!("{}", list(&store, lab.as_ref().map(|l| l.as_str()), quiet)?);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Rm { lab, images } => {
            need_root("rm")?;
            let store = Store::open_default()?;
            let mut failed = false;
            for image in &images {
                let query = reference::query(image).map_err(anyhow::Error::msg)?;
                match store.remove(&query, lab.as_ref().map(|l| l.as_str())) {
                    Ok((removal, report)) => {
                        match removal {
                            Removal::Untagged { name, .. } => println!("Untagged: {name}"),
                            Removal::LabRemoved { lab, id } => {
                                println!("Removed from lab {lab}: {id}")
                            }
                            Removal::Deleted { id, names } => {
                                for name in names {
                                    println!("Untagged: {name}");
                                }
                                println!("Deleted: {id}");
                            }
                        }
                        print_gc(&report);
                    }
                    Err(e) => {
                        eprintln!("kemu image rm {image}: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        ImageCommand::Gc => {
            need_root("gc")?;
            let store = Store::open_default()?;
            let report = store.gc()?;
            for id in &report.images {
                println!("Deleted: {id}");
            }
            print_gc(&report);
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Pull {
            image,
            lab,
            node,
            policy,
            pull_secrets,
            plain_http,
        } => {
            need_root("pull")?;
            pull(image, lab, node, policy, pull_secrets, plain_http)
        }
    }
}

fn scope_of(lab: Option<&LabName>) -> Scope {
    lab.map_or(Scope::AllLabs, |l| Scope::Lab(l.as_str().to_string()))
}

fn print_gc(report: &GcReport) {
    for layer in &report.layers {
        println!("Deleted layer: {layer}");
    }
    if !report.layers.is_empty() || report.blobs > 0 {
        println!(
            "Freed {} in {} layers and {} blobs",
            human_size(report.bytes),
            report.layers.len(),
            report.blobs
        );
    }
}

/// Sizes as crictl and docker print them (decimal units).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        let digits = format!("{value:.3}");
        let digits = digits.trim_end_matches('0').trim_end_matches('.');
        format!("{digits}{}", UNITS[unit])
    }
}

/// The table of `kemu image ls` (columns as `crictl images`, plus the labs).
fn list(store: &Store, lab: Option<&str>, quiet: bool) -> anyhow::Result<String> {
    let index = store.index()?;
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
        "LABS".into(),
    ]];
    let mut ids = Vec::new();
    for record in index.images.iter().filter(|r| r.for_lab(lab)) {
        ids.push(record.id.to_string());
        let labs = match &record.labs {
            None => "*".to_string(),
            Some(l) => l.iter().cloned().collect::<Vec<_>>().join(","),
        };
        let mut names: Vec<(String, String)> = record
            .names
            .iter()
            .map(|n| {
                let repo = crate::images::store::index::strip_tag(n);
                (
                    repo.to_string(),
                    n[repo.len()..].trim_start_matches(':').to_string(),
                )
            })
            .collect();
        if names.is_empty() {
            names = record
                .repo_digests
                .iter()
                .map(|d| {
                    (
                        d.split('@').next().unwrap_or(d).to_string(),
                        "<none>".into(),
                    )
                })
                .collect();
        }
        if names.is_empty() {
            names.push(("<none>".into(), "<none>".into()));
        }
        for (repo, tag) in names {
            rows.push([
                repo,
                tag,
                record.id.short().to_string(),
                human_size(record.size),
                labs.clone(),
            ]);
        }
    }
    if quiet {
        return Ok(ids.iter().map(|i| format!("{i}\n")).collect());
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn read_secret(path: &PathBuf) -> anyhow::Result<PullSecret> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
    Ok(if value.get("auths").is_some() {
        PullSecret::DockerConfigJson(bytes)
    } else {
        PullSecret::DockerCfg(bytes)
    })
}

fn pull(
    image: String,
    lab: Option<LabName>,
    node: Option<String>,
    policy: Option<Policy>,
    pull_secrets: Vec<PathBuf>,
    plain_http: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let secrets = pull_secrets
        .iter()
        .map(read_secret)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy = match policy {
        Some(Policy::Always) => PullPolicy::Always,
        Some(Policy::IfNotPresent) => PullPolicy::IfNotPresent,
        Some(Policy::Never) => PullPolicy::Never,
        None => PullPolicy::of(None, &image),
    };
    let store = Store::open_default()?;
    let manager = ImageManager::new(
        store,
        RegistryOptions {
            plain_http,
            ..RegistryOptions::default()
        },
    );
    let lab_name = lab.as_ref().map(|l| l.as_str().to_string());
    let run = || -> std::io::Result<_> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut events = Vec::new();
        let result = rt.block_on(manager.ensure(
            &EnsureRequest {
                pod_uid: "kemu-image-pull",
                image: &image,
                policy,
                pull_secrets: &secrets,
                lab: lab_name.as_deref(),
            },
            Instant::now(),
            &mut events,
        ));
        Ok((events, result))
    };
    let (events, result) = match (&lab, &node) {
        (Some(lab), Some(node)) => {
            let (_, record) = crate::lab::state::LabRecord::open(lab)?;
            let host = record.host(node)?;
            let ns = crate::netns::NetNs::open(&record.topology.host_namespace(host))?;
            ns.run(run)?
        }
        _ => run()?,
    };
    for e in &events {
        let kind = match e.event_type {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        println!("  {kind:<7}  {:<17}  {}", e.reason, e.message);
    }
    match result {
        Ok(image) => {
            println!("Image is up to date for {}", image.record.id);
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("{}: {}", failure.reason, failure.message);
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_crictl() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(7_812_345), "7.812MB");
        assert_eq!(human_size(52_430_000), "52.43MB");
    }
}
