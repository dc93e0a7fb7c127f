//! Unit, table and property tests of the pure policy modules.
