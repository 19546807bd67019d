//! Purchases as compensating sagas (issue #6, in progress): so far the pure state machine
//! ([`saga`]); the step log, the driver on the durable jobs and `PurchaseService` build on it.

pub mod saga;
