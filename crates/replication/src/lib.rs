//! # spool-replication
//!
//! A partition's segment log as a Raft log, for partitions replicated with
//! [openraft](https://docs.rs/openraft). Every openraft type stays inside this crate, so an
//! upgrade of openraft touches this crate alone.
//!
//! ## One log, no second copy
//!
//! As in Redpanda, a replicated partition's Raft log *is* its segment log: one Raft entry is
//! one stored batch ([`spool_storage::batch`] format version 2), or for a normal entry
//! several back to back, whose frames record the entry's term and index, whose kind tells a
//! producer's records from a control batch, and whose `more` flag is set on every batch of
//! an entry but its last. A leader puts the batches queued while its earlier entries are in
//! Raft into one entry (`proposals`): openraft 0.9 fsyncs each entry a client writes alone,
//! so that is how one fsync comes to cover many batches. An open cuts an entry whose last
//! batches a crash lost (never acknowledged: its fsync covers all of it).
//!
//! | Raft entry         | stored batches                                                     |
//! |--------------------|--------------------------------------------------------------------|
//! | normal             | the producers' Kafka batches, as sent, one stored batch each ([`Batch`]) |
//! | blank (a leader's first entry of its term) | a control batch, control type [`CONTROL_LEADER_CHANGE`], no value |
//! | membership         | a control batch, control type [`CONTROL_MEMBERSHIP`], the membership as JSON |
//!
//! A control batch holds one Kafka control record (Kafka's consumers skip control batches)
//! and so takes one offset, which keeps offsets growing with every entry: an entry is found
//! by index with a binary search over offsets ([`spool_storage::Log::find_entry`]). Control
//! batches carry timestamp 0, so every replica writes the same bytes for them.
//!
//! ## What is stored beside the log
//!
//! `raft-state.json` in the partition's directory holds the vote and the last purged log id,
//! each written with [`spool_storage::fs::write_atomically`] (fsynced before the call
//! returns): Raft requires a vote to be durable before it is answered.
//!
//! Raft purges nothing by itself (no snapshot policy): retention asks it to
//! ([`Replica::apply_retention`]). The purge records the last purged log id, then deletes
//! the whole segments below it; a follower that still needs what the leader deleted gets the
//! leader's snapshot instead, which is the partition's applied state, never its records.
//!
//! ## Why openraft 0.9
//!
//! openraft 0.9.25 is the stable line; 0.10 is still pre-release (0.10.0-alpha.37 is the
//! newest on crates.io) and its API moves between alphas. 0.10 is where the next gain is:
//! its core submits a log append and goes on without waiting for the flush, so a replica's
//! fsync of one entry could overlap the next entry. 0.9's core waits for each append's
//! callback before its next command, which is why a leader keeps one entry of a partition
//! in Raft at a time ([`limits::PROPOSALS_IN_FLIGHT`]) and puts everything queued meanwhile
//! into the next. Moving is a rewrite of this crate's edges, not a version bump: in 0.10
//! every type is generic over the type config, the network trait this crate implements
//! moved to a separate crate (`openraft-legacy`), and snapshots and errors changed shape.
//! The version is pinned exactly; the move waits for a 0.10 release, and touches this
//! crate alone.

mod entry;
pub mod history;
pub mod limits;
mod log_store;
mod network;
mod proposals;
mod recent;
mod remote;
mod replica;
mod rpc;
mod state_machine;

pub use entry::{Applied, Batch, CONTROL_LEADER_CHANGE, CONTROL_MEMBERSHIP};
pub use log_store::{OnDamage, OpenError, SegmentLogStore, SharedLog};
pub use network::{Call, Transport, TransportError};
pub use proposals::fits_one_entry;
pub use remote::Remote;
pub use replica::{
    BootstrapError, HandOverError, OnForwarded, OnRead, ProposeError, Proposed, Replica, StartError,
};
pub use rpc::{InvalidMessage, PROTOCOL_VERSION, PeerRead, ReadAnswer, ReadHead, check_message};
pub use state_machine::{Fold, OnCommit, PartitionStateMachine};

/// A node's id in a cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The types a replicated partition's Raft group uses.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
