//! What the observing commands take as a place: `HOST`, `HOST:DEV` or `pod/NS/NAME`
//! (`pod/NAME` for the `default` namespace).

use std::fmt;

/// A place in a lab, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// A host (by name or underlay IP) and optionally one of its devices.
    Host { host: String, dev: Option<String> },
    /// A pod by namespace and name.
    Pod { namespace: String, name: String },
}

impl Point {
    /// Parse `HOST`, `HOST:DEV`, `pod/NAME` or `pod/NS/NAME`.
    pub fn parse(text: &str) -> Result<Point, String> {
        if let Some(rest) = text.strip_prefix("pod/") {
            let (namespace, name) = match rest.split_once('/') {
                Some((ns, name)) => (ns, name),
                None => ("default", rest),
            };
            if namespace.is_empty() || name.is_empty() || name.contains('/') {
                return Err(format!(
                    "{text:?}: a pod is written pod/NAMESPACE/NAME (or pod/NAME in default)"
                ));
            }
            return Ok(Point::Pod {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
        let (host, dev) = match text.split_once(':') {
            Some((host, dev)) => (host, Some(dev)),
            None => (text, None),
        };
        if host.is_empty() || dev.is_some_and(|d| d.is_empty() || d.len() > 15 || d.contains('/')) {
            return Err(format!(
                "{text:?}: expected HOST, HOST:DEVICE or pod/NAMESPACE/NAME"
            ));
        }
        Ok(Point::Host {
            host: host.to_string(),
            dev: dev.map(str::to_string),
        })
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Host { host, dev: None } => write!(f, "{host}"),
            Point::Host {
                host,
                dev: Some(dev),
            } => write!(f, "{host}:{dev}"),
            Point::Pod { namespace, name } => write!(f, "pod/{namespace}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_hosts_devices_and_pods() {
        let host = |h: &str, d: Option<&str>| Point::Host {
            host: h.into(),
            dev: d.map(Into::into),
        };
        assert_eq!(
            Point::parse("192.168.0.202"),
            Ok(host("192.168.0.202", None))
        );
        assert_eq!(
            Point::parse("192.168.0.202:flannel.1"),
            Ok(host("192.168.0.202", Some("flannel.1")))
        );
        assert_eq!(
            Point::parse("pod/kube-system/coredns-x"),
            Ok(Point::Pod {
                namespace: "kube-system".into(),
                name: "coredns-x".into()
            })
        );
        assert_eq!(
            Point::parse("pod/web").unwrap().to_string(),
            "pod/default/web"
        );
        for bad in ["pod/", "pod/a/b/c", "pod//x", "h:", ":eth0", "h:a/b"] {
            assert!(Point::parse(bad).is_err(), "{bad}");
        }
    }
}
