//! Bulk sync of a seller's CardTrader inventory into PostgreSQL: the streaming reader of
//! `/products/export` ([`export`]), the chunk transaction with its retries ([`chunk`]) and the SQL
//! ([`store`]). The job handler and the RPCs build on these.

pub mod chunk;
pub mod export;
pub mod handler;
pub mod service;
pub mod store;
