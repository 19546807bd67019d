//! Bulk sync of a seller's CardTrader inventory into PostgreSQL. [`Syncs`] is what callers use;
//! behind it: the job ([`handler`]) reading the export through `marketplace::export`, products'
//! expansions (`expansions`), the chunk transaction with its retries ([`chunk`]), the fingerprinted
//! upsert ([`upsert`]), the other SQL (a private `store`), the job's payload and counters
//! ([`scope`]), the periodic scheduler ([`scheduler`]), the remap of unmapped rows ([`remap`]) and
//! its queueing after a catalogue outage ([`unknown_prints`]).

pub mod chunk;
mod expansions;
pub mod handler;
pub mod remap;
pub mod scheduler;
pub mod scope;
pub mod service;
mod store;
pub mod unknown_prints;
pub mod upsert;

pub use service::{SyncError, Syncs};
/// The sweep and the row counts, for the tests that prove a sync's end state against the database.
pub use store::{SweepScope, SweepSettings, SyncRow, item_count, seen_key, sweep};
