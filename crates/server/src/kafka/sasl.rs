//! SASL/PLAIN: how a Kafka connection authenticates when the server has tokens.
//!
//! The password is a Spool token (the one the token file names by its SHA-256); the user name
//! is not checked (the token alone says who the caller is, as gRPC's bearer token does) and is
//! not logged. The exchange is Kafka's (KIP-152): SaslHandshake v1 agrees on `PLAIN`, then one
//! SaslAuthenticate carries `authzid NUL authcid NUL password`. Until it succeeds, a connection
//! may send only ApiVersions, SaslHandshake and SaslAuthenticate, in frames of at most
//! [`KAFKA_UNAUTHENTICATED_REQUEST_BYTES_MAX`](crate::limits::KAFKA_UNAUTHENTICATED_REQUEST_BYTES_MAX)
//! bytes; anything else closes it, as Kafka's brokers do. A failed authentication is answered
//! with SASL_AUTHENTICATION_FAILED and a message, then the connection is closed.
//!
//! Without tokens the SASL APIs are not advertised and every connection is served as an
//! anonymous caller that may do everything, as gRPC serves one without tokens.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::auth::{Authenticator, Caller};

/// The one mechanism served.
pub(super) const PLAIN: &str = "PLAIN";

/// Where a connection is in authenticating.
#[derive(Debug, Clone)]
pub(super) enum Session {
    /// Nothing is served but ApiVersions and SaslHandshake.
    Started,
    /// PLAIN was agreed: SaslAuthenticate is next.
    Agreed,
    /// Every request is served as this caller (the anonymous one without tokens).
    Authenticated(Caller),
}

impl Session {
    /// The session a new connection starts in.
    pub(super) fn new(authenticator: Option<&Arc<Authenticator>>) -> Session {
        match authenticator {
            Some(_) => Session::Started,
            None => Session::Authenticated(Caller::open()),
        }
    }
}

/// The answer to a SaslHandshake, and whether PLAIN was agreed.
pub(super) fn handshake(request: &SaslHandshakeRequest) -> (SaslHandshakeResponse, bool) {
    let answer =
        SaslHandshakeResponse::default().with_mechanisms(vec![StrBytes::from_static_str(PLAIN)]);
    if request.mechanism.as_str() == PLAIN {
        (answer, true)
    } else {
        tracing::debug!(mechanism = %request.mechanism.as_str(), "a Kafka client asked for a SASL mechanism not served");
        (answer.with_error_code(ResponseError::UnsupportedSaslMechanism.code()), false)
    }
}

/// The answer to a SaslAuthenticate, and the caller it authenticated (`None`: it failed, and
/// the connection closes once the answer is written).
pub(super) fn authenticate(
    authenticator: &Arc<Authenticator>,
    request: &SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, Option<Caller>) {
    let failed = |message: &str| {
        let answer = SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
            .with_error_message(Some(StrBytes::from_string(message.to_owned())));
        (answer, None)
    };
    let Some(password) = plain_password(&request.auth_bytes) else {
        return failed(
            "SASL/PLAIN needs `authzid NUL user NUL password` with a non-empty password: set \
             the password to a Spool token",
        );
    };
    match Caller::with_token(authenticator, password) {
        Ok(caller) => {
            tracing::debug!(identity = %caller.identity(), "a Kafka connection authenticated");
            (SaslAuthenticateResponse::default(), Some(caller))
        }
        Err(error) => failed(&format!("{error}: the SASL/PLAIN password must be a Spool token")),
    }
}

/// The password of a SASL/PLAIN message (RFC 4616: `[authzid] NUL authcid NUL passwd`).
fn plain_password(message: &[u8]) -> Option<&str> {
    let mut fields = message.split(|byte| *byte == 0);
    let (_authzid, _authcid, password) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || password.is_empty() {
        return None;
    }
    std::str::from_utf8(password).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_yield_their_password_and_nothing_else_does() {
        assert_eq!(plain_password(b"\0alice\0secret"), Some("secret"));
        assert_eq!(plain_password(b"admin\0alice\0secret"), Some("secret"));
        assert_eq!(plain_password(b"\0\0secret"), Some("secret"));
        for bad in [&b""[..], b"secret", b"\0alice", b"\0alice\0", b"\0a\0b\0c", b"\0a\0\xff"] {
            assert_eq!(plain_password(bad), None, "{bad:?}");
        }
    }
}
