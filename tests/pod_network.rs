//! Pod network sandboxes on a real lab: a pod namespace wired to the host's cbr0 gets an
//! address from the host's subnet, is reached from another host through the overlay, and
//! leaves no namespace, veth or address behind when destroyed.

mod common;

use std::time::Duration;

use common::*;
use kemu::kubelet::ipam::Ipam;
use kemu::kubelet::sandbox::{self, PodNetConfig};
use kemu::lab::state::LabDir;
use kemu::netns::NetNs;

#[test]
fn a_pod_sandbox_is_reachable_across_hosts_and_cleaned_up() {
    let lab = Lab::up("topologies/seed.yaml", "pod", &["--network-only"]);
    let dir = LabDir::new(&kemu::topology::LabName::parse(&lab.name).unwrap()).unwrap();
    let cfg = PodNetConfig {
        lab: lab.name.clone(),
        subnet: "172.16.1.0/24".parse().unwrap(),
        mtu: 1450,
    };
    let ipam_dir = dir.host_dir("192.168.0.201").join("kubelet-ipam");
    let ipam = Ipam::new(cfg.subnet, &ipam_dir).unwrap();
    let uid = "0a1b2c3d-pod-uid";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host_ns = NetNs::open(&lab.ns("192.168.0.201")).unwrap();
    let net = rt.block_on(async {
        let host = kemu::netlink::Netlink::open(&host_ns).unwrap();
        sandbox::create(&host, &dir, &cfg, &ipam, uid, "default/test", None)
            .await
            .unwrap()
    });
    assert_eq!(net.ip.to_string(), "172.16.1.2");
    assert!(
        net.namespace
            .starts_with(&format!("kemu-{}-pod-", lab.name))
    );
    // The namespace is journaled, so `down` would remove it even if we did not.
    let journal = std::fs::read_to_string(dir.journal()).unwrap();
    assert!(journal.contains(&net.namespace));

    let addr = serve_in(&net.namespace, "172.16.1.2:8080", "from the pod");
    let reply = fetch_from(&lab.ns("192.168.0.203"), addr, Duration::from_secs(2)).unwrap();
    assert_eq!(reply, "from the pod");
    let routes = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-n", &net.namespace, "route"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        routes.contains("default via 172.16.1.1 dev eth0"),
        "{routes}"
    );
    let link = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args([
                "-n",
                &lab.ns("192.168.0.201"),
                "-d",
                "link",
                "show",
                &net.host_veth,
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        link.contains("mtu 1450") && link.contains("master cbr0") && link.contains("hairpin on"),
        "{link}"
    );

    rt.block_on(async {
        let host = kemu::netlink::Netlink::open(&host_ns).unwrap();
        sandbox::destroy(&host, &cfg, &ipam, uid).await.unwrap();
    });
    assert!(!kemu::netns::exists(&net.namespace));
    let links = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-n", &lab.ns("192.168.0.201"), "-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!links.contains(&net.host_veth), "veth left behind: {links}");
    assert!(ipam.allocations().is_empty());
}
