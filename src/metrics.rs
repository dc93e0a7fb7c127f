//! Prometheus metrics (prometheus-client), one registry per process.
//!
//! Labels never carry a secret or a key name: only organisation, project id, owner type, policy,
//! state, channel, endpoint template and status.

/// Handle every module records into. Cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One Admin API request finished. `endpoint` is the route template
    /// (`GET /organization/projects/{project_id}/api_keys`), `status` the HTTP status or 0 for a
    /// transport error.
    pub fn api_request(&self, _org: &str, _endpoint: &'static str, _status: u16) {}
}
