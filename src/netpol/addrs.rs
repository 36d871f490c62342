//! Sets of IPv4 addresses as sorted, disjoint, non-adjacent ranges: what an `ipBlock` with
//! `except` and a list of pod IPs become, and what an nftables interval set holds.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// A set of IPv4 addresses, kept as sorted disjoint inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    ranges: Vec<(u32, u32)>,
}

impl AddrSet {
    /// The addresses of `net`.
    pub fn net(net: Ipv4Net) -> AddrSet {
        AddrSet {
            ranges: vec![(net.network().into(), net.broadcast().into())],
        }
    }

    /// One address.
    pub fn addr(ip: Ipv4Addr) -> AddrSet {
        let ip = u32::from(ip);
        AddrSet {
            ranges: vec![(ip, ip)],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        // The last range starting at or before `ip`.
        let i = self.ranges.partition_point(|(first, _)| *first <= ip);
        i > 0 && self.ranges[i - 1].1 >= ip
    }

    /// Add the addresses of `other`.
    pub fn union(&mut self, other: &AddrSet) {
        if other.is_empty() {
            return;
        }
        let mut all: Vec<(u32, u32)> = self
            .ranges
            .drain(..)
            .chain(other.ranges.iter().copied())
            .collect();
        all.sort_unstable();
        for (first, last) in all {
            match self.ranges.last_mut() {
                // Overlapping or adjacent: one range.
                Some(prev) if u64::from(first) <= u64::from(prev.1) + 1 => {
                    prev.1 = prev.1.max(last)
                }
                _ => self.ranges.push((first, last)),
            }
        }
    }

    /// Remove the addresses of `other`.
    pub fn subtract(&mut self, other: &AddrSet) {
        let mut out = Vec::with_capacity(self.ranges.len());
        for &(first, last) in &self.ranges {
            let mut start = u64::from(first);
            let end = u64::from(last);
            for &(cut_first, cut_last) in &other.ranges {
                let (cf, cl) = (u64::from(cut_first), u64::from(cut_last));
                if cl < start || cf > end {
                    continue;
                }
                if cf > start {
                    out.push((start as u32, (cf - 1) as u32));
                }
                start = cl + 1;
                if start > end {
                    break;
                }
            }
            if start <= end {
                out.push((start as u32, end as u32));
            }
        }
        self.ranges = out;
    }

    /// The set as the fewest CIDR blocks (a single address as itself), in address order: the
    /// elements of an nftables interval set, as `nft list` shows them.
    pub fn cidrs(&self) -> Vec<Ipv4Net> {
        let mut out = Vec::new();
        for &(first, last) in &self.ranges {
            let mut start = u64::from(first);
            let end = u64::from(last);
            while start <= end {
                // The largest block aligned at `start` that stays inside the range.
                let mut len = if start == 0 {
                    32
                } else {
                    start.trailing_zeros().min(32)
                };
                while len > 0 && start + (1u64 << len) - 1 > end {
                    len -= 1;
                }
                let net = Ipv4Net::new(Ipv4Addr::from(start as u32), (32 - len) as u8)
                    .expect("prefix length <= 32");
                out.push(net);
                start += 1u64 << len;
            }
        }
        out
    }
}

impl fmt::Display for AddrSet {
    /// `10.0.0.0/24, 172.16.1.2`: the set's CIDR blocks, single addresses without `/32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.cidrs().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if net.prefix_len() == 32 {
                write!(f, "{}", net.addr())?;
            } else {
                write!(f, "{net}")?;
            }
        }
        Ok(())
    }
}

impl FromIterator<Ipv4Addr> for AddrSet {
    fn from_iter<T: IntoIterator<Item = Ipv4Addr>>(iter: T) -> Self {
        let mut ranges: Vec<(u32, u32)> =
            iter.into_iter().map(|ip| (ip.into(), ip.into())).collect();
        ranges.sort_unstable();
        let mut set = AddrSet::default();
        set.union(&AddrSet { ranges });
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> AddrSet {
        AddrSet::net(s.parse().unwrap())
    }

    #[test]
    fn a_block_minus_its_exceptions_is_the_fewest_cidrs() {
        let mut set = net("172.16.0.0/16");
        set.subtract(&net("172.16.1.0/24"));
        set.subtract(&net("172.16.2.128/25"));
        assert_eq!(
            set.to_string(),
            "172.16.0.0/24, 172.16.2.0/25, 172.16.3.0/24, 172.16.4.0/22, 172.16.8.0/21, \
             172.16.16.0/20, 172.16.32.0/19, 172.16.64.0/18, 172.16.128.0/17"
        );
        assert!(set.contains("172.16.2.127".parse().unwrap()));
        assert!(!set.contains("172.16.2.128".parse().unwrap()));
        assert!(!set.contains("172.16.1.7".parse().unwrap()));
        assert!(!set.contains("172.17.0.0".parse().unwrap()));
    }

    #[test]
    fn pods_and_blocks_merge() {
        let mut set: AddrSet = ["10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.9"]
            .iter()
            .map(|s| s.parse::<Ipv4Addr>().unwrap())
            .collect();
        assert_eq!(set.to_string(), "10.0.0.1, 10.0.0.2/31, 10.0.0.9");
        set.union(&net("10.0.0.8/29"));
        assert_eq!(set.to_string(), "10.0.0.1, 10.0.0.2/31, 10.0.0.8/29");
        set.union(&net("0.0.0.0/0"));
        assert_eq!(set.to_string(), "0.0.0.0/0");
        set.subtract(&net("0.0.0.0/0"));
        assert!(set.is_empty());
    }

    #[test]
    fn the_ends_of_the_address_space() {
        let mut set = net("0.0.0.0/0");
        set.subtract(&AddrSet::addr("0.0.0.0".parse().unwrap()));
        set.subtract(&AddrSet::addr("255.255.255.255".parse().unwrap()));
        assert!(set.contains("255.255.255.254".parse().unwrap()));
        assert!(!set.contains("255.255.255.255".parse().unwrap()));
        assert_eq!(set.cidrs().len(), 62);
    }
}
