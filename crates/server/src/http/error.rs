//! What the browser listener refuses, and the HTTP status of every error it answers.
//!
//! Errors from the services keep their one gRPC mapping ([`crate::error::to_status`]); the
//! HTTP status is derived from that code, with a few errors made more precise for browsers
//! (a batch over the limit is 413, a full disk 507, a fenced partition 503). Every error
//! answers `{"status": CODE, "error": "MESSAGE"}` (plus `"hint"` for a missing token), with
//! the same message text gRPC callers get.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use spool_storage::{AppendError, ReadError};
use thiserror::Error;
use tonic::Code;

use crate::auth::AuthError;
use crate::error::{InvalidRequest, ServiceError, to_status};

/// A request the browser listener refuses before it reaches the topic table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum BadRequest {
    #[error(
        "`from` is {from:?}: use `earliest`, `latest`, an offset, an RFC 3339 time like 2024-05-01T12:00:00Z (in a URL, `+` in a zone offset is %2B), or `time:MS` (milliseconds since the Unix epoch)"
    )]
    From { from: String },
    #[error("the Last-Event-ID header is {id:?}, which is not an offset this server sent")]
    LastEventId { id: String },
    #[error("the body is not a record: {reason}")]
    Record { reason: String },
    #[error("`encoding` is {encoding:?}: use `utf8` (the default) or `base64`")]
    Encoding { encoding: String },
    #[error("{field} is not valid base64: {reason}")]
    Base64 { field: &'static str, reason: String },
    #[error("limit is {limit}; it must be 1..={limit_max}")]
    HistoryLimit { limit: u32, limit_max: u32 },
    #[error("the body is {bytes} bytes or more; the limit is {bytes_max} bytes")]
    BodyTooLarge { bytes: usize, bytes_max: usize },
    #[error("the body could not be read: {reason}")]
    Body { reason: String },
    #[error("the request is not one this endpoint takes: {reason}")]
    Rejected { reason: String },
    #[error("the message is not one this socket understands: {reason}")]
    Message { reason: String },
    #[error(
        "Origin {origin:?} is not this listener or an allowed origin: another site's page may not write or open a WebSocket here (an operator can allow an origin with --http-allowed-origin)"
    )]
    CrossOrigin { origin: String },
    #[error(
        "Host {host:?} is not a name of this listener (a page reaching it through another name is refused; an operator can allow a name with --http-allowed-origin)"
    )]
    ForeignHost { host: String },
    #[error(
        "a POST body with Content-Type {content_type:?} could come from another site's form: send JSON (application/json) or a raw body as application/octet-stream"
    )]
    FormContentType { content_type: String },
    #[error("the listener serves {streams_max} subscriptions at once; try again later")]
    TooManyStreams { streams_max: usize },
    #[error(
        "this token holds {streams_max} subscriptions, as many as one token may; close one first"
    )]
    TooManyStreamsForToken { streams_max: usize },
}

/// An error as the listener answers it.
#[derive(Debug, Error)]
pub(crate) enum HttpError {
    #[error(transparent)]
    Request(#[from] BadRequest),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("there is no endpoint at {path}: the page is at /, the API under /v1")]
    NoEndpoint { path: String },
    #[error("{path} does not take {method}: the Allow header lists the methods it takes")]
    MethodNotAllowed { method: String, path: String },
}

impl From<AuthError> for HttpError {
    fn from(error: AuthError) -> HttpError {
        HttpError::Service(ServiceError::Auth(error))
    }
}

impl From<InvalidRequest> for HttpError {
    fn from(error: InvalidRequest) -> HttpError {
        HttpError::Service(ServiceError::Request(error))
    }
}

/// The HTTP status for a gRPC code, where nothing more precise is known.
fn status_of_code(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        Code::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::Unavailable | Code::DataLoss => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown | Code::Unimplemented | Code::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl HttpError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HttpError::Request(BadRequest::BodyTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Request(BadRequest::CrossOrigin { .. } | BadRequest::ForeignHost { .. }) => {
                StatusCode::FORBIDDEN
            }
            HttpError::Request(BadRequest::FormContentType { .. }) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            HttpError::Request(BadRequest::TooManyStreams { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::Request(BadRequest::TooManyStreamsForToken { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            HttpError::Request(_) => StatusCode::BAD_REQUEST,
            HttpError::NoEndpoint { .. } => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Service(error) => match error {
                ServiceError::Request(InvalidRequest::BatchTooLarge { .. })
                | ServiceError::Append { source: AppendError::BatchTooLarge { .. }, .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                // A partition that refuses writes until it is reopened: the server's trouble,
                // not the request's.
                ServiceError::Fenced { .. } => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Read { source: ReadError::OffsetOutOfRange { .. }, .. } => {
                    StatusCode::RANGE_NOT_SATISFIABLE
                }
                error => status_of_code(to_status(error).code()),
            },
        }
    }

    /// What a person should do, where the message alone may not say it.
    fn hint(&self) -> Option<&'static str> {
        match self {
            HttpError::Service(ServiceError::Auth(AuthError::NoToken | AuthError::Malformed)) => {
                Some(
                    "send `Authorization: Bearer TOKEN`; a browser's EventSource or WebSocket can pass `?token=TOKEN` instead (or the cookie `spool_token` on GET requests)",
                )
            }
            _ => None,
        }
    }

    /// The JSON body: `{"status": 404, "error": "topic t does not exist"}`.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody { status: self.status().as_u16(), error: self.to_string(), hint: self.hint() }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody {
    pub(crate) status: u16,
    pub(crate) error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hint: Option<&'static str>,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use spool_broker::TopicName;
    use spool_storage::Offset;

    use super::*;

    fn check(error: impl Into<HttpError>, status: StatusCode) {
        let error = error.into();
        assert_eq!(error.status(), status, "{error}");
        assert_eq!(error.body().status, status.as_u16());
    }

    #[test]
    fn statuses() {
        let topic = TopicName::parse("t").unwrap();
        check(ServiceError::UnknownTopic { name: topic.clone() }, StatusCode::NOT_FOUND);
        check(AuthError::NoToken, StatusCode::UNAUTHORIZED);
        check(
            AuthError::Denied {
                identity: "a".into(),
                action: crate::auth::Action::Consume,
                resource: "topic t".into(),
                kind: crate::auth::ResourceKind::Topic,
            },
            StatusCode::FORBIDDEN,
        );
        check(
            InvalidRequest::BatchTooLarge { partition: 0, bytes: 9, bytes_max: 8 },
            StatusCode::PAYLOAD_TOO_LARGE,
        );
        check(BadRequest::BodyTooLarge { bytes: 9, bytes_max: 8 }, StatusCode::PAYLOAD_TOO_LARGE);
        check(BadRequest::From { from: "x".into() }, StatusCode::BAD_REQUEST);
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        check(
            ServiceError::append(
                &topic,
                0,
                AppendError::NoSpace { path: PathBuf::from("/d/0.log"), source: Arc::new(full) },
            ),
            StatusCode::INSUFFICIENT_STORAGE,
        );
        check(
            ServiceError::read(
                &topic,
                0,
                ReadError::OffsetOutOfRange {
                    requested: Offset(9),
                    log_start: Offset(0),
                    log_end: Offset(3),
                },
            ),
            StatusCode::RANGE_NOT_SATISFIABLE,
        );
        check(ServiceError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE);
        check(
            HttpError::MethodNotAllowed { method: "PUT".into(), path: "/v1/topics".into() },
            StatusCode::METHOD_NOT_ALLOWED,
        );
    }
}
