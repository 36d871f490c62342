//! What the Docker runtime asks the engine for, as pure data: container names, the labels
//! that mark kemu's own containers, and the create bodies of a pod's sandbox and of its
//! containers (dockershim's layout: a sandbox without networking of its own whose network
//! namespace the kubelet wires, the pod's containers joining it with `container:<sandbox>`).

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};

use crate::images::BuiltinImage;
use crate::runtime::{ContainerConfig, PodIdentity, RuntimeError, SandboxInfo};

/// Every kemu container carries these labels; a container without `LAB` = the lab's name is
/// never touched.
pub const LAB: &str = "io.kemu.lab";
pub const NODE: &str = "io.kemu.node";
pub const KIND: &str = "io.kemu.kind";
pub const POD_UID: &str = "io.kemu.pod.uid";
pub const POD_NAME: &str = "io.kemu.pod.name";
pub const POD_NAMESPACE: &str = "io.kemu.pod.namespace";
pub const CONTAINER: &str = "io.kemu.container";
pub const ATTEMPT: &str = "io.kemu.attempt";
pub const IMAGE: &str = "io.kemu.image";

/// `KIND` of a pod's sandbox container, and of the pod's own containers.
pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";

/// The image built-in images and sandboxes run in: an empty root filesystem that kemu
/// imports into the engine (nothing is pulled); the kemu binary is bind-mounted into it.
pub const BASE_IMAGE: &str = "kemu/empty:1";
/// Where the kemu binary appears inside such containers.
pub const KEMU_IN_CONTAINER: &str = "/kemu";

/// What identifies a pod's containers in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner<'a> {
    pub lab: &'a str,
    pub node: &'a str,
}

/// A name the engine accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`): other characters become `-`.
fn clean(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The engine's name of a container, as dockershim's `k8s_<container>_<pod>_<ns>_<uid>_<n>`
/// with the lab first: `kemu_<lab>_<container>_<pod>_<namespace>_<uid>_<attempt>`. The
/// sandbox's container name is `POD`.
pub fn container_name(lab: &str, container: &str, sandbox: &PodIdentity, attempt: u32) -> String {
    format!(
        "kemu_{}_{}_{}_{}_{}_{attempt}",
        clean(lab),
        clean(container),
        clean(&sandbox.pod_name),
        clean(&sandbox.namespace),
        clean(&sandbox.pod_uid),
    )
}

fn labels(
    owner: &Owner<'_>,
    sandbox: &PodIdentity,
    kind: &str,
    container: &str,
    attempt: u32,
    image: &str,
) -> HashMap<String, String> {
    [
        (LAB, owner.lab),
        (NODE, owner.node),
        (KIND, kind),
        (POD_UID, &sandbox.pod_uid),
        (POD_NAME, &sandbox.pod_name),
        (POD_NAMESPACE, &sandbox.namespace),
        (CONTAINER, container),
        (ATTEMPT, &attempt.to_string()),
        (IMAGE, image),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The label filters that list the containers of one node of a lab.
pub fn node_filters(owner: &Owner<'_>) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LAB}={}", owner.lab),
            format!("{NODE}={}", owner.node),
        ],
    )])
}

/// The label filter that lists every container of a lab (what `kemu down` removes).
pub fn lab_filters(lab: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{LAB}={lab}")])])
}

/// A pod's sandbox: the built-in pause program, the pod's hostname, networking `none` (the
/// kubelet wires the namespace the engine makes for it through `/proc/<pid>/ns/net`).
pub fn sandbox_body(
    owner: &Owner<'_>,
    sandbox: &PodIdentity,
    kemu_exe: &Path,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(BASE_IMAGE.into()),
        entrypoint: Some(vec![
            KEMU_IN_CONTAINER.into(),
            "builtin-image".into(),
            "pause".into(),
        ]),
        hostname: Some(sandbox.hostname.clone()),
        labels: Some(labels(owner, sandbox, KIND_SANDBOX, "POD", 0, "kemu/pause")),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            // Shared with the pod's containers, as the kubelet does with Docker.
            ipc_mode: Some("shareable".into()),
            binds: Some(vec![kemu_bind(kemu_exe)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn kemu_bind(kemu_exe: &Path) -> String {
    format!("{}:{KEMU_IN_CONTAINER}:ro", kemu_exe.display())
}

/// Where a container's image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// The engine has the image (the user built or loaded it).
    Engine,
    /// The engine does not, but kemu has it built in: it runs from the kemu binary.
    Builtin(BuiltinImage),
}

/// A container of the pod, joined to its sandbox's network and IPC namespaces, with the
/// pod's `/etc/hosts` and `/etc/resolv.conf` (files under `files_dir`), its emptyDir
/// volumes and the securityContext's user, groups and capabilities. `command:` replaces the
/// image's entrypoint and `args:` its cmd, as Kubernetes specifies.
#[allow(clippy::too_many_arguments)]
pub fn container_body(
    owner: &Owner<'_>,
    sandbox: &SandboxInfo,
    container: &ContainerConfig,
    attempt: u32,
    sandbox_id: &str,
    source: ImageSource,
    files_dir: &Path,
    kemu_exe: &Path,
) -> ContainerCreateBody {
    let mut binds = vec![
        format!("{}:/etc/hosts", files_dir.join("hosts").display()),
        format!(
            "{}:/etc/resolv.conf",
            files_dir.join("resolv.conf").display()
        ),
    ];
    for m in &container.volume_mounts {
        let mode = if m.read_only { ":ro" } else { "" };
        binds.push(format!("{}:{}{mode}", m.source.display(), m.target));
    }
    let (image, entrypoint, cmd) = match source {
        ImageSource::Engine => {
            let entrypoint = (!container.command.is_empty()).then(|| container.command.clone());
            // With a command, args alone are the cmd (even none); otherwise the image's cmd
            // stays unless args are given.
            let cmd = if entrypoint.is_some() || !container.args.is_empty() {
                Some(container.args.clone())
            } else {
                None
            };
            (container.image.clone(), entrypoint, cmd)
        }
        ImageSource::Builtin(image) => {
            binds.push(kemu_bind(kemu_exe));
            let mut argv = vec![KEMU_IN_CONTAINER.to_string()];
            argv.extend(
                crate::runtime::process::spec::builtin_argv(image, sandbox, container)
                    .into_iter()
                    .skip(1),
            );
            (BASE_IMAGE.to_string(), Some(argv), Some(Vec::new()))
        }
    };
    let security = &container.security;
    let user = match (security.run_as_user, security.run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => Some(format!("0:{g}")),
        (None, None) => None,
    };
    let network = format!("container:{sandbox_id}");
    ContainerCreateBody {
        image: Some(image),
        entrypoint,
        cmd,
        env: Some(
            container
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        working_dir: container.working_dir.clone(),
        user,
        labels: Some(labels(
            owner,
            &sandbox.identity(),
            KIND_CONTAINER,
            &container.name,
            attempt,
            &container.image,
        )),
        host_config: Some(HostConfig {
            network_mode: Some(network.clone()),
            ipc_mode: Some(network),
            binds: Some(binds),
            privileged: Some(security.privileged),
            cap_add: non_empty(&security.capabilities_add),
            cap_drop: non_empty(&security.capabilities_drop),
            group_add: non_empty(
                &security
                    .supplemental_groups
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn non_empty(list: &[String]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.to_vec())
}

/// The error for an image the engine lacks and kemu has not built in.
pub fn missing_image(container: &ContainerConfig) -> RuntimeError {
    RuntimeError::NotInEngine {
        image: container.image.clone(),
        container: container.name.clone(),
        builtin: crate::images::builtin_list(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{SecurityContext, VolumeMount};

    fn sandbox() -> SandboxInfo {
        SandboxInfo {
            pod_name: "nginx-controller-x7k2p".into(),
            namespace: "default".into(),
            pod_uid: "5d1c7e2a-0000-4000-8000-000000000001".into(),
            netns_path: "/run/netns/kemu-seed-pod-0a1b2c3d4e".into(),
            hostname: "nginx-controller-x7k2p".into(),
            pod_dir: "/run/kemu/seed/hosts/h/kubelet/pods/5d1c".into(),
            etc_hosts: String::new(),
            resolv_conf: String::new(),
        }
    }

    const OWNER: Owner<'static> = Owner {
        lab: "seed",
        node: "192.168.0.202",
    };

    fn body(container: &ContainerConfig, source: ImageSource) -> ContainerCreateBody {
        container_body(
            &OWNER,
            &sandbox(),
            container,
            2,
            "0123abcd",
            source,
            Path::new("/pods/5d1c/docker"),
            Path::new("/usr/local/bin/kemu"),
        )
    }

    /// A create body as the engine receives it, maps sorted (labels are a HashMap).
    fn snapshot(name: &str, body: ContainerCreateBody) {
        let mut settings = crate::testing::snapshot_settings();
        settings.set_sort_maps(true);
        let json = serde_json::to_value(body).unwrap();
        settings.bind(|| insta::assert_yaml_snapshot!(name, json));
    }

    #[test]
    fn names_follow_dockershim_with_the_lab_first() {
        assert_eq!(
            container_name("seed", "nginx", &sandbox().identity(), 3),
            "kemu_seed_nginx_nginx-controller-x7k2p_default_5d1c7e2a-0000-4000-8000-000000000001_3"
        );
    }

    #[test]
    fn sandbox_has_no_network_of_its_own() {
        let body = sandbox_body(
            &OWNER,
            &sandbox().identity(),
            Path::new("/usr/local/bin/kemu"),
        );
        snapshot("docker_sandbox", body);
    }

    #[test]
    fn engine_image_with_command_args_user_and_volumes() {
        let c = ContainerConfig {
            name: "web".into(),
            image: "kemu-test/nginx:1".into(),
            command: vec!["/bin/server".into()],
            args: vec!["--port".into(), "80".into()],
            env: vec![("A".into(), "1".into())],
            working_dir: Some("/srv".into()),
            security: SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                supplemental_groups: vec![5],
                privileged: false,
                capabilities_add: vec!["NET_ADMIN".into()],
                capabilities_drop: vec![],
            },
            volume_mounts: vec![VolumeMount {
                source: "/pods/5d1c/volumes/cache".into(),
                target: "/cache".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        snapshot("docker_container_engine", body(&c, ImageSource::Engine));
    }

    #[test]
    fn image_defaults_stay_without_command_and_args() {
        let c = ContainerConfig {
            name: "web".into(),
            image: "kemu-test/nginx:1".into(),
            ..Default::default()
        };
        let b = body(&c, ImageSource::Engine);
        assert_eq!((b.entrypoint, b.cmd, b.user), (None, None, None));
        let with_args = ContainerConfig {
            args: vec!["-v".into()],
            ..c
        };
        let b = body(&with_args, ImageSource::Engine);
        assert_eq!((b.entrypoint, b.cmd), (None, Some(vec!["-v".to_string()])));
    }

    #[test]
    fn builtin_image_runs_from_the_kemu_binary() {
        let c = ContainerConfig {
            name: "nginx".into(),
            image: "nginx".into(),
            ..Default::default()
        };
        let b = body(&c, ImageSource::Builtin(BuiltinImage::Nginx));
        assert_eq!(b.image.as_deref(), Some(BASE_IMAGE));
        let entry = b.entrypoint.unwrap();
        assert_eq!(entry[..3], ["/kemu", "builtin-image", "nginx"]);
        assert!(
            b.host_config
                .unwrap()
                .binds
                .unwrap()
                .contains(&"/usr/local/bin/kemu:/kemu:ro".to_string())
        );
    }
}
