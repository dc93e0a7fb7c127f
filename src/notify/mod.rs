//! Notifications: digests per channel and recipient, the outbox, and delivery.

pub mod alert;
