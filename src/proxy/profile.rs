//! Version profiles: the kube-proxy behaviours that changed between releases, so that a bug
//! fixed in release N can be reproduced with N-1 (`proxy.version` in a topology, `--version`
//! of the agent). Without a version the agent runs kemu's own profile: the newest upstream
//! behaviour (with the conntrack fixes upstream merged after v1.32), plus kemu's clean mode
//! switch and its faster in-place partial syncs.
//!
//! What a profile decides, and where upstream changed it:
//!
//! | behaviour | before | after | upstream |
//! |---|---|---|---|
//! | default mode | userspace (≤ 1.1) | iptables (≥ 1.2) | v1.2 release notes |
//! | userspace mode | available ≤ 1.25 | removed in 1.26 | KEP-3705 / PR #112133 |
//! | nftables mode | — | ≥ 1.29 | KEP-3866 |
//! | UDP conntrack cleanup | none (≤ 1.1, issue #19029) | on endpoint change (1.2–1.31, PR #22573; nodePorts #71573 and external/LB IPs #73323 from 1.14; 0→N endpoints #48370 from 1.8) | reconciler (≥ 1.32, PR #127318, `pkg/proxy/conntrack/cleanup.go`) |
//! | reconciler skips services with no endpoints and deleted services | 1.32 (#139628, #141371) | fixed upstream by PR #139629 / #141371 (kemu's profile) | |
//! | localhost NodePorts (`route_localnet=1`) | always on (1.1 sets it unconditionally) | `--iptables-localhost-nodeports`, default on (PR #108250) | `NewProxier` |
//! | nfacct `ct_state_invalid_dropped_pkts` | — | ≥ 1.30 (PR #122812) | |
//! | nfacct `localhost_nps_accepted_pkts` | — | ≥ 1.31 (PR #125015) | |
//! | mode switch | old mode's rules removed at start (≤ 1.14) | left in place unless `--cleanup` (≥ 1.15, KEP-2448 / PR #76109); nftables ↔ iptables cleaned at start (≥ 1.29, `platformCleanup`) | |
//! | `--masquerade-all` | default false in every release | | `options.go` |
//! | partial sync output | every sync writes everything (≤ 1.25) | changed services' chains rewritten whole (≥ 1.26, `MinimizeIPTablesRestore`, KEP-3453); nftables: its partial transaction | `syncProxyRules` |
//!
//! Only behaviours listed here change with the version; the rules themselves are always
//! rendered as current kube-proxy writes them (the 2015 userspace proxier excepted).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ProxyMode;

/// A Kubernetes minor release, e.g. `1.31` (a patch number, a `v` and a suffix are accepted
/// and ignored: `v1.31.2`, `1.32.0-rc.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u16,
    pub minor: u16,
}

impl KubeVersion {
    pub const fn new(major: u16, minor: u16) -> KubeVersion {
        KubeVersion { major, minor }
    }

    fn at_least(self, minor: u16) -> bool {
        self >= KubeVersion::new(1, minor)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for KubeVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<KubeVersion, String> {
        let bad = || format!("{text:?} is not a Kubernetes version such as 1.31 or v1.32.2");
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or(core);
        let mut parts = core.split('.');
        let major: u16 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u16 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if let Some(patch) = parts.next()
            && patch.parse::<u16>().is_err()
        {
            return Err(bad());
        }
        if parts.next().is_some() || major != 1 {
            return Err(bad());
        }
        // Kubernetes 1.0 is the first release kemu can emulate.
        Ok(KubeVersion { major, minor })
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KubeVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KubeVersion, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How stale UDP conntrack entries are removed after a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConntrackCleanup {
    /// Nothing is removed (kube-proxy ≤ 1.1 and the userspace proxier): a UDP client keeps
    /// its DNAT to a deleted endpoint while it keeps sending.
    None,
    /// kube-proxy 1.2–1.31: entries of deleted endpoints and of services that went from no
    /// endpoints to some, computed from the change (`deleteStaleEndpointConntrackEntries`,
    /// `deleteStaleServiceConntrackEntries`).
    EndpointChange {
        /// nodePorts, externalIPs and LB IPs are cleaned too (≥ 1.14).
        external: bool,
        /// A service whose endpoints go from none to some is flushed (≥ 1.8).
        newly_active: bool,
    },
    /// kube-proxy ≥ 1.32: the table is listed and every UDP flow to a service frontend whose
    /// reply source is not a serving endpoint is deleted (`CleanStaleEntries`).
    Reconciler {
        /// Also services with no endpoints left and services just deleted (upstream's fixes
        /// for #139628 and #141371; 1.32 skips both).
        fixed: bool,
    },
}

/// What happens to the old mode's rules when the mode changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeSwitch {
    /// kemu's own: the old mode's rules, chains and sysctls are removed.
    Clean,
    /// kube-proxy ≤ 1.14: at start-up every other mode's rules are removed.
    CleanupAtStart,
    /// kube-proxy ≥ 1.15: the old mode's rules stay unless `--cleanup` is run, except that
    /// from 1.29 the nftables and iptables modes remove each other's at start-up.
    LeaveRules,
}

/// How a partial sync is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncOutput {
    /// kemu's: only the rules that differ, edited in place where a chain is long.
    Kemu,
    /// kube-proxy's (≥ 1.26, `MinimizeIPTablesRestore`): every changed service's chains
    /// rewritten whole, with all the `KUBE-SERVICES`/`KUBE-NODEPORTS` jumps, stale chains
    /// flushed and deleted; in nftables mode its partial transaction
    /// ([`super::nftables::kube_proxy_partial`]).
    KubeProxy,
    /// kube-proxy before 1.26: every sync writes the whole rule set.
    KubeProxyFull,
}

/// The behaviours of one emulated kube-proxy release (or of kemu's own profile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProfile {
    /// `None` for kemu's own profile.
    pub version: Option<KubeVersion>,
    pub default_mode: ProxyMode,
    pub conntrack: ConntrackCleanup,
    /// Default of `--iptables-localhost-nodeports` (on in every release; before the flag
    /// existed, localhost NodePorts could not be turned off).
    pub localhost_node_ports: bool,
    pub nfacct_invalid_drop: bool,
    pub nfacct_localhost: bool,
    pub masquerade_all: bool,
    pub mode_switch: ModeSwitch,
    pub sync_output: SyncOutput,
}

impl ProxyProfile {
    /// kemu's own profile: newest upstream behaviour, clean mode switches, fast syncs.
    pub fn kemu() -> ProxyProfile {
        ProxyProfile {
            version: None,
            default_mode: ProxyMode::Iptables,
            conntrack: ConntrackCleanup::Reconciler { fixed: true },
            localhost_node_ports: true,
            nfacct_invalid_drop: true,
            nfacct_localhost: true,
            masquerade_all: false,
            mode_switch: ModeSwitch::Clean,
            sync_output: SyncOutput::Kemu,
        }
    }

    /// The profile of kube-proxy `version`.
    pub fn for_version(version: KubeVersion) -> ProxyProfile {
        let v = version;
        let conntrack = if !v.at_least(2) {
            ConntrackCleanup::None
        } else if !v.at_least(32) {
            ConntrackCleanup::EndpointChange {
                external: v.at_least(14),
                newly_active: v.at_least(8),
            }
        } else {
            ConntrackCleanup::Reconciler { fixed: false }
        };
        ProxyProfile {
            version: Some(v),
            default_mode: if v.at_least(2) {
                ProxyMode::Iptables
            } else {
                ProxyMode::Userspace
            },
            conntrack,
            localhost_node_ports: true,
            nfacct_invalid_drop: v.at_least(30),
            nfacct_localhost: v.at_least(31),
            masquerade_all: false,
            mode_switch: if v.at_least(15) {
                ModeSwitch::LeaveRules
            } else {
                ModeSwitch::CleanupAtStart
            },
            sync_output: if v.at_least(26) {
                SyncOutput::KubeProxy
            } else {
                SyncOutput::KubeProxyFull
            },
        }
    }

    /// `for_version`, or kemu's profile when no version is given.
    pub fn new(version: Option<KubeVersion>) -> ProxyProfile {
        version.map_or_else(ProxyProfile::kemu, ProxyProfile::for_version)
    }

    /// Whether this release has `mode` (userspace until 1.25, nftables from 1.29).
    pub fn has_mode(&self, mode: ProxyMode) -> bool {
        let Some(v) = self.version else {
            return true;
        };
        match mode {
            ProxyMode::Userspace => !v.at_least(26),
            ProxyMode::Iptables => v.at_least(1),
            ProxyMode::Nftables => v.at_least(29),
        }
    }

    /// Check that `mode` exists in this release; the error names the release range.
    pub fn check_mode(&self, mode: ProxyMode) -> Result<(), String> {
        if self.has_mode(mode) {
            return Ok(());
        }
        let v = self.version.expect("kemu's profile has every mode");
        Err(match mode {
            ProxyMode::Userspace => {
                format!("kube-proxy {v} has no userspace mode (removed in 1.26)")
            }
            ProxyMode::Iptables => format!("kube-proxy {v} has no iptables mode (added in 1.1)"),
            ProxyMode::Nftables => format!("kube-proxy {v} has no nftables mode (added in 1.29)"),
        })
    }

    /// The rules another mode left behind that this release removes when it starts in
    /// `mode`: every other mode (kemu; ≤ 1.14), only nftables ↔ iptables (≥ 1.29), or none.
    pub fn cleanup_at_start(&self, mode: ProxyMode) -> Vec<ProxyMode> {
        let others = [
            ProxyMode::Userspace,
            ProxyMode::Iptables,
            ProxyMode::Nftables,
        ]
        .into_iter()
        .filter(move |m| *m != mode);
        match self.mode_switch {
            ModeSwitch::Clean | ModeSwitch::CleanupAtStart => others.collect(),
            ModeSwitch::LeaveRules => {
                let cross = self.version.is_some_and(|v| v.at_least(29));
                others
                    .filter(|m| {
                        cross
                            && matches!(
                                (mode, m),
                                (ProxyMode::Nftables, ProxyMode::Iptables)
                                    | (ProxyMode::Iptables, ProxyMode::Nftables)
                            )
                    })
                    .collect()
            }
        }
    }

    /// A one-line summary for logs and `kemu proxy profile`.
    pub fn describe(&self) -> String {
        let name = self
            .version
            .map_or_else(|| "kemu".to_string(), |v| format!("kube-proxy {v}"));
        format!(
            "{name}: default mode {}, conntrack cleanup {}, localhost NodePorts {}, nfacct {}, mode switch {}, partial sync output {}",
            self.default_mode,
            match self.conntrack {
                ConntrackCleanup::None => "none".to_string(),
                ConntrackCleanup::EndpointChange { .. } => "on endpoint change".to_string(),
                ConntrackCleanup::Reconciler { fixed: false } => "reconciler (1.32)".to_string(),
                ConntrackCleanup::Reconciler { fixed: true } => "reconciler (fixed)".to_string(),
            },
            if self.localhost_node_ports {
                "on"
            } else {
                "off"
            },
            match (self.nfacct_invalid_drop, self.nfacct_localhost) {
                (true, true) => "both counters",
                (true, false) => "ct_state_invalid_dropped_pkts",
                _ => "none",
            },
            match self.mode_switch {
                ModeSwitch::Clean => "clean (kemu)",
                ModeSwitch::CleanupAtStart => "other modes removed at start",
                ModeSwitch::LeaveRules => "old rules left in place",
            },
            match self.sync_output {
                SyncOutput::Kemu => "kemu (in-place edits)",
                SyncOutput::KubeProxy => "kube-proxy (changed chains rewritten)",
                SyncOutput::KubeProxyFull => "kube-proxy before 1.26 (everything rewritten)",
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> KubeVersion {
        text.parse().unwrap()
    }

    #[test]
    fn versions_parse_with_or_without_patch_and_prefix() {
        assert_eq!(v("1.31"), KubeVersion::new(1, 31));
        assert_eq!(v("v1.32.2"), KubeVersion::new(1, 32));
        assert_eq!(v("1.32.0-rc.1"), KubeVersion::new(1, 32));
        for bad in ["", "1", "2.0", "1.x", "1.2.3.4", "one.two"] {
            assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
        }
        assert!(v("1.9") < v("1.10"), "minor versions compare as numbers");
    }

    #[test]
    fn conntrack_cleanup_follows_the_release_history() {
        let cleanup = |text| ProxyProfile::for_version(v(text)).conntrack;
        assert_eq!(cleanup("1.1"), ConntrackCleanup::None);
        assert_eq!(
            cleanup("1.2"),
            ConntrackCleanup::EndpointChange {
                external: false,
                newly_active: false
            }
        );
        assert_eq!(
            cleanup("1.31"),
            ConntrackCleanup::EndpointChange {
                external: true,
                newly_active: true
            }
        );
        assert_eq!(
            cleanup("1.32"),
            ConntrackCleanup::Reconciler { fixed: false }
        );
        assert_eq!(
            ProxyProfile::kemu().conntrack,
            ConntrackCleanup::Reconciler { fixed: true }
        );
    }

    #[test]
    fn modes_and_mode_switches_follow_the_release_history() {
        let p = |text| ProxyProfile::for_version(v(text));
        assert_eq!(p("1.1").default_mode, ProxyMode::Userspace);
        assert_eq!(p("1.2").default_mode, ProxyMode::Iptables);
        assert!(p("1.25").has_mode(ProxyMode::Userspace));
        assert!(p("1.26").check_mode(ProxyMode::Userspace).is_err());
        assert!(p("1.28").check_mode(ProxyMode::Nftables).is_err());
        assert!(p("1.29").has_mode(ProxyMode::Nftables));
        assert_eq!(p("1.14").mode_switch, ModeSwitch::CleanupAtStart);
        assert_eq!(p("1.15").mode_switch, ModeSwitch::LeaveRules);
        assert!(p("1.28").cleanup_at_start(ProxyMode::Iptables).is_empty());
        assert_eq!(
            p("1.29").cleanup_at_start(ProxyMode::Iptables),
            vec![ProxyMode::Nftables]
        );
        assert_eq!(
            p("1.29").cleanup_at_start(ProxyMode::Userspace),
            Vec::<ProxyMode>::new()
        );
        assert_eq!(
            ProxyProfile::kemu()
                .cleanup_at_start(ProxyMode::Iptables)
                .len(),
            2
        );
        assert!(!p("1.29").nfacct_invalid_drop && p("1.30").nfacct_invalid_drop);
        assert!(!p("1.30").nfacct_localhost && p("1.31").nfacct_localhost);
        assert_eq!(p("1.25").sync_output, SyncOutput::KubeProxyFull);
        assert_eq!(p("1.26").sync_output, SyncOutput::KubeProxy);
    }
}
