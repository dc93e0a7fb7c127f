//! TODO(openai): being written.
