//! The Docker runtime's test image, made here since nothing can be pulled: the static busybox
//! of Debian's busybox-static (httpd, sh, ip, cat, ...) and the nginx welcome page, imported
//! with `docker import`; its entrypoint serves the page on port 80 (`httpd -v` logs each
//! request to stderr). Shared by tests/runtime_docker.rs and benches/docker.rs.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

pub const WELCOME: &str = "Welcome to nginx!";

/// The test image: busybox (httpd, sh, ip, cat) and the welcome page, imported from a tar
/// unless the engine has it already (each import would leave the last one untagged).
pub fn import_image(image: &str) {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return;
    }
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let page = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<title>{WELCOME}</title>\n</head>\n<body>\n<h1>{WELCOME}</h1>\n</body>\n</html>\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, data) in [
        ("bin/busybox", 0o755, busybox.as_slice()),
        ("www/index.html", 0o644, page.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, path, data).unwrap();
    }
    // Applets as symlinks to busybox.
    for applet in ["sh", "cat", "ip", "hostname", "sleep", "echo", "wc"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let bytes = tar.into_inner().unwrap();
    let mut child = Command::new("docker")
        .args([
            "import",
            "--change",
            r#"ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-v", "-p", "80", "-h", "/www"]"#,
            "--change",
            "ENV PATH=/bin",
            "-",
            image,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker import");
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker import failed (is dockerd running? ci/bootstrap.sh deps starts it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
