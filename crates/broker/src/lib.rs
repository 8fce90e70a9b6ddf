//! # spool-broker
//!
//! Topics on top of spool-storage's partition logs: topic names, configuration, the registry
//! on disk, the internal logs' files and their compaction, partitioning, and every limit the
//! layers above storage enforce.
//!
//! This crate is synchronous and knows nothing of async runtimes, gRPC, protobuf or the
//! network; time enters as a [`spool_storage::TimestampMs`] argument. It does not run the
//! logs: it creates, opens and deletes them, and the server owns each one through a single
//! writer.

mod config;
pub mod group;
pub mod internal_log;
pub mod limits;
mod name;
mod placement;
pub mod producer;
mod registry;

pub use config::{
    TopicCompression, TopicConfig, TopicConfigError, TopicConfigRequest, UnknownCompression,
};
pub use name::{TopicName, TopicNameError};
pub use placement::{Placement, PlacementError};
pub use registry::{
    AlterTopicError, CreateTopicError, DeleteTopicError, OpenRegistryError, OpenedTopic, Registry,
};
