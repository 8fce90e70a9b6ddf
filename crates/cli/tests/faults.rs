//! Disk faults under the real server: a failed fdatasync injected by strace into one
//! partition's segment file, and a full disk (a small tmpfs).
//!
//! These need strace and the right to mount a tmpfs. Without them each test prints why it
//! skips; with `SPOOL_REQUIRE_FAULT_TOOLS=1` (set by `.ci/run`) a missing tool fails it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{SPOOL, Served, serve_args};
use spool_client::{
    Acks, Client, ErrorCode, Follow, ProduceError, ProducerConfig, Record, StartAt, TopicSettings,
};

/// Only a guard against a hang.
const GUARD: Duration = Duration::from_secs(60);

/// Whether a missing tool fails the test instead of skipping it.
fn tools_required() -> bool {
    std::env::var("SPOOL_REQUIRE_FAULT_TOOLS").is_ok_and(|v| v == "1")
}

fn skip(reason: &str) {
    assert!(!tools_required(), "SPOOL_REQUIRE_FAULT_TOOLS=1, but {reason}");
    eprintln!("skipped: {reason}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Produces one record with acks=all and waits for its answer.
async fn produce_one(client: &Client, topic: &str, value: &str) -> Result<u64, ProduceError> {
    let config = ProducerConfig { acks: Acks::All, ..Default::default() };
    let producer = client.producer(topic, config).await.unwrap();
    let delivery = producer.send(Record::value(value.as_bytes())).await?;
    let stored = tokio::time::timeout(GUARD, delivery.wait()).await.expect("an answer")?;
    Ok(stored.offset.expect("acks=all answers with an offset"))
}

/// Every value in partition 0 of `topic`, in order.
async fn values(client: &Client, topic: &str) -> Vec<String> {
    let mut consumer =
        client.subscribe(topic, 0, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let mut values = Vec::new();
    while let Some(polled) = consumer.poll().await.unwrap() {
        for record in polled.records() {
            values.push(String::from_utf8(record.unwrap().value.unwrap().to_vec()).unwrap());
        }
    }
    values
}

fn rejected_code(error: &ProduceError) -> (ErrorCode, &str) {
    match error {
        ProduceError::Rejected(refused) => (refused.code, refused.message.as_str()),
        other => panic!("expected the server to refuse, got {other}"),
    }
}

fn strace_missing() -> bool {
    !Command::new("strace").arg("-V").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Three records acknowledged in topic `doomed` (and a topic `healthy`) by a server without
/// faults, in `dir`/data.
fn acknowledged_before_the_fault(data: &Path) -> Vec<String> {
    let served = Served::start(data);
    let acknowledged: Vec<String> = (0..3).map(|i| format!("record {i}")).collect();
    runtime().block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        for topic in ["doomed", "healthy"] {
            client.create_topic(topic, TopicSettings::default()).await.unwrap();
        }
        for value in &acknowledged {
            produce_one(&client, "doomed", value).await.unwrap();
        }
    });
    assert!(served.terminate());
    acknowledged
}

/// The server on `data` under strace, which injects `inject` (like
/// `fdatasync:error=EIO`) into the system calls on `doomed`'s segment file only. (strace
/// counts `when=N` per thread, so "fail from the Nth call on" would not be deterministic in a
/// multi-threaded server; failing every call after a restart is.)
fn served_with_fault(dir: &Path, data: &Path, inject: &str) -> Served {
    let segment = data.join("topics/doomed/0/00000000000000000000.log");
    let syscalls = inject.split(':').next().unwrap();
    let mut strace = Command::new("strace");
    strace
        .arg("-f")
        .arg("-o")
        .arg(dir.join("strace.log"))
        .arg("-e")
        .arg(format!("trace={syscalls}"))
        .arg("-e")
        .arg(format!("inject={inject}"))
        // Only system calls on this path are traced, so only its calls fail.
        .arg("-P")
        .arg(&segment)
        .arg(SPOOL)
        .args(serve_args(data))
        .env("RUST_LOG", "warn");
    Served::spawn_wrapped(strace)
}

/// After the fault: other topics, and one created after it, take and serve writes.
async fn the_rest_serves(client: &Client) {
    for (topic, fresh) in [("healthy", false), ("created-after", true)] {
        if fresh {
            client.create_topic(topic, TopicSettings::default()).await.unwrap();
        }
        for i in 0..3 {
            produce_one(client, topic, &format!("{topic} {i}")).await.unwrap();
        }
        let expected: Vec<_> = (0..3).map(|i| format!("{topic} {i}")).collect();
        assert_eq!(values(client, topic).await, expected);
    }
}

/// A restart without the fault reopens the partition: what was acknowledged is there, in
/// order (a refused record may be too, if its bytes reached the file), and it takes writes.
fn a_restart_recovers(data: &Path, acknowledged: &[String]) {
    let served = Served::start(data);
    runtime().block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        let stored = values(&client, "doomed").await;
        assert_eq!(stored[..acknowledged.len()], *acknowledged);
        assert!(stored.len() <= acknowledged.len() + 1, "only a refused record: {stored:?}");
        produce_one(&client, "doomed", "after the restart").await.unwrap();
    });
    assert!(served.terminate());
}

#[test]
fn a_failed_fdatasync_fences_one_partition_and_the_rest_serves() {
    if strace_missing() {
        return skip("strace is not installed (Debian: apt-get install strace)");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acknowledged = acknowledged_before_the_fault(&data);
    let served = served_with_fault(dir.path(), &data, "fdatasync:error=EIO");

    runtime().block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        let refusal = produce_one(&client, "doomed", "covered by the failed sync").await;
        let refusal = refusal.expect_err("the fsync fails, so the record is not acknowledged");
        // The record the failed fsync covered is refused, as DATA_LOSS: it may be gone.
        let (code, message) = rejected_code(&refusal);
        assert_eq!(code, ErrorCode::DataLoss, "{message}");
        assert!(
            message.contains("fsync of") && message.contains("Input/output error"),
            "{message}"
        );
        assert!(message.contains("refuses writes"), "{message}");
        // Every later write to that partition is refused the same way, without trying.
        let later = produce_one(&client, "doomed", "after the fault").await.unwrap_err();
        let (code, message) = rejected_code(&later);
        assert_eq!(code, ErrorCode::DataLoss, "{message}");
        assert!(message.contains("partition 0 of topic doomed refuses writes"), "{message}");
        // Nothing the failed fsync covered became visible: a reader sees exactly what was
        // acknowledged.
        assert_eq!(values(&client, "doomed").await, acknowledged);
        // The describe call names the reason.
        let described = client.describe_topic("doomed").await.unwrap();
        let fenced = described.partition_states[0].fenced_reason.clone().expect("fenced");
        assert!(fenced.contains("Input/output error"), "{fenced}");

        the_rest_serves(&client).await;
    });
    // The fenced partition's log cannot close cleanly: the server says so, and what the next
    // start does about it, and exits non-zero so a supervisor knows.
    let (status, log) = served.terminate_and_log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("stopped, but not cleanly: partition 0 of topic doomed"), "{log}");
    assert!(log.contains("The next start checks every batch"), "{log}");
    assert!(!log.contains("stopped cleanly"), "{log}");

    a_restart_recovers(&data, &acknowledged);
}

/// A write that fails with nothing written leaves the file as it was, so the partition is
/// not fenced: each write is tried and refused (INTERNAL, naming the file and saying nothing
/// was written) while the fault lasts, nothing is acknowledged, and the rest serves.
#[test]
fn a_failed_write_is_refused_unacknowledged_and_the_rest_serves() {
    if strace_missing() {
        return skip("strace is not installed (Debian: apt-get install strace)");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acknowledged = acknowledged_before_the_fault(&data);
    // The segment file is written with pwrite64 (one buffer) or pwritev (several).
    let served = served_with_fault(dir.path(), &data, "pwrite64,pwritev:error=EIO");

    runtime().block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        for attempt in ["never written", "nor this"] {
            let refusal = produce_one(&client, "doomed", attempt).await.unwrap_err();
            let (code, message) = rejected_code(&refusal);
            assert_eq!(code, ErrorCode::Internal, "{message}");
            assert!(message.contains("partition 0 of topic doomed: writing"), "{message}");
            assert!(message.contains("Input/output error"), "{message}");
            assert!(message.contains("nothing was written"), "{message}");
        }
        assert_eq!(values(&client, "doomed").await, acknowledged);
        let described = client.describe_topic("doomed").await.unwrap();
        assert_eq!(described.partition_states[0].fenced_reason, None, "not fenced");
        the_rest_serves(&client).await;
    });
    assert!(served.terminate(), "the server stops cleanly: nothing was fenced");
    a_restart_recovers(&data, &acknowledged);
}

/// A tmpfs of `bytes` mounted on a new temporary directory, unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed() {
    let disk = match SmallDisk::mount(4 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(reason) => return skip(&reason),
    };
    // Another tenant of the disk, deleted later to free space.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024]).unwrap();
    let data = disk.path().join("data");
    let served = Served::start(&data);
    runtime().block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        let settings = TopicSettings { segment_bytes: Some(1024 * 1024), ..Default::default() };
        client.create_topic("t", settings).await.unwrap();
        let chunk = "x".repeat(100 * 1024);
        let mut stored = 0;
        let full = loop {
            match produce_one(&client, "t", &chunk).await {
                Ok(_) => stored += 1,
                Err(error) => break error,
            }
            assert!(stored < 100, "a 4 MiB disk cannot hold 10 MiB");
        };
        let (code, message) = rejected_code(&full);
        assert_eq!(code, ErrorCode::ResourceExhausted, "{message}");
        assert!(
            message.contains("No space left") || message.contains("no space left"),
            "{message}"
        );
        // It stays refused while the disk is full, and reads go on.
        let again = produce_one(&client, "t", &chunk).await.unwrap_err();
        assert_eq!(rejected_code(&again).0, ErrorCode::ResourceExhausted);
        assert_eq!(values(&client, "t").await.len(), stored);

        // Space comes back: the same partition takes writes again, without a restart.
        std::fs::remove_file(&filler).unwrap();
        produce_one(&client, "t", "after space was freed").await.unwrap();
        let after = values(&client, "t").await;
        assert_eq!(after.len(), stored + 1);
        assert_eq!(after.last().unwrap(), "after space was freed");
    });
    assert!(served.terminate(), "the server never crashed and stops cleanly");
}
