//! The built-in agnhost `netexec` ends on SIGTERM as the real one does
//! (`test/images/agnhost/netexec/netexec.go`): at once with status 0, or, with
//! `--delay-shutdown N`, after N seconds during which it keeps serving and `/readyz` answers
//! 503 "shutting down". (kemu's used to ignore SIGTERM as a PID namespace's init, so a deleted
//! pod kept answering for its whole grace period and hid stale conntrack entries.)
//!
//! The image runs as a plain process listening on loopback; only 127.0.0.1 is contacted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn netexec(port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args(["builtin-image", "agnhost", "netexec", "--udp-port=-1"])
        .arg(format!("--http-port={port}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `GET path` on 127.0.0.1:port: (status, body), or `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn wait_serving(port: u16) {
    for _ in 0..200 {
        if get(port, "/hostname").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("netexec did not start serving on {port}");
}

fn sigterm(child: &Child) {
    // The process this test started, by its PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn netexec_exits_zero_on_sigterm() {
    let port = free_port();
    let mut child = netexec(port, &[]);
    wait_serving(port);
    assert_eq!(
        get(port, "/readyz"),
        Some((412, String::new())),
        "no UDP server: 412"
    );
    sigterm(&child);
    let status = child.wait().unwrap();
    // Exited by itself with 0; without a handler it would have been killed by the signal.
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn netexec_keeps_serving_for_delay_shutdown_and_reports_not_ready() {
    let port = free_port();
    let mut child = netexec(port, &["--delay-shutdown=2"]);
    wait_serving(port);
    sigterm(&child);
    // Still serving, but no longer ready (polled until the signal has been handled).
    let mut readyz = None;
    for _ in 0..100 {
        readyz = get(port, "/readyz");
        if readyz.as_ref().is_some_and(|(code, _)| *code == 503) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(readyz, Some((503, "shutting down".to_string())));
    assert!(get(port, "/hostname").is_some_and(|(code, _)| code == 200));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
