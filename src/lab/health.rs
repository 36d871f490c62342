//! `kemu up` waits for the cluster the way the seed's `kube-up.sh` does (`validate-cluster`):
//! first the API server answers, then every minion's Node is Ready. It asks the API server
//! from inside the master's namespace, on the lab's own port (`http://<master>:8080`), with a
//! minimal HTTP/1.1 client (one request per connection), which is all a readiness probe needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::NetNs;

/// Where a lab's API server answers: its address inside the master's namespace.
pub struct LabApi {
    pub ns: NetNs,
    pub addr: SocketAddr,
}

impl LabApi {
    /// The API server of a lab's topology.
    pub fn of(topo: &crate::topology::Topology) -> anyhow::Result<LabApi> {
        let master = topo.master();
        Ok(LabApi {
            ns: NetNs::open(&topo.host_namespace(master))?,
            addr: SocketAddr::from((master.ip, super::forward::API_PORT)),
        })
    }

    /// A connection to the API server, opened inside the master's namespace.
    pub fn connect(&self, timeout: Duration) -> anyhow::Result<TcpStream> {
        let addr = self.addr;
        Ok(self
            .ns
            .run(move || TcpStream::connect_timeout(&addr, timeout))?)
    }
}

/// GET `path` from the lab's API server; returns the status code and body.
pub fn http_get(api: &LabApi, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http_request(api, "GET", path, None, timeout)
}

/// POST a JSON `body` to `path` on the lab's API server; returns the status code and body.
pub fn http_post(
    api: &LabApi,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    http_request(api, "POST", path, Some(body), timeout)
}

fn http_request(
    api: &LabApi,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = api.connect(timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let content = body
        .map(|b| {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n{content}Connection: close\r\n\r\n{}",
        api.addr,
        body.unwrap_or_default()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Wait until `/readyz` answers 200.
pub fn wait_api(api: &LabApi, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(api, "/readyz", Duration::from_secs(1)) {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) if Instant::now() >= deadline => {
                anyhow::bail!("the API server is not ready after {timeout:?}: {code} {body}")
            }
            Err(e) if Instant::now() >= deadline => {
                anyhow::bail!("the API server did not answer within {timeout:?}: {e}")
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One node as `validate-cluster` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub ready: String,
    pub roles: String,
    pub version: String,
}

fn node_rows(api: &LabApi) -> anyhow::Result<Vec<NodeRow>> {
    let (code, body) = http_get(api, "/api/v1/nodes", Duration::from_secs(2))?;
    anyhow::ensure!(code == 200, "listing nodes: {code} {body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    let mut rows = Vec::new();
    for node in list["items"].as_array().into_iter().flatten() {
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| {
                if c["status"] == "True" {
                    "Ready"
                } else {
                    "NotReady"
                }
            })
            .unwrap_or("NotReady");
        let mut roles: Vec<String> = node["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
            .collect();
        roles.sort();
        rows.push(NodeRow {
            name: node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ready: ready.to_string(),
            roles: if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            },
            version: node["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Wait until every node in `expected` is registered and Ready; returns the final listing.
pub fn wait_nodes(
    api: &LabApi,
    expected: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<NodeRow>> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = node_rows(api).unwrap_or_default();
        let ready = expected
            .iter()
            .filter(|name| rows.iter().any(|r| &r.name == *name && r.ready == "Ready"))
            .count();
        super::progress::count("nodes Ready", ready, expected.len());
        if ready == expected.len() {
            return Ok(rows);
        }
        if Instant::now() >= deadline {
            let missing: Vec<&String> = expected
                .iter()
                .filter(|name| !rows.iter().any(|r| &r.name == *name && r.ready == "Ready"))
                .collect();
            anyhow::bail!(
                "nodes not Ready after {timeout:?}: {} (see `kemu status` and the kubelet logs under /run/kemu/<lab>/logs/)",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
