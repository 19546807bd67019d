//! The old service's CardTrader tokens, Fernet-encrypted with its single `FERNET_KEY`. A token
//! decrypting to an empty string is how it marked a seller who disconnected.

use fernet::Fernet;
use secrecy::{ExposeSecret, SecretString};

use super::source::LegacySeller;

/// What a seller's stored token turned out to be.
#[derive(Debug, Clone)]
pub enum LegacyToken {
    /// A CardTrader token.
    Token(SecretString),
    /// The seller disconnected (an encrypted empty string).
    Disconnected,
    /// It does not decrypt with the key (tampered, truncated, or encrypted with another key), or
    /// is not text.
    Unreadable,
}

/// The old service's Fernet key.
pub struct LegacyKey(Fernet);

impl std::fmt::Debug for LegacyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LegacyKey([REDACTED])")
    }
}

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a Fernet key at all.
    #[error(
        "not a Fernet key (the Python service's FERNET_KEY: 44 characters of \
         URL-safe base64 encoding 32 bytes)"
    )]
    Malformed,
    /// A well-formed key that opens none of the tokens: not the one the old service used.
    #[error(
        "none of the {tokens} stored tokens decrypts with this key; it is not \
         the FERNET_KEY the Python service encrypted them with. Nothing was written"
    )]
    Wrong {
        /// Tokens tried.
        tokens: usize,
    },
}

impl LegacyKey {
    /// Parses the key (URL-safe base64, padded or not).
    pub fn parse(key: &SecretString) -> Result<Self, KeyError> {
        let text = key.expose_secret().trim();
        // Python's Fernet writes the key padded; accept it either way.
        let padded = match text.len() % 4 {
            2 => format!("{text}=="),
            3 => format!("{text}="),
            _ => text.to_owned(),
        };
        Fernet::new(&padded).map(Self).ok_or(KeyError::Malformed)
    }

    /// Opens one stored token.
    pub fn open(&self, encrypted: &str) -> LegacyToken {
        match self.0.decrypt(encrypted.trim()) {
            Ok(plain) if plain.is_empty() => LegacyToken::Disconnected,
            Ok(plain) => match String::from_utf8(plain) {
                Ok(token) if token.trim().is_empty() => LegacyToken::Disconnected,
                Ok(token) => LegacyToken::Token(SecretString::from(token.trim().to_owned())),
                Err(_) => LegacyToken::Unreadable,
            },
            Err(_) => LegacyToken::Unreadable,
        }
    }

    /// Opens every seller's token, refusing the key when it opens none of them: a wrong key must
    /// stop the import before anything is written, while a few damaged rows must not.
    pub fn open_all(&self, sellers: &[LegacySeller]) -> Result<Vec<LegacyToken>, KeyError> {
        let tokens: Vec<LegacyToken> = sellers
            .iter()
            .map(|seller| self.open(&seller.cardtrader_token_encrypted))
            .collect();
        let readable = tokens
            .iter()
            .filter(|token| !matches!(token, LegacyToken::Unreadable))
            .count();
        if readable == 0 && !tokens.is_empty() {
            return Err(KeyError::Wrong {
                tokens: tokens.len(),
            });
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seller(token: String) -> LegacySeller {
        LegacySeller {
            user_id: uuid::Uuid::new_v4(),
            cardtrader_token_encrypted: token,
            webhook_secret: None,
            sync_status: "active".into(),
            last_sync_at: None,
            last_error: None,
        }
    }

    #[test]
    fn tokens_open_to_a_token_a_disconnection_or_nothing() {
        let key_text = Fernet::generate_key();
        let fernet = Fernet::new(&key_text).unwrap();
        let key = LegacyKey::parse(&SecretString::from(
            key_text.trim_end_matches('=').to_owned(),
        ))
        .expect("an unpadded key parses too");
        match key.open(&fernet.encrypt(b"ct-token")) {
            LegacyToken::Token(token) => assert_eq!(token.expose_secret(), "ct-token"),
            other => panic!("expected a token, got {other:?}"),
        }
        assert!(matches!(
            key.open(&fernet.encrypt(b"")),
            LegacyToken::Disconnected
        ));
        assert!(matches!(
            key.open("gAAAAAB-garbage"),
            LegacyToken::Unreadable
        ));
        let other = Fernet::new(&Fernet::generate_key()).unwrap();
        assert!(matches!(
            key.open(&other.encrypt(b"x")),
            LegacyToken::Unreadable
        ));
        assert!(matches!(
            key.open(&fernet.encrypt(&[0xff, 0xfe])),
            LegacyToken::Unreadable
        ));
    }

    #[test]
    fn a_key_that_opens_no_token_is_refused_but_a_few_damaged_rows_are_not() {
        let right = Fernet::new(&Fernet::generate_key()).unwrap();
        let wrong_text = Fernet::generate_key();
        let wrong = LegacyKey::parse(&SecretString::from(wrong_text)).unwrap();
        let sellers = vec![seller(right.encrypt(b"a")), seller(right.encrypt(b"b"))];
        assert!(matches!(
            wrong.open_all(&sellers),
            Err(KeyError::Wrong { tokens: 2 })
        ));
        assert!(matches!(
            LegacyKey::parse(&SecretString::from("short".to_owned())),
            Err(KeyError::Malformed)
        ));
        let key_text = Fernet::generate_key();
        let fernet = Fernet::new(&key_text).unwrap();
        let key = LegacyKey::parse(&SecretString::from(key_text)).unwrap();
        let mixed = vec![seller(fernet.encrypt(b"a")), seller("damaged".into())];
        let opened = key.open_all(&mixed).unwrap();
        assert!(matches!(opened[1], LegacyToken::Unreadable));
        assert!(key.open_all(&[]).unwrap().is_empty());
    }
}
