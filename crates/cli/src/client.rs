//! The client commands: `topic`, `produce` and `consume`, over the `spool.v1` gRPC API.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use spool_proto::limits::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::start_position::{Earliest, Latest, Position};
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, AlterTopicRequest, ConsumedRecord, CreateTopicRequest, DeleteTopicRequest,
    DescribeTopicRequest, FsyncPolicy, Header, ListTopicsRequest, ProduceRequest, Record,
    RecordList, StartPosition, SubscribeRequest, TopicConfig, TopicDescription,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

use crate::{AcksArg, Format, ServerArg, TopicCommand};

/// Lines per produce request, at most.
const PRODUCE_CHUNK_LINES: usize = 1000;
/// Bytes of lines per produce request, about (a request stays far below the server's limit).
const PRODUCE_CHUNK_BYTES: usize = 1024 * 1024;
/// The longest line `spool produce` accepts.
const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(PRODUCE_CHUNK_BYTES + LINE_BYTES_MAX < REQUEST_BYTES_MAX);

/// A gRPC error as one line a person can act on.
pub(crate) fn status_error(status: Status) -> anyhow::Error {
    anyhow!("{} ({})", status.message(), code_name(status.code()))
}

pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

type Connection = spool_client::Transport;

fn read_pem(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what}: cannot read {}", path.display()))
}

/// The channel to the server with the token (if any) added to every call.
pub(crate) async fn connect(server: &ServerArg) -> anyhow::Result<Connection> {
    let client = spool_client::Client::from_channel(connect_channel(server).await?);
    let client = match &server.token {
        Some(token) => client.with_bearer_token(token)?,
        None => client,
    };
    Ok(client.transport())
}

/// The channel to the server (TLS as asked), without the token: `connect` adds it, and the
/// commands built on `spool-client` give it to the client.
pub(crate) async fn connect_channel(server: &ServerArg) -> anyhow::Result<Channel> {
    let url = &server.server;
    let mut endpoint = spool_client::endpoint(url)?;
    if url.starts_with("https://") {
        // No system roots are compiled in: name the server's CA with --ca-cert.
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &server.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem("--ca-cert", ca)?));
        }
        match (&server.client_cert, &server.client_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) =
                    (read_pem("--client-cert", cert)?, read_pem("--client-key", key)?);
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            _ => bail!("--client-cert and --client-key go together"),
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    endpoint.connect().await.with_context(|| format!("cannot connect to the server at {url}"))
}

fn parse_fsync(fsync: &str) -> anyhow::Result<Policy> {
    Ok(match fsync {
        "always" => Policy::Always(Always {}),
        "never" => Policy::Never(Never {}),
        other => {
            match other.strip_prefix("interval:") {
                Some(ms) => Policy::IntervalMs(ms.parse().with_context(|| {
                    format!("--fsync interval:{ms}: not a number of milliseconds")
                })?),
                None => bail!("--fsync {other:?}: use always, interval:MS or never"),
            }
        }
    })
}

fn print_topic(topic: &TopicDescription) {
    let config = topic.config.unwrap_or_default();
    let fsync = match config.fsync.and_then(|f| f.policy) {
        Some(Policy::Always(_)) | None => "always".to_owned(),
        Some(Policy::IntervalMs(ms)) => format!("interval:{ms}"),
        Some(Policy::Never(_)) => "never".to_owned(),
    };
    let optional = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    println!(
        "{}\tpartitions={}\tfsync={}\tretention_ms={}\tretention_bytes={}\tsegment_bytes={}",
        topic.name,
        config.partitions,
        fsync,
        optional(config.retention_ms),
        optional(config.retention_bytes),
        optional(config.segment_bytes),
    );
    for p in &topic.partitions {
        print!(
            "  partition {}\tlog_start_offset={}\tlog_end_offset={}\tsize_bytes={}",
            p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes
        );
        match &p.fenced_reason {
            Some(reason) => println!("\tFENCED: {reason}"),
            None => println!(),
        }
    }
}

pub(crate) async fn topic(server: &ServerArg, command: TopicCommand) -> anyhow::Result<()> {
    let mut client = TopicServiceClient::new(connect(server).await?);
    match command {
        TopicCommand::Create {
            name,
            partitions,
            fsync,
            retention_ms,
            retention_bytes,
            segment_bytes,
        } => {
            let config = TopicConfig {
                partitions,
                fsync: Some(FsyncPolicy { policy: Some(parse_fsync(&fsync)?) }),
                retention_ms,
                retention_bytes,
                segment_bytes,
            };
            let created = client
                .create_topic(CreateTopicRequest { name, config: Some(config) })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(topic) = created.topic {
                print_topic(&topic);
            }
        }
        TopicCommand::List => {
            let list =
                client.list_topics(ListTopicsRequest {}).await.map_err(status_error)?.into_inner();
            for topic in &list.topics {
                print_topic(topic);
            }
        }
        TopicCommand::Describe { name } => {
            let described = client
                .describe_topic(DescribeTopicRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(topic) = described.topic {
                print_topic(&topic);
            }
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("deleted {name}");
        }
        TopicCommand::Alter { name, fsync, retention_ms, retention_bytes, segment_bytes } => {
            let fsync = match fsync {
                Some(fsync) => Some(FsyncPolicy { policy: Some(parse_fsync(&fsync)?) }),
                None => None,
            };
            let request =
                AlterTopicRequest { name, fsync, retention_ms, retention_bytes, segment_bytes };
            let altered = client.alter_topic(request).await.map_err(status_error)?.into_inner();
            if let Some(topic) = altered.topic {
                print_topic(&topic);
            }
        }
    }
    Ok(())
}

pub(crate) struct ProduceOptions {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) acks: Option<AcksArg>,
}

/// Reads standard input on its own thread, one line (without its line ending) at a time.
fn read_lines(lines: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    loop {
        let mut line = Vec::new();
        let read = Read::take(&mut stdin, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line);
        let outcome = match read {
            Ok(0) => return,
            Ok(_) => {
                let complete = line.last() == Some(&b'\n');
                if complete {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if line.len() > LINE_BYTES_MAX {
                    Err(std::io::Error::other(format!(
                        "a line of standard input is longer than {LINE_BYTES_MAX} bytes"
                    )))
                } else {
                    Ok(line)
                }
            }
            Err(error) => Err(error),
        };
        let failed = outcome.is_err();
        if lines.blocking_send(outcome).is_err() || failed {
            return;
        }
    }
}

pub(crate) async fn produce(server: &ServerArg, options: ProduceOptions) -> anyhow::Result<()> {
    let headers = options
        .headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((key, value)) => Ok(Header {
                key: key.to_owned(),
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
            }),
            None => Err(anyhow!("--header {h:?}: write it as NAME=VALUE")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let acks = match options.acks {
        None => Acks::Unspecified,
        Some(AcksArg::None) => Acks::None,
        Some(AcksArg::Leader) => Acks::Leader,
        Some(AcksArg::All) => Acks::All,
    };
    let key = options.key.map(|k| Bytes::from(k.into_bytes()));
    let mut client = ProduceServiceClient::new(connect(server).await?)
        .max_decoding_message_size(RESPONSE_BYTES_MAX)
        .max_encoding_message_size(REQUEST_BYTES_MAX);

    let (lines_tx, mut lines) = mpsc::channel(PRODUCE_CHUNK_LINES);
    std::thread::spawn(move || read_lines(lines_tx));
    let (requests_tx, requests) = mpsc::channel(64);
    let mut answers = client
        .produce_stream(ReceiverStream::new(requests))
        .await
        .map_err(status_error)?
        .into_inner();

    // Sends chunks of lines as they come; a chunk ends at the size limits or when standard
    // input has nothing more ready, so typed lines go out at once.
    let topic = options.topic.clone();
    let partition = options.partition;
    let sender = tokio::spawn(async move {
        let mut chunks: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
        let mut first_line = 1u64;
        let mut correlation_id = 0u64;
        while let Some(line) = lines.recv().await {
            let mut records = Vec::new();
            let mut bytes = 0;
            let mut next = Some(line);
            while let Some(line) = next.take() {
                let line = line.context("reading standard input failed")?;
                bytes += line.len();
                records.push(Record {
                    key: key.clone(),
                    value: Some(Bytes::from(line)),
                    headers: headers.clone(),
                    timestamp_ms: None,
                });
                if records.len() < PRODUCE_CHUNK_LINES && bytes < PRODUCE_CHUNK_BYTES {
                    next = lines.try_recv().ok();
                }
            }
            chunks.insert(correlation_id, (first_line, records.len()));
            first_line += records.len() as u64;
            let request = ProduceRequest {
                correlation_id,
                topic: topic.clone(),
                partition,
                acks: acks as i32,
                payload: Some(Payload::Records(RecordList { records })),
                producer: None,
            };
            correlation_id += 1;
            if requests_tx.send(request).await.is_err() {
                break;
            }
        }
        anyhow::Ok((chunks, first_line - 1))
    });

    let mut failures: Vec<(u64, String)> = Vec::new();
    let mut acknowledged = Vec::new();
    while let Some(answer) = answers.message().await.map_err(status_error)? {
        match answer.result {
            Some(StreamResult::Ok(_)) => acknowledged.push(answer.correlation_id),
            Some(StreamResult::Error(error)) => failures.push((
                answer.correlation_id,
                format!("{} ({})", error.message, code_name(Code::from_i32(error.code))),
            )),
            None => failures.push((answer.correlation_id, "empty answer".to_owned())),
        }
    }
    let (chunks, total) = sender.await.context("the producer task failed")??;
    let mut failed_events = 0;
    for (correlation_id, message) in &failures {
        let (first, count) = chunks.get(correlation_id).copied().unwrap_or((0, 0));
        failed_events += count as u64;
        eprintln!("spool: lines {first}..={} failed: {message}", first + count as u64 - 1);
    }
    if acks != Acks::None {
        let acknowledged_events: u64 = acknowledged
            .iter()
            .filter_map(|id| chunks.get(id))
            .map(|(_, count)| *count as u64)
            .sum();
        if acknowledged_events + failed_events != total {
            bail!(
                "{} of {total} events got no answer (the server went away?)",
                total - acknowledged_events - failed_events
            );
        }
    }
    if failed_events > 0 {
        bail!("{failed_events} of {total} events were not produced");
    }
    Ok(())
}

pub(crate) struct ConsumeOptions {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) from: String,
    pub(crate) count: Option<u64>,
    pub(crate) follow: bool,
    pub(crate) format: Format,
}

pub(crate) fn parse_from(from: &str) -> anyhow::Result<Position> {
    Ok(match from {
        "earliest" => Position::Earliest(Earliest {}),
        "latest" => Position::Latest(Latest {}),
        _ if from.bytes().all(|b| b.is_ascii_digit()) => Position::Offset(
            from.parse().with_context(|| format!("--from {from}: offset too large"))?,
        ),
        _ => {
            let time = chrono::DateTime::parse_from_rfc3339(from).with_context(|| {
                format!("--from {from:?}: use earliest, latest, an offset or an RFC 3339 time like 2024-05-01T12:00:00Z")
            })?;
            Position::TimestampMs(time.timestamp_millis())
        }
    })
}

fn json_bytes(bytes: Option<&[u8]>) -> serde_json::Value {
    match bytes {
        None => serde_json::Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => serde_json::json!({
                "base64": base64::engine::general_purpose::STANDARD.encode(bytes)
            }),
        },
    }
}

pub(crate) fn write_record(
    out: &mut impl Write,
    format: Format,
    topic: &str,
    partition: u32,
    record: &ConsumedRecord,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            out.write_all(record.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let timestamp = chrono::DateTime::from_timestamp_millis(record.timestamp_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let headers: Vec<_> = record
                .headers
                .iter()
                .map(|h| serde_json::json!({"key": h.key, "value": json_bytes(h.value.as_deref())}))
                .collect();
            let line = serde_json::json!({
                "topic": topic,
                "partition": partition,
                "offset": record.offset,
                "timestamp": timestamp,
                "timestamp_ms": record.timestamp_ms,
                "key": json_bytes(record.key.as_deref()),
                "headers": headers,
                "value": json_bytes(record.value.as_deref()),
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")
        }
    }
}

pub(crate) async fn consume(server: &ServerArg, options: ConsumeOptions) -> anyhow::Result<()> {
    let position = parse_from(&options.from)?;
    let channel = connect(server).await?;
    let partitions = match options.partition {
        Some(partition) => vec![partition],
        None => {
            let described = TopicServiceClient::new(channel.clone())
                .describe_topic(DescribeTopicRequest { name: options.topic.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            let count = described.topic.and_then(|t| t.config).map_or(0, |c| c.partitions);
            (0..count).collect()
        }
    };
    let client = ConsumeServiceClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
    let mut streams = StreamMap::new();
    for partition in partitions {
        let stream = client
            .clone()
            .subscribe(SubscribeRequest {
                topic: options.topic.clone(),
                partition,
                start: Some(StartPosition { position: Some(position) }),
                encoding: 0,
                stop_at_end: !options.follow,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        streams.insert(partition, stream);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    while options.count.is_none_or(|count| printed < count) {
        let Some((partition, message)) = streams.next().await else {
            break;
        };
        let message = message.map_err(status_error)?;
        for record in &message.records {
            if options.count.is_some_and(|count| printed >= count) {
                break;
            }
            let written = write_record(&mut out, options.format, &options.topic, partition, record);
            match written {
                Ok(()) => printed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => return Err(error).context("writing to standard output failed"),
            }
        }
        match out.flush() {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error).context("writing to standard output failed"),
        }
    }
    Ok(())
}
