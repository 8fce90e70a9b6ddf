//! The one place Spool's errors become Kafka error codes, as `crate::error::to_status` is for
//! gRPC statuses. Kafka answers carry a code per partition (or topic), not a message a person
//! reads, so each refusal is also logged at DEBUG with its full text.

use kafka_protocol::ResponseError;
use spool_broker::group::classic::ClassicError;
use spool_storage::{AppendError, ReadError};

use crate::error::ServiceError;
use crate::idempotence::ProducerIdError;

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
        ServiceError::Sequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        // A client retries these elsewhere: the partition is not being served here now.
        ServiceError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::UnknownServerError,
    };
    code.code()
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
        ClassicError::MemberIdRequired { .. } => ResponseError::MemberIdRequired,
        ClassicError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
        ClassicError::GroupFull | ClassicError::Exhausted => ResponseError::GroupMaxSizeReached,
        ClassicError::TooLarge => ResponseError::InvalidRequest,
        ClassicError::MetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
    };
    if !matches!(error, ClassicError::InUseBySpool { .. }) {
        tracing::debug!(%error, "a Kafka group request refused");
    }
    code.code()
}
