//! Container images: kemu's built-in images (this file and `agnhost`, `nginx`, `pause`), and
//! the image store shared by all labs (`store`), filled from archives and registries (`oci`),
//! with the kubelet's pull policy, back-off and events on top (`manager`).
//!
//! A pod that names one of a few well-known images runs a small program built into the kemu
//! binary (`kemu builtin-image <name> [args...]`), which answers on the
//! network the way the real image does: the default page and headers of `nginx`, the
//! `serve-hostname`/`netexec`/`pause` subcommands of Kubernetes' test image `agnhost`, and the
//! `pause` image. A stored image of the same name wins over a built-in one (see
//! `manager::image_source`).
//!
//! The image programs run once per pod, so they stay small: a current-thread tokio runtime, no
//! large buffers, nothing started that a request does not need.

pub mod agnhost;
pub mod config;
pub mod coredns;
pub(crate) mod http;
pub mod manager;
pub mod nginx;
pub mod oci;
pub mod pause;
pub mod store;

use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// An image kemu runs from its own binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinImage {
    /// `nginx`, any tag or registry: the nginx welcome page.
    Nginx,
    /// `registry.k8s.io/e2e-test-images/agnhost` (and older locations, `kemu/agnhost`).
    Agnhost,
    /// `registry.k8s.io/pause`, `kemu/pause`: sleeps until SIGTERM.
    Pause,
    /// `registry.k8s.io/coredns/coredns`: the cluster DNS server.
    Coredns,
}

/// The images that are built in, as shown in error messages.
pub const BUILTIN_IMAGES: &[&str] = &[
    "nginx",
    "registry.k8s.io/e2e-test-images/agnhost",
    "kemu/agnhost",
    "registry.k8s.io/pause",
    "kemu/pause",
    "registry.k8s.io/coredns/coredns",
];

/// `BUILTIN_IMAGES` as one line for messages: "nginx, registry.k8s.io/…, …".
pub fn builtin_list() -> String {
    BUILTIN_IMAGES.join(", ")
}

impl BuiltinImage {
    /// The built-in image an image reference names, if any.
    ///
    /// The tag, digest and registry do not matter: only the last path component of the
    /// repository does (`nginx:1.27`, `docker.io/library/nginx:latest` and a mirror's
    /// `mirror.example/library/nginx` are all nginx; every location agnhost was published at
    /// ends in `agnhost`).
    pub fn resolve(image: &str) -> Option<BuiltinImage> {
        let repository = image_repository(image);
        let last = repository.rsplit('/').next().unwrap_or(repository);
        match last {
            "nginx" => Some(BuiltinImage::Nginx),
            "agnhost" => Some(BuiltinImage::Agnhost),
            "pause" | "pause-amd64" => Some(BuiltinImage::Pause),
            "coredns" => Some(BuiltinImage::Coredns),
            _ => None,
        }
    }

    /// The name given to `kemu builtin-image`.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinImage::Nginx => "nginx",
            BuiltinImage::Agnhost => "agnhost",
            BuiltinImage::Pause => "pause",
            BuiltinImage::Coredns => "coredns",
        }
    }

    /// Whether a container `command:` whose first word is `program` runs the image's own
    /// program (`nginx -g 'daemon off;'`, `/agnhost netexec`, `/pause`) rather than another
    /// program the real image happens to contain (`sh -c ...`).
    pub fn is_entrypoint(self, program: &str) -> bool {
        let base = program.rsplit('/').next().unwrap_or(program);
        base == self.name()
    }

    /// Parse a `kemu builtin-image` name.
    pub fn from_name(name: &str) -> Option<BuiltinImage> {
        [
            BuiltinImage::Nginx,
            BuiltinImage::Agnhost,
            BuiltinImage::Pause,
            BuiltinImage::Coredns,
        ]
        .into_iter()
        .find(|image| image.name() == name)
    }
}

/// The repository part of an image reference: without digest, tag and surrounding space.
fn image_repository(image: &str) -> &str {
    let image = image.trim();
    let image = image.split('@').next().unwrap_or(image);
    // A tag follows the last ':' only if no '/' comes after it ("host:5000/nginx" has none).
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

/// Run a built-in image's program: the body of `kemu builtin-image <name> [args...]`.
pub fn run(name: &str, args: Vec<String>) -> anyhow::Result<ExitCode> {
    match BuiltinImage::from_name(name) {
        Some(BuiltinImage::Nginx) => nginx::main(args),
        Some(BuiltinImage::Agnhost) => agnhost::main(args),
        Some(BuiltinImage::Pause) => pause::main(args),
        Some(BuiltinImage::Coredns) => coredns::main(args),
        None => anyhow::bail!(
            "no built-in image {name:?}: the built-in images are nginx, agnhost, pause and coredns"
        ),
    }
}

/// A current-thread tokio runtime: one per image process, one thread, small.
fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Times in the formats the real images print. Containers run in UTC.
mod clock {
    use jiff::{Timestamp, tz::TimeZone};

    /// `Mon, 01 Jul 2024 10:00:00 GMT` (HTTP `Date`, `Last-Modified`).
    pub fn http_date(at: Timestamp) -> String {
        at.to_zoned(TimeZone::UTC)
            .strftime("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
    }

    /// `01/Jul/2024:10:00:00 +0000` (nginx `$time_local`).
    pub fn nginx_local(at: Timestamp) -> String {
        at.to_zoned(TimeZone::UTC)
            .strftime("%d/%b/%Y:%H:%M:%S %z")
            .to_string()
    }

    /// `2024/07/01 10:00:00` (nginx error log and Go's `log` package).
    pub fn log_prefix(at: Timestamp) -> String {
        at.to_zoned(TimeZone::UTC)
            .strftime("%Y/%m/%d %H:%M:%S")
            .to_string()
    }

    /// Print a line the way Go's `log.Printf` does (stderr, date and time first).
    pub fn go_log(message: &str) {
        eprintln!("{} {message}", log_prefix(Timestamp::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_nginx_with_any_tag_or_registry() {
        for image in [
            "nginx",
            "nginx:1.27",
            "docker.io/library/nginx:latest",
            "library/nginx",
            "mirror.example:5000/library/nginx:1.25-alpine",
            "nginx@sha256:0123abcd",
        ] {
            assert_eq!(
                BuiltinImage::resolve(image),
                Some(BuiltinImage::Nginx),
                "{image}"
            );
        }
    }

    #[test]
    fn resolves_agnhost_at_every_published_location() {
        for image in [
            "kemu/agnhost",
            "registry.k8s.io/e2e-test-images/agnhost:2.53",
            "k8s.gcr.io/e2e-test-images/agnhost:2.39",
            "gcr.io/kubernetes-e2e-test-images/agnhost:2.8",
        ] {
            assert_eq!(
                BuiltinImage::resolve(image),
                Some(BuiltinImage::Agnhost),
                "{image}"
            );
        }
    }

    #[test]
    fn resolves_pause() {
        for image in [
            "registry.k8s.io/pause:3.10",
            "kemu/pause",
            "k8s.gcr.io/pause",
        ] {
            assert_eq!(
                BuiltinImage::resolve(image),
                Some(BuiltinImage::Pause),
                "{image}"
            );
        }
    }

    #[test]
    fn other_images_are_not_built_in() {
        for image in [
            "debian",
            "busybox:1.36",
            "nginxinc/nginx-unprivileged",
            "registry.k8s.io/e2e-test-images/busybox:1.36",
            "localhost:5000/nginx-debug",
            "",
        ] {
            assert_eq!(BuiltinImage::resolve(image), None, "{image}");
        }
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        assert_eq!(image_repository("host:5000/nginx"), "host:5000/nginx");
        assert_eq!(image_repository("host:5000/nginx:1.2"), "host:5000/nginx");
    }

    #[test]
    fn entrypoints_match_by_basename() {
        assert!(BuiltinImage::Agnhost.is_entrypoint("/agnhost"));
        assert!(BuiltinImage::Nginx.is_entrypoint("nginx"));
        assert!(BuiltinImage::Pause.is_entrypoint("/pause"));
        assert!(!BuiltinImage::Nginx.is_entrypoint("sh"));
    }

    #[test]
    fn clock_formats() {
        let at: jiff::Timestamp = "2024-05-28T13:22:30Z".parse().unwrap();
        assert_eq!(clock::http_date(at), "Tue, 28 May 2024 13:22:30 GMT");
        assert_eq!(clock::nginx_local(at), "28/May/2024:13:22:30 +0000");
        assert_eq!(clock::log_prefix(at), "2024/05/28 13:22:30");
    }
}
