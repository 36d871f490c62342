//! `kemu image load` of a 50 MB image (target: at most 2 s), as a `docker save` archive and as
//! a gzip-compressed OCI layout, into a fresh store each time; and loading it again (its layers
//! are then already unpacked); then, in a lab, a pod's start with its image already in the
//! store (target: p50 at most 100 ms), against the built-in nginx in the same run. Run as
//! root: `sudo cargo bench --bench images`.

mod common;

#[path = "../tests/images_support/mod.rs"]
mod images_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabApi, api, lab_api, write_section};
use images_support::{Entry, docker_archive, gzip, layer, oci_layout, tar_dir};

/// Incompressible bytes, deterministic (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn layers() -> Vec<Vec<u8>> {
    // 45 files of 1 MiB, and 4,000 small files of 1 KiB in 40 directories: about 50 MB.
    let big: Vec<(String, Vec<u8>)> = (0..45)
        .map(|i| (format!("big/{i}.bin"), noise(1 << 20, i)))
        .collect();
    let mut entries = vec![Entry::Dir("big", 0o755)];
    entries.extend(big.iter().map(|(p, d)| Entry::File(p, 0o644, d)));
    let small: Vec<(String, Vec<u8>)> = (0..4000)
        .map(|i| (format!("small/d{}/f{i}", i % 40), noise(1024, 1000 + i)))
        .collect();
    let dirs: Vec<String> = (0..40).map(|d| format!("small/d{d}")).collect();
    let mut second = vec![Entry::Dir("small", 0o755)];
    second.extend(dirs.iter().map(|d| Entry::Dir(d, 0o755)));
    second.extend(small.iter().map(|(p, d)| Entry::File(p, 0o644, d)));
    vec![layer(&entries), layer(&second)]
}

fn load(store: &std::path::Path, file: &std::path::Path) -> Duration {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .env("KEMU_IMAGE_DIR", store)
        .args(["image", "load"])
        .arg(file)
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

const LAB: &str = "imgbench";
const HOSTS: [&str; 3] = ["192.168.0.201", "192.168.0.202", "192.168.0.203"];
/// Pods started one after another, per image.
const PODS: usize = 20;

/// The pod-start image: the kemu binary, serving agnhost's netexec on port 80.
fn pod_image(work: &std::path::Path) -> std::path::PathBuf {
    let kemu = std::fs::read(env!("CARGO_BIN_EXE_kemu")).unwrap();
    let layers = vec![layer(&[
        Entry::Dir("bin", 0o755),
        Entry::File("bin/kemu", 0o755, &kemu),
    ])];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", images_support::sha256_hex(l)))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/kemu", "builtin-image", "agnhost"],
                   "Cmd": ["netexec", "--http-port=80", "--udp-port=-1"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": [],
    }))
    .unwrap();
    let path = work.join("web.tar");
    std::fs::write(
        &path,
        images_support::docker_archive_with_config(&["bench/web:1"], &layers, config, None),
    )
    .unwrap();
    path
}

/// Start `PODS` pods of `image` one at a time; each one's time from its create request until
/// the API shows it Running and its port 80 answers a TCP connect from another node.
fn pod_starts(lab: LabApi, image: &str) -> Vec<Duration> {
    use kemu::netns::NetNs;
    use std::net::{SocketAddr, TcpStream};
    let namespaces: Vec<NetNs> = HOSTS
        .iter()
        .map(|h| NetNs::open(&format!("kemu-{LAB}-{h}")).unwrap())
        .collect();
    let mut times = Vec::new();
    for i in 0..PODS {
        let name = format!("p{i}");
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 80}]}],
                     "terminationGracePeriodSeconds": 0}})
        .to_string();
        let t = Instant::now();
        let (code, body) = api(lab, "POST", "/api/v1/namespaces/default/pods", Some(&pod));
        assert_eq!(code, 201, "{body}");
        let deadline = t + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "pod {name} of {image} did not come up"
            );
            let (_, body) = api(
                lab,
                "GET",
                &format!("/api/v1/namespaces/default/pods/{name}"),
                None,
            );
            let item: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let (Some("Running"), Some(ip), Some(node)) = (
                item["status"]["phase"].as_str(),
                item["status"]["podIP"].as_str(),
                item["spec"]["nodeName"].as_str(),
            ) {
                let from = HOSTS.iter().position(|h| *h != node).unwrap();
                let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
                let reached = namespaces[from]
                    .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                    .is_ok();
                if reached {
                    times.push(t.elapsed());
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        api(
            lab,
            "DELETE",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            Some(r#"{"gracePeriodSeconds":0}"#),
        );
        let gone = Instant::now() + Duration::from_secs(60);
        while api(
            lab,
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .0 != 404
        {
            assert!(Instant::now() < gone, "pod {name} was not deleted");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    times
}

fn kemu_cmd(store: &std::path::Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .env("KEMU_IMAGE_DIR", store)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kemu {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let layers = layers();
    let docker = work.path().join("docker.tar");
    std::fs::write(
        &docker,
        docker_archive(&["bench/fifty:1"], &layers, &["/x"], None),
    )
    .unwrap();
    let layout = work.path().join("layout");
    oci_layout(&layout, "docker.io/bench/fifty:oci", &layers, &["/x"]);
    let oci = work.path().join("oci.tar.gz");
    std::fs::write(&oci, gzip(&tar_dir(&layout))).unwrap();
    let size = std::fs::metadata(&docker).unwrap().len();
    let oci_size = std::fs::metadata(&oci).unwrap().len();

    let runs = 5;
    // The stores are removed only at the end: on an ext4 without a journal (as on the CI
    // machine) the inode allocator skips inodes freed in the last minutes one by one
    // (`recently_deleted`), so loading right after deleting the previous store's 4,000 files
    // measured that scan (9-12 s) rather than the load.
    let mut stores = Vec::new();
    let mut fresh = |file: &std::path::Path| {
        median(
            (0..runs)
                .map(|_| {
                    let store = tempfile::tempdir().unwrap();
                    let took = load(store.path(), file);
                    stores.push(store);
                    took
                })
                .collect(),
        )
    };
    let docker_fresh = fresh(&docker);
    let oci_fresh = fresh(&oci);
    let store = tempfile::tempdir().unwrap();
    load(store.path(), &docker);
    let again = median((0..runs).map(|_| load(store.path(), &docker)).collect());

    // Pod starts with the image in the store, and with the built-in nginx, in one lab.
    let pod_store = tempfile::tempdir().unwrap();
    let _ = Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["down", LAB])
        .output();
    kemu_cmd(
        pod_store.path(),
        &[
            "up",
            "topologies/seed.yaml",
            "--name",
            LAB,
            "--no-kubeconfig",
        ],
    );
    kemu_cmd(
        pod_store.path(),
        &[
            "image",
            "load",
            "--lab",
            LAB,
            pod_image(work.path()).to_str().unwrap(),
        ],
    );
    let lab = lab_api(LAB);
    let stored = median(pod_starts(lab, "bench/web:1"));
    let builtin = median(pod_starts(lab, "nginx"));
    kemu_cmd(pod_store.path(), &["down", LAB]);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);

    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let s = format!(
        "<!-- images:begin -->\n## Images: `kemu image load`\n\n\
         Reproduce with `sudo cargo bench --bench images` (release build, the kemu CLI as a user runs it, a fresh \
         store in a temporary directory for each run, all removed only at the end: on an ext4 without a journal, \
         files created within minutes of many deletions hit the inode allocator's linear skip of recently freed \
         inodes, which made earlier runs of this benchmark measure its own clean-up, 9-20 s; median of {runs}). \
         The image: two layers, 45 files of 1 MiB and 4,000 files of 1 KiB in 40 directories.\n\n\
         | archive | size | load | target |\n|---|---:|---:|---:|\n\
         | `docker save` archive (plain tar) | {} | {} | ≤ 2 s |\n\
         | OCI layout tar, gzip layers, gzip archive | {} | {} | |\n\
         | the same `docker save` archive again (layers already in the store) | {} | {} | |\n\n\
         Target: loading a 50 MB archive in at most 2 s ({}).\n\n\
         Pod start with the image in the store: a seed lab (`kemu up` with `KEMU_IMAGE_DIR` on a fresh store), an \
         image holding only the kemu binary (agnhost's netexec on port 80) loaded with `kemu image load --lab`; \
         {PODS} pods created one after another through the API (the scheduler places them); each one's time from \
         its create request until the API shows it Running and its port 80 answers a TCP connect from another node. \
         The built-in nginx, measured the same way in the same lab, is the anchor.\n\n\
         | image | pod start p50 | target |\n|---|---:|---:|\n\
         | `bench/web:1` from the store (own root filesystem: idmapped layers, overlay, pivot_root) | {} | ≤ 100 ms |\n\
         | built-in `nginx` (host filesystem, read-only) | {} | |\n\n\
         Target: a pod of a stored image Running and reachable in at most 100 ms at p50 ({}).\n<!-- images:end -->\n",
        mb(size),
        secs(docker_fresh),
        mb(oci_size),
        secs(oci_fresh),
        mb(size),
        secs(again),
        if docker_fresh <= Duration::from_secs(2) {
            "met"
        } else {
            "NOT met"
        },
        ms(stored),
        ms(builtin),
        if stored <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        }
    );
    print!("{s}");
    write_section("images", &s);
}
