//! The secret assertion every test shares, and the Standard Webhooks secret the webhook
//! channels take. The secrets here are made up per test file; never put a real one here.

use base64::Engine as _;

/// A Standard Webhooks secret (`whsec_` + base64 of the signing key), as a channel takes it.
pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", base64(key))
}

/// The signing key as base64 (the form inside `whsec_…`), which must not leak either.
pub fn base64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// `text` (described by `what`) contains none of `secrets`.
pub fn assert_no_secret<S: AsRef<str>>(what: &str, text: &str, secrets: &[S]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_ref()),
            "{what} contains a secret: {text}"
        );
    }
}

/// The raw bytes of a file (e.g. the state database) contain none of `secrets`.
pub fn assert_no_secret_in_bytes<S: AsRef<str>>(what: &str, bytes: &[u8], secrets: &[S]) {
    for s in secrets {
        let s = s.as_ref().as_bytes();
        assert!(
            !bytes.windows(s.len()).any(|w| w == s),
            "{what} holds a secret"
        );
    }
}
