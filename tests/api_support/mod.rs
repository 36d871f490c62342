//! Shared helpers of the API server integration tests: start the built `kemu apiserver` on a free
//! loopback port with a temporary data directory, run the real kubectl against it, and normalise
//! outputs for snapshots.
#![allow(dead_code)]

pub mod raw;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A running `kemu apiserver`.
pub struct Server {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Server {
    /// Start the server on `127.0.0.1:0` with `data_dir`, seed 7 and the seed scenario's range.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_on(data_dir, "127.0.0.1:0")
    }

    /// Start on a given `listen` address (a restart reuses the old port).
    pub fn start_on(data_dir: &Path, listen: &str) -> Server {
        Self::start_with(data_dir, listen, &[])
    }

    /// Start on `listen` with more command-line arguments.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kemu"))
            .args([
                "apiserver",
                "--listen",
                listen,
                "--service-cluster-ip-range",
                "192.168.3.0/24",
                // No controller manager makes `default` service accounts here (as in envtest).
                "--disable-admission-plugins=ServiceAccount",
            ])
            .args([
                "--seed",
                "7",
                "--advertise-address",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kemu apiserver");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
        Server {
            child,
            port,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A kubectl binary bound to one server and its own cache directory.
pub struct Kubectl {
    pub bin: String,
    pub server: String,
    pub cache: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(bin: &str, server: &Server) -> Kubectl {
        Kubectl {
            bin: bin.to_string(),
            server: server.url(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--cache-dir={}", self.cache.path().display()))
            .arg("-s")
            .arg(&self.server)
            .args(args)
            .env("KUBECONFIG", "/dev/null")
            .stdin(Stdio::null());
        cmd
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubectl")
    }

    /// Run with a manifest on stdin (`-f -`).
    pub fn with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// `$ cmd` + stdout + stderr + exit code, as one transcript entry.
pub fn transcript(args: &[&str], out: &Output) -> String {
    let mut s = format!("$ kubectl {}\n", args.join(" "));
    s.push_str(&String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        s.push_str(&format!("[stderr] {}", err));
        if !err.ends_with('\n') {
            s.push('\n');
        }
    }
    if !out.status.success() {
        s.push_str(&format!("[exit {}]\n", out.status.code().unwrap_or(-1)));
    }
    s
}

/// insta settings with the snapshot folder and filters for values that change between runs.
pub fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(true);
    let filters: &[(&str, &str)] = &[
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]"),
        (
            r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000",
            "[DATE]",
        ),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r"resourceVersion: \x22\d+\x22", "resourceVersion: \"[RV]\""),
        (
            r"\x22resourceVersion\x22: \x22\d+\x22",
            "\"resourceVersion\": \"[RV]\"",
        ),
        (r"\b\d+(\.\d+)?(s|m\d+s|m|h\d+m|h)\b(\s|$)", "[AGE]$3"),
        (r"(?m)<invalid>", "[AGE]"),
        // Column widths follow the (filtered) values; collapse padding so they do not matter.
        (r" {2,}", "  "),
    ];
    for (re, with) in filters {
        settings.add_filter(re, *with);
    }
    settings
}

/// The kubectl builds the tests run with: the dispatcher and two fixed versions.
pub fn kubectls() -> Vec<(&'static str, &'static str)> {
    vec![
        ("dispatcher", "/usr/bin/kubectl"),
        ("v1_30", "/usr/lib/google-cloud-sdk/bin/kubectl.1.30"),
        ("v1_33", "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"),
    ]
}
