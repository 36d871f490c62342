//! The secure port (kube-apiserver's `--secure-port`, 6443): HTTPS with a serving certificate
//! for the names pods use (`kubernetes.default.svc`, the `kubernetes` Service's ClusterIP, the
//! master's address). It is what a pod's in-cluster client reaches through the `kubernetes`
//! Service. Identity comes with the connection, as kube-apiserver's authenticators give it: a
//! client certificate signed by `--client-ca-file` names the user (CN) and groups (O); without
//! one a bearer token (a service-account token) does; without either the request is
//! `system:anonymous`, held to RBAC like everyone but `system:masters`.
//!
//! The plain port keeps its 2015 meaning (no credentials: the lab's admin); nothing outside
//! the lab's namespaces can route to either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::Service;

use super::auth::{AUTHENTICATED, User};

/// Where and with what the secure port serves.
#[derive(Debug, Clone)]
pub struct SecureConfig {
    pub listen: SocketAddr,
    /// PEM serving certificate and its key (`--tls-cert-file`, `--tls-private-key-file`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA that signs client certificates (`--client-ca-file`).
    pub client_ca_file: PathBuf,
}

/// Who the connection's TLS layer says the client is: attached to every request of a
/// connection to the secure port (its absence marks the plain port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The user of a verified client certificate, if one was presented.
    pub certificate_user: Option<User>,
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the secure port (before serving, so that start-up fails loudly on a bad address or
/// certificate).
pub async fn bind(
    config: &SecureConfig,
) -> anyhow::Result<(TcpListener, tokio_rustls::TlsAcceptor)> {
    let read =
        |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let tls = crate::tls::server_config(
        &read(&config.client_ca_file)?,
        &read(&config.cert_file)?,
        &read(&config.key_file)?,
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (secure port)", config.listen))?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(tls)))
}

/// Serve `router` on every TLS connection, forever.
pub async fn serve(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, router: Router) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut tcp = tcp;
            // Plain HTTP to the TLS port gets Go's answer, as from kube-apiserver.
            if !matches!(
                crate::tls::refused_plain_http(&mut tcp, HANDSHAKE_TIMEOUT).await,
                Ok(false)
            ) {
                return;
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("secure port: TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let peer = Peer {
                certificate_user: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| certificate_user(cert.as_ref())),
            };
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(peer.clone());
                // A Router is always ready; `call` needs no `poll_ready` first.
                router.clone().call(req)
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await
            {
                tracing::debug!("secure port connection: {e}");
            }
        });
    }
}

/// The user a (verified) client certificate names: CN the user, each O a group, as
/// kube-apiserver's x509 authenticator reads it.
pub fn certificate_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(AUTHENTICATED.into());
    Some(User {
        name,
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_user_and_groups() {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes-admin");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let user = certificate_user(cert.der()).unwrap();
        assert_eq!(user.name, "kubernetes-admin");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);
        assert!(user.is_privileged());
    }
}
