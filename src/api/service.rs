//! Service address allocation: ClusterIPs and NodePorts claimed on create and update, released
//! when the Service goes away or stops using them, and rebuilt from the stored Services at start.

use std::net::Ipv4Addr;

use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::alloc::Allocators;
use super::object::str_at;
use super::status::FieldError;

/// What an allocation changed, so it can be committed or undone.
#[derive(Debug, Default)]
pub struct Allocation {
    claimed_ips: Vec<Ipv4Addr>,
    claimed_ports: Vec<u16>,
    freed_ips: Vec<Ipv4Addr>,
    freed_ports: Vec<u16>,
}

impl Allocation {
    /// Keep the new claims and give back what the old object no longer uses.
    pub fn commit(self, alloc: &mut Allocators) {
        for ip in self.freed_ips {
            alloc.ips.release(ip);
        }
        for port in self.freed_ports {
            alloc.ports.release(port);
        }
    }
    /// Undo the claims (dry run, or a later failure).
    pub fn undo(self, alloc: &mut Allocators) {
        for ip in self.claimed_ips {
            alloc.ips.release(ip);
        }
        for port in self.claimed_ports {
            alloc.ports.release(port);
        }
    }
}

fn uses_node_ports(ty: &str) -> bool {
    ty == "NodePort" || ty == "LoadBalancer"
}

fn cluster_ip(svc: &Value) -> Option<Ipv4Addr> {
    str_at(svc, "/spec/clusterIP").parse().ok()
}

fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter(|p| *p > 0 && *p <= 65535)
        .map(|p| p as u16)
        .collect()
}

/// On update, keep what was allocated when the new object leaves it out (the real server's
/// `patchAllocatedValues`), and drop NodePorts when the new type does not use them.
pub fn carry_over(svc: &mut Value, old: &Value) {
    let ty = str_at(svc, "/spec/type").to_string();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if ty != "ExternalName" {
        let empty = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if empty
            && let Some(ip) = old
                .pointer("/spec/clusterIP")
                .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        {
            spec.insert("clusterIP".into(), ip.clone());
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                spec.insert("clusterIPs".into(), ips.clone());
            }
        }
    } else {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    let old_ports = old
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old_type = str_at(old, "/spec/type").to_string();
    for port in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(p) = port.as_object_mut() else {
            continue;
        };
        // Only an unset (or 0) nodePort is filled in; any other value is the client's, to be
        // allocated or refused.
        let has = p
            .get("nodePort")
            .and_then(Value::as_i64)
            .is_some_and(|n| n != 0);
        if uses_node_ports(&ty) && !has {
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                        == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
            });
            if let Some(np) = same
                .and_then(|o| o.get("nodePort"))
                .filter(|n| n.as_u64().is_some_and(|n| n > 0))
            {
                p.insert("nodePort".into(), np.clone());
            }
        }
        if !uses_node_ports(&ty) && uses_node_ports(&old_type) {
            p.remove("nodePort");
        }
    }
}

/// Claim the ClusterIP and NodePorts of `svc` (filling in random ones), given the stored `old`.
pub fn allocate(
    alloc: &mut Allocators,
    rng: &mut ChaCha8Rng,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<Allocation, Vec<FieldError>> {
    let mut done = Allocation::default();
    let mut errs = Vec::new();
    let ty = str_at(svc, "/spec/type").to_string();
    let old_ip = old.and_then(cluster_ip);
    // ClusterIP.
    if ty != "ExternalName" {
        let requested = str_at(svc, "/spec/clusterIP").to_string();
        if requested == "None" {
            // Headless: no address.
        } else if requested.is_empty() {
            match alloc.ips.allocate(rng) {
                Ok(ip) => {
                    done.claimed_ips.push(ip);
                    set_ip(svc, ip);
                }
                Err(e) => errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    Value::Null,
                    e.ip_detail(""),
                )),
            }
        } else {
            match requested.parse::<Ipv4Addr>() {
                Ok(ip) if Some(ip) == old_ip => set_ip(svc, ip),
                Ok(ip) => match alloc.ips.allocate_specific(ip) {
                    Ok(()) => {
                        done.claimed_ips.push(ip);
                        set_ip(svc, ip);
                    }
                    Err(e) => errs.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        requested.clone(),
                        e.ip_detail(&requested),
                    )),
                },
                Err(_) => errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    requested.clone(),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                )),
            }
        }
    }
    if let Some(ip) = old_ip
        && cluster_ip(svc) != Some(ip)
    {
        done.freed_ips.push(ip);
    }
    // NodePorts.
    let old_ports = old.map(node_ports).unwrap_or_default();
    let mut kept: Vec<u16> = Vec::new();
    if uses_node_ports(&ty) {
        let count = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(Vec::len)
            .unwrap_or(0);
        for i in 0..count {
            let port = &mut svc["spec"]["ports"][i];
            // 0 (or unset) asks for one; anything else, negative included, is a request for
            // that port, which the allocator refuses outside its range (as kube-apiserver's does).
            let requested = port.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            if requested != 0 {
                if let Some(p) = u16::try_from(requested)
                    .ok()
                    .filter(|p| old_ports.contains(p) && !kept.contains(p))
                {
                    kept.push(p);
                    continue;
                }
                match alloc.ports.allocate_specific(requested) {
                    Ok(p) => done.claimed_ports.push(p),
                    Err(e) => errs.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        requested,
                        e.port_detail(),
                    )),
                }
            } else {
                match alloc.ports.allocate(rng) {
                    Ok(p) => {
                        done.claimed_ports.push(p);
                        port["nodePort"] = json!(p);
                    }
                    Err(e) => errs.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        0,
                        e.port_detail(),
                    )),
                }
            }
        }
    }
    done.freed_ports = old_ports
        .into_iter()
        .filter(|p| !kept.contains(p))
        .collect();
    if errs.is_empty() {
        Ok(done)
    } else {
        done.undo(alloc);
        Err(errs)
    }
}

fn set_ip(svc: &mut Value, ip: Ipv4Addr) {
    svc["spec"]["clusterIP"] = json!(ip.to_string());
    svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
}

/// Give back everything `svc` holds (it is being removed).
pub fn release(alloc: &mut Allocators, svc: &Value) {
    if let Some(ip) = cluster_ip(svc) {
        alloc.ips.release(ip);
    }
    for p in node_ports(svc) {
        alloc.ports.release(p);
    }
}

/// Mark what a stored Service holds as used (start-up).
pub fn restore(alloc: &mut Allocators, svc: &Value) {
    if let Some(ip) = cluster_ip(svc)
        && let Err(e) = alloc.ips.allocate_specific(ip)
    {
        tracing::warn!(
            "stored service {} holds {ip}: {e:?}",
            str_at(svc, "/metadata/name")
        );
    }
    for p in node_ports(svc) {
        if let Err(e) = alloc.ports.allocate_specific(p.into()) {
            tracing::warn!(
                "stored service {} holds node port {p}: {e:?}",
                str_at(svc, "/metadata/name")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::alloc::{IpAllocator, PortAllocator};
    use rand::SeedableRng;

    fn allocators() -> Allocators {
        Allocators {
            ips: IpAllocator::new("10.0.0.0/24".parse().unwrap()),
            ports: PortAllocator::new(30000, 30010),
        }
    }

    #[test]
    fn lifecycle() {
        let mut alloc = allocators();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut a = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 81, "protocol": "TCP", "nodePort": 30005}]}});
        allocate(&mut alloc, &mut rng, &mut a, None)
            .unwrap()
            .commit(&mut alloc);
        let ip = str_at(&a, "/spec/clusterIP").to_string();
        assert!(ip.starts_with("10.0.0."));
        assert_eq!(a["spec"]["clusterIPs"], json!([ip]));
        assert!(alloc.ports.is_used(30005));
        // The same explicit values again are taken.
        let mut b = json!({"spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"port": 1, "nodePort": 30005}]}});
        let errs = allocate(&mut alloc, &mut rng, &mut b, None).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            vec![
                format!(
                    "spec.clusterIPs[0]: Invalid value: \"{ip}\": failed to allocate IP {ip}: provided IP is already allocated"
                ),
                "spec.ports[0].nodePort: Invalid value: 30005: provided port is already allocated"
                    .to_string(),
            ]
        );
        // Update to ClusterIP: node ports are dropped and released, the IP kept.
        let mut c = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}]}});
        carry_over(&mut c, &a);
        assert_eq!(str_at(&c, "/spec/clusterIP"), ip);
        assert!(c.pointer("/spec/ports/0/nodePort").is_none());
        allocate(&mut alloc, &mut rng, &mut c, Some(&a))
            .unwrap()
            .commit(&mut alloc);
        assert!(!alloc.ports.is_used(30005));
        release(&mut alloc, &c);
        alloc.ips.allocate_specific(ip.parse().unwrap()).unwrap();
        // Headless gets nothing.
        let mut h = json!({"spec": {"type": "ClusterIP", "clusterIP": "None", "ports": []}});
        allocate(&mut alloc, &mut rng, &mut h, None)
            .unwrap()
            .commit(&mut alloc);
        assert_eq!(str_at(&h, "/spec/clusterIP"), "None");
    }

    #[test]
    fn explicit_node_ports_outside_the_range_are_refused() {
        let mut alloc = allocators();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let svc = |np: i64| json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]}});
        for np in [-1, 1, 29999, 30011, 40000, 70000] {
            let errs = allocate(&mut alloc, &mut rng, &mut svc(np), None).unwrap_err();
            let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            assert_eq!(
                msgs,
                [format!(
                    "spec.ports[0].nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-30010"
                )]
            );
        }
        // 0 asks for one.
        let mut auto = svc(0);
        allocate(&mut alloc, &mut rng, &mut auto, None)
            .unwrap()
            .commit(&mut alloc);
        let given = auto["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=30010).contains(&given));
        // On update, -1 is not "keep the old one": it is refused like on create.
        let mut update = svc(-1);
        carry_over(&mut update, &auto);
        assert_eq!(update["spec"]["ports"][0]["nodePort"], json!(-1));
        assert!(allocate(&mut alloc, &mut rng, &mut update, Some(&auto)).is_err());
        // Leaving it out keeps the old one.
        let mut kept = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        carry_over(&mut kept, &auto);
        assert_eq!(kept["spec"]["ports"][0]["nodePort"], json!(given));
    }
}
