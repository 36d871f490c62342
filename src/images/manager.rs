//! What the kubelet does before it creates a container (`pkg/kubelet/images/image_manager.go`
//! and `kuberuntime_container.go`'s `startContainer`): apply `imagePullPolicy`, back off after
//! failed pulls, pull with the pod's pull secrets, and report each step as the kubelet's
//! events and waiting reasons, in the kubelet's words.
//!
//! The decisions and the wording are pure functions (tested below); [`ImageManager::ensure`]
//! strings them together with the store and the registry client, and hands the process
//! runtime a [`PreparedImage`]: the image config and its layer directories.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::images::oci::keyring::{Keyring, PullSecret};
use crate::images::oci::reference;
use crate::images::oci::registry::{self, RegistryOptions};
use crate::images::store::index::{Query, Scope};
use crate::images::store::{PreparedImage, Store};

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy a container asks for; unset, the API server's default: `Always` for a
    /// `:latest` or untagged image, else `IfNotPresent`.
    pub fn of(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                let tagged = last.contains(':') && !last.ends_with(":latest");
                if tagged || image.contains('@') {
                    PullPolicy::IfNotPresent
                } else {
                    PullPolicy::Always
                }
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// An event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An event the kubelet records on the pod (`kubectl describe pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEvent {
    pub event_type: EventType,
    pub reason: &'static str,
    pub message: String,
}

fn normal(reason: &'static str, message: String) -> ImageEvent {
    ImageEvent {
        event_type: EventType::Normal,
        reason,
        message,
    }
}

fn warning(reason: &'static str, message: String) -> ImageEvent {
    ImageEvent {
        event_type: EventType::Warning,
        reason,
        message,
    }
}

/// Why a container waits: its `state.waiting.reason` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    pub reason: &'static str,
    pub message: String,
}

pub const ERR_IMAGE_PULL: &str = "ErrImagePull";
pub const IMAGE_PULL_BACK_OFF: &str = "ImagePullBackOff";
pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
pub const INVALID_IMAGE_NAME: &str = "InvalidImageName";

/// `Pulling image "…"`.
pub fn pulling_event(image: &str) -> ImageEvent {
    normal("Pulling", format!("Pulling image {image:?}"))
}

/// `Successfully pulled image "…" in 1.2s (1.2s including waiting). Image size: N bytes.`
pub fn pulled_event(image: &str, pull: Duration, total: Duration, size: u64) -> ImageEvent {
    normal(
        "Pulled",
        format!(
            "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {size} bytes.",
            go_duration(truncate_ms(pull)),
            go_duration(truncate_ms(total))
        ),
    )
}

/// `Container image "…" already present on machine`.
pub fn present_event(image: &str) -> ImageEvent {
    normal(
        "Pulled",
        format!("Container image {image:?} already present on machine"),
    )
}

/// kuberuntime's event for any image failure: `Error: ErrImagePull` and the like.
pub fn error_event(reason: &str) -> ImageEvent {
    warning("Failed", format!("Error: {reason}"))
}

/// A pull that failed: the event, and the container's waiting state.
pub fn pull_failed(image: &str, err: &str) -> (ImageEvent, ImageFailure) {
    (
        warning("Failed", format!("Failed to pull image {image:?}: {err}")),
        ImageFailure {
            reason: ERR_IMAGE_PULL,
            message: err.to_string(),
        },
    )
}

/// A pull skipped because of the back-off; the waiting message carries the last failure
/// (kubelet ≥ 1.32, PR #127918).
pub fn back_off(image: &str, previous: Option<&str>) -> (ImageEvent, ImageFailure) {
    let msg = format!("Back-off pulling image {image:?}");
    let message = match previous {
        Some(prev) => format!("{msg}: {prev}"),
        None => msg.clone(),
    };
    (
        normal("BackOff", msg),
        ImageFailure {
            reason: IMAGE_PULL_BACK_OFF,
            message,
        },
    )
}

/// `imagePullPolicy: Never` and the image is missing.
pub fn never_pull(image: &str) -> (ImageEvent, ImageFailure) {
    let message = format!("Container image {image:?} is not present with pull policy of Never");
    (
        warning("ErrImageNeverPull", message.clone()),
        ImageFailure {
            reason: ERR_IMAGE_NEVER_PULL,
            message,
        },
    )
}

/// An image name that does not parse.
pub fn invalid_name(image: &str, parse_error: &str) -> (ImageEvent, ImageFailure) {
    let message = format!("Failed to apply default image tag {image:?}: {parse_error}");
    (
        warning("InspectFailed", message.clone()),
        ImageFailure {
            reason: INVALID_IMAGE_NAME,
            message,
        },
    )
}

/// What to do about an image before any back-off is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    UsePresent,
    Pull,
    NeverPullMissing,
}

/// The kubelet's `imagePullPrecheck` + `shouldPullImage`.
pub fn precheck(policy: PullPolicy, present: bool) -> Precheck {
    match (policy, present) {
        (PullPolicy::Always, _) => Precheck::Pull,
        (_, true) => Precheck::UsePresent,
        (PullPolicy::IfNotPresent, false) => Precheck::Pull,
        (PullPolicy::Never, false) => Precheck::NeverPullMissing,
    }
}

fn truncate_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A duration as Go's `time.Duration.String()` prints it (`1.5s`, `2m3.004s`, `120ms`).
pub fn go_duration(d: Duration) -> String {
    fn frac(n: u128, unit: u128) -> String {
        let whole = n / unit;
        let rest = n % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let width = unit.to_string().len() - 1;
        let digits = format!("{rest:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
    let n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    if n < 1_000 {
        return format!("{n}ns");
    }
    if n < 1_000_000 {
        return format!("{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{}ms", frac(n, 1_000_000));
    }
    let secs = n / 1_000_000_000;
    let sub = n % 1_000_000_000;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let s = frac(s * 1_000_000_000 + sub, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// The kubelet's image back-off (client-go `flowcontrol.Backoff` with 10 s initial and
/// 300 s maximum delay): each failure doubles the delay; an entry untouched for twice the
/// maximum starts over. Time is passed in, so the logic is pure.
#[derive(Debug, Clone)]
pub struct BackOff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, (Duration, Instant)>,
}

impl Default for BackOff {
    fn default() -> BackOff {
        BackOff::new(Duration::from_secs(10), Duration::from_secs(300))
    }
}

impl BackOff {
    pub fn new(initial: Duration, max: Duration) -> BackOff {
        BackOff {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    fn expired(&self, now: Instant, last: Instant) -> bool {
        now.saturating_duration_since(last) > self.max * 2
    }

    /// Whether `key` is still waiting at `now`.
    pub fn is_in_back_off(&self, key: &str, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(&(delay, last)) if !self.expired(now, last) => {
                now.saturating_duration_since(last) < delay
            }
            _ => false,
        }
    }

    /// Record a failure at `now`.
    pub fn next(&mut self, key: &str, now: Instant) {
        let delay = match self.entries.get(key) {
            Some(&(delay, last)) if !self.expired(now, last) => (delay * 2).min(self.max),
            _ => self.initial,
        };
        self.entries.insert(key.to_string(), (delay, now));
    }

    /// The current delay of `key`.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|(d, _)| *d)
    }

    /// Forget entries untouched for twice the maximum delay.
    pub fn gc(&mut self, now: Instant) {
        let max = self.max;
        self.entries
            .retain(|_, (_, last)| now.saturating_duration_since(*last) <= max * 2);
    }
}

/// What the runtime asks for.
#[derive(Debug, Clone)]
pub struct EnsureRequest<'a> {
    pub pod_uid: &'a str,
    /// The image as the pod spec writes it.
    pub image: &'a str,
    pub policy: PullPolicy,
    pub pull_secrets: &'a [PullSecret],
    /// The lab whose node asks (images loaded for other labs are not present for it).
    pub lab: Option<&'a str>,
}

/// The kubelet's image manager over kemu's store: one per node agent.
pub struct ImageManager {
    store: Store,
    registry: RegistryOptions,
    backoff: Mutex<BackOff>,
    /// The last pull failure per back-off key, for the back-off message.
    previous: Mutex<HashMap<String, String>>,
}

impl ImageManager {
    pub fn new(store: Store, registry: RegistryOptions) -> ImageManager {
        ImageManager::with_backoff(store, registry, BackOff::default())
    }

    pub fn with_backoff(store: Store, registry: RegistryOptions, backoff: BackOff) -> ImageManager {
        ImageManager {
            store,
            registry,
            backoff: Mutex::new(backoff),
            previous: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Make sure the image is present (pulling it if the policy says so) and return it
    /// ready for a root filesystem. `events` gets the kubelet's events in order; an error is
    /// the container's waiting state.
    pub async fn ensure(
        &self,
        req: &EnsureRequest<'_>,
        now: Instant,
        events: &mut Vec<ImageEvent>,
    ) -> Result<PreparedImage, ImageFailure> {
        let image = req.image;
        let fail = |events: &mut Vec<ImageEvent>, (event, failure): (ImageEvent, ImageFailure)| {
            events.push(event);
            events.push(error_event(failure.reason));
            Err(failure)
        };
        let full = match reference::normalize(image) {
            Ok(full) => full,
            Err(e) => return fail(events, invalid_name(image, &e)),
        };
        let query = Query::Name(full);
        let present = self.store.find(&query, req.lab).is_ok();
        match precheck(req.policy, present) {
            Precheck::NeverPullMissing => return fail(events, never_pull(image)),
            Precheck::UsePresent => {
                events.push(present_event(image));
                return self.prepare(&query, req.lab, events);
            }
            Precheck::Pull => {}
        }

        let key = format!("{}_{image}", req.pod_uid);
        if self
            .backoff
            .lock()
            .expect("back-off lock")
            .is_in_back_off(&key, now)
        {
            let previous = self.previous.lock().expect("lock").get(&key).cloned();
            return fail(events, back_off(image, previous.as_deref()));
        }
        self.previous.lock().expect("lock").remove(&key);

        events.push(pulling_event(image));
        let started = Instant::now();
        let scope = req
            .lab
            .map_or(Scope::AllLabs, |l| Scope::Lab(l.to_string()));
        let result = self
            .pull_with_secrets(image, &scope, req.pull_secrets)
            .await;
        match result {
            Ok(size) => {
                let took = started.elapsed();
                events.push(pulled_event(image, took, took, size));
                self.backoff.lock().expect("lock").gc(now);
                self.prepare(&query, req.lab, events)
            }
            Err(err) => {
                self.backoff.lock().expect("lock").next(&key, now);
                self.previous
                    .lock()
                    .expect("lock")
                    .insert(key, format!("{ERR_IMAGE_PULL}: {err}"));
                fail(events, pull_failed(image, &err))
            }
        }
    }

    /// Pull with each matching credential in turn (anonymously when none match), as the
    /// kubelet does; the errors of every attempt are joined when all fail.
    async fn pull_with_secrets(
        &self,
        image: &str,
        scope: &Scope,
        secrets: &[PullSecret],
    ) -> Result<u64, String> {
        let keyring = Keyring::from_secrets(secrets)?;
        let repo = reference::parse(image).map_err(|e| e.to_string())?;
        let creds = keyring.lookup(&format!("{}/{}", repo.registry(), repo.repository()));
        if creds.is_empty() {
            return registry::pull(&self.store, image, scope, None, &self.registry)
                .await
                .map(|r| r.size)
                .map_err(|e| e.0);
        }
        let mut errors = Vec::new();
        for c in &creds {
            match registry::pull(&self.store, image, scope, Some(c), &self.registry).await {
                Ok(record) => return Ok(record.size),
                Err(e) => errors.push(e.0),
            }
        }
        // client-go's aggregate error: one message alone, several in brackets.
        Err(if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        })
    }

    fn prepare(
        &self,
        query: &Query,
        lab: Option<&str>,
        events: &mut Vec<ImageEvent>,
    ) -> Result<PreparedImage, ImageFailure> {
        self.store.prepare(query, lab).map_err(|e| {
            let failure = ImageFailure {
                reason: "ImageInspectError",
                message: format!("Failed to inspect image {:?}: {e}", query.shown()),
            };
            events.push(warning("InspectFailed", failure.message.clone()));
            events.push(error_event(failure.reason));
            failure
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_follows_the_tag() {
        assert_eq!(PullPolicy::of(None, "nginx"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "nginx:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "nginx:1.27"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(None, "reg:5000/app"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::of(None, "reg:5000/app:1"),
            PullPolicy::IfNotPresent
        );
        let d = format!("app@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::of(None, &d), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), "nginx"), PullPolicy::Never);
    }

    #[test]
    fn precheck_table() {
        use PullPolicy::*;
        assert_eq!(precheck(Always, true), Precheck::Pull);
        assert_eq!(precheck(Always, false), Precheck::Pull);
        assert_eq!(precheck(IfNotPresent, true), Precheck::UsePresent);
        assert_eq!(precheck(IfNotPresent, false), Precheck::Pull);
        assert_eq!(precheck(Never, true), Precheck::UsePresent);
        assert_eq!(precheck(Never, false), Precheck::NeverPullMissing);
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(120)), "120ms");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(15981)), "15.981s");
        assert_eq!(go_duration(ms(123_004)), "2m3.004s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(1500)), "1.5µs");
    }

    #[test]
    fn kubelet_wording() {
        let image = "192.168.0.100:5000/kemu/hello:nope";
        assert_eq!(
            pulling_event(image).message,
            r#"Pulling image "192.168.0.100:5000/kemu/hello:nope""#
        );
        assert_eq!(
            pulled_event(
                "hello:1",
                Duration::from_micros(15_981_700),
                Duration::from_millis(16_002),
                129
            )
            .message,
            r#"Successfully pulled image "hello:1" in 15.981s (16.002s including waiting). Image size: 129 bytes."#
        );
        assert_eq!(
            present_event("nginx").message,
            r#"Container image "nginx" already present on machine"#
        );
        let (event, failure) = never_pull("x:1");
        assert_eq!(
            (event.event_type, event.reason),
            (EventType::Warning, "ErrImageNeverPull")
        );
        assert_eq!(
            failure.message,
            r#"Container image "x:1" is not present with pull policy of Never"#
        );
        let (event, failure) = pull_failed(image, "rpc error: code = NotFound desc = boom");
        assert_eq!(event.reason, "Failed");
        assert_eq!(
            event.message,
            r#"Failed to pull image "192.168.0.100:5000/kemu/hello:nope": rpc error: code = NotFound desc = boom"#
        );
        assert_eq!(failure.reason, "ErrImagePull");
        let (event, failure) = back_off(image, Some("ErrImagePull: boom"));
        assert_eq!(
            (event.event_type, event.reason),
            (EventType::Normal, "BackOff")
        );
        assert_eq!(
            event.message,
            r#"Back-off pulling image "192.168.0.100:5000/kemu/hello:nope""#
        );
        assert_eq!(failure.reason, "ImagePullBackOff");
        assert_eq!(
            failure.message,
            r#"Back-off pulling image "192.168.0.100:5000/kemu/hello:nope": ErrImagePull: boom"#
        );
        assert_eq!(
            error_event("ImagePullBackOff").message,
            "Error: ImagePullBackOff"
        );
        let (event, failure) = invalid_name(
            "Bad:1",
            "couldn't parse image name \"Bad:1\": invalid reference format",
        );
        assert_eq!(event.reason, "InspectFailed");
        assert_eq!(failure.reason, "InvalidImageName");
        assert_eq!(
            failure.message,
            r#"Failed to apply default image tag "Bad:1": couldn't parse image name "Bad:1": invalid reference format"#
        );
    }

    #[test]
    fn back_off_doubles_caps_and_forgets() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = BackOff::default();
        assert!(!b.is_in_back_off("k", t0));
        b.next("k", t0);
        assert_eq!(b.delay("k"), Some(s(10)));
        assert!(b.is_in_back_off("k", t0 + s(9)));
        assert!(!b.is_in_back_off("k", t0 + s(10)));
        // Failures in a row: 20, 40, ... up to 300 s.
        let mut t = t0;
        for expected in [20, 40, 80, 160, 300, 300] {
            t += s(11);
            b.next("k", t);
            assert_eq!(b.delay("k"), Some(s(expected)));
        }
        // Another pod's key is separate.
        assert!(!b.is_in_back_off("other", t));
        // Quiet for more than twice the maximum: back to the first delay.
        let later = t + s(601);
        assert!(!b.is_in_back_off("k", later));
        b.next("k", later);
        assert_eq!(b.delay("k"), Some(s(10)));
        b.gc(later + s(601));
        assert_eq!(b.delay("k"), None);
    }
}
