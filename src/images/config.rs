//! What a container of an image runs, as containerd's CRI plugin decides it from the image
//! config and the container spec (`internal/cri/opts/spec_opts.go`, `pkg/oci/spec_opts.go`;
//! summarised in shared/research/proxy-dns-image-facts.md §6): the argv (Kubernetes'
//! command/args rules over Entrypoint/Cmd), the environment, the working directory and the
//! user. All pure: the image's `/etc/passwd` and `/etc/group` are passed in as text.

use oci_spec::image::Config;

/// The process a container of an image starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProcess {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, in order.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
}

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// The user's groups from the image's `/etc/group`, then the pod's supplementalGroups.
    pub additional_gids: Vec<u32>,
}

/// What the container spec says (the parts that meet the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSide<'a> {
    pub command: &'a [String],
    pub args: &'a [String],
    /// The container's environment, already expanded by the kubelet.
    pub env: &'a [(String, String)],
    pub working_dir: Option<&'a str>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: &'a [u32],
}

/// The image's account files, as text (absent files are `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts<'a> {
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
}

/// Decide the whole process. Errors are worded as the runtime's (the kubelet shows them as
/// `CreateContainerError`).
pub fn image_process(
    image: Option<&Config>,
    container: &ContainerSide,
    accounts: Accounts,
) -> Result<ImageProcess, String> {
    let empty = Vec::new();
    let entrypoint = image
        .and_then(|c| c.entrypoint().as_ref())
        .unwrap_or(&empty);
    let cmd = image.and_then(|c| c.cmd().as_ref()).unwrap_or(&empty);
    let image_env = image.and_then(|c| c.env().as_ref()).unwrap_or(&empty);
    let image_wd = image.and_then(|c| c.working_dir().as_deref());
    let image_user = image.and_then(|c| c.user().as_deref()).unwrap_or("");
    Ok(ImageProcess {
        argv: argv(entrypoint, cmd, container.command, container.args)?,
        env: environment(image_env, container.env),
        cwd: working_dir(image_wd, container.working_dir),
        user: user(
            image_user,
            container.run_as_user,
            container.run_as_group,
            container.supplemental_groups,
            accounts,
        )?,
    })
}

/// Kubernetes' command/args over the image's Entrypoint/Cmd: `command` replaces the
/// Entrypoint and drops Cmd; `args` replace Cmd. An Entrypoint of `[""]` counts as none.
pub fn argv(
    entrypoint: &[String],
    cmd: &[String],
    command: &[String],
    args: &[String],
) -> Result<Vec<String>, String> {
    let entrypoint: &[String] = if entrypoint == [""] { &[] } else { entrypoint };
    let mut out: Vec<String> = if command.is_empty() {
        let tail = if args.is_empty() { cmd } else { args };
        entrypoint.iter().chain(tail).cloned().collect()
    } else {
        command.iter().chain(args).cloned().collect()
    };
    if out.is_empty() || out[0].is_empty() {
        out.clear();
        return Err("no command specified".into());
    }
    Ok(out)
}

/// The image's Env, then the container's; a name set again keeps its first place and takes
/// the later value. A PATH is always there (containerd's default when the image has none).
pub fn environment(image_env: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| match vars.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => vars.push((name.to_string(), value.to_string())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for entry in image_env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        set(name, value);
    }
    for (name, value) in container {
        set(name, value);
    }
    vars.into_iter().map(|(n, v)| format!("{n}={v}")).collect()
}

/// `workingDir:` when set, else the image's WorkingDir, else `/`.
pub fn working_dir(image: Option<&str>, container: Option<&str>) -> String {
    [container, image]
        .into_iter()
        .flatten()
        .find(|d| !d.is_empty())
        .unwrap_or("/")
        .to_string()
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4).then_some(())?;
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// `(name, gid, members)` of each `/etc/group` line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4).then_some(())?;
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// The user a container runs as: `runAsUser`/`runAsGroup` override the image's `User`
/// (`name`, `uid`, `name:group`, `uid:gid`, ...), names resolved in the image's own account
/// files; without a group, the user's primary group (0 when the image does not list the
/// uid). Additional groups: those of the image's `/etc/group` naming the user, then the
/// pod's supplementalGroups.
pub fn user(
    image_user: &str,
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    supplemental: &[u32],
    accounts: Accounts,
) -> Result<User, String> {
    let passwd = accounts.passwd.unwrap_or("");
    let group = accounts.group.unwrap_or("");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let by_uid = |uid: u32| passwd_entries(passwd).find(|e| e.uid == uid);
    let (uid, primary, name) = match run_as_user {
        Some(uid) => {
            let entry = by_uid(uid);
            (uid, entry.as_ref().map(|e| e.gid), entry.map(|e| e.name))
        }
        None if user_part.is_empty() => {
            let entry = by_uid(0);
            (0, entry.as_ref().map(|e| e.gid), entry.map(|e| e.name))
        }
        None => match user_part.parse::<u32>() {
            Ok(uid) => {
                let entry = by_uid(uid);
                (uid, entry.as_ref().map(|e| e.gid), entry.map(|e| e.name))
            }
            Err(_) => {
                let entry = passwd_entries(passwd)
                    .find(|e| e.name == user_part)
                    .ok_or_else(|| {
                        format!(
                            "unable to find user {user_part}: no matching entries in passwd file"
                        )
                    })?;
                (entry.uid, Some(entry.gid), Some(entry.name))
            }
        },
    };
    // The image's group counts only with the image's user (runAsUser replaces both).
    let image_group = match (run_as_user, group_part) {
        (None, Some(g)) if !g.is_empty() => Some(match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        }),
        _ => None,
    };
    let gid = run_as_group.or(image_group).or(primary).unwrap_or(0);
    let mut additional_gids: Vec<u32> = Vec::new();
    if let Some(name) = name {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name) && g != gid && !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    for g in supplemental {
        if !additional_gids.contains(g) {
            additional_gids.push(*g);
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let ep = v(&["/docker-entrypoint.sh"]);
        let cmd = v(&["nginx", "-g", "daemon off;"]);
        // Neither: Entrypoint + Cmd.
        assert_eq!(
            argv(&ep, &cmd, &[], &[]).unwrap(),
            v(&["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"])
        );
        // Only args: Entrypoint + args.
        assert_eq!(
            argv(&ep, &cmd, &[], &v(&["nginx", "-v"])).unwrap(),
            v(&["/docker-entrypoint.sh", "nginx", "-v"])
        );
        // Only command: the command, Cmd ignored.
        assert_eq!(
            argv(&ep, &cmd, &v(&["/bin/sh"]), &[]).unwrap(),
            v(&["/bin/sh"])
        );
        // Both: command + args.
        assert_eq!(
            argv(&ep, &cmd, &v(&["/bin/sh", "-c"]), &v(&["echo hi"])).unwrap(),
            v(&["/bin/sh", "-c", "echo hi"])
        );
        // No Entrypoint: Cmd[0] is the program; args replace Cmd.
        assert_eq!(argv(&[], &cmd, &[], &[]).unwrap(), cmd);
        assert_eq!(
            argv(&[], &cmd, &[], &v(&["/bin/true"])).unwrap(),
            v(&["/bin/true"])
        );
        // An Entrypoint of [""] is none.
        assert_eq!(argv(&v(&[""]), &cmd, &[], &[]).unwrap(), cmd);
        // Nothing to run.
        assert_eq!(
            argv(&v(&[""]), &[], &[], &[]).unwrap_err(),
            "no command specified"
        );
        assert_eq!(
            argv(&[], &[], &[], &[]).unwrap_err(),
            "no command specified"
        );
    }

    #[test]
    fn container_env_overrides_the_image_in_place() {
        let image = v(&["PATH=/opt/bin:/bin", "LANG=C.UTF-8", "EMPTY"]);
        let container = vec![
            ("LANG".to_string(), "fr_FR.UTF-8".to_string()),
            ("PORT".to_string(), "8080".to_string()),
        ];
        assert_eq!(
            environment(&image, &container),
            v(&[
                "PATH=/opt/bin:/bin",
                "LANG=fr_FR.UTF-8",
                "EMPTY=",
                "PORT=8080"
            ])
        );
        assert_eq!(
            environment(&[], &[]),
            v(&["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        );
    }

    #[test]
    fn working_dir_prefers_the_container() {
        assert_eq!(working_dir(Some("/app"), None), "/app");
        assert_eq!(working_dir(Some("/app"), Some("/data")), "/data");
        assert_eq!(working_dir(Some(""), Some("")), "/");
        assert_eq!(working_dir(None, None), "/");
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/:/sbin/nologin\n\
                          app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
                         daemon:x:1:\n\
                         app:x:1000:\n\
                         audio:x:29:app,daemon\n\
                         video:x:44:app\n\
                         staff:x:50:\n";

    fn accounts() -> Accounts<'static> {
        Accounts {
            passwd: Some(PASSWD),
            group: Some(GROUP),
        }
    }

    fn ids(u: User) -> (u32, u32, Vec<u32>) {
        (u.uid, u.gid, u.additional_gids)
    }

    #[test]
    fn users_resolve_in_the_image_accounts() {
        let a = accounts();
        // No User: root.
        assert_eq!(ids(user("", None, None, &[], a).unwrap()), (0, 0, vec![]));
        // A name: its uid, primary group and member groups.
        assert_eq!(
            ids(user("app", None, None, &[], a).unwrap()),
            (1000, 1000, vec![29, 44])
        );
        // A uid the image lists, and one it does not (group 0).
        assert_eq!(
            ids(user("1", None, None, &[], a).unwrap()),
            (1, 1, vec![29])
        );
        assert_eq!(
            ids(user("4242", None, None, &[], a).unwrap()),
            (4242, 0, vec![])
        );
        // user:group, by name or number.
        assert_eq!(
            ids(user("app:staff", None, None, &[], a).unwrap()),
            (1000, 50, vec![29, 44])
        );
        assert_eq!(
            ids(user("4242:4343", None, None, &[], a).unwrap()),
            (4242, 4343, vec![])
        );
        // runAsUser replaces the image's user and group; runAsGroup the group.
        assert_eq!(
            ids(user("app:staff", Some(1), None, &[], a).unwrap()),
            (1, 1, vec![29])
        );
        assert_eq!(
            ids(user("app", None, Some(7), &[2000], a).unwrap()),
            (1000, 7, vec![29, 44, 2000])
        );
        // Names the image does not have.
        assert_eq!(
            user("nobody", None, None, &[], a).unwrap_err(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            user("app:wheel", None, None, &[], a).unwrap_err(),
            "unable to find group wheel: no matching entries in group file"
        );
        // An image without account files: numbers only.
        let none = Accounts::default();
        assert_eq!(
            ids(user("65532:65532", None, None, &[], none).unwrap()),
            (65532, 65532, vec![])
        );
        assert!(user("app", None, None, &[], none).is_err());
    }

    #[test]
    fn the_whole_process_from_an_image_config() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "Entrypoint": ["/bin/kemu"],
            "Cmd": ["--version"],
            "Env": ["PATH=/bin", "MODE=image"],
            "WorkingDir": "/srv",
            "User": "app",
        }))
        .unwrap();
        let env = vec![("MODE".to_string(), "pod".to_string())];
        let args = v(&["image", "ls"]);
        let process = image_process(
            Some(&config),
            &ContainerSide {
                args: &args,
                env: &env,
                ..ContainerSide::default()
            },
            accounts(),
        )
        .unwrap();
        assert_eq!(
            process,
            ImageProcess {
                argv: v(&["/bin/kemu", "image", "ls"]),
                env: v(&["PATH=/bin", "MODE=pod"]),
                cwd: "/srv".into(),
                user: User {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![29, 44],
                },
            }
        );
        // No config at all: nothing to run.
        assert_eq!(
            image_process(None, &ContainerSide::default(), accounts()).unwrap_err(),
            "no command specified"
        );
    }
}
