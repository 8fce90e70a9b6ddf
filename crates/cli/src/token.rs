//! `spool token`: makes bearer tokens and the lines of the token file that admit them.
//!
//! The server stores only each token's SHA-256 digest (see `spool_server::auth` for why a
//! fast digest is right for random tokens), so a token is shown once, when it is made.

use std::io::Read;

use crate::out;

use anyhow::{Context, bail};
use spool_server::auth::token_digest_hex;

/// Random bytes in a token: 256 bits.
const TOKEN_RANDOM_BYTES: usize = 32;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a random token; print it, then a `[[token]]` entry for the token file.
    Create {
        /// The identity the server logs for this token's administrative actions.
        name: String,
    },
    /// Print the SHA-256 digest of the token read from standard input.
    Hash,
}

pub(crate) fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name } => {
            let mut random = [0u8; TOKEN_RANDOM_BYTES];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut urandom| urandom.read_exact(&mut random))
                .context("cannot read /dev/urandom")?;
            let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
            let token = format!("spool_{token}");
            out!("{token}");
            out!("");
            out!("# Add to the token file, and name what the token may do:");
            out!("[[token]]");
            out!("name = {}", toml::Value::String(name));
            out!("sha256 = \"{}\"", token_digest_hex(&token));
            out!(
                "topics = {{ }}  # e.g. {{ \"orders\" = [\"produce\", \"consume\"], \"logs.*\" = [\"administer\"] }}"
            );
            out!("groups = {{ }}  # e.g. {{ \"billing-*\" = [\"consume\"] }}");
            Ok(())
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token).context("cannot read standard input")?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no token on standard input");
            }
            out!("{}", token_digest_hex(token));
            Ok(())
        }
    }
}
