//! The client's errors, one enum per operation, each a caller can match on.
//!
//! What the server refuses arrives as a [`ServerError`]: the gRPC code it chose (as an
//! [`ErrorCode`], the codes Spool's API documents), and its message for a person. The enums
//! wrap it where the server's answer is the reason, and add the reasons that are the client's
//! own (a full buffer, a record too large to ever send, a closed producer).

use spool_storage::batch::BatchError;
use thiserror::Error;
use tonic::{Code, Status};

/// The status codes Spool's API answers with (see the `.proto` files for when).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A bad request: a bad name, a value out of bounds, a malformed batch.
    InvalidArgument,
    /// No such topic (or the topic was deleted).
    NotFound,
    /// A topic of that name exists.
    AlreadyExists,
    /// The request cannot be served in this state: `acks=all` on an fsync `never` topic, or a
    /// partition fenced after a failed write.
    FailedPrecondition,
    /// An offset outside the partition's stored range.
    OutOfRange,
    /// The disk is full, or a limit on the server was reached.
    ResourceExhausted,
    /// Data may be lost: a failed fsync or damage fenced the partition, or a read met a
    /// stored batch that is damaged (every record before it was delivered; the message names
    /// the offset and the place in the segment file).
    DataLoss,
    /// The server is shutting down or cannot be reached.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// The server requires a token and none (or an unknown one) was sent
    /// ([`crate::Client::with_bearer_token`]).
    Unauthenticated,
    /// The token does not grant this call on this topic or group.
    PermissionDenied,
    /// Any other gRPC code, as its number.
    Other(i32),
}

impl ErrorCode {
    fn from_code(code: Code) -> ErrorCode {
        match code {
            Code::InvalidArgument => ErrorCode::InvalidArgument,
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists => ErrorCode::AlreadyExists,
            Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            Code::OutOfRange => ErrorCode::OutOfRange,
            Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            Code::DataLoss => ErrorCode::DataLoss,
            Code::Unavailable => ErrorCode::Unavailable,
            Code::Internal => ErrorCode::Internal,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            other => ErrorCode::Other(other as i32),
        }
    }

    /// The code's name as gRPC and the `.proto` files spell it (`NOT_FOUND`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::OutOfRange => "OUT_OF_RANGE",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::DataLoss => "DATA_LOSS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Other(code) => match Code::from_i32(code) {
                Code::Ok => "OK",
                Code::Cancelled => "CANCELLED",
                Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
                Code::Aborted => "ABORTED",
                Code::Unimplemented => "UNIMPLEMENTED",
                _ => "UNKNOWN",
            },
        }
    }

    /// The code of a `ProduceError.code` field on the produce stream.
    pub(crate) fn from_i32(code: i32) -> ErrorCode {
        ErrorCode::from_code(Code::from_i32(code))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the server answered when it refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message} ({code})")]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<Status> for ServerError {
    fn from(status: Status) -> ServerError {
        ServerError { code: ErrorCode::from_code(status.code()), message: status.message().into() }
    }
}

/// Why [`crate::Client::connect`] failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("{url:?} is not a server URL (like http://127.0.0.1:7070): {reason}")]
    BadUrl { url: String, reason: String },
    /// Nothing answered at the address, or the connection failed; `reason` is the cause,
    /// with a hint where one helps (a refused connection: is `spool serve` running there?).
    #[error("cannot connect to the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the TLS settings are not usable: {reason}")]
    Tls { reason: String },
    #[error("a bearer token must be printable ASCII")]
    BadToken,
}

/// Why a topic call (create, describe, delete) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdminError {
    #[error("the server refused: {0}")]
    Rejected(#[from] ServerError),
}

impl From<Status> for AdminError {
    fn from(status: Status) -> AdminError {
        AdminError::Rejected(status.into())
    }
}

/// Why a record was not produced, or its outcome is unknown.
///
/// It is `Clone` because one batch's outcome is every one of its records' outcome.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProduceError {
    /// The producer's buffer is full and the producer was built with
    /// [`crate::Backpressure::FailFast`]: nothing was buffered; try again later.
    #[error("the producer's buffer is full ({bytes_max} bytes); the record was not buffered")]
    BufferFull { bytes_max: usize },
    /// The record alone is larger than a batch or the buffer may hold: it can never be sent.
    #[error(
        "the record needs up to {bytes} bytes; a batch or the buffer holds at most {bytes_max}"
    )]
    RecordTooLarge { bytes: usize, bytes_max: usize },
    /// The record breaks a limit the server would refuse it for.
    #[error("the record is refused before sending: {reason}")]
    InvalidRecord { reason: String },
    /// The record names a partition the topic does not have.
    #[error(
        "topic {topic} has partitions 0 to {}; partition {partition} does not exist",
        .partitions.saturating_sub(1)
    )]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    /// The producer was closed, or failed earlier (see [`ProduceError::Disconnected`]).
    #[error("the producer is closed")]
    Closed,
    /// The server refused the batch holding the record; nothing of that batch was stored.
    #[error("the server refused the batch: {0}")]
    Rejected(ServerError),
    /// The produce stream broke before the batch was answered: it may or may not have been
    /// stored. The producer is closed after this. A plain producer does not retry, so
    /// sending such a record again may store it twice; an idempotent one retries first (see
    /// [`ProduceError::RetriesExhausted`]).
    #[error("the produce stream broke before an answer: {0}")]
    Disconnected(ServerError),
    /// An idempotent producer could not get the batch answered: it reconnected `attempts`
    /// times in a row without an answer, or the oldest unanswered batch waited
    /// `waited_ms`, past the delivery timeout. The batch may or may not have been stored
    /// (once at most). The producer is closed after this.
    #[error(
        "gave up after {attempts} reconnect attempts, the oldest unanswered batch waiting {waited_ms} ms: {last}"
    )]
    RetriesExhausted { attempts: u32, waited_ms: u64, last: ServerError },
}

/// Why [`crate::Client::producer`] could not start a producer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProducerError {
    #[error("the producer's configuration is invalid: {reason}")]
    BadConfig { reason: String },
    #[error("the server refused: {0}")]
    Rejected(#[from] ServerError),
}

impl From<Status> for ProducerError {
    fn from(status: Status) -> ProducerError {
        ProducerError::Rejected(status.into())
    }
}

/// Why a subscription could not start, or stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsumeError {
    /// The server refused or ended the subscription (OUT_OF_RANGE when retention deleted
    /// records not yet read, NOT_FOUND when the topic was deleted, UNAVAILABLE at shutdown,
    /// DATA_LOSS at a damaged stored batch, after every record before it).
    #[error("the server ended the subscription: {0}")]
    Rejected(#[from] ServerError),
    /// A batch failed its check on arrival: the bytes are not what the server stored.
    #[error("a batch received at offset {offset} fails its check: {source}")]
    Corrupt { offset: u64, source: BatchError },
}

impl From<Status> for ConsumeError {
    fn from(status: Status) -> ConsumeError {
        ConsumeError::Rejected(status.into())
    }
}

/// Why a group member could not join, or stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GroupError {
    #[error("the group configuration is invalid: {reason}")]
    BadConfig { reason: String },
    /// The server refused the join or ended the member's stream: INVALID_ARGUMENT (a bad
    /// name), NOT_FOUND (a topic does not exist), FAILED_PRECONDITION (the group consumes
    /// other topics), OUT_OF_RANGE (retention deleted records not yet read: rejoin),
    /// UNAVAILABLE (the server shuts down), DATA_LOSS (an owned partition's next batch is
    /// damaged on disk; every record before it was delivered).
    #[error("the server refused or ended the group member: {0}")]
    Rejected(ServerError),
    /// The server removed the member: it missed its session timeout or did not acknowledge a
    /// revocation in time. Its partitions went to other members; rejoin to get new ones.
    #[error("the member was removed from its group (rejoin to continue): {0}")]
    Removed(ServerError),
    /// A commit named a generation older than the member's tenure of a partition, or a
    /// partition it no longer owns: another member owns the partition now. Nothing of that
    /// commit was stored.
    #[error("a commit was refused as stale at generation {generation}: {error}")]
    CommitFenced { generation: u64, error: ServerError },
    /// A commit failed for another reason (an offset past the end, a storage failure).
    #[error("a commit failed: {0}")]
    CommitFailed(ServerError),
    /// A position was set for a partition the member does not own.
    #[error("the member does not own {topic}/{partition}")]
    NotOwned { topic: String, partition: u32 },
    /// A batch failed its check on arrival: the bytes are not what the server stored.
    #[error("a batch of {topic}/{partition} received at offset {offset} fails its check: {source}")]
    Corrupt { topic: String, partition: u32, offset: u64, source: BatchError },
    /// The server sent what the protocol does not allow.
    #[error("the server broke the group protocol: {reason}")]
    Protocol { reason: String },
    /// The stream ended without an error (after a leave, or the member was closed).
    #[error("the group stream ended")]
    Ended,
}
