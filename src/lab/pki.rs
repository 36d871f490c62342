//! A lab's certificates, made by `kemu up` (rcgen) and kept in `<lab>/pki/`:
//! - `ca.crt`/`ca.key`: the lab's own certificate authority;
//! - `apiserver.crt`/`.key`: the supervisor's HTTPS endpoint on 127.0.0.1 (the only way into
//!   the lab's API from the machine), valid for `127.0.0.1` and `localhost`;
//! - `apiserver-lab.crt`/`.key`: the API server's secure port inside the lab, valid for the
//!   names and addresses pods use (`kubernetes.default.svc`, the `kubernetes` Service's
//!   ClusterIP, the master's address);
//! - `admin.crt`/`.key`: the client certificate in the lab's kubeconfig (`kubernetes-admin`
//!   in `system:masters`, as kubeadm and kind name it). The endpoint serves only clients
//!   whose certificate this CA signed.
//!
//! Keys are ECDSA P-256 and written mode 0600; the CA outlives a supervisor restart
//! (`kemu repair`), so kubeconfigs handed out stay valid for the lab's whole life.

use std::path::PathBuf;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::state::LabDir;
use crate::topology::LabName;

/// The PEM texts of a lab's certificates and keys.
#[derive(Clone)]
pub struct LabPki {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub lab_server_cert: String,
    pub lab_server_key: String,
    pub admin_cert: String,
    pub admin_key: String,
}

impl std::fmt::Debug for LabPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabPki { .. }")
    }
}

/// The user name and group of the kubeconfig's client certificate.
pub const ADMIN_USER: &str = "kubernetes-admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// Certificates valid from an hour ago (clock skew) for ten years: a lab lives for minutes or
/// days, and an expired certificate would only break a long-lived one for no gain.
fn validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
}

fn name(common: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common);
    dn
}

/// What the in-lab serving certificate is valid for.
#[derive(Debug, Clone, Default)]
pub struct InLabNames {
    pub ips: Vec<std::net::IpAddr>,
    pub dns_names: Vec<String>,
}

impl InLabNames {
    /// The names kubeadm puts in the API server's certificate: `kubernetes`,
    /// `kubernetes.default`, `kubernetes.default.svc`, `kubernetes.default.svc.<domain>`, with the
    /// Service's ClusterIP and the master's address.
    pub fn of_cluster(
        service_ip: std::net::Ipv4Addr,
        master_ip: std::net::Ipv4Addr,
        cluster_domain: &str,
    ) -> InLabNames {
        InLabNames {
            ips: vec![service_ip.into(), master_ip.into()],
            dns_names: vec![
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                format!("kubernetes.default.svc.{cluster_domain}"),
            ],
        }
    }
}

/// Make a fresh CA and the three certificates it signs.
pub fn generate(lab: &LabName, in_lab: &InLabNames) -> anyhow::Result<LabPki> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("kemu-{lab}-ca"), None);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_key = KeyPair::generate().context("generate the lab CA's key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).context("sign the lab CA")?;

    let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    server.distinguished_name = name("kemu-apiserver", None);
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    validity(&mut server);
    let server_key = KeyPair::generate()?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("sign the API endpoint's certificate")?;

    let mut lab_server = CertificateParams::new(in_lab.dns_names.clone())?;
    for ip in &in_lab.ips {
        lab_server.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    lab_server.distinguished_name = name("kube-apiserver", None);
    lab_server.key_usages = server.key_usages.clone();
    lab_server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    lab_server.use_authority_key_identifier_extension = true;
    validity(&mut lab_server);
    let lab_server_key = KeyPair::generate()?;
    let lab_server_cert = lab_server
        .signed_by(&lab_server_key, &issuer)
        .context("sign the API server's in-lab certificate")?;

    let mut admin = CertificateParams::default();
    admin.distinguished_name = name(ADMIN_USER, Some(ADMIN_GROUP));
    admin.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    admin.use_authority_key_identifier_extension = true;
    validity(&mut admin);
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin
        .signed_by(&admin_key, &issuer)
        .context("sign the kubeconfig's client certificate")?;

    Ok(LabPki {
        ca_cert: issuer.pem(),
        ca_key: ca_key_pem,
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        lab_server_cert: lab_server_cert.pem(),
        lab_server_key: lab_server_key.serialize_pem(),
        admin_cert: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
    })
}

/// The in-lab serving certificate's files under `<lab>/pki/`.
pub const LAB_SERVER_CERT: &str = "apiserver-lab.crt";
pub const LAB_SERVER_KEY: &str = "apiserver-lab.key";

/// The files, with the mode each is written with.
fn files(dir: &LabDir) -> [(PathBuf, u32); 8] {
    let pki = dir.pki();
    [
        (pki.join("ca.crt"), 0o644),
        (pki.join("ca.key"), 0o600),
        (pki.join("apiserver.crt"), 0o644),
        (pki.join("apiserver.key"), 0o600),
        (pki.join(LAB_SERVER_CERT), 0o644),
        (pki.join(LAB_SERVER_KEY), 0o600),
        (pki.join("admin.crt"), 0o644),
        (pki.join("admin.key"), 0o600),
    ]
}

impl LabPki {
    fn texts(&self) -> [&str; 8] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.server_cert,
            &self.server_key,
            &self.lab_server_cert,
            &self.lab_server_key,
            &self.admin_cert,
            &self.admin_key,
        ]
    }

    /// Write every file into `<lab>/pki/`.
    pub fn save(&self, dir: &LabDir) -> anyhow::Result<()> {
        dir.owner.create_dir_all(&dir.pki())?;
        for ((path, mode), text) in files(dir).iter().zip(self.texts()) {
            dir.owner
                .write_atomic_mode(path, text.as_bytes(), *mode)
                .with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// Read them back (the supervisor, `kemu repair`).
    pub fn load(dir: &LabDir) -> anyhow::Result<LabPki> {
        let read = |i: usize| -> anyhow::Result<String> {
            let (path, _) = &files(dir)[i];
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
        };
        Ok(LabPki {
            ca_cert: read(0)?,
            ca_key: read(1)?,
            server_cert: read(2)?,
            server_key: read(3)?,
            lab_server_cert: read(4)?,
            lab_server_key: read(5)?,
            admin_cert: read(6)?,
            admin_key: read(7)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_ca_signs_a_server_and_a_client_certificate() {
        let pki = generate(&LabName::parse("seed").unwrap(), &InLabNames::default()).unwrap();
        for pem in [&pki.ca_cert, &pki.server_cert, &pki.admin_cert] {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        }
        for pem in [&pki.ca_key, &pki.server_key, &pki.admin_key] {
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        // The three keys differ: one leaked key does not give the others.
        assert_ne!(pki.ca_key, pki.server_key);
        assert_ne!(pki.server_key, pki.admin_key);
        // rustls accepts the chain: the client certificate verifies against the CA, which is
        // what the endpoint checks (the end-to-end tests use the real kubectl).
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(super::super::forward::first_cert(&pki.ca_cert).unwrap())
                .unwrap();
            std::sync::Arc::new(roots)
        };
        let provider = std::sync::Arc::new(super::super::forward::crypto_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let admin = super::super::forward::first_cert(&pki.admin_cert).unwrap();
        verifier
            .verify_client_cert(&admin, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        // A certificate of another lab's CA is refused.
        let other = generate(&LabName::parse("other").unwrap(), &InLabNames::default()).unwrap();
        let stranger = super::super::forward::first_cert(&other.admin_cert).unwrap();
        assert!(
            verifier
                .verify_client_cert(&stranger, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }
}
