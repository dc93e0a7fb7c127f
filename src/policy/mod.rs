//! Policy evaluation: pure, no I/O, no clock reads (`now` is passed in).
pub mod finding;
