//! Bulk sync of a seller's CardTrader inventory into PostgreSQL: the streaming reader of
//! `/products/export` ([`export`]), products' expansions (`expansions`), the chunk transaction with
//! its retries ([`chunk`]), the fingerprinted upsert ([`upsert`]), the other SQL ([`store`]), the
//! job's payload and counters ([`scope`]), the job ([`handler`]), the periodic scheduler
//! ([`scheduler`]), the remap of unmapped rows ([`remap`]) and its queueing after a catalogue outage
//! ([`unknown_prints`]), and what callers use ([`service`]).

pub mod chunk;
mod expansions;
pub mod handler;
pub mod remap;
pub mod scheduler;
pub mod scope;
pub mod service;
pub mod store;
pub mod unknown_prints;
pub mod upsert;
