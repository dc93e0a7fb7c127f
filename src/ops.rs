//! TODO(ops): being written.
