//! The produce and consume workloads through Spool's Kafka listener, driven by a Kafka client
//! nobody here wrote: kcat (Debian's, on librdkafka), run as a child process.
//!
//! - produce: the messages are written to a file first (one per line: a pattern payload's
//!   newline bytes are written as 0x0b, so every message keeps its size), then
//!   `kcat -P -l FILE` sends them all with the run's acks, linger, batch size and codec; the
//!   clock covers kcat's whole run, which ends once every message is acknowledged.
//! - consume: kcat produces the messages (untimed), then `kcat -C -e -c N` reads them all
//!   from the beginning, timed.
//!
//! kcat reports no per-message times, so these results carry throughput only (no latency);
//! e2e is not run. The server is the in-process one, with its Kafka listener on 127.0.0.1:0.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use spool_client::{Client, TopicSettings};
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_server::ServeOptions;
use spool_server::testing::TestServer;

use crate::payload::Payloads;
use crate::stats::new_histogram;
use crate::workload::{Measured, parse_fsync};
use crate::{AcksArg, BenchError, Settings, StoredBytes, Workload};

/// Per-message room librdkafka's batch size counts beside the value (record overhead).
const RECORD_OVERHEAD_BYTES: usize = 64;

/// Runs the workload through the Kafka listener of an in-process server under `data_root`.
pub async fn measure(
    settings: &Settings,
    kcat: &Path,
    data_root: &Path,
) -> Result<Measured, BenchError> {
    if settings.workload == Workload::E2e {
        return Err(BenchError::BadOption(
            "the kafka target runs produce and consume: kcat reports no per-message times for e2e"
                .into(),
        ));
    }
    let Some(messages) = settings.messages else {
        return Err(BenchError::BadOption(
            "the kafka target needs --messages (kcat sends a file of that many)".into(),
        ));
    };
    let data =
        tempfile::Builder::new().prefix("spool-bench-kafka-").tempdir_in(data_root).map_err(
            |e| BenchError::io(format!("creating a directory in {}", data_root.display()), e),
        )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::io("binding 127.0.0.1:0".into(), e))?;
    let kafka = listener.local_addr().map_err(|e| BenchError::io("binding".into(), e))?;
    let options = ServeOptions { kafka: Some(listener), ..Default::default() };
    let server = TestServer::start_with(&data.path().join("data"), options)
        .await
        .map_err(|error| BenchError::Server(error.to_string()))?;
    let client = Client::connect(server.url()).await?;
    let topic = "spool-bench-kafka";
    let topic_settings = TopicSettings {
        partitions: settings.partitions,
        fsync: parse_fsync(&settings.fsync)?,
        ..TopicSettings::default()
    };
    client.create_topic(topic, topic_settings).await?;
    let lines = data.path().join("messages");
    write_messages(settings, messages, &lines)?;
    let produce = produce_command(kcat, settings, kafka, topic, &lines);
    let seconds = match settings.workload {
        Workload::Produce => run_timed(produce).await?,
        _ => {
            run_timed(produce).await?;
            run_timed(consume_command(kcat, kafka, topic, messages)).await?
        }
    };
    let disk_bytes = crate::spool::disk_bytes(&client, topic, messages).await?;
    drop(client);
    server.shutdown().await.map_err(|error| BenchError::Server(error.to_string()))?;
    let acks = match settings.acks {
        AcksArg::None => "none",
        AcksArg::Leader => "leader",
        AcksArg::All => "all",
    };
    Ok(Measured {
        target: "kafka".into(),
        durability: format!("fsync {}, acks {acks} (kcat)", settings.fsync),
        messages,
        seconds,
        histogram: new_histogram(),
        timeline: Vec::new(),
        server_fsyncs: None,
        compression: settings.compression,
        stored: Some(StoredBytes::new(messages * settings.message_size as u64, disk_bytes)),
    })
}

/// `messages` payloads, one per line.
fn write_messages(settings: &Settings, messages: u64, path: &Path) -> Result<(), BenchError> {
    let payloads = Payloads::new(settings.payload, settings.message_size, settings.batch);
    let failed = |e| BenchError::io(format!("writing {}", path.display()), e);
    let file = std::fs::File::create(path).map_err(failed)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(settings.message_size + 1);
    for index in 0..messages {
        line.clear();
        line.extend(payloads.get(index).iter().map(|&b| if b == b'\n' { 0x0b } else { b }));
        line.push(b'\n');
        out.write_all(&line).map_err(failed)?;
    }
    out.flush().map_err(failed)
}

fn produce_command(
    kcat: &Path,
    settings: &Settings,
    kafka: SocketAddr,
    topic: &str,
    lines: &Path,
) -> std::process::Command {
    let acks = match settings.acks {
        AcksArg::None => "0",
        AcksArg::Leader => "1",
        AcksArg::All => "-1",
    };
    let batch_bytes = (settings.batch as usize * (settings.message_size + RECORD_OVERHEAD_BYTES))
        .clamp(16 * 1024, BATCH_BYTES_MAX as usize / 2);
    let mut command = std::process::Command::new(kcat);
    command.args(["-P", "-q", "-b", &kafka.to_string(), "-t", topic, "-l"]).arg(lines);
    for (key, value) in [
        ("acks", acks.to_owned()),
        ("linger.ms", settings.linger_ms.to_string()),
        ("batch.num.messages", settings.batch.to_string()),
        ("batch.size", batch_bytes.to_string()),
        ("message.max.bytes", BATCH_BYTES_MAX.to_string()),
        ("compression.codec", settings.compression.name().to_owned()),
        ("queue.buffering.max.kbytes", "1048576".to_owned()),
    ] {
        command.arg("-X").arg(format!("{key}={value}"));
    }
    command
}

fn consume_command(
    kcat: &Path,
    kafka: SocketAddr,
    topic: &str,
    messages: u64,
) -> std::process::Command {
    let mut command = std::process::Command::new(kcat);
    command.args(["-C", "-q", "-e", "-o", "beginning", "-f", "%o\n", "-b", &kafka.to_string()]);
    command.args(["-t", topic, "-c", &messages.to_string()]);
    command.args(["-X", &format!("fetch.message.max.bytes={BATCH_BYTES_MAX}")]);
    command
}

/// Runs `command` to its end; its seconds.
async fn run_timed(mut command: std::process::Command) -> Result<f64, BenchError> {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let started = Instant::now();
    let what = format!("running {command:?} (install kcat, or pass --kcat)");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| BenchError::Kafka(format!("kcat's waiting task failed: {e}")))?
        .map_err(|e| BenchError::io(what, e))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(BenchError::Kafka(format!(
            "kcat failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(seconds)
}
