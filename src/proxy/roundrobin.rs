//! `LoadBalancerRR`, the endpoint picker of the 2015 userspace proxy (`pkg/proxy/roundrobin.go`).
//!
//! Per service port: the endpoint list (`ip:port` strings) is replaced by a *shuffled* copy
//! whenever the set changes (compared sorted) and the round-robin index is reset; each
//! `next_endpoint` returns `endpoints[index]` and advances the index. With
//! `sessionAffinity: ClientIP` a client IP sticks to its endpoint while its record is younger
//! than the sticky age; records pointing at a vanished endpoint are dropped, and
//! [`LoadBalancerRR::cleanup_stale_sessions`] (every 5 s in 2015) expires old ones.
//! Time is passed in, so the balancer stays pure and testable.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::rng::SeededRng;

/// The 2015 sticky age (`stickyMaxAgeMinutes = 180`), equal to today's default timeout.
pub const DEFAULT_STICKY_AGE: Duration = Duration::from_secs(180 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    None,
    ClientIp { sticky_age: Duration },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LbError {
    #[error("missing service entry")]
    MissingService,
    #[error("missing endpoints")]
    MissingEndpoints,
}

#[derive(Clone, Debug)]
struct Session {
    endpoint: String,
    last_used: Instant,
}

#[derive(Clone, Debug)]
struct ServiceState {
    endpoints: Vec<String>,
    index: usize,
    affinity: Affinity,
    sessions: HashMap<IpAddr, Session>,
}

impl ServiceState {
    fn new(affinity: Affinity) -> ServiceState {
        ServiceState {
            endpoints: Vec::new(),
            index: 0,
            affinity,
            sessions: HashMap::new(),
        }
    }
}

/// Round-robin balancer keyed by service port (any `K`, usually a `ServicePortName`).
#[derive(Clone, Debug)]
pub struct LoadBalancerRR<K> {
    services: HashMap<K, ServiceState>,
    rng: SeededRng,
}

/// An endpoint spec is valid when it is `host:port` with a port > 0.
fn is_valid_endpoint(spec: &str) -> bool {
    spec.rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_some_and(|p| p > 0)
}

fn sorted(list: &[String]) -> Vec<&String> {
    let mut v: Vec<&String> = list.iter().collect();
    v.sort();
    v
}

impl<K: Clone + Eq + Hash> LoadBalancerRR<K> {
    /// A balancer whose shuffles follow `seed`.
    pub fn new(seed: u64) -> LoadBalancerRR<K> {
        LoadBalancerRR {
            services: HashMap::new(),
            rng: SeededRng::new(seed),
        }
    }

    /// Register a service port; an existing one keeps its state (as in 2015).
    pub fn new_service(&mut self, key: K, affinity: Affinity) {
        self.services
            .entry(key)
            .or_insert_with(|| ServiceState::new(affinity));
    }

    /// Set the endpoints of one service port. Unchanged sets (compared sorted) keep order
    /// and index; a changed set drops the sessions of vanished endpoints, is shuffled and
    /// restarts at index 0. Unknown services are created without affinity.
    pub fn update_endpoints(&mut self, key: &K, endpoints: &[String]) {
        let valid: Vec<String> = endpoints
            .iter()
            .filter(|e| is_valid_endpoint(e))
            .cloned()
            .collect();
        let state = self
            .services
            .entry(key.clone())
            .or_insert_with(|| ServiceState::new(Affinity::None));
        if sorted(&state.endpoints) == sorted(&valid) && !state.endpoints.is_empty() {
            return;
        }
        state.sessions.retain(|_, s| valid.contains(&s.endpoint));
        state.endpoints = self.rng.shuffled(&valid);
        state.index = 0;
    }

    /// `OnUpdate`: set every listed service port's endpoints and forget the others.
    pub fn on_update<'a>(&mut self, all: impl IntoIterator<Item = (&'a K, &'a [String])>)
    where
        K: 'a,
    {
        let mut seen: Vec<K> = Vec::new();
        for (key, endpoints) in all {
            self.update_endpoints(key, endpoints);
            seen.push(key.clone());
        }
        self.services.retain(|k, _| seen.contains(k));
    }

    pub fn remove_service(&mut self, key: &K) {
        self.services.remove(key);
    }

    /// The current (shuffled) endpoint order of a service port.
    pub fn endpoints(&self, key: &K) -> Option<&[String]> {
        self.services.get(key).map(|s| s.endpoints.as_slice())
    }

    /// Pick the endpoint for a new connection from `client` at time `now`.
    pub fn next_endpoint(
        &mut self,
        key: &K,
        client: IpAddr,
        now: Instant,
    ) -> Result<String, LbError> {
        let state = self.services.get_mut(key).ok_or(LbError::MissingService)?;
        if state.endpoints.is_empty() {
            return Err(LbError::MissingEndpoints);
        }
        let sticky_age = match state.affinity {
            Affinity::ClientIp { sticky_age } => Some(sticky_age),
            Affinity::None => None,
        };
        if let Some(age) = sticky_age
            && let Some(session) = state.sessions.get_mut(&client)
            && now.saturating_duration_since(session.last_used) < age
        {
            session.last_used = now;
            return Ok(session.endpoint.clone());
        }
        let endpoint = state.endpoints[state.index].clone();
        state.index = (state.index + 1) % state.endpoints.len();
        if sticky_age.is_some() {
            state.sessions.insert(
                client,
                Session {
                    endpoint: endpoint.clone(),
                    last_used: now,
                },
            );
        }
        Ok(endpoint)
    }

    /// Forget one client's affinity record, so that its next pick takes the next endpoint in
    /// turn (the 2015 proxy's `sessionAffinityReset`, used when dialling an endpoint failed).
    pub fn reset_session(&mut self, key: &K, client: IpAddr) {
        if let Some(state) = self.services.get_mut(key) {
            state.sessions.remove(&client);
        }
    }

    /// Forget affinity records not used for the sticky age.
    pub fn cleanup_stale_sessions(&mut self, key: &K, now: Instant) {
        if let Some(state) = self.services.get_mut(key)
            && let Affinity::ClientIp { sticky_age } = state.affinity
        {
            state
                .sessions
                .retain(|_, s| now.saturating_duration_since(s.last_used) < sticky_age);
        }
    }

    /// Number of live affinity records of a service port.
    pub fn session_count(&self, key: &K) -> usize {
        self.services.get(key).map_or(0, |s| s.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn missing_service_and_endpoints_are_errors() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(1);
        let now = Instant::now();
        assert_eq!(
            lb.next_endpoint(&"svc", ip("10.0.0.1"), now),
            Err(LbError::MissingService)
        );
        lb.new_service("svc", Affinity::None);
        assert_eq!(
            lb.next_endpoint(&"svc", ip("10.0.0.1"), now),
            Err(LbError::MissingEndpoints)
        );
    }

    #[test]
    fn round_robin_over_a_shuffled_copy() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(5);
        let list = eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        lb.update_endpoints(&"svc", &list);
        let order = lb.endpoints(&"svc").unwrap().to_vec();
        let mut sorted_order = order.clone();
        sorted_order.sort();
        assert_eq!(sorted_order, list);
        let now = Instant::now();
        let picks: Vec<String> = (0..8)
            .map(|_| lb.next_endpoint(&"svc", ip("1.1.1.1"), now).unwrap())
            .collect();
        assert_eq!(picks[..4], order[..]);
        assert_eq!(picks[4..], order[..]);
        // The same set in another order changes nothing, index included.
        let mut reversed = list.clone();
        reversed.reverse();
        lb.next_endpoint(&"svc", ip("1.1.1.1"), now).unwrap();
        lb.update_endpoints(&"svc", &reversed);
        assert_eq!(lb.endpoints(&"svc").unwrap(), order.as_slice());
        assert_eq!(
            lb.next_endpoint(&"svc", ip("1.1.1.1"), now).unwrap(),
            order[1]
        );
    }

    #[test]
    fn shuffle_follows_the_seed() {
        let list: Vec<String> = (1..=20).map(|i| format!("10.0.0.{i}:80")).collect();
        let order = |seed| {
            let mut lb: LoadBalancerRR<u8> = LoadBalancerRR::new(seed);
            lb.update_endpoints(&0, &list);
            lb.endpoints(&0).unwrap().to_vec()
        };
        assert_eq!(order(9), order(9));
        assert_ne!(order(9), order(10));
    }

    #[test]
    fn invalid_endpoints_are_dropped() {
        let mut lb: LoadBalancerRR<u8> = LoadBalancerRR::new(1);
        lb.update_endpoints(&0, &eps(&["10.0.0.1:0", "bad", "10.0.0.2:80"]));
        assert_eq!(lb.endpoints(&0).unwrap(), ["10.0.0.2:80".to_string()]);
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_sticky_age() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(3);
        let age = Duration::from_secs(60);
        lb.new_service("svc", Affinity::ClientIp { sticky_age: age });
        lb.update_endpoints(&"svc", &eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]));
        let t0 = Instant::now();
        let a = ip("192.168.0.5");
        let first = lb.next_endpoint(&"svc", a, t0).unwrap();
        for i in 1..5 {
            assert_eq!(
                lb.next_endpoint(&"svc", a, t0 + Duration::from_secs(i * 10))
                    .unwrap(),
                first
            );
        }
        // Another client takes the next endpoint in turn.
        let other = lb.next_endpoint(&"svc", ip("192.168.0.6"), t0).unwrap();
        assert_ne!(other, first);
        // Idle past the sticky age: the record is stale, round robin moves on.
        let late = t0 + Duration::from_secs(40) + age;
        assert_ne!(lb.next_endpoint(&"svc", a, late).unwrap(), first);
    }

    #[test]
    fn a_reset_session_moves_the_client_on() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(7);
        let sticky = Affinity::ClientIp {
            sticky_age: DEFAULT_STICKY_AGE,
        };
        lb.new_service("svc", sticky);
        lb.update_endpoints(&"svc", &eps(&["10.0.0.1:80", "10.0.0.2:80"]));
        let client = ip("192.168.0.100");
        let now = Instant::now();
        let first = lb.next_endpoint(&"svc", client, now).unwrap();
        assert_eq!(lb.next_endpoint(&"svc", client, now).unwrap(), first);
        lb.reset_session(&"svc", client);
        let second = lb.next_endpoint(&"svc", client, now).unwrap();
        assert_ne!(second, first);
        assert_eq!(lb.next_endpoint(&"svc", client, now).unwrap(), second);
    }

    #[test]
    fn stale_sessions_are_cleaned_up() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(3);
        lb.new_service(
            "svc",
            Affinity::ClientIp {
                sticky_age: DEFAULT_STICKY_AGE,
            },
        );
        lb.update_endpoints(&"svc", &eps(&["10.0.0.1:80", "10.0.0.2:80"]));
        let t0 = Instant::now();
        lb.next_endpoint(&"svc", ip("1.1.1.1"), t0).unwrap();
        lb.next_endpoint(&"svc", ip("1.1.1.2"), t0 + Duration::from_secs(3600))
            .unwrap();
        assert_eq!(lb.session_count(&"svc"), 2);
        lb.cleanup_stale_sessions(&"svc", t0 + DEFAULT_STICKY_AGE);
        assert_eq!(lb.session_count(&"svc"), 1);
    }

    #[test]
    fn sessions_of_a_vanished_endpoint_are_dropped() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(11);
        lb.new_service(
            "svc",
            Affinity::ClientIp {
                sticky_age: DEFAULT_STICKY_AGE,
            },
        );
        lb.update_endpoints(&"svc", &eps(&["10.0.0.1:80", "10.0.0.2:80"]));
        let t0 = Instant::now();
        let a = lb.next_endpoint(&"svc", ip("1.1.1.1"), t0).unwrap();
        let b = lb.next_endpoint(&"svc", ip("1.1.1.2"), t0).unwrap();
        assert_ne!(a, b);
        lb.update_endpoints(&"svc", &[b.clone(), "10.0.0.3:80".to_string()]);
        assert_eq!(lb.session_count(&"svc"), 1);
        assert_eq!(lb.next_endpoint(&"svc", ip("1.1.1.2"), t0).unwrap(), b);
    }

    #[test]
    fn on_update_forgets_missing_services() {
        let mut lb: LoadBalancerRR<&str> = LoadBalancerRR::new(1);
        let one = eps(&["10.0.0.1:80"]);
        lb.on_update([(&"a", one.as_slice()), (&"b", one.as_slice())]);
        lb.on_update([(&"b", one.as_slice())]);
        assert!(lb.endpoints(&"a").is_none());
        assert!(lb.endpoints(&"b").is_some());
    }
}
