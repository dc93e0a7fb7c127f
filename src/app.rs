//! TODO(app): being written.
