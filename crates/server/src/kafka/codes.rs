//! The one place Spool's errors become Kafka error codes, as `crate::error::to_status` is for
//! gRPC statuses. Kafka answers carry a code per partition (or topic), not a message a person
//! reads, so each refusal is also logged at DEBUG with its full text.

use kafka_protocol::ResponseError;
use spool_storage::{AppendError, ReadError};

use crate::auth::AuthError;
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
        ServiceError::Auth(AuthError::Denied { resource, .. })
            if resource.starts_with("group ") =>
        {
            ResponseError::GroupAuthorizationFailed
        }
        ServiceError::Auth(AuthError::Denied { .. }) => ResponseError::TopicAuthorizationFailed,
        // The connection authenticated, then its token left the file.
        ServiceError::Auth(_) => ResponseError::SaslAuthenticationFailed,
        // A client retries these elsewhere: the partition is not being served here now.
        ServiceError::ShuttingDown => ResponseError::NotLeaderOrFollower,
        _ => ResponseError::UnknownServerError,
    };
    crate::metrics::kafka_error(format!("{code:?}"));
    code.code()
}
