//! The pod-template-hash, as kube's `controller.ComputeHash`: FNV-32a over go-spew's text of
//! the template ([`super::spew`]), then the collision count (4 bytes little-endian in an 8-byte
//! buffer) when the Deployment has one, and the decimal `uint32` encoded with
//! `rand.SafeEncodeString` (each byte mapped into the alphabet `bcdfghjklmnpqrstvwxz2456789`).

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::controllers::util::NAME_ALPHABET;

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// `rand.SafeEncodeString`: every byte becomes `alphabet[byte % 27]` (no vowels, no look-alikes,
/// so the result cannot spell words).
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| NAME_ALPHABET[usize::from(b) % NAME_ALPHABET.len()] as char)
        .collect()
}

/// The hash of `template` with the Deployment's `status.collisionCount`.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_value(template).unwrap_or_default();
    let text = match super::spew::print_template(&json) {
        Ok(text) => text,
        Err(why) => {
            // Still a stable, unique name; only different from what kube would pick.
            tracing::debug!("pod-template-hash falls back to JSON: {}", why.0);
            json.to_string()
        }
    };
    let mut bytes = text.into_bytes();
    if let Some(c) = collision_count {
        let mut extra = [0u8; 8];
        extra[..4].copy_from_slice(&(c as u32).to_le_bytes());
        bytes.extend_from_slice(&extra);
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_encoding() {
        // FNV-1a test vectors.
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9cf968);
        // Digits map to 4-9 and b, c, d, f.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }
}
