//! TODO(daemon): being written.
