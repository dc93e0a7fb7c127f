//! TODO(sweep): being written.
