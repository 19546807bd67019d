//! Bulk sync of a seller's CardTrader inventory into PostgreSQL. So far: the streaming reader of
//! `/products/export`; the chunked writer, the sweep and the job handler build on it.

pub mod export;
