//! Opaque secrets handed to clients (API keys, refresh tokens): generated
//! from the OS-seeded CSPRNG and stored only as a keyed hash.

use hmac::{Hmac, Mac};
use rand::RngExt;
use sha2::Sha256;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `prefix` + 43 base62 characters (≈ 256 bits of entropy).
pub fn generate(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut out = String::with_capacity(prefix.len() + 43);
    out.push_str(prefix);
    for _ in 0..43 {
        out.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
    }
    out
}

/// The server-side secret that keys the hashes, so a stolen table alone
/// cannot be used to check guesses.
#[derive(Clone)]
pub struct TokenHasher {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(***)")
    }
}

impl TokenHasher {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// Hex HMAC-SHA256: fast enough for every call, safe for 256-bit secrets.
    pub fn hash(&self, token: &str) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The token that succeeds `token` when it is rotated: `prefix` + a keyed
    /// hash of it, so a retried rotation can hand out the very token it
    /// issued without payg ever storing it. Unpredictable without the key;
    /// kept apart from [`TokenHasher::hash`] by its label (a stored hash is
    /// never a successor).
    pub fn successor(&self, prefix: &str, token: &str) -> String {
        format!("{prefix}{}", self.hash(&format!("successor\0{token}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_stably_per_key() {
        let a = generate("payg_");
        let b = generate("payg_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 48);
        assert!(a[5..].bytes().all(|c| c.is_ascii_alphanumeric()));
        let h = TokenHasher::new(b"k1");
        assert_eq!(h.hash(&a), h.hash(&a));
        assert_ne!(h.hash(&a), TokenHasher::new(b"k2").hash(&a));
        assert_eq!(h.hash(&a).len(), 64);
        let next = h.successor("payg_rt_", &a);
        assert_eq!(next, h.successor("payg_rt_", &a), "a retry derives the same successor");
        assert_ne!(next, TokenHasher::new(b"k2").successor("payg_rt_", &a));
        assert!(next.starts_with("payg_rt_") && next.len() == 72);
        assert_ne!(next[8..], h.hash(&a), "a successor is not the stored hash");
    }
}
