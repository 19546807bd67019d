//! Secrets at rest: AES-256-GCM with a random nonce per value, the key's id stored beside the
//! ciphertext so keys can rotate (the first configured key encrypts, every configured key decrypts).

use std::collections::HashMap;

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, AeadCore, OsRng, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};

/// GCM's standard nonce length, stored in front of each ciphertext.
const NONCE_LEN: usize = 12;

/// The configured keys.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

/// A value sealed with one key of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed it.
    pub key_id: String,
    /// Nonce followed by ciphertext and tag.
    pub bytes: Vec<u8>,
}

/// A ciphertext that no configured key opens (unknown key id, tampering, or the wrong row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decrypt a stored secret sealed with key '{key_id}'")]
pub struct DecryptError {
    /// The key id stored with the ciphertext.
    pub key_id: String,
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key…]`; each key must decode to 32 bytes and ids must differ.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut current = None;
        let mut keys = HashMap::new();
        for entry in raw
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| "each key must be written id:base64key".to_owned())?;
            let bytes = STANDARD
                .decode(encoded.trim())
                .map_err(|_| format!("key '{id}' is not valid base64"))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| format!("key '{id}' must be 32 bytes, got {}", bytes.len()))?;
            if keys.insert(id.to_owned(), cipher).is_some() {
                return Err(format!("key id '{id}' appears twice"));
            }
            current.get_or_insert_with(|| id.to_owned());
        }
        let current = current.ok_or_else(|| "no key given".to_owned())?;
        Ok(Self { current, keys })
    }

    /// Seals `plaintext` with the current key. `context` (e.g. the user id and the column) is
    /// authenticated, so a ciphertext copied to another row or column no longer opens.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let cipher = &self.keys[&self.current];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and an in-memory buffer cannot fail.
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: self.current.clone(),
            bytes,
        }
    }

    /// Opens a value sealed by any key of the ring, with the same `context`.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let error = || DecryptError {
            key_id: sealed.key_id.clone(),
        };
        let cipher = self.keys.get(&sealed.key_id).ok_or_else(error)?;
        if sealed.bytes.len() <= NONCE_LEN {
            return Err(error());
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_context_only() {
        let ring = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed = ring.seal(b"ct-token", b"user-a/token");

        assert_eq!(ring.open(&sealed, b"user-a/token").unwrap(), b"ct-token");
        assert!(ring.open(&sealed, b"user-b/token").is_err());
        assert!(!sealed.bytes.windows(8).any(|window| window == b"ct-token"));
    }

    #[test]
    fn rotation_encrypts_with_the_first_key_and_still_opens_old_values() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let sealed_long_ago = old.seal(b"secret", b"ctx");
        let rotated = Keyring::parse(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();

        assert_eq!(rotated.open(&sealed_long_ago, b"ctx").unwrap(), b"secret");
        assert_eq!(rotated.seal(b"secret", b"ctx").key_id, "k2");
    }

    #[test]
    fn malformed_key_lists_are_refused() {
        assert!(Keyring::parse("").is_err());
        assert!(Keyring::parse("k1").is_err());
        assert!(Keyring::parse("k1:not-base64!").is_err());
        assert!(Keyring::parse(&format!("k1:{}", STANDARD.encode([0u8; 16]))).is_err());
        assert!(Keyring::parse(&format!("k1:{},k1:{}", key(1), key(2))).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let ring = Keyring::parse(&format!("k1:{}", key(1))).unwrap();
        let mut sealed = ring.seal(b"secret", b"ctx");
        let last = sealed.bytes.len() - 1;
        sealed.bytes[last] ^= 1;

        assert!(ring.open(&sealed, b"ctx").is_err());
    }
}
