//! The client commands `topic`, `produce` and `consume`, and what every client command
//! shares: connecting, reading `--from`, printing records. Every call goes through
//! spool-client, so what the commands need, Rust users get too.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use spool_client::{
    Acks, Client, ConnectOptions, Delivery, Follow, Fsync, Header, ProduceError, ProducerConfig,
    Reconnect, ReconnectEvent, Record, StartAt, TopicChange, TopicInfo, TopicSettings,
};
use spool_proto::limits::BATCH_BYTES_MAX;
use tokio::sync::mpsc;

use crate::{Format, ServerArg, TopicCommand, out};

/// The longest line `spool produce` accepts.
const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Records sent and not yet answered that `spool produce` keeps track of, at most: it stops
/// reading standard input beyond this.
const PRODUCE_UNANSWERED_MAX: usize = 64 * 1024;
/// The longest a line waits for more before its batch goes, while standard input keeps
/// lines coming; a batch also goes when it is full, or at once when input pauses.
const LINGER_MAX: std::time::Duration = std::time::Duration::from_millis(100);
const _: () = assert!(LINE_BYTES_MAX < BATCH_BYTES_MAX as usize);

fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// A client of the server the connection flags name, with their TLS settings and token.
pub(crate) async fn connect(server: &ServerArg) -> anyhow::Result<Client> {
    let client_identity_pem = match (&server.client_cert, &server.client_key) {
        (Some(cert), Some(key)) => {
            Some((read_pem("--client-cert", cert)?, read_pem("--client-key", key)?))
        }
        (None, None) => None,
        _ => bail!("--client-cert and --client-key go together"),
    };
    let ca_cert_pem = server.ca_cert.as_deref().map(|ca| read_pem("--ca-cert", ca)).transpose()?;
    let options = ConnectOptions { token: server.token.clone(), ca_cert_pem, client_identity_pem };
    Ok(Client::connect_with(&server.server, &options).await?)
}

fn parse_fsync(fsync: &str) -> anyhow::Result<Fsync> {
    Ok(match fsync {
        "always" => Fsync::Always,
        "never" => Fsync::Never,
        other => {
            match other.strip_prefix("interval:") {
                Some(ms) => Fsync::IntervalMs(ms.parse().with_context(|| {
                    format!("--fsync interval:{ms}: not a number of milliseconds")
                })?),
                None => bail!("--fsync {other:?}: use always, interval:MS or never"),
            }
        }
    })
}

fn print_topic(topic: &TopicInfo) {
    let fsync = match topic.fsync {
        Fsync::Always => "always".to_owned(),
        Fsync::IntervalMs(ms) => format!("interval:{ms}"),
        Fsync::Never => "never".to_owned(),
    };
    let optional = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    out!(
        "{}\tpartitions={}\tfsync={}\tretention_ms={}\tretention_bytes={}\tsegment_bytes={}\tcompression={}",
        topic.name,
        topic.partitions,
        fsync,
        optional(topic.retention_ms),
        optional(topic.retention_bytes),
        optional(topic.segment_bytes),
        topic.compression,
    );
    for p in &topic.partition_states {
        let fenced = p.fenced_reason.as_ref().map(|reason| format!("\tFENCED: {reason}"));
        let replicated = (!p.replicas.is_empty()).then(|| {
            let replicas: Vec<String> = p.replicas.iter().map(u64::to_string).collect();
            let leader = p.leader.map_or_else(|| "none".to_owned(), |id| id.to_string());
            let elsewhere = match p.not_held_here {
                true => "\t(not held by this node: figures from a replica)",
                false => "",
            };
            format!("\tleader={leader}\treplicas={}{elsewhere}", replicas.join(","))
        });
        out!(
            "  partition {}\tlog_start_offset={}\tlog_end_offset={}\tsize_bytes={}{}{}",
            p.partition,
            p.log_start_offset,
            p.log_end_offset,
            p.size_bytes,
            replicated.unwrap_or_default(),
            fenced.unwrap_or_default()
        );
    }
}

pub(crate) async fn topic(server: &ServerArg, command: TopicCommand) -> anyhow::Result<()> {
    let client = connect(server).await?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            fsync,
            retention_ms,
            retention_bytes,
            segment_bytes,
            compression,
            replication_factor,
        } => {
            let settings = TopicSettings {
                partitions,
                fsync: parse_fsync(&fsync)?,
                retention_ms,
                retention_bytes,
                segment_bytes,
                compression,
                replication_factor,
            };
            print_topic(&client.create_topic(&name, settings).await?);
        }
        TopicCommand::List => {
            for topic in &client.list_topics().await? {
                print_topic(topic);
            }
        }
        TopicCommand::Describe { name } => print_topic(&client.describe_topic(&name).await?),
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            out!("deleted {name}");
        }
        TopicCommand::Alter {
            name,
            fsync,
            retention_ms,
            retention_bytes,
            segment_bytes,
            compression,
            partitions,
        } => {
            let fsync = fsync.as_deref().map(parse_fsync).transpose()?;
            let change = TopicChange {
                fsync,
                retention_ms,
                retention_bytes,
                segment_bytes,
                compression,
                partitions,
            };
            print_topic(&client.alter_topic(&name, change).await?);
        }
    }
    Ok(())
}

pub(crate) struct ProduceOptions {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) key: Option<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) acks: Option<Acks>,
    pub(crate) compression: spool_client::Codec,
    pub(crate) quiet: bool,
}

/// What the thread reading standard input hands on.
enum Input {
    /// One line, without its line ending, or why reading failed.
    Line(std::io::Result<Vec<u8>>),
    /// Standard input has nothing more ready: what is buffered should go now.
    Pause,
}

/// Reads standard input on its own thread, one line (without its line ending) at a time,
/// and says when it has read everything that was ready: lines piped in together travel in
/// one batch, and a typed line goes at once.
fn read_lines(lines: mpsc::Sender<Input>) {
    let mut stdin = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin());
    loop {
        let mut line = Vec::new();
        let read = Read::take(&mut stdin, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line);
        let outcome = match read {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
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
        if lines.blocking_send(Input::Line(outcome)).is_err() || failed {
            return;
        }
        if stdin.buffer().is_empty() && lines.blocking_send(Input::Pause).is_err() {
            return;
        }
    }
}

/// What became of the lines `spool produce` sent, gathered in line order.
#[derive(Default)]
struct ProduceReport {
    lines: u64,
    /// Per partition, the first and last offset stored.
    stored: BTreeMap<u32, (u64, u64)>,
    /// Lines sent without waiting for an answer (`--acks none`).
    unacknowledged: u64,
    /// Runs of consecutive lines that failed for one reason: (first, last, reason).
    failed: Vec<(u64, u64, String)>,
    /// Lines whose answer never came (the stream broke): they may or may not be stored.
    unknown: Vec<(u64, u64, String)>,
}

impl ProduceReport {
    fn add(&mut self, line: u64, outcome: Result<spool_client::RecordMetadata, ProduceError>) {
        self.lines += 1;
        match outcome {
            Ok(stored) => match stored.offset {
                Some(offset) => {
                    let range = self.stored.entry(stored.partition).or_insert((offset, offset));
                    range.0 = range.0.min(offset);
                    range.1 = range.1.max(offset);
                }
                None => self.unacknowledged += 1,
            },
            Err(error) => {
                let runs = match error {
                    ProduceError::Disconnected(_) | ProduceError::RetriesExhausted { .. } => {
                        &mut self.unknown
                    }
                    _ => &mut self.failed,
                };
                let reason = error.to_string();
                match runs.last_mut() {
                    Some((_, last, previous)) if *last + 1 == line && *previous == reason => {
                        *last = line
                    }
                    _ => runs.push((line, line, reason)),
                }
            }
        }
    }

    fn failed_lines(&self) -> u64 {
        let count = |runs: &[(u64, u64, String)]| -> u64 {
            runs.iter().map(|(first, last, _)| last - first + 1).sum()
        };
        count(&self.failed) + count(&self.unknown)
    }

    /// Lines on standard error: what was stored where, and which lines failed and why.
    fn print(&self, topic: &str, quiet: bool) {
        let stored = self.lines - self.failed_lines() - self.unacknowledged;
        if !quiet {
            let mut line = format!("spool: {stored} of {} records stored in {topic}", self.lines);
            for (partition, (first, last)) in &self.stored {
                line.push_str(&format!("; partition {partition} offsets {first} to {last}"));
            }
            eprintln!("{line}");
            if self.unacknowledged > 0 {
                eprintln!("spool: {} records sent without an acknowledgement", self.unacknowledged);
            }
        }
        for (first, last, reason) in &self.failed {
            match first == last {
                true => eprintln!("spool: line {first} was not stored: {reason}"),
                false => eprintln!("spool: lines {first} to {last} were not stored: {reason}"),
            }
        }
        for (first, last, reason) in &self.unknown {
            match first == last {
                true => eprintln!("spool: line {first} may or may not be stored: {reason}"),
                false => {
                    eprintln!("spool: lines {first} to {last} may or may not be stored: {reason}")
                }
            }
        }
    }
}

pub(crate) async fn produce(server: &ServerArg, options: ProduceOptions) -> anyhow::Result<()> {
    let headers = options
        .headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((name, value)) => Ok((name.to_owned(), value.as_bytes().to_vec())),
            None => Err(anyhow!("--header {h:?}: write it as NAME=VALUE")),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let headers: Vec<Header<'_>> =
        headers.iter().map(|(name, value)| Header::new(name, Some(value.as_slice()))).collect();
    let client = connect(server).await?;
    // Without --acks, what the server would choose: `all`, or `leader` on a topic that never
    // syncs (where `all` is refused).
    let acks = match options.acks {
        Some(acks) => acks,
        None => match client.describe_topic(&options.topic).await?.fsync {
            Fsync::Never => Acks::Leader,
            Fsync::Always | Fsync::IntervalMs(_) => Acks::All,
        },
    };
    // A batch goes when standard input has nothing more ready (`Input::Pause`), or when it is
    // full: piped lines travel in large batches, typed ones at once.
    let config = ProducerConfig {
        acks,
        batch_bytes_max: BATCH_BYTES_MAX as usize,
        linger: LINGER_MAX,
        compression: options.compression,
        ..Default::default()
    };
    let producer = client.producer(&options.topic, config).await?;

    // Deliveries are awaited in line order on their own task, so a slow answer does not stop
    // the reading; the queue between bounds what is tracked.
    let (deliveries_tx, mut deliveries) =
        mpsc::channel::<(u64, Result<Delivery, ProduceError>)>(PRODUCE_UNANSWERED_MAX);
    let collector = tokio::spawn(async move {
        let mut report = ProduceReport::default();
        while let Some((line, delivery)) = deliveries.recv().await {
            let outcome = match delivery {
                Ok(delivery) => delivery.wait().await,
                Err(error) => Err(error),
            };
            report.add(line, outcome);
        }
        report
    });

    let (lines_tx, mut lines) = mpsc::channel(1024);
    std::thread::spawn(move || read_lines(lines_tx));
    let mut number = 0u64;
    let mut read_error = None;
    while let Some(input) = lines.recv().await {
        let line = match input {
            Input::Line(Ok(line)) => line,
            Input::Line(Err(error)) => {
                read_error = Some(error);
                break;
            }
            Input::Pause => {
                producer.send_buffered();
                continue;
            }
        };
        number += 1;
        let mut record = Record { value: Some(&line), headers: &headers, ..Record::default() };
        record.key = options.key.as_deref().map(str::as_bytes);
        record.partition = options.partition;
        let delivery = producer.send(record).await;
        if deliveries_tx.send((number, delivery)).await.is_err() {
            break;
        }
    }
    drop(deliveries_tx);
    // Whatever the outcome, every delivery resolves once the producer is closed.
    let closed = producer.close().await;
    let report = collector.await.context("the task collecting answers failed")?;
    report.print(&options.topic, options.quiet);
    if let Some(error) = read_error {
        return Err(error).context(format!("reading standard input failed after line {number}"));
    }
    let failed = report.failed_lines();
    if failed > 0 {
        bail!("{failed} of {} records were not acknowledged", report.lines);
    }
    closed.context("closing the producer failed")?;
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

/// `--from` (or `--to`): earliest, latest, an offset, or an RFC 3339 time.
pub(crate) fn parse_from(flag: &str, from: &str) -> anyhow::Result<StartAt> {
    Ok(match from {
        "earliest" => StartAt::Earliest,
        "latest" => StartAt::Latest,
        _ if from.bytes().all(|b| b.is_ascii_digit()) => StartAt::Offset(
            from.parse().with_context(|| format!("{flag} {from}: offset too large"))?,
        ),
        _ => {
            let time = chrono::DateTime::parse_from_rfc3339(from).with_context(|| {
                format!(
                    "{flag} {from:?}: use earliest, latest, an offset or an RFC 3339 time like 2024-05-01T12:00:00Z"
                )
            })?;
            StartAt::TimestampMs(time.timestamp_millis())
        }
    })
}

/// One record as the commands print it, whichever consumer read it.
pub(crate) struct Printed<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: Vec<Header<'a>>,
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
    record: &Printed<'_>,
) -> std::io::Result<()> {
    match format {
        Format::Value => {
            out.write_all(record.value.unwrap_or_default())?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let timestamp = chrono::DateTime::from_timestamp_millis(record.timestamp_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let headers: Vec<_> = record
                .headers
                .iter()
                .map(|header| {
                    serde_json::json!({
                        "key": String::from_utf8_lossy(header.key),
                        "value": json_bytes(header.value),
                    })
                })
                .collect();
            let line = serde_json::json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": timestamp,
                "timestamp_ms": record.timestamp_ms,
                "key": json_bytes(record.key),
                "headers": headers,
                "value": json_bytes(record.value),
            });
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")
        }
    }
}

/// What a write to standard output means for the command: a reader that went away (`| head`)
/// ends it quietly.
pub(crate) enum Written {
    Yes,
    ReaderGone,
}

pub(crate) fn written(outcome: std::io::Result<()>) -> anyhow::Result<Written> {
    match outcome {
        Ok(()) => Ok(Written::Yes),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(Written::ReaderGone),
        Err(error) => Err(error).context("writing to standard output failed"),
    }
}

/// The server's URL as the client reads `--server` (no scheme means `http://`).
pub(crate) fn server_url(server: &str) -> String {
    if server.contains("://") { server.to_owned() } else { format!("http://{server}") }
}

/// A wait as a person reads it: 100ms, 1.6s, 5s.
fn human(duration: std::time::Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0..1000 => format!("{ms}ms"),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{:.1}s", duration.as_secs_f64()),
    }
}

/// One line on standard error per wait for a lost server, and one once it is back:
/// `resuming` says where consumption goes on.
pub(crate) fn report_reconnect(server: &str, resuming: &str, event: &ReconnectEvent) {
    match event {
        ReconnectEvent::Waiting { error, retry_in, .. } => eprintln!(
            "spool: lost the server at {server}: {error}; retrying in {} ({resuming})",
            human(*retry_in)
        ),
        ReconnectEvent::Reconnected { attempts } => {
            let tries = if *attempts == 1 { "1 attempt" } else { &format!("{attempts} attempts") };
            eprintln!("spool: reconnected to {server} after {tries} ({resuming})")
        }
    }
}

/// `--from OFFSET` without `--partition` starts every partition at that offset (offsets are
/// per partition, so it means "skip the first OFFSET records of each"); a partition whose log
/// does not hold it is refused before anything is printed, rather than ending the command
/// partway with OUT_OF_RANGE or being moved silently to its nearest end.
fn check_offset_in_every_partition(topic: &TopicInfo, offset: u64) -> anyhow::Result<()> {
    let outside: Vec<String> = topic
        .partition_states
        .iter()
        .filter(|p| !(p.log_start_offset..=p.log_end_offset).contains(&offset))
        .map(|p| match p.log_start_offset == p.log_end_offset {
            true => format!(
                "partition {} holds no records (its next offset is {})",
                p.partition, p.log_end_offset
            ),
            false => format!(
                "partition {} holds offsets {} to {}",
                p.partition,
                p.log_start_offset,
                p.log_end_offset - 1
            ),
        })
        .collect();
    if !outside.is_empty() {
        bail!(
            "--from {offset} applies to every partition of {}, but {}: add --partition, or start at earliest, latest or a time",
            topic.name,
            outside.join(", ")
        );
    }
    Ok(())
}

pub(crate) async fn consume(server: &ServerArg, options: ConsumeOptions) -> anyhow::Result<()> {
    let start = parse_from("--from", &options.from)?;
    let client = connect(server).await?;
    let partitions = match options.partition {
        Some(partition) => vec![partition],
        None => {
            let topic = client.describe_topic(&options.topic).await?;
            if let StartAt::Offset(offset) = start {
                check_offset_in_every_partition(&topic, offset)?;
            }
            (0..topic.partitions).collect()
        }
    };
    let follow = if options.follow { Follow::Live } else { Follow::UntilEnd };
    // One task per partition polls its subscription; the answers meet in one queue, each
    // partition's in order. A follower rides out a server restart: it subscribes again after
    // the last record it handed out, which was printed before it polled again.
    let (polled_tx, mut polled) = mpsc::channel(partitions.len().max(1) * 2);
    for partition in partitions {
        let mut consumer = client.subscribe(&options.topic, partition, start, follow).await?;
        let polled_tx = polled_tx.clone();
        let server = server_url(&server.server);
        tokio::spawn(async move {
            let reconnect = Reconnect::default();
            let report = |event: &ReconnectEvent| {
                let resuming = match event {
                    ReconnectEvent::Waiting { resume_at, .. } => match resume_at.first() {
                        Some((_, offset)) => {
                            format!("resuming partition {partition} at offset {offset}")
                        }
                        None => format!("resuming partition {partition} where it started"),
                    },
                    ReconnectEvent::Reconnected { .. } => format!("partition {partition}"),
                };
                report_reconnect(&server, &resuming, event);
            };
            loop {
                let next = match follow {
                    Follow::Live => consumer.poll_reconnecting(&reconnect, report).await,
                    Follow::UntilEnd => consumer.poll().await,
                };
                let last = !matches!(next, Ok(Some(_)));
                if polled_tx.send((partition, next)).await.is_err() || last {
                    return;
                }
            }
        });
    }
    drop(polled_tx);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    while options.count.is_none_or(|count| printed < count) {
        let Some((partition, next)) = polled.recv().await else {
            break;
        };
        let Some(answer) = next? else {
            continue;
        };
        for record in answer.records() {
            if options.count.is_some_and(|count| printed >= count) {
                break;
            }
            let record = record?;
            let shown = Printed {
                topic: &options.topic,
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers().collect(),
            };
            match written(write_record(&mut out, options.format, &shown))? {
                Written::Yes => printed += 1,
                Written::ReaderGone => return Ok(()),
            }
        }
        if let Written::ReaderGone = written(out.flush())? {
            return Ok(());
        }
    }
    Ok(())
}
