//! # spool-proto
//!
//! Spool's gRPC wire types and service stubs, generated at build time from
//! `proto/spool/v1/*.proto` (see `build.rs`). The `.proto` files are the documentation: every
//! message and field is described there, and everything in `spool.v1` is a compatibility
//! promise.
//!
//! Beside the generated code it holds the rest of the wire contract, which client and server
//! must agree on: [`limits`] (what a request and a response may hold), [`partitioner`]
//! (which partition a key lands in, as Kafka's default partitioner chooses it) and [`Acks`]
//! (what a producer waits for, without the wire enum's unspecified value), and [`framing`]
//! (messages framed for gRPC with their batches left uncopied, as both sides send them).
//!
//! This crate knows nothing of topics on disk or the server: it is the wire only. It depends
//! on spool-storage for one thing, the batch format's limits, because raw batches in that
//! format travel on the wire.

mod acks;
pub mod framing;
pub mod limits;
pub mod partitioner;

pub use acks::Acks;

/// The `spool.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("spool.v1");

    /// The encoded `FileDescriptorSet` of every `spool.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/spool_descriptor.bin"));
}
