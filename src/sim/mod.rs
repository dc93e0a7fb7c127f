//! TODO(sim): being written.
