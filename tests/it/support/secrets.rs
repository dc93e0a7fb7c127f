//! The secret assertion every test shares (with the base64 forms a secret can leak in), and the
//! Standard Webhooks secret the webhook channels take. The secrets here are made up per test file; never put a real one here.

use base64::Engine as _;

/// A Standard Webhooks secret (`whsec_` + base64 of the signing key), as a channel takes it.
pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", base64(key))
}

/// The signing key as base64 (the form inside `whsec_…`), which must not leak either.
pub fn base64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Every way `secret` can show up base64-encoded: at each of the three byte alignments it can
/// have inside a longer base64 stream (an `AUTH PLAIN` blob, a Basic header), the characters
/// that encode only the secret's own bytes. A substring search for these finds the secret in
/// any base64 text that contains it, whatever precedes it. Shorter fragments than 8 characters
/// are left out (they would match by chance).
pub fn base64_forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::STANDARD;
    let bytes = secret.as_bytes();
    let mut forms = vec![STANDARD.encode(bytes)];
    for lead in 0..3usize {
        let mut padded = vec![0u8; lead];
        padded.extend_from_slice(bytes);
        let enc = STANDARD.encode(&padded);
        // Characters that mix the lead bytes in, and the last group if it mixes in padding.
        let start = [0, 2, 3][lead];
        let end = padded.len() / 3 * 4;
        if end > start + 8 {
            forms.push(enc[start..end].to_string());
        }
    }
    forms
}

/// `secrets`, each with its [`base64_forms`].
pub fn with_base64_forms<S: AsRef<str>>(secrets: &[S]) -> Vec<String> {
    secrets
        .iter()
        .flat_map(|s| {
            let s = s.as_ref();
            std::iter::once(s.to_string()).chain(base64_forms(s))
        })
        .collect()
}

/// `text` (described by `what`) contains none of `secrets`, nor any base64 form of one
/// ([`base64_forms`]).
pub fn assert_no_secret<S: AsRef<str>>(what: &str, text: &str, secrets: &[S]) {
    for s in with_base64_forms(secrets) {
        assert!(!text.contains(&s), "{what} contains a secret: {text}");
    }
}

/// The raw bytes of a file (e.g. the state database) contain none of `secrets`, nor any base64
/// form of one.
pub fn assert_no_secret_in_bytes<S: AsRef<str>>(what: &str, bytes: &[u8], secrets: &[S]) {
    for s in with_base64_forms(secrets) {
        let s = s.as_bytes();
        assert!(
            !bytes.windows(s.len()).any(|w| w == s),
            "{what} holds a secret"
        );
    }
}
