//! The shim spec: everything `kemu container-shim` needs to start one container, written as
//! `spec.json` in the container's directory. `build_spec` makes it from the kubelet's
//! sandbox and container description; it is pure, so what a container gets (program, argv,
//! env, user, capabilities, mounts) is snapshot-tested.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::caps;
use super::userns::IdRange;
use crate::images::config::{Accounts, ContainerSide};
use crate::images::{self, BuiltinImage};
use crate::runtime::{ContainerConfig, RuntimeError, SandboxInfo, VolumeMount};

/// The user a container runs as when its securityContext names none.
pub const DEFAULT_USER: u32 = 65534;
/// PATH when the container sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to start one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub id: String,
    pub pod_name: String,
    pub namespace: String,
    pub pod_uid: String,
    pub container_name: String,
    pub attempt: u32,
    pub image: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The host uids and gids that the container's user namespace maps its ids 0.. onto.
    pub ids: IdRange,
    pub hostname: String,
    /// The container's directory (state files, log).
    pub dir: PathBuf,
    pub process: ProcessSpec,
    /// Applied in order by the container's first process, in its own mount namespace.
    pub mounts: Vec<MountStep>,
}

/// The container's main process (and the identity `exec` uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub program: Program,
    pub argv: Vec<String>,
    /// `NAME=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    /// The kemu binary (opened before the mounts change, so any path works).
    Kemu { exe: PathBuf },
    /// A host program, found through the container's PATH unless it contains a '/'.
    Host { name: String },
}

/// One step of the container's filesystem setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountStep {
    /// Stop mount events propagating to or from the host.
    MakePrivate,
    /// Remount every mount of the tree read-only (recursively, `mount_setattr`).
    ReadOnlyRoot,
    /// A fresh tmpfs (`nosuid,nodev`).
    Tmpfs {
        target: String,
        /// Octal, as in `mount -o mode=1777`.
        mode: String,
        size: String,
        noexec: bool,
        /// Host uid and gid of its root directory: the pod's root, so that root in the pod
        /// owns its `/run` (host root is nobody in the pod's user namespace).
        owner: u32,
    },
    /// A minimal `/dev`: null, zero, full, random, urandom, tty, a private devpts, `/dev/shm`,
    /// `/dev/mqueue`; then read-only.
    Dev,
    /// `proc` for the container's PID namespace.
    Proc,
    /// `sysfs` for the pod's network namespace.
    Sysfs { read_only: bool },
    /// Bind a path onto itself read-only (`/proc/sys`).
    ReadOnly { path: String },
    /// Hide a file behind `/dev/null`.
    Mask { path: String },
    /// Bind a file of the container's directory read-only onto a path (following a symlink,
    /// e.g. `/etc/resolv.conf` -> `/run/...`, whose target is created when it is in a tmpfs).
    BindFile { source: PathBuf, target: String },
    /// The image's root filesystem: each layer directory bound with its ids shifted into
    /// the pod's range (an idmapped mount, so that the image's root-owned files belong to
    /// root in the pod) on `<dir>/lower/<n>`, an overlay of them with the writable
    /// `<dir>/upper` on `<dir>/rootfs`, then `pivot_root` into it and the directories
    /// `make_dirs` created there (mount points, the working directory). Every later step's
    /// path is inside the image.
    ImageRoot {
        /// Layer directories, base first.
        layers: Vec<PathBuf>,
        dir: PathBuf,
        ids: IdRange,
        make_dirs: Vec<String>,
    },
    /// Bind a directory of the pod (a volume) onto a path, creating it if missing.
    BindDir {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
}

/// The files of a container's directory that are bind-mounted into it.
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_FILE: &str = "resolv.conf";
pub const HOSTNAME_FILE: &str = "hostname";
/// The directories of a container's root filesystem (image containers only): the overlay's
/// mount point, its writable layer and work directory, and the mount points of the layers.
pub const ROOTFS_DIR: &str = "rootfs";
pub const UPPER_DIR: &str = "upper";
pub const WORK_DIR: &str = "work";
pub const LOWER_DIR: &str = "lower";

/// The mount plan of a container of a store image: its own root filesystem (the host's is
/// gone after `pivot_root`), then the same `/dev`, `/proc`, `/sys` and masks as any
/// container, the pod's volumes and files. `root` is the host uid of the pod's root.
pub fn image_mount_plan(
    dir: &Path,
    layers: &[PathBuf],
    privileged: bool,
    ids: IdRange,
    cwd: &str,
    volumes: &[VolumeMount],
) -> Vec<MountStep> {
    let mut make_dirs: Vec<String> = ["/dev", "/proc", "/sys"].map(String::from).to_vec();
    if cwd != "/" {
        make_dirs.push(cwd.to_string());
    }
    let mut plan = vec![
        MountStep::MakePrivate,
        MountStep::ImageRoot {
            layers: layers.to_vec(),
            dir: dir.to_path_buf(),
            ids,
            make_dirs,
        },
        MountStep::Dev,
    ];
    plan.extend(
        mount_plan(dir, privileged, ids.start, volumes)
            .into_iter()
            .filter(|step| match step {
                MountStep::MakePrivate | MountStep::ReadOnlyRoot | MountStep::Dev => false,
                // The image's /tmp and /run are its own (writable) directories.
                MountStep::Tmpfs { .. } => false,
                _ => true,
            }),
    );
    plan
}

/// The container's mount plan; `root` is the host uid (and gid) of the pod's root.
pub fn mount_plan(
    dir: &Path,
    privileged: bool,
    root: u32,
    volumes: &[VolumeMount],
) -> Vec<MountStep> {
    let tmpfs = |target: &str, mode: &str, size: &str| MountStep::Tmpfs {
        target: target.into(),
        mode: mode.into(),
        size: size.into(),
        noexec: false,
        owner: root,
    };
    let mut plan = vec![
        MountStep::MakePrivate,
        MountStep::ReadOnlyRoot,
        MountStep::Dev,
        tmpfs("/tmp", "1777", "256m"),
        tmpfs("/var/tmp", "1777", "256m"),
        tmpfs("/run", "755", "64m"),
        MountStep::Proc,
        MountStep::Sysfs {
            read_only: !privileged,
        },
    ];
    if !privileged {
        // As Docker does: host-wide knobs in /proc stay read-only, kernel internals hidden.
        for path in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/irq",
            "/proc/bus",
            "/proc/fs",
        ] {
            plan.push(MountStep::ReadOnly { path: path.into() });
        }
        for path in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
        ] {
            plan.push(MountStep::Mask { path: path.into() });
        }
    }
    for volume in volumes {
        plan.push(MountStep::BindDir {
            source: volume.source.clone(),
            target: volume.target.clone(),
            read_only: volume.read_only,
        });
    }
    for (file, target) in [
        (HOSTS_FILE, "/etc/hosts"),
        (RESOLV_FILE, "/etc/resolv.conf"),
        (HOSTNAME_FILE, "/etc/hostname"),
    ] {
        plan.push(MountStep::BindFile {
            source: dir.join(file),
            target: target.into(),
        });
    }
    plan
}

/// Build the spec of container instance `id` (`attempt`) in `dir`.
///
/// `kemu_exe` is the kemu binary (for built-in images); `ids` the host ids of the pod's user
/// namespace; `primary_gid` looks a user's group up (the host's `/etc/passwd`); `accounts`
/// are the image's `/etc/passwd` and `/etc/group` (containers of store images).
#[allow(clippy::too_many_arguments)]
pub fn build_spec(
    id: &str,
    attempt: u32,
    dir: &Path,
    sandbox: &SandboxInfo,
    container: &ContainerConfig,
    kemu_exe: &Path,
    ids: IdRange,
    primary_gid: &dyn Fn(u32) -> Option<u32>,
    accounts: Accounts,
) -> Result<ShimSpec, RuntimeError> {
    let refuse = |message: String| RuntimeError::StartFailed {
        pod: sandbox.pod_name.clone(),
        container: container.name.clone(),
        message,
    };
    let security = &container.security;
    let (program, argv, env, cwd, uid, gid, groups) = match &container.rootfs {
        Some(rootfs) => {
            // The image config decides, with Kubernetes' rules (`images::config`).
            let mut env = vec![("HOSTNAME".to_string(), sandbox.hostname.clone())];
            env.extend(container.env.iter().cloned());
            let side = ContainerSide {
                command: &container.command,
                args: &container.args,
                env: &env,
                working_dir: container.working_dir.as_deref(),
                run_as_user: security.run_as_user,
                run_as_group: security.run_as_group,
                supplemental_groups: &security.supplemental_groups,
            };
            let process =
                crate::images::config::image_process(rootfs.config.as_ref(), &side, accounts)
                    .map_err(refuse)?;
            let program = Program::Host {
                name: process.argv[0].clone(),
            };
            let mut groups = vec![process.user.gid];
            groups.extend(
                process
                    .user
                    .additional_gids
                    .iter()
                    .filter(|g| **g != process.user.gid),
            );
            (
                program,
                process.argv,
                process.env,
                process.cwd,
                process.user.uid,
                process.user.gid,
                groups,
            )
        }
        None => {
            let (program, argv) = program_and_argv(sandbox, container, kemu_exe)?;
            let uid = security.run_as_user.unwrap_or(DEFAULT_USER);
            let gid = match (security.run_as_group, security.run_as_user) {
                (Some(gid), _) => gid,
                (None, None) => DEFAULT_USER,
                (None, Some(uid)) => primary_gid(uid).unwrap_or(0),
            };
            let mut groups = vec![gid];
            groups.extend(security.supplemental_groups.iter().filter(|g| **g != gid));
            let cwd = container
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into());
            let env = environment(&sandbox.hostname, uid, &container.env);
            (program, argv, env, cwd, uid, gid, groups)
        }
    };
    for (field, value) in std::iter::once(("runAsUser", uid))
        .chain(std::iter::once(("runAsGroup", gid)))
        .chain(groups.iter().map(|g| ("supplementalGroups", *g)))
    {
        if ids.host_id(value).is_none() {
            return Err(refuse(format!(
                "securityContext.{field} {value} is outside the pod's user namespace, which has the ids 0-{}",
                ids.size - 1
            )));
        }
    }
    let capabilities = caps::container_set(security)
        .map_err(refuse)?
        .into_iter()
        .map(str::to_string)
        .collect();
    let mounts = match &container.rootfs {
        Some(rootfs) => image_mount_plan(
            dir,
            &rootfs.layers,
            security.privileged,
            ids,
            &cwd,
            &container.volume_mounts,
        ),
        None => mount_plan(
            dir,
            security.privileged,
            ids.start,
            &container.volume_mounts,
        ),
    };
    Ok(ShimSpec {
        id: id.to_string(),
        pod_name: sandbox.pod_name.clone(),
        namespace: sandbox.namespace.clone(),
        pod_uid: sandbox.pod_uid.clone(),
        container_name: container.name.clone(),
        attempt,
        image: container.image.clone(),
        netns: sandbox.netns_path.clone(),
        ids,
        hostname: sandbox.hostname.clone(),
        dir: dir.to_path_buf(),
        process: ProcessSpec {
            program,
            argv,
            env,
            cwd,
            uid,
            gid,
            groups,
            capabilities,
            no_new_privileges: !security.privileged,
        },
        mounts,
    })
}

/// The argv of a built-in image's program, `kemu builtin-image <name> ...` (the Docker
/// runtime runs the same program from the kemu binary mounted into the container).
pub fn builtin_argv(
    image: BuiltinImage,
    sandbox: &SandboxInfo,
    container: &ContainerConfig,
) -> Vec<String> {
    let mut argv: Vec<String> = vec!["kemu".into(), "builtin-image".into(), image.name().into()];
    match image {
        BuiltinImage::Nginx => {
            // nginx serves every declared TCP port (80 when none is declared).
            for port in container
                .ports
                .iter()
                .filter(|p| p.protocol.eq_ignore_ascii_case("TCP"))
            {
                argv.extend(["--port".into(), port.container_port.to_string()]);
            }
            argv.extend(["--pod-name".into(), sandbox.pod_name.clone()]);
            // The tag picks the release (the seed's 1.9.1 page for `nginx`).
            argv.extend(["--image".into(), container.image.clone()]);
        }
        BuiltinImage::Agnhost | BuiltinImage::Pause | BuiltinImage::Coredns => {
            argv.extend(container.command.iter().skip(1).cloned());
            argv.extend(container.args.iter().cloned());
        }
    }
    argv
}

/// What runs: a built-in image's program, or the container's command on the host.
fn program_and_argv(
    sandbox: &SandboxInfo,
    container: &ContainerConfig,
    kemu_exe: &Path,
) -> Result<(Program, Vec<String>), RuntimeError> {
    let builtin = BuiltinImage::resolve(&container.image);
    let runs_builtin = match (builtin, container.command.first()) {
        (Some(_), None) => builtin,
        (Some(image), Some(program)) if image.is_entrypoint(program) => builtin,
        _ => None,
    };
    if let Some(image) = runs_builtin {
        let argv = builtin_argv(image, sandbox, container);
        let exe = kemu_exe.to_path_buf();
        return Ok((Program::Kemu { exe }, argv));
    }
    match container.command.first() {
        Some(name) => {
            let mut argv = container.command.clone();
            argv.extend(container.args.iter().cloned());
            Ok((Program::Host { name: name.clone() }, argv))
        }
        None => Err(RuntimeError::ImageNotAvailable {
            image: container.image.clone(),
            container: container.name.clone(),
            builtin: images::builtin_list(),
        }),
    }
}

/// The container's environment: Docker's defaults, then the container's own (which win).
fn environment(hostname: &str, uid: u32, env: &[(String, String)]) -> Vec<String> {
    let home = if uid == 0 { "/root" } else { "/" };
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOSTNAME".into(), hostname.into()),
        ("HOME".into(), home.into()),
    ];
    for (name, value) in env {
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.clone(),
            None => vars.push((name.clone(), value.clone())),
        }
    }
    vars.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// A user's group in an `/etc/passwd` text.
pub fn passwd_gid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[2].parse() == Ok(uid))
            .then(|| fields[3].parse().ok())
            .flatten()
    })
}

/// Look a program up in a PATH, as execvp does: the first executable regular file.
pub fn find_in_path(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{ContainerPort, SecurityContext};

    fn sandbox() -> SandboxInfo {
        SandboxInfo {
            pod_name: "nginx-controller-abcde".into(),
            namespace: "default".into(),
            pod_uid: "0b0e1a52-1111-2222-3333-444455556666".into(),
            netns_path: "/run/netns/kemu-seed-pod-3".into(),
            hostname: "nginx-controller-abcde".into(),
            pod_dir: "/run/kemu/seed/hosts/minion1/pods/0b0e1a52".into(),
            etc_hosts: "127.0.0.1 localhost\n".into(),
            resolv_conf: "nameserver 192.168.3.10\n".into(),
        }
    }

    fn build(container: &ContainerConfig) -> Result<ShimSpec, RuntimeError> {
        build_spec(
            "0b0e1a52-1111-2222-3333-444455556666_web_0",
            0,
            Path::new("/state/containers/0b0e1a52-1111-2222-3333-444455556666_web_0"),
            &sandbox(),
            container,
            Path::new("/usr/local/bin/kemu"),
            IdRange::new(1_073_741_824, 65536).unwrap(),
            &|uid| (uid == 1000).then_some(1000),
            Accounts::default(),
        )
    }

    #[test]
    fn nginx_spec() {
        let container = ContainerConfig {
            name: "nginx".into(),
            image: "nginx:1.27".into(),
            ports: vec![ContainerPort {
                name: None,
                container_port: 80,
                protocol: "TCP".into(),
            }],
            env: vec![("KUBERNETES_SERVICE_HOST".into(), "192.168.3.1".into())],
            ..Default::default()
        };
        let spec = build(&container).unwrap();
        crate::testing::snapshot_settings().bind(|| insta::assert_yaml_snapshot!(spec));
    }

    #[test]
    fn agnhost_takes_command_and_args() {
        let container = ContainerConfig {
            name: "netexec".into(),
            image: "registry.k8s.io/e2e-test-images/agnhost:2.53".into(),
            command: vec!["/agnhost".into()],
            args: vec!["netexec".into(), "--http-port=8080".into()],
            ..Default::default()
        };
        let spec = build(&container).unwrap();
        assert_eq!(
            spec.process.argv,
            [
                "kemu",
                "builtin-image",
                "agnhost",
                "netexec",
                "--http-port=8080"
            ]
        );
        assert!(matches!(spec.process.program, Program::Kemu { .. }));
    }

    #[test]
    fn host_commands_and_shells_in_builtin_images() {
        let container = ContainerConfig {
            name: "debian".into(),
            image: "debian".into(),
            command: vec!["sleep".into()],
            args: vec!["3600".into()],
            ..Default::default()
        };
        let spec = build(&container).unwrap();
        assert_eq!(
            spec.process.program,
            Program::Host {
                name: "sleep".into()
            }
        );
        assert_eq!(spec.process.argv, ["sleep", "3600"]);
        let shell_in_nginx = ContainerConfig {
            image: "nginx".into(),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            ..container
        };
        assert_eq!(
            build(&shell_in_nginx).unwrap().process.program,
            Program::Host { name: "sh".into() }
        );
    }

    #[test]
    fn unknown_image_without_command_lists_builtin_images() {
        let container = ContainerConfig {
            name: "db".into(),
            image: "postgres:16".into(),
            ..Default::default()
        };
        let err = build(&container).unwrap_err();
        assert!(matches!(err, RuntimeError::ImageNotAvailable { .. }));
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(err.to_string()));
    }

    #[test]
    fn store_images_run_their_config_in_their_own_root() {
        let config: oci_spec::image::Config = serde_json::from_value(serde_json::json!({
            "Entrypoint": ["/bin/app"],
            "Cmd": ["serve"],
            "Env": ["PATH=/bin", "MODE=image"],
            "WorkingDir": "/srv",
            "User": "app",
        }))
        .unwrap();
        let container = ContainerConfig {
            name: "app".into(),
            image: "team/app:1".into(),
            args: vec!["check".into()],
            env: vec![("MODE".into(), "pod".into())],
            rootfs: Some(crate::runtime::ImageRootfs {
                image_id: "sha256:ab".into(),
                layers: vec!["/store/layers/a/fs".into(), "/store/layers/b/fs".into()],
                config: Some(config),
            }),
            volume_mounts: vec![VolumeMount {
                source: "/pods/u/volumes/kubernetes.io~empty-dir/cache".into(),
                target: "/cache".into(),
                read_only: false,
            }],
            ..Default::default()
        };
        let spec = build_spec(
            "u_app_0",
            0,
            Path::new("/state/containers/u_app_0"),
            &sandbox(),
            &container,
            Path::new("/usr/local/bin/kemu"),
            IdRange::new(1_073_741_824, 65536).unwrap(),
            &|_| None,
            Accounts {
                passwd: Some("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n"),
                group: Some("app:x:1001:\nextra:x:7:app\n"),
            },
        )
        .unwrap();
        let p = &spec.process;
        assert_eq!(
            p.program,
            Program::Host {
                name: "/bin/app".into()
            }
        );
        assert_eq!(p.argv, ["/bin/app", "check"]);
        assert_eq!(
            p.env,
            ["PATH=/bin", "MODE=pod", "HOSTNAME=nginx-controller-abcde"]
        );
        assert_eq!(
            (p.uid, p.gid, p.groups.clone()),
            (1000, 1001, vec![1001, 7])
        );
        assert_eq!(p.cwd, "/srv");
        let kinds: Vec<String> = spec
            .mounts
            .iter()
            .map(|m| {
                format!("{m:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        // The image root first; no host tree, no tmpfs over the image's /tmp and /run.
        assert_eq!(&kinds[..4], ["MakePrivate", "ImageRoot", "Dev", "Proc"]);
        assert!(
            !kinds.iter().any(|k| k == "ReadOnlyRoot" || k == "Tmpfs"),
            "{kinds:?}"
        );
        assert!(spec.mounts.contains(&MountStep::BindDir {
            source: "/pods/u/volumes/kubernetes.io~empty-dir/cache".into(),
            target: "/cache".into(),
            read_only: false,
        }));
        let MountStep::ImageRoot {
            layers, make_dirs, ..
        } = &spec.mounts[1]
        else {
            unreachable!()
        };
        assert_eq!(layers.len(), 2);
        assert_eq!(make_dirs, &["/dev", "/proc", "/sys", "/srv"]);
    }

    #[test]
    fn users_and_groups() {
        let with = |security: SecurityContext| {
            let container = ContainerConfig {
                name: "c".into(),
                image: "nginx".into(),
                security,
                ..Default::default()
            };
            let p = build(&container).unwrap().process;
            (p.uid, p.gid, p.groups, p.no_new_privileges)
        };
        assert_eq!(
            with(SecurityContext::default()),
            (65534, 65534, vec![65534], true)
        );
        let root = SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        };
        assert_eq!(with(root), (0, 0, vec![0], true));
        let known = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![5, 1000],
            ..Default::default()
        };
        assert_eq!(with(known), (1000, 1000, vec![1000, 5], true));
        let privileged = SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(7),
            privileged: true,
            ..Default::default()
        };
        assert_eq!(with(privileged), (0, 7, vec![7], false));
    }

    #[test]
    fn ids_must_exist_in_the_pod_user_namespace() {
        let with = |security: SecurityContext| {
            let container = ContainerConfig {
                name: "c".into(),
                image: "nginx".into(),
                security,
                ..Default::default()
            };
            build(&container).map(|_| ()).map_err(|e| e.to_string())
        };
        let highest = SecurityContext {
            run_as_user: Some(65535),
            run_as_group: Some(65535),
            ..Default::default()
        };
        assert_eq!(with(highest), Ok(()));
        let user = SecurityContext {
            run_as_user: Some(65536),
            ..Default::default()
        };
        let err = with(user).unwrap_err();
        assert!(
            err.contains("securityContext.runAsUser 65536 is outside the pod's user namespace, which has the ids 0-65535"),
            "{err}"
        );
        let group = SecurityContext {
            supplemental_groups: vec![70000],
            ..Default::default()
        };
        assert!(
            with(group)
                .unwrap_err()
                .contains("supplementalGroups 70000")
        );
    }

    #[test]
    fn container_env_overrides_defaults() {
        let env = environment(
            "h",
            0,
            &[("PATH".into(), "/bin".into()), ("A".into(), "1".into())],
        );
        assert_eq!(env, ["PATH=/bin", "HOSTNAME=h", "HOME=/root", "A=1"]);
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(passwd_gid(passwd, 65534), Some(65534));
        assert_eq!(passwd_gid(passwd, 42), None);
    }

    #[test]
    fn path_lookup() {
        assert_eq!(
            find_in_path("sh", DEFAULT_PATH).map(|p| p.is_absolute()),
            Some(true)
        );
        assert_eq!(find_in_path("/x/y", ""), Some(PathBuf::from("/x/y")));
        assert_eq!(find_in_path("kemu-no-such-program", DEFAULT_PATH), None);
    }
}
