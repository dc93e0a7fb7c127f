//! TODO(sim): being written.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}
