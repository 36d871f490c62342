//! Linux capabilities of container processes.
//!
//! A container gets Docker's default set, adjusted by `capabilities.add/drop`; a privileged
//! container gets all of them. The set becomes the bounding set, and for root also the
//! permitted and effective sets; a non-root user keeps none (as with Docker, adding
//! capabilities does not make them effective for non-root). They are capabilities in the
//! container's user namespace (`userns`): even all of them give no power over the host, the
//! pod's network or its PID namespace.

use std::collections::BTreeSet;
use std::io;

use crate::runtime::SecurityContext;

/// Capability names in kernel order (`CAP_CHOWN` is 0).
pub const ALL: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's (and containerd's) default capabilities.
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The kernel number of a capability name (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL.iter().position(|c| *c == full).map(|i| i as u32)
}

/// The container's capability set, by name in kernel order. Unknown names are an error.
pub fn container_set(security: &SecurityContext) -> Result<Vec<&'static str>, String> {
    if security.privileged {
        return Ok(ALL.to_vec());
    }
    let resolve = |names: &[String]| -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for name in names {
            if name.eq_ignore_ascii_case("ALL") {
                out.extend(0..ALL.len() as u32);
            } else {
                out.push(number(name).ok_or_else(|| format!("unknown capability {name:?}"))?);
            }
        }
        Ok(out)
    };
    let mut set: BTreeSet<u32> = DEFAULT.iter().filter_map(|c| number(c)).collect();
    for cap in resolve(&security.capabilities_drop)? {
        set.remove(&cap);
    }
    set.extend(resolve(&security.capabilities_add)?);
    Ok(set.into_iter().map(|n| ALL[n as usize]).collect())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(ALL.len() as u32 - 1)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Limit the bounding set to `names` and clear the ambient set. Needs `CAP_SETPCAP`; call
/// before changing user.
pub fn limit_bounding_set(names: &[&str]) -> io::Result<()> {
    let keep: BTreeSet<u32> = names.iter().filter_map(|n| number(n)).collect();
    for cap in 0..=last_cap() {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Ok(())
}

/// Set the permitted and effective sets to `names` (inheritable empty).
pub fn set_process_caps(names: &[&str]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for cap in names.iter().filter_map(|n| number(n)) {
        let (word, bit) = ((cap / 32) as usize, cap % 32);
        data[word].effective |= 1 << bit;
        data[word].permitted |= 1 << bit;
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a header and two data words, both valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_kernel() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("net_admin"), Some(12));
        assert_eq!(number("SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("FLY"), None);
    }

    #[test]
    fn default_set_has_no_admin_capabilities() {
        let set = container_set(&SecurityContext::default()).unwrap();
        assert_eq!(set.len(), DEFAULT.len());
        assert!(!set.contains(&"CAP_SYS_ADMIN"));
        assert!(!set.contains(&"CAP_NET_ADMIN"));
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(set.join("\n")));
    }

    #[test]
    fn add_and_drop() {
        let security = SecurityContext {
            capabilities_add: vec!["NET_ADMIN".into()],
            capabilities_drop: vec!["ALL".into()],
            ..Default::default()
        };
        assert_eq!(container_set(&security).unwrap(), ["CAP_NET_ADMIN"]);
        let privileged = SecurityContext {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(container_set(&privileged).unwrap().len(), ALL.len());
        let bad = SecurityContext {
            capabilities_add: vec!["FLY".into()],
            ..Default::default()
        };
        assert!(container_set(&bad).is_err());
    }
}
