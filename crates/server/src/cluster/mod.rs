//! Replication's network: the internal listener that carries replicas' messages between
//! nodes ([`serve_peers`]) and the client side ([`PeerTransport`]), which implements
//! `spool_replication::Transport` over it.
//!
//! # The peer protocol
//!
//! One TCP connection carries one exchange at a time; a node keeps a few idle connections
//! per peer ([`PEER_POOL_PER_NODE`](crate::limits::PEER_POOL_PER_NODE)) and opens more while
//! those are busy. Every integer is big-endian.
//!
//! ```text
//! request := length: u32 | group length: u16 | group: UTF-8 | message
//! answer  := length: u32 | status: u8 (0 answered, 1 refused) | answer, or a UTF-8 reason
//! ```
//!
//! `message` and `answer` are `spool_replication`'s encoding; the listener hands the message
//! to the group's replica on this node. One name is not a group's: under `__registered` a
//! node that started on an empty data directory asks whether the listener's node has its
//! registration (message: its id as a u64; answer: one byte, 1 for yes). A frame past
//! [`PEER_FRAME_BYTES_MAX`](crate::limits::PEER_FRAME_BYTES_MAX) ends the connection; a
//! connection that sends nothing for
//! [`CONNECTION_IDLE_TIMEOUT`](crate::limits::CONNECTION_IDLE_TIMEOUT) is closed.
//!
//! Without [`PeerTls`] the listener speaks plain TCP and every peer address must be on
//! loopback (a cluster on one machine). With it, every connection is mutual TLS: the listener
//! accepts only callers whose certificate chains to the cluster's CA, and a caller checks that
//! the peer's certificate does and names the IP address it called. The CA is the cluster's
//! authentication: any holder of a certificate it signed is a node.

mod fold;
mod node;
mod options;
mod repair;
mod transport;

pub(crate) use fold::Metadata;
pub use node::JoinClusterError;
pub(crate) use node::{Cluster, Command, CommittedRecord, ORIGIN_HEADER, Outcome, TopicSpec};
pub use options::{ClusterConfigError, ClusterOptions, PeerTls};
pub use transport::{Groups, PeerTransport, serve_peers};
