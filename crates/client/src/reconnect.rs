//! Riding out a server restart: what a following [`crate::Consumer`] or a
//! [`crate::GroupConsumer`] does, when asked to, while its server is gone.
//!
//! A server that shuts down ends every subscription and member stream with `UNAVAILABLE`
//! ("the server is shutting down"), and until it serves again every call fails with
//! `UNAVAILABLE` too (the connection is refused, or the data directory is still being
//! recovered). A server that is killed or crashes ends them by breaking the connection; a
//! consumer's stream that ends so ends with `UNAVAILABLE` too ("the connection to the server
//! broke"), told apart from an answer by the transport's HTTP/2 error (an I/O error, or a
//! `GOAWAY`) in the status's source chain. [`crate::Consumer::poll_reconnecting`] and
//! [`crate::GroupConsumer::poll_reconnecting`] treat that code, and only that code, as a lost
//! server: they wait, subscribe or join again, and go on, waiting [`Reconnect::backoff_initial`]
//! before the first attempt and twice as long before each next one, up to
//! [`Reconnect::backoff_max`], for as long as it takes. Every other error ends them as it ends
//! `poll`: an unknown topic, a refused token, `OUT_OF_RANGE` (retention deleted what was not
//! read yet), `DATA_LOSS`, a member removed from its group.
//!
//! Where they resume:
//!
//! - a consumer subscribes again at its [`crate::Consumer::position`], one past the last record
//!   it handed out (or where it started, when it handed out nothing);
//! - a group member joins its group again as a new member (the server forgot the old one when
//!   it stopped) and resumes from the group's committed offsets. Commits that did not reach the
//!   server before it stopped are not lost: for each partition the member handed records of
//!   before, it skips records it already handed out when the group gives it the partition again,
//!   and commits past them. A partition that went to another member meanwhile starts where that
//!   one committed.
//!
//! Each wait and each reconnection is reported to the caller as a [`ReconnectEvent`], so a
//! person can be told (`spool consume --follow` writes a line to standard error).

use std::time::Duration;

use tonic::Status;

use crate::error::{ErrorCode, ServerError};
use crate::group::TopicPartition;

/// The wait before the first attempt to reach a lost server.
pub const RECONNECT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between two attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
const _: () = assert!(RECONNECT_BACKOFF_INITIAL.as_nanos() <= RECONNECT_BACKOFF_MAX.as_nanos());

/// How a consumer waits for a lost server; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The wait before the first attempt; each later one doubles, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect { backoff_initial: RECONNECT_BACKOFF_INITIAL, backoff_max: RECONNECT_BACKOFF_MAX }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (1 for the first).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.backoff_initial.saturating_mul(1 << doublings).min(self.backoff_max)
    }
}

/// What a consumer riding out a lost server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconnectEvent {
    /// The server is lost (`error` says how); attempt `attempt` starts in `retry_in`.
    Waiting {
        error: ServerError,
        attempt: u32,
        retry_in: Duration,
        /// Per partition, the offset consumption resumes at: one past the last record handed
        /// out. Empty when nothing was handed out yet (it resumes where it started).
        resume_at: Vec<(TopicPartition, u64)>,
    },
    /// Subscribed or joined again, after `attempts` attempts.
    Reconnected { attempts: u32 },
}

/// The error a consumer's stream (or its opening) ended with: the server's answer, or
/// `UNAVAILABLE` when the connection broke under it.
pub(crate) fn stream_error(status: Status) -> ServerError {
    if !connection_broke(&status) {
        return status.into();
    }
    let message = format!("the connection to the server broke: {}", status.message());
    ServerError { code: ErrorCode::Unavailable, message }
}

/// Whether the transport's HTTP/2 error under `status` says the connection failed (an I/O
/// error, or the server sent `GOAWAY` and dropped the stream), rather than the server
/// answering.
fn connection_broke(status: &Status) -> bool {
    let mut next = std::error::Error::source(status);
    while let Some(error) = next {
        if let Some(http2) = error.downcast_ref::<h2::Error>() {
            return http2.is_io() || http2.is_go_away();
        }
        next = error.source();
    }
    false
}

/// Whether `error` is what a server restart causes: the stream ended because the server shut
/// down or its connection broke, or the server cannot be reached or is not serving yet.
pub(crate) fn server_lost(error: &ServerError) -> bool {
    error.code == ErrorCode::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_bound() {
        let reconnect = Reconnect::default();
        let waits: Vec<u128> = (1..=9).map(|a| reconnect.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(reconnect.backoff(u32::MAX), RECONNECT_BACKOFF_MAX);
    }

    /// (A broken connection cannot be built here, as h2 makes its I/O errors itself:
    /// `crates/cli/tests/reconnect.rs` kills a server under a follower.)
    #[test]
    fn an_answer_stays_what_the_server_said() {
        let answered = stream_error(Status::not_found("topic nope does not exist"));
        assert_eq!(answered.code, ErrorCode::NotFound);
        let reset = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert_ne!(stream_error(reset).code, ErrorCode::Unavailable);
    }

    #[test]
    fn only_a_lost_server_is_retried() {
        let error = |code| ServerError { code, message: String::new() };
        assert!(server_lost(&error(ErrorCode::Unavailable)));
        for code in [
            ErrorCode::NotFound,
            ErrorCode::DataLoss,
            ErrorCode::OutOfRange,
            ErrorCode::PermissionDenied,
            ErrorCode::Unauthenticated,
            ErrorCode::Internal,
        ] {
            assert!(!server_lost(&error(code)), "{code}");
        }
    }
}
