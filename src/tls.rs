//! TLS settings shared by the lab's two HTTPS endpoints: the supervisor's front on 127.0.0.1
//! (`lab::forward`) and the API server's in-lab secure port (`api::secure`).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// rustls's ring provider. ring has no post-quantum key exchange (rustls deprecates its
/// default for that reason); aws-lc-rs has, but needs cmake and a C toolchain to build, and the
/// endpoints only ever talk to clients of the lab on the same machine.
#[allow(deprecated)]
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The first certificate of a PEM text.
pub fn first_cert(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes()).context("read a PEM certificate")
}

/// A server presenting `cert_pem` (with `key_pem`) that verifies client certificates against
/// `client_ca_pem` but does not require one (a request without one is answered by the API's
/// own rules, not a failed handshake); HTTP/1.1 only.
pub fn server_config(
    client_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(crypto_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert(client_ca_pem)?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("read the server's key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![first_cert(cert_pem)?], key)
        .context("the server's certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Answer a client that speaks plain HTTP to a TLS port as Go's TLS server does (400, "Client
/// sent an HTTP request to an HTTPS server."); true when it did, and the connection is done. A
/// TLS handshake starts with a record of type 22, plain HTTP with a method name.
pub async fn refused_plain_http(
    stream: &mut tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(timeout, stream.peek(&mut first))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if n == 1 && first[0].is_ascii_alphabetic() {
        stream
            .write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
            .await?;
        return Ok(true);
    }
    Ok(false)
}
