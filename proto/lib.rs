//! # spool-proto
//!
//! Spool's gRPC wire types and service stubs, generated at build time from
//! `proto/spool/v1/*.proto` (see `build.rs`). The `.proto` files are the documentation: every
//! message and field is described there, and everything in `spool.v1` is a compatibility
//! promise.
//!
//! This crate knows nothing of storage, topics on disk or the server: it is the wire only.

/// The `spool.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("spool.v1");

    /// The encoded `FileDescriptorSet` of every `spool.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/spool_descriptor.bin"));
}
