//! The one place Spool's errors become Kafka error codes, as `crate::error::to_status` is for
//! gRPC statuses. Kafka answers carry a code per partition (or topic), not a message a person
//! reads, so each refusal is also logged at DEBUG with its full text.

use kafka_protocol::ResponseError;
use spool_broker::group::classic::ClassicError;
use spool_broker::producer::SequenceError;
use spool_broker::{AlterTopicError, CreateTopicError, DeleteTopicError, TopicConfigError};
use spool_storage::{AppendError, ReadError};

use crate::auth::{AuthError, ResourceKind};
use crate::error::ServiceError;
use crate::idempotence::ProducerIdError;

use super::configs::ConfigError;

/// The Kafka error code for `error`.
pub(super) fn error_code(error: &ServiceError) -> i16 {
    tracing::debug!(%error, "a Kafka request refused");
    let code = match error {
        ServiceError::UnknownTopic { .. }
        | ServiceError::UnknownPartition { .. }
        | ServiceError::TopicDeleted { .. } => ResponseError::UnknownTopicOrPartition,
        ServiceError::TopicName(_) => ResponseError::InvalidTopicException,
        ServiceError::AcksAllWithoutFsync { .. } => ResponseError::InvalidRequiredAcks,
        ServiceError::Append { source, .. } => match source {
            AppendError::InvalidBatch(_) => ResponseError::CorruptMessage,
            AppendError::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
            AppendError::NoSpace { .. } | AppendError::Io { .. } | AppendError::Fenced(_) => {
                ResponseError::KafkaStorageError
            }
        },
        ServiceError::Fenced { .. } => ResponseError::KafkaStorageError,
        ServiceError::Read { source, .. } => match source {
            ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            ReadError::Io { .. } | ReadError::Damaged { .. } => ResponseError::KafkaStorageError,
        },
        ServiceError::ProducerId(ProducerIdError::Unknown { .. }) => {
            ResponseError::UnknownProducerId
        }
        // Kafka answers a retry of one of a producer's last five batches with success and its
        // first offsets (the writer does too); an older one is a duplicate it cannot place,
        // which clients take as written. An older epoch is fenced.
        ServiceError::Sequence { source, .. } => match source {
            SequenceError::OutOfOrder { .. } | SequenceError::SequenceOverflow { .. } => {
                ResponseError::OutOfOrderSequenceNumber
            }
            SequenceError::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch,
            SequenceError::OldDuplicate { .. } => ResponseError::DuplicateSequenceNumber,
            SequenceError::BadStamp { .. } => ResponseError::CorruptMessage,
        },
        ServiceError::Auth(AuthError::Denied { kind: ResourceKind::Group, .. }) => {
            ResponseError::GroupAuthorizationFailed
        }
        ServiceError::Auth(AuthError::Denied { .. }) => ResponseError::TopicAuthorizationFailed,
        // The connection authenticated, then its token left the file.
        ServiceError::Auth(_) => ResponseError::SaslAuthenticationFailed,
        // A client retries these elsewhere: the partition is not being served here now.
        ServiceError::NotCoordinator { .. } => ResponseError::NotCoordinator,
        ServiceError::ShuttingDown
        | ServiceError::NotLeader { .. }
        | ServiceError::NotHeld { .. }
        | ServiceError::Behind { .. } => ResponseError::NotLeaderOrFollower,
        // A cluster could not confirm it in time (no quorum, a leader changing): the batch may
        // or may not be stored, as after Kafka's own timeout. A client retries; an idempotent
        // one with the same sequence, which the next leader answers as a duplicate.
        ServiceError::Cluster(_) => ResponseError::RequestTimedOut,
        ServiceError::ReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        // The leader a follower passed the batch to refused it, with a gRPC code.
        ServiceError::Forwarded { code, .. } => match tonic::Code::from_i32(*code) {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                ResponseError::RequestTimedOut
            }
            // The leader changed, or refused what only it can tell (a sequence): the client
            // looks up the leader and sends it there, where the refusal has its own code.
            tonic::Code::FailedPrecondition => ResponseError::NotLeaderOrFollower,
            tonic::Code::NotFound => ResponseError::UnknownTopicOrPartition,
            // A replica read for this node, which holds none of the partition.
            tonic::Code::OutOfRange => ResponseError::OffsetOutOfRange,
            _ => ResponseError::UnknownServerError,
        },
        _ => ResponseError::UnknownServerError,
    };
    crate::metrics::kafka_error(format!("{code:?}"));
    code.code()
}

/// The Kafka error code for `error` when it refuses a topic's creation, deletion or change:
/// these answers have codes of their own for what a produce or fetch never meets.
pub(super) fn admin_error_code(error: &ServiceError) -> i16 {
    let code = match error {
        ServiceError::CreateTopic(CreateTopicError::AlreadyExists { .. }) => {
            ResponseError::TopicAlreadyExists
        }
        // The server's own limits, which no retry of the same request gets past.
        ServiceError::CreateTopic(
            CreateTopicError::TooManyTopics { .. } | CreateTopicError::TooManyPartitions { .. },
        )
        | ServiceError::AlterTopic(AlterTopicError::TooManyPartitions { .. })
        | ServiceError::OpenFiles(_) => ResponseError::PolicyViolation,
        ServiceError::AlterTopic(AlterTopicError::PartitionsShrink { .. }) => {
            ResponseError::InvalidPartitions
        }
        ServiceError::TopicConfig(TopicConfigError::Partitions { .. }) => {
            ResponseError::InvalidPartitions
        }
        ServiceError::TopicConfig(_) => ResponseError::InvalidConfig,
        ServiceError::AlterTopic(AlterTopicError::NotFound { .. })
        | ServiceError::DeleteTopic(DeleteTopicError::NotFound { .. }) => {
            ResponseError::UnknownTopicOrPartition
        }
        _ => return error_code(error),
    };
    tracing::debug!(%error, "a Kafka admin request refused");
    code.code()
}

/// The Kafka error code for a Kafka topic configuration Spool refuses.
pub(super) fn config_error_code(error: &ConfigError) -> i16 {
    tracing::debug!(%error, "a Kafka topic configuration refused");
    match error {
        ConfigError::Topic(TopicConfigError::Partitions { .. }) => ResponseError::InvalidPartitions,
        _ => ResponseError::InvalidConfig,
    }
    .code()
}
/// The Kafka error code for a refusal of the classic group protocol.
pub(super) fn classic_error_code(error: &ClassicError) -> i16 {
    let code = match error {
        ClassicError::UnknownMemberId => ResponseError::UnknownMemberId,
        ClassicError::IllegalGeneration => ResponseError::IllegalGeneration,
        ClassicError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        // The name is taken by the other protocol: as Kafka refuses a member whose protocol
        // type differs from the group's.
        ClassicError::InUseBySpool { .. } => {
            tracing::info!(%error, "a Kafka group request refused");
            ResponseError::InconsistentGroupProtocol
        }
        ClassicError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        // As Kafka's coordinator answers when it cannot store a group (NOT_LEADER, a storage
        // error): the client finds the coordinator again, where REBALANCE_IN_PROGRESS on a
        // JoinGroup is an error librdkafka hands the application.
        ClassicError::CoordinatorMoved => ResponseError::NotCoordinator,
        ClassicError::MemberIdRequired { .. } => ResponseError::MemberIdRequired,
        ClassicError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        ClassicError::GroupFull | ClassicError::Exhausted => ResponseError::GroupMaxSizeReached,
        ClassicError::TooLarge => ResponseError::InvalidRequest,
        ClassicError::MetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        ClassicError::FencedInstanceId => ResponseError::FencedInstanceId,
        ClassicError::InvalidInstanceId { .. } => ResponseError::InvalidRequest,
    };
    if !matches!(error, ClassicError::InUseBySpool { .. }) {
        tracing::debug!(%error, "a Kafka group request refused");
    }
    code.code()
}
