//! Errors the services meet, and the one function that turns them into gRPC statuses.
//!
//! Each layer keeps its own error enums (storage's per operation, the broker's per operation,
//! [`InvalidRequest`] for what the edge refuses); [`ServiceError`] only gathers them, and
//! [`to_status`] is the single place that decides a status code. Messages are the errors'
//! own `Display`, which carry the values a person needs to act.

use std::io;

use spool_broker::{
    AlterTopicError, CreateTopicError, DeleteTopicError, TopicConfigError, TopicName,
    TopicNameError,
};
use spool_storage::{AppendError, Fence, OpenError, ReadError, SyncError};
use thiserror::Error;
use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::idempotence::{ProducerIdError, Refused};
use spool_broker::group::{
    CommitError, DeleteError, DeleteOffsetsError, GroupName, GroupNameError, JoinError, ResetError,
};
use spool_broker::producer::SequenceError;

/// A request the edge refuses before it reaches a partition.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidRequest {
    #[error("the request carries no records: set `records` or `raw_batch`")]
    MissingPayload,
    #[error("the request carries an empty record list")]
    NoRecords,
    #[error("the request carries {records} records; the limit is {records_max}")]
    TooManyRecords { records: usize, records_max: u32 },
    #[error("record {index} has {headers} headers; the limit is {headers_max}")]
    TooManyHeaders { index: usize, headers: usize, headers_max: u32 },
    #[error("record {index} has timestamp {timestamp_ms} ms, outside 0..={timestamp_ms_max}")]
    BadTimestamp { index: usize, timestamp_ms: i64, timestamp_ms_max: i64 },
    #[error(
        "the records for partition {partition} encode to {bytes} bytes, over the batch limit of {bytes_max} bytes: send fewer per request"
    )]
    BatchTooLarge { partition: u32, bytes: usize, bytes_max: u32 },
    #[error("{field} is {value}, which is not one of its values")]
    UnknownEnumValue { field: &'static str, value: i32 },
    #[error("max_bytes {max_bytes} is outside 1..={bytes_max} (0 means the default)")]
    FetchBytes { max_bytes: u32, bytes_max: u32 },
    #[error("max_wait_ms {max_wait_ms} is over the limit of {max_wait_ms_max}")]
    FetchWait { max_wait_ms: u32, max_wait_ms_max: u32 },
    #[error("timeout_ms {timeout_ms} is over the limit of {timeout_ms_max}")]
    ElectTimeout { timeout_ms: u32, timeout_ms_max: u128 },
    #[error("session timeout {session_timeout_ms} ms is outside {min_ms}..={max_ms}")]
    SessionTimeout { session_timeout_ms: u64, min_ms: u64, max_ms: u64 },
    #[error("group protocol: {reason}")]
    GroupProtocol { reason: &'static str },
    #[error(
        "cannot commit offset {offset} of partition {partition} of topic {topic}: its visible end is {end}"
    )]
    CommitPastEnd { topic: String, partition: u32, offset: u64, end: u64 },
    #[error(
        "an idempotent request ({reason}) must name its partition: sequences are per partition"
    )]
    IdempotentWithoutPartition { reason: &'static str },
    #[error(
        "a raw batch carries its producer stamp in its header: leave the request's `producer` unset"
    )]
    ProducerWithRawBatch,
    #[error("producer_epoch {epoch} is outside 0..=32767")]
    ProducerEpoch { epoch: i32 },
    #[error("base_sequence {base_sequence} is negative")]
    BaseSequence { base_sequence: i32 },
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Request(#[from] InvalidRequest),
    #[error("bad topic name: {0}")]
    TopicName(#[from] TopicNameError),
    #[error("bad topic configuration: {0}")]
    TopicConfig(#[from] TopicConfigError),
    #[error("topic {name} does not exist")]
    UnknownTopic { name: TopicName },
    #[error(
        "topic {topic} has partitions 0 to {}; partition {partition} does not exist",
        .partitions.saturating_sub(1)
    )]
    UnknownPartition { topic: TopicName, partition: u32, partitions: u32 },
    #[error(
        "acks=all asks for records synced to disk, but topic {topic} has fsync policy `never`, so no produce is ever synced; use acks=leader, or a topic with fsync `always` or `interval`"
    )]
    AcksAllWithoutFsync { topic: TopicName },
    #[error("topic {topic} was deleted")]
    TopicDeleted { topic: TopicName },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    CreateTopic(#[from] CreateTopicError),
    #[error(transparent)]
    OpenFiles(#[from] crate::resources::OpenFilesError),
    #[error(transparent)]
    DeleteTopic(#[from] DeleteTopicError),
    #[error("partition {partition} of topic {topic}: {source}")]
    Append { topic: TopicName, partition: u32, source: AppendError },
    #[error("partition {partition} of topic {topic} refuses writes: {fence}")]
    Fenced { topic: TopicName, partition: u32, fence: Fence },
    #[error("partition {partition} of topic {topic}: {source}")]
    Read { topic: TopicName, partition: u32, source: ReadError },
    #[error(transparent)]
    AlterTopic(#[from] AlterTopicError),
    #[error(
        "partition {partition} of topic {topic} could not reopen its log with the new settings (it keeps the old ones): {source}"
    )]
    Reopen { topic: TopicName, partition: u32, source: OpenError },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    GroupName(#[from] GroupNameError),
    #[error("joining a group: {0}")]
    Join(#[from] JoinError),
    #[error("commit refused: {0}")]
    Commit(#[from] CommitError),
    #[error("reset refused: {0}")]
    Reset(#[from] ResetError),
    #[error("deletion refused: {0}")]
    DeleteGroup(#[from] DeleteError),
    #[error("deletion refused: {0}")]
    DeleteOffsets(#[from] DeleteOffsetsError),
    #[error("group {group} has no members and no committed offsets")]
    UnknownGroup { group: GroupName },
    #[error(transparent)]
    ProducerId(#[from] ProducerIdError),
    #[error("partition {partition} of topic {topic}: {source}")]
    Sequence { topic: TopicName, partition: u32, source: SequenceError },
    #[error("internal error: {0}")]
    Internal(String),
    /// Only a partition's leader appends; `leader` is who leads, when known (its id and the
    /// address its clients reach it at, once it has registered).
    #[error("this node does not lead partition {partition} of topic {topic}{}", match leader {
        Some((id, Some(address))) => format!("; node {id} at {address} does: send it there"),
        Some((id, None)) => format!("; node {id} does"),
        None => "; no leader is elected yet, try again".to_owned(),
    })]
    NotLeader { topic: TopicName, partition: u32, leader: Option<(u64, Option<String>)> },
    /// A read of a partition this node holds no replica of (its topic is replicated on fewer
    /// nodes than the cluster has): `leader` (or another of `replicas`) serves it.
    #[error("this node holds no replica of partition {partition} of topic {topic} (nodes {} do){}", replicas.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), match leader {
        Some((id, Some(address))) => format!("; node {id} at {address} leads it: read there"),
        Some((id, None)) => format!("; node {id} leads it: read there"),
        None => "; read from one of them".to_owned(),
    })]
    NotHeld {
        topic: TopicName,
        partition: u32,
        replicas: Vec<u64>,
        leader: Option<(u64, Option<String>)>,
    },
    /// A read past what this node's replica has applied, within what the partition's leader
    /// has committed, that the replica did not catch up with in time (it is behind, or under
    /// repair): `leader` serves it now.
    #[error("this node's replica of partition {partition} of topic {topic} has applied records up to offset {applied}, not yet offset {wanted}{}", match leader {
        Some((id, Some(address))) => format!("; node {id} at {address} leads it: read there, or try again"),
        Some((id, None)) => format!("; node {id} leads it: read there, or try again"),
        None => "; try again".to_owned(),
    })]
    Behind {
        topic: TopicName,
        partition: u32,
        applied: u64,
        wanted: u64,
        leader: Option<(u64, Option<String>)>,
    },
    /// On a cluster one node coordinates every consumer group (the offsets group's leader);
    /// `coordinator` is that node, when one is elected (its id and client address).
    #[error("{}", match coordinator {
        Some((id, Some(address))) => format!("node {id} at {address} coordinates this cluster's consumer groups: send group requests there"),
        Some((id, None)) => format!("node {id} coordinates this cluster's consumer groups: send group requests there"),
        None => "no node coordinates this cluster's consumer groups yet (an election is on): try again".to_owned(),
    })]
    NotCoordinator { coordinator: Option<(u64, Option<String>)> },
    /// The cluster could not do it now (no quorum, a node unreachable): try again.
    #[error("{0}")]
    Cluster(String),
    #[error(
        "replication factor {requested} does not fit this server: {}",
        if *nodes == 1 {
            "it is a single node (a cluster starts with --node-id and --peers)".to_owned()
        } else if requested > nodes {
            format!("it is more than the {nodes} nodes of the cluster")
        } else {
            format!("a partition is held by 1 to {nodes} nodes")
        }
    )]
    ReplicationFactor { requested: u32, nodes: u32 },
    #[error("{what} is not supported on a replicated topic yet")]
    NotForReplicated { what: &'static str },
    /// The partition's leader refused a batch this node passed to it: `code` is the gRPC
    /// code it answered with.
    #[error("the partition's leader refused the batch: {message}")]
    Forwarded { code: i32, message: String },
}

impl ServiceError {
    pub(crate) fn sync(topic: &TopicName, partition: u32, error: SyncError) -> ServiceError {
        let SyncError::Fenced(fence) = error;
        ServiceError::Fenced { topic: topic.clone(), partition, fence }
    }

    pub(crate) fn append(topic: &TopicName, partition: u32, error: AppendError) -> ServiceError {
        match error {
            AppendError::Fenced(fence) => {
                ServiceError::Fenced { topic: topic.clone(), partition, fence }
            }
            source => ServiceError::Append { topic: topic.clone(), partition, source },
        }
    }

    /// A batch a partition's writer did not append (see `crate::idempotence`).
    pub(crate) fn refused(topic: &TopicName, partition: u32, refused: Refused) -> ServiceError {
        match refused {
            Refused::Append(error) => ServiceError::append(topic, partition, error),
            Refused::Sequence(source) => {
                ServiceError::Sequence { topic: topic.clone(), partition, source }
            }
        }
    }

    pub(crate) fn read(topic: &TopicName, partition: u32, source: ReadError) -> ServiceError {
        ServiceError::Read { topic: topic.clone(), partition, source }
    }
}

fn io_code(error: &io::Error) -> Code {
    if error.kind() == io::ErrorKind::StorageFull {
        Code::ResourceExhausted
    } else {
        Code::Internal
    }
}

fn fence_code(fence: &Fence) -> Code {
    match fence {
        // Records may be gone: a failed fsync may have dropped them, damage has.
        Fence::SyncFailed { .. } | Fence::Damaged { .. } => Code::DataLoss,
        // Nothing was lost, but the partition must be reopened before it takes writes.
        Fence::WriteFailed { .. } => Code::FailedPrecondition,
    }
}

/// The gRPC status for an error: the one place codes are chosen.
pub fn to_status(error: &ServiceError) -> Status {
    let code = match error {
        ServiceError::Request(_) | ServiceError::TopicName(_) | ServiceError::TopicConfig(_) => {
            Code::InvalidArgument
        }
        ServiceError::UnknownTopic { .. }
        | ServiceError::UnknownPartition { .. }
        | ServiceError::TopicDeleted { .. } => Code::NotFound,
        ServiceError::AcksAllWithoutFsync { .. } => Code::FailedPrecondition,
        ServiceError::NotLeader { .. } | ServiceError::NotHeld { .. } => Code::FailedPrecondition,
        ServiceError::Behind { .. } => Code::Unavailable,
        ServiceError::NotCoordinator { coordinator: Some(_) } => Code::FailedPrecondition,
        ServiceError::NotCoordinator { coordinator: None } => Code::Unavailable,
        ServiceError::Cluster(_) => Code::Unavailable,
        ServiceError::NotForReplicated { .. } => Code::Unimplemented,
        ServiceError::Forwarded { code, .. } => Code::from_i32(*code),
        ServiceError::ReplicationFactor { .. } => Code::InvalidArgument,
        ServiceError::OpenFiles(_) => Code::ResourceExhausted,
        ServiceError::ShuttingDown => Code::Unavailable,
        ServiceError::CreateTopic(error) => match error {
            CreateTopicError::AlreadyExists { .. } => Code::AlreadyExists,
            CreateTopicError::TooManyTopics { .. } | CreateTopicError::TooManyPartitions { .. } => {
                Code::ResourceExhausted
            }
            CreateTopicError::Io { source, .. } => io_code(source),
            CreateTopicError::Log { source, .. } => match source {
                OpenError::Config(_) => Code::InvalidArgument,
                OpenError::Io { source, .. } => io_code(source),
            },
        },
        ServiceError::DeleteTopic(error) => match error {
            DeleteTopicError::NotFound { .. } => Code::NotFound,
            DeleteTopicError::Io { source, .. } => io_code(source),
            DeleteTopicError::Log { source, .. } => io_code(&source.source),
        },
        ServiceError::Append { source, .. } => match source {
            AppendError::InvalidBatch(_) | AppendError::BatchTooLarge { .. } => {
                Code::InvalidArgument
            }
            AppendError::NoSpace { .. } => Code::ResourceExhausted,
            AppendError::Io { source, .. } => io_code(source),
            AppendError::Fenced(fence) => fence_code(fence),
        },
        ServiceError::Fenced { fence, .. } => fence_code(fence),
        ServiceError::Read { source, .. } => match source {
            ReadError::OffsetOutOfRange { .. } => Code::OutOfRange,
            ReadError::Io { source, .. } => io_code(source),
            // The records from there on are gone unless an operator restores them.
            ReadError::Damaged { .. } => Code::DataLoss,
        },
        ServiceError::AlterTopic(error) => match error {
            AlterTopicError::NotFound { .. } => Code::NotFound,
            AlterTopicError::PartitionsShrink { .. } => Code::InvalidArgument,
            AlterTopicError::TooManyPartitions { .. } => Code::ResourceExhausted,
            AlterTopicError::Io { source, .. } => io_code(source),
            AlterTopicError::Log { source, .. } => match source {
                OpenError::Config(_) => Code::InvalidArgument,
                OpenError::Io { source, .. } => io_code(source),
            },
        },
        ServiceError::Reopen { source, .. } => match source {
            OpenError::Config(_) => Code::InvalidArgument,
            OpenError::Io { source, .. } => io_code(source),
        },
        ServiceError::Auth(error) => match error {
            AuthError::NoToken | AuthError::UnknownToken | AuthError::Malformed => {
                Code::Unauthenticated
            }
            AuthError::Denied { .. } | AuthError::NoMetricsGrant { .. } => Code::PermissionDenied,
        },
        ServiceError::GroupName(_) => Code::InvalidArgument,
        ServiceError::Join(error) => match error {
            JoinError::Topics { .. } => Code::InvalidArgument,
            JoinError::SubscriptionMismatch { .. } => Code::FailedPrecondition,
            JoinError::TooManyMembers { .. }
            | JoinError::TooManyLiveGroups
            | JoinError::TooManyGroups => Code::ResourceExhausted,
            JoinError::InUseByKafka { .. } => Code::FailedPrecondition,
        },
        ServiceError::Commit(error) => match error {
            CommitError::TooManyOffsets { .. } => Code::InvalidArgument,
            CommitError::NotAMember { .. }
            | CommitError::StaleGeneration { .. }
            | CommitError::FutureGeneration { .. }
            | CommitError::NotOwner { .. } => Code::FailedPrecondition,
        },
        ServiceError::Reset(ResetError::LiveMembers { .. }) => Code::FailedPrecondition,
        ServiceError::DeleteGroup(error) => match error {
            DeleteError::LiveMembers { .. } => Code::FailedPrecondition,
            DeleteError::Unknown { .. } => Code::NotFound,
        },
        ServiceError::DeleteOffsets(error) => match error {
            DeleteOffsetsError::Unknown { .. } => Code::NotFound,
            DeleteOffsetsError::NotConsumers { .. } | DeleteOffsetsError::Consumed { .. } => {
                Code::FailedPrecondition
            }
        },
        ServiceError::UnknownGroup { .. } => Code::NotFound,
        ServiceError::ProducerId(ProducerIdError::Unknown { .. }) => Code::FailedPrecondition,
        ServiceError::Sequence { source, .. } => match source {
            SequenceError::OutOfOrder { .. } => Code::FailedPrecondition,
            SequenceError::StaleEpoch { .. } => Code::Aborted,
            SequenceError::OldDuplicate { .. } => Code::AlreadyExists,
            SequenceError::SequenceOverflow { .. } | SequenceError::BadStamp { .. } => {
                Code::InvalidArgument
            }
        },
        ServiceError::Internal(_) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    // A client in another language finds the leader here, without parsing the message.
    if let ServiceError::NotLeader { leader: Some((id, address)), .. }
    | ServiceError::NotHeld { leader: Some((id, address)), .. }
    | ServiceError::Behind { leader: Some((id, address)), .. }
    | ServiceError::NotCoordinator { coordinator: Some((id, address)) } = error
    {
        let metadata = status.metadata_mut();
        if let Ok(id) = id.to_string().parse() {
            metadata.insert(LEADER_ID_KEY, id);
        }
        if let Some(Ok(address)) = address.as_deref().map(str::parse) {
            metadata.insert(LEADER_ADDRESS_KEY, address);
        }
    }
    status
}

/// The status metadata key that names the leader's node id when a request went to a node
/// that does not lead the partition, or a group request to a node that does not coordinate
/// the cluster's groups (FAILED_PRECONDITION).
pub const LEADER_ID_KEY: &str = "spool-leader-id";
/// The status metadata key that names the address the leader serves clients at.
pub const LEADER_ADDRESS_KEY: &str = "spool-leader-address";

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use spool_storage::Offset;

    use super::*;

    fn topic() -> TopicName {
        TopicName::parse("t").unwrap()
    }

    fn check(error: ServiceError, code: Code, message_has: &str) {
        let status = to_status(&error);
        assert_eq!(status.code(), code, "{error}");
        assert!(
            status.message().contains(message_has),
            "{:?} lacks {message_has:?}",
            status.message()
        );
    }

    #[test]
    fn codes() {
        check(
            ServiceError::UnknownTopic { name: topic() },
            Code::NotFound,
            "topic t does not exist",
        );
        check(ServiceError::TopicName(TopicNameError::Empty), Code::InvalidArgument, "empty");
        check(
            ServiceError::read(
                &topic(),
                0,
                ReadError::OffsetOutOfRange {
                    requested: Offset(9),
                    log_start: Offset(2),
                    log_end: Offset(5),
                },
            ),
            Code::OutOfRange,
            "offsets 2 to 4",
        );
        let full = io::Error::from(io::ErrorKind::StorageFull);
        check(
            ServiceError::append(
                &topic(),
                1,
                AppendError::NoSpace { path: PathBuf::from("/d/0.log"), source: Arc::new(full) },
            ),
            Code::ResourceExhausted,
            "no space left",
        );
        check(
            ServiceError::CreateTopic(CreateTopicError::Io {
                name: topic(),
                path: PathBuf::from("/d"),
                source: io::Error::from(io::ErrorKind::StorageFull),
            }),
            Code::ResourceExhausted,
            "/d",
        );
        check(
            ServiceError::CreateTopic(CreateTopicError::AlreadyExists { name: topic() }),
            Code::AlreadyExists,
            "already exists",
        );
        check(
            ServiceError::sync(
                &topic(),
                0,
                SyncError::Fenced(Fence::SyncFailed {
                    path: PathBuf::from("/d/0.log"),
                    error: Arc::new(io::Error::other("EIO")),
                }),
            ),
            Code::DataLoss,
            "fsync of /d/0.log failed",
        );
        check(
            ServiceError::append(
                &topic(),
                0,
                AppendError::Fenced(Fence::WriteFailed {
                    path: PathBuf::from("/d/0.log"),
                    error: Arc::new(io::Error::other("EIO")),
                }),
            ),
            Code::FailedPrecondition,
            "refuses writes",
        );
        check(
            ServiceError::AcksAllWithoutFsync { topic: topic() },
            Code::FailedPrecondition,
            "fsync policy `never`",
        );
        check(ServiceError::ShuttingDown, Code::Unavailable, "shutting down");
        check(
            ServiceError::read(
                &topic(),
                3,
                ReadError::Damaged {
                    offset: Offset(5000),
                    path: PathBuf::from("/d/0.log"),
                    position: 123_456,
                    reason: "batch CRC mismatch".into(),
                },
            ),
            Code::DataLoss,
            "partition 3 of topic t: offset 5000 cannot be read: the batch at byte 123456 of /d/0.log is damaged",
        );
    }
}
