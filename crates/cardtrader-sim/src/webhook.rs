//! Webhook emitter: POSTs a raw JSON body signed the way CardTrader signs order webhooks,
//! `Signature: base64(HMAC-SHA256(shared_secret, body))`.

use std::time::Duration;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Receivers are local test servers; anything slower than this is a hung test.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The `Signature` header value for `body` under `shared_secret`.
pub fn sign(shared_secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(shared_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// POSTs `body` to `url` signed with `shared_secret`; returns the HTTP status.
pub(crate) async fn emit(
    url: &str,
    shared_secret: &str,
    body: &serde_json::Value,
) -> anyhow::Result<u16> {
    let raw = serde_json::to_vec(body)?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("building the webhook client")?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Signature", sign(shared_secret, &raw))
        .body(raw)
        .send()
        .await
        .with_context(|| format!("posting the webhook to {url}"))?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = sign("Jefe", b"what do ya want for nothing?");
        let bytes = STANDARD.decode(sig).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
