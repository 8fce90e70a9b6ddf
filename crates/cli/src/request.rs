//! `spool request TOPIC` and `spool respond TOPIC --group G -- COMMAND ARGS...`: request-reply
//! over the log with `spool-client`'s requester and responder.

use crate::ServerArg;
use crate::client::connect_channel;

/// A `spool-client` client for the server named on the command line (TLS and token as given).
pub(crate) async fn client(server: &ServerArg) -> anyhow::Result<spool_client::Client> {
    let client = spool_client::Client::from_channel(connect_channel(server).await?);
    Ok(match &server.token {
        Some(token) => client.with_bearer_token(token)?,
        None => client,
    })
}
