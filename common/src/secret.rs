//! Bearer tokens and join tokens. A token is 32 random bytes, shown once to the operator; the cluster stores
//! only its SHA-256, so a copy of the data directory does not reveal usable credentials.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random token with a readable prefix (`ingot_` for API tokens, `ingotjoin_` for join tokens).
pub fn generate(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The stored form of a token: hex SHA-256.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two hashes in constant time, so timing does not reveal how much of a guess was right.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A random system id: 6 characters of `[a-z0-9]` (about 2 billion values), like MAAS's.
pub fn system_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

/// 16 bytes in the UUID version-4 text layout (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), with the version and
/// variant bits set: request ids, simulated machines' SMBIOS UUIDs.
pub fn uuid_v4_text(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let a = generate("ingot_");
        let b = generate("ingot_");
        assert_ne!(a, b);
        assert!(a.starts_with("ingot_"));
        assert!(hashes_equal(&hash(&a), &hash(&a)));
        assert!(!hashes_equal(&hash(&a), &hash(&b)));
        assert_eq!(system_id().len(), 6);
    }
}
