//! `kemu image load` of a 50 MB image (target: at most 2 s), as a `docker save` archive and as
//! a gzip-compressed OCI layout, into a fresh store each time; and loading it again (its layers
//! are then already unpacked). Run as root: `sudo cargo bench --bench images`.

mod common;

#[path = "../tests/images_support/mod.rs"]
mod images_support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::write_section;
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
    let fresh = |file: &std::path::Path| {
        median(
            (0..runs)
                .map(|_| {
                    let store = tempfile::tempdir().unwrap();
                    load(store.path(), file)
                })
                .collect(),
        )
    };
    let docker_fresh = fresh(&docker);
    let oci_fresh = fresh(&oci);
    let store = tempfile::tempdir().unwrap();
    load(store.path(), &docker);
    let again = median((0..runs).map(|_| load(store.path(), &docker)).collect());

    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let s = format!(
        "<!-- images:begin -->\n## Images: `kemu image load`\n\n\
         Reproduce with `sudo cargo bench --bench images` (release build, the kemu CLI as a user runs it, a fresh \
         store in a temporary directory for each run; median of {runs}). The image: two layers, 45 files of 1 MiB \
         and 4,000 files of 1 KiB in 40 directories.\n\n\
         | archive | size | load | target |\n|---|---:|---:|---:|\n\
         | `docker save` archive (plain tar) | {} | {} | ≤ 2 s |\n\
         | OCI layout tar, gzip layers, gzip archive | {} | {} | |\n\
         | the same `docker save` archive again (layers already in the store) | {} | {} | |\n\n\
         Target: loading a 50 MB archive in at most 2 s ({}).\n<!-- images:end -->\n",
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
        }
    );
    print!("{s}");
    write_section("images", &s);
}
