//! `spool request TOPIC` and `spool respond TOPIC --group G -- COMMAND ARGS...`: request-reply
//! over the log with `spool-client`'s requester and responder.

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use spool_client::{GroupConfig, Record, Request, RequestError, RequesterConfig, Responder};

use crate::ServerArg;
use crate::client::connect;

/// The most bytes of a command's output `spool respond` sends as a reply (a reply must fit
/// in one batch with room for its headers).
const REPLY_BYTES_MAX: usize = 1024 * 1024 - 64 * 1024;
/// The most bytes of a failed command's standard error quoted in its reply's error.
const STDERR_BYTES_MAX: usize = 4096;
/// The longest request `spool request` reads from standard input.
const REQUEST_BYTES_MAX: u64 = 1024 * 1024 - 64 * 1024;

/// Parses a duration like `500ms`, `5s`, `2m`, or a number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 5s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: use ms, s or m, like 500ms or 5s")),
    }
}

pub(crate) struct RequestOptions {
    pub(crate) topic: String,
    pub(crate) value: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) reply_topic: Option<String>,
    pub(crate) reply_partition: u32,
}

/// Sends one request and prints its reply's value as it is.
pub(crate) async fn request(server: &ServerArg, options: RequestOptions) -> anyhow::Result<()> {
    let value = match options.value {
        Some(value) => value.into_bytes(),
        None => {
            let mut value = Vec::new();
            std::io::stdin()
                .take(REQUEST_BYTES_MAX + 1)
                .read_to_end(&mut value)
                .context("reading the request from standard input")?;
            if value.len() as u64 > REQUEST_BYTES_MAX {
                bail!("a request holds at most {REQUEST_BYTES_MAX} bytes");
            }
            value
        }
    };
    let reply_topic = options.reply_topic.unwrap_or_else(|| format!("{}.replies", options.topic));
    let config = RequesterConfig {
        reply_topic,
        reply_partition: options.reply_partition,
        timeout: options.timeout,
    };
    let client = connect(server).await?;
    let requester = client.requester(&options.topic, config).await?;
    let mut record = Record::value(&value);
    if let Some(key) = &options.key {
        record = record.with_key(key.as_bytes());
    }
    let (value, failed) = match requester.request(record).await {
        Ok(reply) => (reply.value, None),
        Err(RequestError::Failed { message, reply }) => (reply.value, Some(message)),
        Err(error) => return Err(error.into()),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(value.as_deref().unwrap_or_default())
        .and_then(|()| out.flush())
        .context("writing to standard output failed")?;
    match failed {
        Some(message) => bail!("the responder failed: {message}"),
        None => Ok(()),
    }
}

pub(crate) struct RespondOptions {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) command: Vec<String>,
    pub(crate) session_timeout_ms: u32,
}

/// Answers requests with a command: each request's value is its standard input, its
/// standard output the reply; a non-zero exit is a reply with `spool-error`.
pub(crate) async fn respond(server: &ServerArg, options: RespondOptions) -> anyhow::Result<()> {
    let Some(program) = options.command.first().cloned() else {
        bail!("name the command to run after --")
    };
    let config = GroupConfig {
        session_timeout: Duration::from_millis(u64::from(options.session_timeout_ms)),
        ..GroupConfig::new(&options.group, &[&options.topic])
    };
    let client = connect(server).await?;
    eprintln!("spool: answering {} as group {} with {program}", options.topic, options.group);
    let command = Arc::new(options.command);
    let handler = move |request: Request| {
        let command = command.clone();
        async move {
            let input = request.value.unwrap_or_default();
            tokio::task::spawn_blocking(move || run_command(&command, &input))
                .await
                .map_err(|error| format!("the command's task failed: {error}"))?
        }
    };
    let interrupted = crate::stop_requested();
    Responder::with_config(&client, config).run(handler, interrupted).await?;
    Ok(())
}

/// Runs `command` with `input` on its standard input; its standard output, or why it failed.
fn run_command(command: &[String], input: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", command[0]))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three were asked to be piped");
    };
    // Written and read on their own threads, so a command that writes before it has read
    // everything never blocks on a full pipe.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that exits without reading its input is not an error here.
        let _ = stdin.write_all(&input);
    });
    let errors = std::thread::spawn(move || read_bounded(stderr, STDERR_BYTES_MAX));
    let output = read_bounded(stdout, REPLY_BYTES_MAX);
    let status = child.wait().map_err(|error| format!("waiting for {}: {error}", command[0]))?;
    let _ = writer.join();
    let (errors, _) = errors.join().unwrap_or_default();
    let (output, too_long) = output;
    if !status.success() {
        let errors = String::from_utf8_lossy(&errors);
        return Err(format!("{} exited with {status}: {}", command[0], errors.trim_end()));
    }
    if too_long {
        return Err(format!("{} wrote more than {REPLY_BYTES_MAX} bytes", command[0]));
    }
    Ok(output)
}

/// Up to `bytes_max` bytes of `source`, reading the rest to its end; and whether there was
/// more.
fn read_bounded(source: impl Read, bytes_max: usize) -> (Vec<u8>, bool) {
    let mut source = std::io::BufReader::new(source);
    let mut kept = Vec::new();
    let _ = (&mut source).take(bytes_max as u64).read_to_end(&mut kept);
    let rest = std::io::copy(&mut source, &mut std::io::sink()).unwrap_or(0);
    (kept, rest > 0)
}
