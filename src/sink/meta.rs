//! What a sink is told about the key it receives, and why a sink did not confirm. Plain data:
//! never the secret.

/// What a sink is told about the key it receives (no secret here).
#[derive(Debug, Clone)]
pub struct KeyMeta {
    pub organization: String,
    pub project_id: String,
    pub service_account_id: String,
    /// The new key.
    pub key_id: String,
    pub key_name: String,
    pub redacted_value: String,
    /// The key it replaces.
    pub old_key_id: String,
    /// When the new key expires (Unix seconds), if it does.
    pub expires_at: Option<i64>,
}

/// Why a sink did not confirm. The message never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink {sink:?} ({kind}) did not confirm: {message}")]
pub struct SinkError {
    pub sink: String,
    pub kind: &'static str,
    pub message: String,
    /// The sink may hold the key although it did not confirm (an exec sink killed at its
    /// `timeout`): a person must say, as after a crash during the hand-over.
    pub ambiguous: bool,
}
