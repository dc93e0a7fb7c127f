//! TODO(revoke): being written.
