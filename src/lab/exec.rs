//! Running commands "on" an emulated host: inside its network namespace and a private mount
//! namespace where `/sys` shows the host's interfaces and `/etc/hosts` names the lab's hosts,
//! with the UTS hostname set to the host's name, so that tools behave as on that machine.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::process::Command;

use std::os::unix::process::CommandExt;

use super::cgroup::LabCgroup;
use super::state::LabDir;
use crate::netns::NetNs;

/// A `Command` that will run inside `host`'s namespace (namespace name `netns`).
pub fn host_command(
    dir: &LabDir,
    host: &str,
    netns: &str,
    argv: &[String],
) -> anyhow::Result<Command> {
    let hosts_file = dir.host_dir(host).join("hosts");
    namespace_command(dir, host, netns, host, Some(&hosts_file), argv)
}

/// A `Command` that will run in network namespace `netns` as one of `host`'s processes (in
/// its cgroup), with hostname `hostname` and, when given and readable, `hosts_file` as
/// `/etc/hosts`: a host's own commands, or a command in a pod's network.
pub fn namespace_command(
    dir: &LabDir,
    host: &str,
    netns: &str,
    hostname: &str,
    hosts_file: Option<&std::path::Path>,
    argv: &[String],
) -> anyhow::Result<Command> {
    anyhow::ensure!(
        !argv.is_empty(),
        "no command given: use `kemu exec LAB HOST -- COMMAND ARGS...`"
    );
    let ns = NetNs::open(netns)?;
    let hosts_file = hosts_file
        .map(|f| CString::new(f.as_os_str().as_encoded_bytes()))
        .transpose()?;
    let hostname = hostname.to_string();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env("KEMU_LAB", dir.root.file_name().unwrap_or_default())
        .env("KEMU_HOST", host);
    let fd = ns.as_raw_fd();
    let cgroup = host_cgroup(dir, host)?;
    // SAFETY: only async-signal-safe syscalls between fork and exec; every string was
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = (&ns, &cgroup);
            if let Some(procs) = &cgroup {
                super::cgroup::join_before_exec(procs.as_raw_fd())?;
            }
            enter(fd, hosts_file.as_ref(), hostname.as_bytes())
        });
    }
    Ok(cmd)
}

/// Make `cmd` one of `host`'s processes: it joins the host's cgroup before it executes.
pub fn in_host_cgroup(dir: &LabDir, host: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let cgroup = host_cgroup(dir, host)?;
    // SAFETY: one async-signal-safe write between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &cgroup {
                super::cgroup::join_before_exec(procs.as_raw_fd())?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// The `cgroup.procs` of `host`'s cgroup, when the lab has cgroups. A command is one of the
/// host's processes: it joins the host's cgroup, so `down` stops it with the rest (a server
/// left running would keep the host's namespace alive).
fn host_cgroup(dir: &LabDir, host: &str) -> anyhow::Result<Option<std::fs::File>> {
    Ok(match dir.name().and_then(|lab| LabCgroup::of(&lab)) {
        Some(cg) if cg.exists() => Some(cg.open_procs(&cg.host(host))?),
        _ => None,
    })
}

/// In the forked child: join the network namespace, get private mount and UTS namespaces,
/// remount /sys for the new network namespace, bind the lab's /etc/hosts, set the hostname.
fn enter(netns_fd: i32, hosts_file: Option<&CString>, hostname: &[u8]) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    unsafe {
        check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
        // Keep our mounts from propagating back to the host.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        ))?;
        // /sys reflects the network namespace of the task that mounted it.
        if libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) == 0 {
            check(libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                0,
                std::ptr::null(),
            ))?;
        }
        if let Some(hosts_file) = hosts_file
            && libc::access(hosts_file.as_ptr(), libc::R_OK) == 0
        {
            check(libc::mount(
                hosts_file.as_ptr(),
                c"/etc/hosts".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
        }
        check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
    }
    Ok(())
}
