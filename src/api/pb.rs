//! Code generated from `proto/` by tonic-prost-build. Domain types never derive `prost::Message`; the
//! handlers convert at the edge.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// Package `brx.sync.v1`: the service's public contract.
pub mod v1 {
    tonic::include_proto!("brx.sync.v1");
}

/// Encoded descriptors of `brx.sync.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("brx_sync_v1_descriptor");
