//! ClusterIP and NodePort allocation.
//!
//! Random picks from a seedable RNG (so `--seed` makes a lab reproducible), explicit requests
//! honoured, every address and port handed out at most once. The bitmaps are not persisted: at
//! start they are rebuilt from the stored Services, which are the source of truth.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

/// Why an explicit request failed. The messages are the real API server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    NotInRange(String),
    Allocated,
    Full(String),
}

impl AllocError {
    /// Validation detail for `spec.clusterIPs[0]`.
    pub fn ip_detail(&self, ip: &str) -> String {
        match self {
            AllocError::NotInRange(range) => format!(
                "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
            ),
            AllocError::Allocated => {
                format!("failed to allocate IP {ip}: provided IP is already allocated")
            }
            AllocError::Full(range) => format!("range is full: {range}"),
        }
    }
    /// Validation detail for `spec.ports[i].nodePort`.
    pub fn port_detail(&self) -> String {
        match self {
            AllocError::NotInRange(range) => {
                format!(
                    "provided port is not in the valid range. The range of valid ports is {range}"
                )
            }
            AllocError::Allocated => "provided port is already allocated".into(),
            AllocError::Full(range) => format!("range is full: {range}"),
        }
    }
}

/// Service ClusterIPs from one IPv4 CIDR. The network and broadcast addresses are never used;
/// the first host address is reserved for the `kubernetes` Service (only explicit requests get it).
#[derive(Debug, Clone)]
pub struct IpAllocator {
    net: Ipv4Net,
    used: BTreeSet<u32>,
}

impl IpAllocator {
    pub fn new(net: Ipv4Net) -> Self {
        Self {
            net: net.trunc(),
            used: BTreeSet::new(),
        }
    }

    pub fn range(&self) -> Ipv4Net {
        self.net
    }

    fn bounds(&self) -> (u32, u32) {
        let first = u32::from(self.net.network()) + 1;
        let last = u32::from(self.net.broadcast()).saturating_sub(1);
        (first, last)
    }

    /// The first usable address (the `kubernetes` Service's).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.bounds().0)
    }

    /// Claim a specific address.
    pub fn allocate_specific(&mut self, ip: Ipv4Addr) -> Result<(), AllocError> {
        let (first, last) = self.bounds();
        let n = u32::from(ip);
        if n < first || n > last {
            return Err(AllocError::NotInRange(self.net.to_string()));
        }
        if !self.used.insert(n) {
            return Err(AllocError::Allocated);
        }
        Ok(())
    }

    /// Pick a free address at random (never the reserved first one).
    pub fn allocate(&mut self, rng: &mut impl Rng) -> Result<Ipv4Addr, AllocError> {
        let (first, last) = self.bounds();
        let (lo, hi) = (first + 1, last);
        if lo > hi {
            return Err(AllocError::Full(self.net.to_string()));
        }
        let size = hi - lo + 1;
        let start = rng.random_range(0..size);
        for i in 0..size {
            let n = lo + (start + i) % size;
            if self.used.insert(n) {
                return Ok(Ipv4Addr::from(n));
            }
        }
        Err(AllocError::Full(self.net.to_string()))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }
}

/// NodePorts from an inclusive range (default 30000-32767).
#[derive(Debug, Clone)]
pub struct PortAllocator {
    lo: u16,
    hi: u16,
    used: BTreeSet<u16>,
}

impl PortAllocator {
    pub fn new(lo: u16, hi: u16) -> Self {
        Self {
            lo,
            hi,
            used: BTreeSet::new(),
        }
    }

    fn range(&self) -> String {
        format!("{}-{}", self.lo, self.hi)
    }

    /// Claim `port` as a client wrote it: negative, zero and too large are out of range too.
    pub fn allocate_specific(&mut self, port: i64) -> Result<u16, AllocError> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| (self.lo..=self.hi).contains(p))
            .ok_or_else(|| AllocError::NotInRange(self.range()))?;
        if !self.used.insert(port) {
            return Err(AllocError::Allocated);
        }
        Ok(port)
    }

    pub fn allocate(&mut self, rng: &mut impl Rng) -> Result<u16, AllocError> {
        let size = u32::from(self.hi - self.lo) + 1;
        let start = rng.random_range(0..size);
        for i in 0..size {
            let p = self.lo + ((start + i) % size) as u16;
            if self.used.insert(p) {
                return Ok(p);
            }
        }
        Err(AllocError::Full(self.range()))
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    pub fn is_used(&self, port: u16) -> bool {
        self.used.contains(&port)
    }
}

/// Parse `30000-32767`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("port range {s:?} is not of the form LOW-HIGH"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("bad port range start in {s:?}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("bad port range end in {s:?}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("port range {s:?} is empty or starts at 0"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ip_allocation_is_seeded_and_unique() {
        let net: Ipv4Net = "192.168.3.0/24".parse().unwrap();
        let mut a = IpAllocator::new(net);
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        assert_eq!(a.first(), Ipv4Addr::new(192, 168, 3, 1));
        a.allocate_specific(a.first()).unwrap();
        let picks: Vec<Ipv4Addr> = (0..5).map(|_| a.allocate(&mut rng).unwrap()).collect();
        let mut again = IpAllocator::new(net);
        again.allocate_specific(again.first()).unwrap();
        let mut rng2 = ChaCha8Rng::seed_from_u64(42);
        let picks2: Vec<Ipv4Addr> = (0..5).map(|_| again.allocate(&mut rng2).unwrap()).collect();
        assert_eq!(picks, picks2);
        // All 253 usable addresses (.2 to .254) get handed out exactly once, then the range is full.
        let mut all: BTreeSet<Ipv4Addr> = picks.into_iter().collect();
        while let Ok(ip) = a.allocate(&mut rng) {
            assert!(all.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(all.len(), 253);
        assert!(!all.contains(&Ipv4Addr::new(192, 168, 3, 0)));
        assert!(!all.contains(&Ipv4Addr::new(192, 168, 3, 255)));
        let ip = Ipv4Addr::new(192, 168, 3, 91);
        assert_eq!(a.allocate_specific(ip), Err(AllocError::Allocated));
        a.release(ip);
        a.allocate_specific(ip).unwrap();
        let e = a.allocate_specific(Ipv4Addr::new(10, 0, 0, 1)).unwrap_err();
        assert_eq!(
            e.ip_detail("10.0.0.1"),
            "failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 192.168.3.0/24"
        );
    }

    #[test]
    fn port_allocation() {
        let mut p = PortAllocator::new(30000, 30009);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        p.allocate_specific(30005).unwrap();
        let mut got: Vec<u16> = (0..9).map(|_| p.allocate(&mut rng).unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                30000, 30001, 30002, 30003, 30004, 30006, 30007, 30008, 30009
            ]
        );
        assert!(p.allocate(&mut rng).is_err());
        for outside in [80, 0, -1, 30010, 70000] {
            assert_eq!(
                p.allocate_specific(outside).unwrap_err().port_detail(),
                "provided port is not in the valid range. The range of valid ports is 30000-30009",
                "{outside}"
            );
        }
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert!(parse_port_range("5-1").is_err());
    }
}

/// Both allocators of the server.
#[derive(Debug, Clone)]
pub struct Allocators {
    pub ips: IpAllocator,
    pub ports: PortAllocator,
}
