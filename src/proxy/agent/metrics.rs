//! What the agent serves about itself, as kube-proxy serves it: the Prometheus text of the
//! metrics endpoint (`--metrics-bind-address`, default `127.0.0.1:10249`; names from
//! `pkg/proxy/metrics/metrics.go`), the JSON of the health endpoint
//! (`--healthz-bind-address`, default `0.0.0.0:10256`; `pkg/proxy/healthcheck/proxy_health.go`)
//! and of the per-service health check node ports of `externalTrafficPolicy: Local` services
//! (`service_health.go`). All pure; [`super::http`] serves them.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// A Prometheus histogram with kube-proxy's buckets for sync durations: exponential from
/// 1 ms, factor 2, 15 buckets (`metrics.ExponentialBuckets(0.001, 2, 15)`).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn exponential(start: f64, factor: f64, n: usize) -> Histogram {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        Histogram {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn sync_durations() -> Histogram {
        Histogram::exponential(0.001, 2.0, 15)
    }

    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} [ALPHA] {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", go_float(*bound));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", go_float(self.sum));
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A float as Prometheus' Go client prints it (`strconv.FormatFloat(v, 'g', -1, 64)`, close
/// enough: shortest round-trip digits, no exponent for the values used here).
fn go_float(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The agent's counters, updated after every sync.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub mode: String,
    pub sync_duration: Histogram,
    pub full_sync_duration: Histogram,
    pub partial_sync_duration: Histogram,
    /// Seconds since the epoch of the last successful sync.
    pub last_sync_timestamp: f64,
    /// iptables rules per table after the last sync (`sync_proxy_rules_iptables_total`)
    /// and written by it (`sync_proxy_rules_iptables_last`): (filter, nat).
    pub iptables_total: (usize, usize),
    pub iptables_last: (usize, usize),
    pub restore_failures: u64,
    pub partial_restore_failures: u64,
    pub nftables_sync_failures: u64,
    /// Services without a local endpoint for their Local policy: (internal, external).
    pub no_local_endpoints: (usize, usize),
    pub conntrack_reconciler_duration: Histogram,
    pub conntrack_deleted_entries: u64,
    pub healthz: (u64, u64),
    pub livez: (u64, u64),
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            mode: String::new(),
            sync_duration: Histogram::sync_durations(),
            full_sync_duration: Histogram::sync_durations(),
            partial_sync_duration: Histogram::sync_durations(),
            last_sync_timestamp: 0.0,
            iptables_total: (0, 0),
            iptables_last: (0, 0),
            restore_failures: 0,
            partial_restore_failures: 0,
            nftables_sync_failures: 0,
            no_local_endpoints: (0, 0),
            conntrack_reconciler_duration: Histogram::sync_durations(),
            conntrack_deleted_entries: 0,
            healthz: (0, 0),
            livez: (0, 0),
        }
    }
}

/// The nfacct counters read at scrape time (packets), when they exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NfacctReadings {
    pub ct_state_invalid_dropped: Option<u64>,
    pub localhost_nodeports_accepted: Option<u64>,
}

/// The nfacct counter names kube-proxy creates (`pkg/proxy/metrics/metrics.go`).
pub const CT_STATE_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
pub const LOCALHOST_NODEPORTS_ACCEPTED: &str = "localhost_nps_accepted_pkts";

fn gauge(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP {name} [ALPHA] {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

impl Metrics {
    /// The Prometheus text of `/metrics`, metric families sorted by name as the Go client
    /// writes them.
    pub fn render(&self, nfacct: NfacctReadings) -> String {
        let mut families: Vec<(&str, String)> = Vec::new();
        let mut add = |name: &'static str, text: String| families.push((name, text));
        let mut text = String::new();
        self.conntrack_reconciler_duration.write(
            &mut text,
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
        );
        add("kubeproxy_conntrack_reconciler_sync_duration_seconds", text);
        let mut text = String::new();
        gauge(
            &mut text,
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "counter",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            &[("", self.conntrack_deleted_entries.to_string())],
        );
        add("kubeproxy_conntrack_reconciler_deleted_entries_total", text);
        if let Some(v) = nfacct.ct_state_invalid_dropped {
            let mut text = String::new();
            gauge(
                &mut text,
                "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
                "counter",
                "packets dropped by iptables to work around conntrack problems",
                &[("", v.to_string())],
            );
            add(
                "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
                text,
            );
        }
        if let Some(v) = nfacct.localhost_nodeports_accepted {
            let mut text = String::new();
            gauge(
                &mut text,
                "kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
                "counter",
                "Number of packets accepted on nodeports of loopback interface",
                &[("", v.to_string())],
            );
            add(
                "kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
                text,
            );
        }
        let mut text = String::new();
        gauge(
            &mut text,
            "kubeproxy_proxy_healthz_total",
            "counter",
            "Cumulative proxy healthz HTTP status",
            &[
                ("code=\"200\"", self.healthz.0.to_string()),
                ("code=\"503\"", self.healthz.1.to_string()),
            ],
        );
        add("kubeproxy_proxy_healthz_total", text);
        let mut text = String::new();
        gauge(
            &mut text,
            "kubeproxy_proxy_livez_total",
            "counter",
            "Cumulative proxy livez HTTP status",
            &[
                ("code=\"200\"", self.livez.0.to_string()),
                ("code=\"503\"", self.livez.1.to_string()),
            ],
        );
        add("kubeproxy_proxy_livez_total", text);
        for (name, hist, help) in [
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                &self.full_sync_duration,
                "SyncProxyRules latency in seconds for full resyncs",
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                &self.partial_sync_duration,
                "SyncProxyRules latency in seconds for partial resyncs",
            ),
            (
                "kubeproxy_sync_proxy_rules_duration_seconds",
                &self.sync_duration,
                "SyncProxyRules latency in seconds",
            ),
        ] {
            let mut text = String::new();
            hist.write(&mut text, name, help);
            add(name, text);
        }
        if self.mode != "nftables" {
            for (name, (filter, nat), help) in [
                (
                    "kubeproxy_sync_proxy_rules_iptables_total",
                    self.iptables_total,
                    "Total number of iptables rules owned by kube-proxy",
                ),
                (
                    "kubeproxy_sync_proxy_rules_iptables_last",
                    self.iptables_last,
                    "Number of iptables rules written by kube-proxy in last sync",
                ),
            ] {
                let mut text = String::new();
                gauge(
                    &mut text,
                    name,
                    "gauge",
                    help,
                    &[
                        ("table=\"filter\"", filter.to_string()),
                        ("table=\"nat\"", nat.to_string()),
                    ],
                );
                add(name, text);
            }
            let mut text = String::new();
            gauge(
                &mut text,
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "counter",
                "Cumulative proxy iptables restore failures",
                &[("", self.restore_failures.to_string())],
            );
            add(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                text,
            );
            let mut text = String::new();
            gauge(
                &mut text,
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "counter",
                "Cumulative proxy iptables partial restore failures",
                &[("", self.partial_restore_failures.to_string())],
            );
            add(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                text,
            );
        } else {
            let mut text = String::new();
            gauge(
                &mut text,
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "counter",
                "Cumulative proxy nftables sync failures",
                &[("", self.nftables_sync_failures.to_string())],
            );
            add(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                text,
            );
        }
        let mut text = String::new();
        gauge(
            &mut text,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "gauge",
            "The last time proxy rules were successfully synced",
            &[("", go_float(self.last_sync_timestamp))],
        );
        add("kubeproxy_sync_proxy_rules_last_timestamp_seconds", text);
        let mut text = String::new();
        gauge(
            &mut text,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "gauge",
            "Number of services with a Local traffic policy and no endpoints",
            &[
                (
                    "traffic_policy=\"external\"",
                    self.no_local_endpoints.1.to_string(),
                ),
                (
                    "traffic_policy=\"internal\"",
                    self.no_local_endpoints.0.to_string(),
                ),
            ],
        );
        add("kubeproxy_sync_proxy_rules_no_local_endpoints_total", text);
        families.sort_by(|a, b| a.0.cmp(b.0));
        families.into_iter().map(|(_, t)| t).collect()
    }
}

/// Go's `time.Time.String()` of a UTC wall-clock time (without the monotonic reading, as
/// for a time that went through `atomic.Value`): `2026-12-04 22:40:00.123456789 +0000 UTC`.
pub fn go_time(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let ts =
        jiff::Timestamp::from_second(since.as_secs() as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let zoned = ts.to_zoned(jiff::tz::TimeZone::UTC);
    let nanos = since.subsec_nanos();
    let mut frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}")
    };
    while frac.ends_with('0') {
        frac.pop();
    }
    format!("{}{frac} +0000 UTC", zoned.strftime("%Y-%m-%d %H:%M:%S"))
}

/// kube-proxy's `/healthz` (with `nodeEligible`) or `/livez` body. A healthy proxy reports
/// the current time as `lastUpdated`, as upstream does for compatibility.
pub fn health_body(
    healthy: bool,
    last_updated: SystemTime,
    now: SystemTime,
    node_eligible: Option<bool>,
) -> String {
    let last = if healthy { now } else { last_updated };
    match node_eligible {
        Some(eligible) => format!(
            "{{\"lastUpdated\": {:?},\"currentTime\": {:?}, \"nodeEligible\": {eligible}}}",
            go_time(last),
            go_time(now)
        ),
        None => format!(
            "{{\"lastUpdated\": {:?},\"currentTime\": {:?}}}",
            go_time(last),
            go_time(now)
        ),
    }
}

/// The body of a service's health check node port (`hcHandler.ServeHTTP`): 200 when the
/// node has a local ready endpoint and the proxy is healthy, else 503.
pub fn service_health(
    namespace: &str,
    name: &str,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> (u16, String) {
    let code = if local_endpoints != 0 && proxy_healthy {
        200
    } else {
        503
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {namespace:?},\n\t\t\"name\": {name:?}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}"
    );
    (code, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_kube_proxys() {
        let mut h = Histogram::sync_durations();
        h.observe(0.0015);
        h.observe(0.5);
        let mut text = String::new();
        h.write(&mut text, "x", "help");
        assert!(text.contains("x_bucket{le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"0.002\"} 1\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"0.512\"} 2\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"16.384\"} 2\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"+Inf\"} 2\nx_sum 0.5015\nx_count 2\n"));
        assert_eq!(text.matches("_bucket").count(), 16);
    }

    #[test]
    fn metrics_name_nfacct_counters_only_when_they_exist() {
        let mut m = Metrics {
            mode: "iptables".into(),
            ..Metrics::default()
        };
        m.conntrack_deleted_entries = 3;
        m.iptables_total = (7, 20);
        let text = m.render(NfacctReadings::default());
        assert!(!text.contains("nfacct") && !text.contains("localhost_nodeports"));
        assert!(text.contains("kubeproxy_conntrack_reconciler_deleted_entries_total 3\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 20\n"));
        let text = m.render(NfacctReadings {
            ct_state_invalid_dropped: Some(0),
            localhost_nodeports_accepted: Some(4),
        });
        assert!(text.contains("kubeproxy_iptables_localhost_nodeports_accepted_packets_total 4\n"));
        assert!(text.contains("kubeproxy_iptables_ct_state_invalid_dropped_packets_total 0\n"));
        // Families are sorted by name.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn health_bodies_read_like_kube_proxys() {
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_796_424_000, 120_000_000);
        assert_eq!(go_time(now), "2026-12-04 22:40:00.12 +0000 UTC");
        let earlier = now - Duration::from_secs(90);
        assert_eq!(
            health_body(true, earlier, now, Some(true)),
            "{\"lastUpdated\": \"2026-12-04 22:40:00.12 +0000 UTC\",\"currentTime\": \"2026-12-04 22:40:00.12 +0000 UTC\", \"nodeEligible\": true}"
        );
        assert!(
            health_body(false, earlier, now, None).starts_with(
                "{\"lastUpdated\": \"2026-12-04 22:38:30.12 +0000 UTC\",\"currentTime\""
            )
        );
        let (code, body) = service_health("ns", "svc", 1, true);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"svc\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(service_health("ns", "svc", 0, true).0, 503);
        assert_eq!(service_health("ns", "svc", 2, false).0, 503);
    }
}
