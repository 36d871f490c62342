//! Pod IP allocation from the host's subnet, persisted the way CNI's host-local plugin does it:
//! one file per allocated address (created with O_EXCL, holding the owner's id), so a kubelet
//! restart reuses nothing twice and a crash never leaks an address the files do not show.
//! Addresses are handed out round-robin after the last one allocated, which keeps a freshly
//! released address from being reused at once.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::fsguard::OwnedDir;

/// The allocator of one host.
#[derive(Debug, Clone)]
pub struct Ipam {
    subnet: Ipv4Net,
    dir: PathBuf,
    /// Every file written or removed goes through it.
    owned: OwnedDir,
}

impl Ipam {
    /// `dir` holds one file per allocated address plus `last_reserved`.
    pub fn new(subnet: Ipv4Net, dir: &Path) -> std::io::Result<Ipam> {
        let owned = OwnedDir::new(dir)?;
        owned.create_dir_all(dir)?;
        Ok(Ipam {
            subnet,
            dir: dir.to_path_buf(),
            owned,
        })
    }

    /// The gateway (the bridge's address): the subnet's first address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    fn range(&self) -> (u32, u32) {
        // Skip the network address, the gateway and the broadcast address.
        (
            u32::from(self.subnet.network()) + 2,
            u32::from(self.subnet.broadcast()) - 1,
        )
    }

    /// The address already held by `owner`, if any.
    pub fn find(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocations()
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
    }

    /// Allocate an address to `owner` (idempotent: an owner keeps its address).
    pub fn allocate(&self, owner: &str) -> std::io::Result<Ipv4Addr> {
        if let Some(ip) = self.find(owner) {
            return Ok(ip);
        }
        let (first, last) = self.range();
        let size = last - first + 1;
        let start = std::fs::read_to_string(self.dir.join("last_reserved"))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        for i in 0..size {
            let ip = Ipv4Addr::from(first + (start - first + i) % size);
            let path = self.dir.join(ip.to_string());
            self.owned.prove(&path)?;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())?;
                    self.owned
                        .write_atomic(&self.dir.join("last_reserved"), ip.to_string().as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "no free address left in {}",
            self.subnet
        )))
    }

    /// Release whatever `owner` holds.
    pub fn release(&self, owner: &str) -> std::io::Result<()> {
        for (ip, o) in self.allocations() {
            if o == owner {
                self.owned.remove_file(&self.dir.join(ip.to_string()))?;
            }
        }
        Ok(())
    }

    /// Every allocation: (address, owner).
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(Ipv4Addr, String)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let ip: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let owner = std::fs::read_to_string(e.path()).ok()?;
                Some((ip, owner))
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_round_robin_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new("172.16.1.0/29".parse().unwrap(), dir.path()).unwrap();
        assert_eq!(ipam.gateway().to_string(), "172.16.1.1");
        let a = ipam.allocate("pod-a").unwrap();
        let b = ipam.allocate("pod-b").unwrap();
        assert_eq!(
            (a.to_string().as_str(), b.to_string().as_str()),
            ("172.16.1.2", "172.16.1.3")
        );
        assert_eq!(ipam.allocate("pod-a").unwrap(), a, "idempotent per owner");
        ipam.release("pod-a").unwrap();
        // The next allocation continues after the last one instead of reusing .2 at once.
        assert_eq!(ipam.allocate("pod-c").unwrap().to_string(), "172.16.1.4");
        // A new allocator on the same directory (a restarted kubelet) sees the same state.
        let again = Ipam::new("172.16.1.0/29".parse().unwrap(), dir.path()).unwrap();
        assert_eq!(again.find("pod-b"), Some(b));
        for owner in ["d", "e", "f"] {
            again.allocate(owner).unwrap();
        }
        // .2 .. .6 are usable (/29 minus network, gateway, broadcast): now all taken.
        assert!(again.allocate("g").is_err());
    }
}
