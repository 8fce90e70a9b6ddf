//! kafkajs (npm, pure JavaScript), a Kafka client nobody here wrote, against the Kafka listener:
//! topic administration, an idempotent gzip producer and a consumer group
//! (`tests/node/kafkajs_roundtrip.js`).
//!
//! It comes from `.ci/run`'s `target/ci/node_modules` (or `$SPOOL_NODE_MODULES`); without it
//! the test says why it skips, and with `SPOOL_REQUIRE_EXTERNAL_CLIENTS=1` (CI sets it) it
//! fails instead.

mod common;

use std::path::{Path, PathBuf};

use common::kafka::start;

/// The `node_modules` holding kafkajs, if there is one and `node` runs.
fn kafkajs_modules() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = std::env::var_os("SPOOL_NODE_MODULES")
        .map_or_else(|| root.join("target/ci/node_modules"), PathBuf::from);
    let node = std::process::Command::new("node").arg("--version").output();
    if modules.join("kafkajs").exists() && node.is_ok_and(|out| out.status.success()) {
        return Some(modules);
    }
    let message = format!(
        "SKIPPED: no node, or no kafkajs under {} (or $SPOOL_NODE_MODULES); `.ci/run` installs it",
        modules.display()
    );
    assert!(std::env::var_os("SPOOL_REQUIRE_EXTERNAL_CLIENTS").is_none(), "{message}");
    eprintln!("{message}");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn kafkajs_administers_produces_and_consumes_in_a_group() {
    let Some(modules) = kafkajs_modules() else { return };
    let kafka = start(None).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/kafkajs_roundtrip.js");
    let mut command = std::process::Command::new("node");
    command.arg(script).arg(kafka.address.to_string()).arg("kafkajs").env("NODE_PATH", modules);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kafkajs_roundtrip.js failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("consumed 100 records in a group, identical"), "{stdout}");
    // What kafkajs wrote, gRPC reads.
    let consumed: usize = kafka.server.fetch_all("kafkajs", 0, 0).await.len()
        + kafka.server.fetch_all("kafkajs", 1, 0).await.len();
    assert_eq!(consumed, 100);
    kafka.server.shutdown().await;
}
