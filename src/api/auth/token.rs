//! Service-account tokens: ES256 JWTs signed with the lab CA's key, as kube-apiserver's
//! `--service-account-signing-key-file` signs them (claims of `serviceaccount.Claims`:
//! issuer, audiences, expiry, the `kubernetes.io` private claim naming namespace, service
//! account and bound object). Verification checks signature, expiry, issuer and audience; the
//! caller checks that the service account (and bound object) still exist.

use std::path::Path;

use anyhow::Context;
use data_encoding::BASE64URL_NOPAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// kube-apiserver's default issuer and API audience (`--service-account-issuer`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The key tokens are signed and verified with.
pub struct Signer {
    key: EcdsaKeyPair,
    /// `kid`: the SHA-256 of the public key, as kube-apiserver names its keys.
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer {{ kid: {} }}", self.kid)
    }
}

impl Signer {
    /// From a PEM private key (PKCS#8 ECDSA P-256: the lab CA's `ca.key`).
    pub fn from_pem(pem: &str) -> anyhow::Result<Signer> {
        let der = rcgen::KeyPair::from_pem(pem)
            .context("reading the service-account signing key (PEM)")?
            .serialize_der();
        Self::from_pkcs8(&der)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Signer> {
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("in {}", path.display()))
    }

    /// A key of this process only: tokens die with it.
    pub fn ephemeral() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system RNG works");
        Self::from_pkcs8(pkcs8.as_ref()).expect("a key just generated")
    }

    fn from_pkcs8(der: &[u8]) -> anyhow::Result<Signer> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| anyhow::anyhow!("the key is not an ECDSA P-256 PKCS#8 key: {e}"))?;
        let kid = BASE64URL_NOPAD.encode(&Sha256::digest(key.public_key().as_ref()));
        Ok(Signer { key, kid, rng })
    }

    /// A signed token with `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
            BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("signing with a valid key");
        format!(
            "{signing_input}.{}",
            BASE64URL_NOPAD.encode(signature.as_ref())
        )
    }

    /// The claims of a token this key signed, if it is still valid at `now` (unix seconds)
    /// for one of `audiences`.
    pub fn verify(&self, token: &str, audiences: &[String], now: i64) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let decode = |s: &str| {
            BASE64URL_NOPAD
                .decode(s.as_bytes())
                .map_err(|_| "bad base64".to_string())
        };
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
        if header["alg"] != "ES256" {
            return Err(format!("unsupported algorithm {}", header["alg"]));
        }
        let signing_input = &token[..token.rfind('.').expect("three parts")];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| "invalid signature".to_string())?;
        let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
        if claims["iss"] != ISSUER {
            return Err("token issuer is not accepted".into());
        }
        if claims["exp"].as_i64().is_none_or(|exp| exp < now) {
            return Err("token has expired".into());
        }
        if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60) {
            return Err("token is not valid yet".into());
        }
        let token_audiences: Vec<&str> = match &claims["aud"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| token_audiences.contains(&a.as_str()))
        {
            return Err("token audiences do not match".into());
        }
        Ok(claims)
    }
}

/// What a token is issued for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    /// The pod or secret the token is bound to: (kind, name, uid).
    pub bound: Option<(String, String, String)>,
}

/// The claims of a token for `subject`, valid from `now` for `seconds`.
pub fn claims(subject: &Subject, audiences: &[String], now: i64, seconds: i64, jti: &str) -> Value {
    let mut private = json!({
        "namespace": subject.namespace,
        "serviceaccount": {"name": subject.service_account, "uid": subject.service_account_uid},
    });
    if let Some((kind, name, uid)) = &subject.bound {
        private[kind.to_ascii_lowercase()] = json!({"name": name, "uid": uid});
    }
    json!({
        "aud": audiences,
        "exp": now + seconds,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": jti,
        "kubernetes.io": private,
        "sub": format!("system:serviceaccount:{}:{}", subject.namespace, subject.service_account),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            namespace: "default".into(),
            service_account: "robot".into(),
            service_account_uid: "u1".into(),
            bound: None,
        }
    }

    #[test]
    fn tokens_verify_only_as_signed_and_while_valid() {
        let signer = Signer::ephemeral();
        let aud = vec![ISSUER.to_string()];
        let token = signer.sign(&claims(&subject(), &aud, 1000, 3600, "j1"));
        let c = signer.verify(&token, &aud, 2000).unwrap();
        assert_eq!(c["sub"], "system:serviceaccount:default:robot");
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u1");
        assert_eq!(
            signer.verify(&token, &aud, 5000).unwrap_err(),
            "token has expired"
        );
        assert_eq!(
            signer
                .verify(&token, &["vault".to_string()], 2000)
                .unwrap_err(),
            "token audiences do not match"
        );
        // Another key, or a changed claim, breaks the signature.
        assert_eq!(
            Signer::ephemeral().verify(&token, &aud, 2000).unwrap_err(),
            "invalid signature"
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = BASE64URL_NOPAD.encode(
            claims(
                &Subject {
                    service_account: "admin".into(),
                    ..subject()
                },
                &aud,
                1000,
                3600,
                "j1",
            )
            .to_string()
            .as_bytes(),
        );
        parts[1] = &forged;
        assert_eq!(
            signer.verify(&parts.join("."), &aud, 2000).unwrap_err(),
            "invalid signature"
        );
    }

    #[test]
    fn the_lab_ca_key_signs() {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let signer = Signer::from_pem(&pem).unwrap();
        let aud = vec![ISSUER.to_string()];
        let token = signer.sign(&claims(&subject(), &aud, 0, 600, "j"));
        assert!(signer.verify(&token, &aud, 1).is_ok());
    }
}
