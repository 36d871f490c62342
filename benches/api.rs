//! Benchmark of `kemu apiserver` (issue 3): latency of get, list and create with 1k and 10k
//! pods, 1,000 concurrent watchers receiving one change, and the server's memory with 10k pods;
//! (issue 14) the discovery and OpenAPI documents kubectl fetches. Writes its section of
//! BENCHMARKS.md.
//!
//!     cargo bench --bench api

mod common;

use common::write_section;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

type Sender = SendRequest<Full<Bytes>>;

async fn connect(port: u16) -> Sender {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn request(
    s: &mut Sender,
    method: &str,
    path: &str,
    body: Option<String>,
    ctype: &str,
) -> (u16, Bytes) {
    s.ready().await.expect("connection ready");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", ctype)
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = s.send_request(req).await.expect("request");
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (code, body)
}

/// The discovery and OpenAPI documents kubectl asks for, with the Accept it sends.
const DOCUMENTS: &[(&str, &str)] = &[
    ("/api", AGGREGATED),
    ("/apis", AGGREGATED),
    ("/api/v1", "application/json"),
    ("/apis/apps/v1", "application/json"),
    ("/openapi/v3", "application/json"),
    ("/openapi/v3/api/v1", "application/json"),
    ("/openapi/v3/apis/apps/v1", "application/json"),
    (
        "/openapi/v2",
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    ),
];

const AGGREGATED: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";

/// p50, p99 and size of each document over 300 sequential GETs on one connection.
async fn documents(port: u16) -> Vec<(&'static str, Duration, Duration, usize)> {
    let mut s = connect(port).await;
    let mut rows = Vec::new();
    for (path, accept) in DOCUMENTS {
        let mut lat = Vec::new();
        let mut size = 0;
        for _ in 0..300 {
            s.ready().await.expect("connection ready");
            let req = Request::builder()
                .uri(*path)
                .header("host", "127.0.0.1")
                .header("accept", *accept)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let t = Instant::now();
            let resp = s.send_request(req).await.expect("request");
            let code = resp.status().as_u16();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            lat.push(t.elapsed());
            assert_eq!(code, 200, "{path}");
            size = body.len();
        }
        rows.push((
            *path,
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            size,
        ));
    }
    rows
}

fn pod(i: usize) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "namespace": "default", "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                 "env": [{"name": "INDEX", "value": i.to_string()}]}]}
    })
    .to_string()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    pods: usize,
    create: (Duration, Duration),
    get: (Duration, Duration),
    list: (Duration, Duration),
    list_bytes: usize,
}

async fn measure(port: u16, from: usize, to: usize) -> Row {
    // Create: 8 clients in parallel, each request timed.
    let mut tasks = Vec::new();
    let per = (to - from).div_ceil(8);
    for w in 0..8 {
        let range = (from + w * per)..(from + ((w + 1) * per).min(to - from));
        tasks.push(tokio::spawn(async move {
            let mut s = connect(port).await;
            let mut lat = Vec::new();
            for i in range {
                let t = Instant::now();
                let (code, body) = request(
                    &mut s,
                    "POST",
                    "/api/v1/namespaces/default/pods",
                    Some(pod(i)),
                    "application/json",
                )
                .await;
                lat.push(t.elapsed());
                assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
            }
            lat
        }));
    }
    let mut create = Vec::new();
    for t in tasks {
        create.extend(t.await.unwrap());
    }
    let mut s = connect(port).await;
    let mut get = Vec::new();
    for i in 0..1000 {
        let name = format!("bench-{:05}", (i * 7919) % to);
        let t = Instant::now();
        let (code, _) = request(
            &mut s,
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
            "application/json",
        )
        .await;
        get.push(t.elapsed());
        assert_eq!(code, 200);
    }
    let mut list = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let (code, body) = request(
            &mut s,
            "GET",
            "/api/v1/namespaces/default/pods?limit=500",
            None,
            "application/json",
        )
        .await;
        list.push(t.elapsed());
        assert_eq!(code, 200);
        list_bytes = body.len();
    }
    Row {
        pods: to,
        create: (percentile(&mut create, 0.5), percentile(&mut create, 0.99)),
        get: (percentile(&mut get, 0.5), percentile(&mut get, 0.99)),
        list: (percentile(&mut list, 0.5), percentile(&mut list, 0.99)),
        list_bytes,
    }
}

/// Open `n` watches, change one pod, and time how long each watcher takes to see it.
async fn watchers(port: u16, n: usize) -> (Duration, Duration, Duration) {
    let mut s = connect(port).await;
    // The list's resourceVersion is the current one (the pod's own may be older than the
    // server's watch history after 10k creations).
    let (_, body) = request(
        &mut s,
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dbench-00000",
        None,
        "application/json",
    )
    .await;
    let rv =
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
    let (go_tx, _) = tokio::sync::broadcast::channel::<Instant>(1);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let ready_tx = ready_tx.clone();
        let mut go = go_tx.subscribe();
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = connect(port).await;
            w.ready().await.unwrap();
            let req = Request::builder()
                .uri(format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dbench-00000"))
                .header("host", "127.0.0.1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = w.send_request(req).await.unwrap();
            let mut body = resp.into_body();
            ready_tx.send(()).await.unwrap();
            let started = go.recv().await.unwrap();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data()
                    && data.windows(8).any(|w| w == b"MODIFIED")
                {
                    return Instant::now() - started;
                }
            }
            panic!("watch ended without the change");
        }));
    }
    for _ in 0..n {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    go_tx.send(started).unwrap();
    let patch = r#"{"metadata":{"labels":{"changed":"yes"}}}"#.to_string();
    let (code, _) = request(
        &mut s,
        "PATCH",
        "/api/v1/namespaces/default/pods/bench-00000",
        Some(patch),
        "application/merge-patch+json",
    )
    .await;
    assert_eq!(code, 200);
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    let max = *seen.iter().max().unwrap();
    (percentile(&mut seen, 0.5), percentile(&mut seen, 0.99), max)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap()
}

/// Kills the server even when the benchmark panics.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kemu"))
        .args([
            "apiserver",
            "--listen",
            "127.0.0.1:0",
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start kemu apiserver");
    let mut child = Server(child);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rss_empty = rss_kib(child.0.id());
    let (docs, r1k, r10k, watch) = rt.block_on(async {
        let docs = documents(port).await;
        let r1k = measure(port, 0, 1000).await;
        let r10k = measure(port, 1000, 10000).await;
        let watch = watchers(port, 1000).await;
        (docs, r1k, r10k, watch)
    });
    let rss_10k = rss_kib(child.0.id());
    drop(child);

    let mut section = String::from("<!-- api:begin -->\n## API server\n\n");
    section.push_str(&format!(
        "Reproduce with `cargo bench --bench api` (release build; the server and the client share this machine's {} cores; \
         the store is the default durable log in a temp directory). Pods are created by 8 concurrent clients; gets and lists \
         are sequential on one keep-alive connection; lists are plain JSON `PodList`s of the namespace.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    section.push_str("| pods stored | create p50 / p99 | get p50 / p99 | list (all pods) p50 / p99 | list size |\n|---:|---:|---:|---:|---:|\n");
    for r in [&r1k, &r10k] {
        section.push_str(&format!(
            "| {} | {} / {} | {} / {} | {} / {} | {:.1} MiB |\n",
            r.pods,
            ms(r.create.0),
            ms(r.create.1),
            ms(r.get.0),
            ms(r.get.1),
            ms(r.list.0),
            ms(r.list.1),
            r.list_bytes as f64 / 1048576.0
        ));
    }
    section.push_str(&format!(
        "\n1,000 concurrent watchers (one connection each) of one pod; time from the PATCH being sent until each watcher \
         has the MODIFIED event: p50 {}, p99 {}, last {}.\n\nAPI server memory (RSS): {} MiB empty, {} MiB with 10,000 pods \
         and 1,000 closed watches.\n\nTargets: list of 10k pods under 100 ms ({}); a change reaches 1,000 watchers in under \
         100 ms ({}).\n<!-- api:end -->\n",
        ms(watch.0),
        ms(watch.1),
        ms(watch.2),
        rss_empty / 1024,
        rss_10k / 1024,
        if r10k.list.1 < Duration::from_millis(100) { "met" } else { "missed" },
        if watch.2 < Duration::from_millis(100) { "met" } else { "missed" },
    ));
    // The documents' table goes before the end marker.
    let end = section.rfind("<!-- api:end -->").expect("written above");
    let mut docs_text = String::from(
        "\nDiscovery and OpenAPI documents as kubectl fetches them (aggregated discovery for `/api` and `/apis`, \
         protobuf for OpenAPI v2), 300 sequential GETs each on one keep-alive connection of an empty server:\n\n\
         | document | p50 / p99 | size |\n|---|---:|---:|\n",
    );
    for (path, p50, p99, size) in &docs {
        docs_text.push_str(&format!(
            "| `{path}` | {} / {} | {:.1} KiB |\n",
            ms(*p50),
            ms(*p99),
            *size as f64 / 1024.0
        ));
    }
    let slowest = docs.iter().map(|d| d.2).max().unwrap_or_default();
    docs_text.push_str(&format!(
        "\nTarget: every document served in 5 ms or less at p99 ({}).\n",
        if slowest <= Duration::from_millis(5) {
            "met"
        } else {
            "missed"
        }
    ));
    section.insert_str(end, &docs_text);
    print!("{section}");
    write_section("api", &section);
}
