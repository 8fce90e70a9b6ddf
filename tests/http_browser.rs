//! The browser listener's built-in page in headless Chromium (`tests/browser/e2e.mjs`), against
//! an in-process server with its HTTP listener on port 0.
//!
//! The test needs Debian's `chromium` (`/usr/bin/chromium`, or `SPOOL_CHROMIUM`), and
//! `playwright-core` from npm under `target/ci/node_modules` (or `SPOOL_BROWSER_NODE_MODULES`);
//! `.ci/run` installs both. Without them it prints why it skips; with
//! `SPOOL_REQUIRE_BROWSER=1` (CI sets it) a missing tool fails it instead.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::Browserside;
use common::{keyed, value};
use serde_json::Value;
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_proto::v1::start_position::Position;

/// A child process killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reports a missing tool: a skip, or a failure when CI requires the browser test.
fn missing(what: &str) {
    let message = format!("SKIPPED: {what}; `.ci/run` installs it");
    assert!(std::env::var_os("SPOOL_REQUIRE_BROWSER").is_none(), "{message}");
    eprintln!("{message}");
}

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("SPOOL_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let modules = std::env::var_os("SPOOL_BROWSER_NODE_MODULES")
        .map_or_else(|| root().join("target/ci/node_modules"), PathBuf::from);
    if !chromium.exists() {
        missing(&format!("no Chromium at {}", chromium.display()));
        return None;
    }
    if !modules.join("playwright-core").exists() {
        missing(&format!("no playwright-core under {}", modules.display()));
        return None;
    }
    if std::process::Command::new("node").arg("--version").output().is_err() {
        missing("no `node` on PATH");
        return None;
    }
    Some((chromium, modules))
}

/// The page opens, shows events the test produces, survives its event stream being cut
/// mid-way without losing or repeating one, and publishes an event a gRPC consumer reads.
/// The script drives the page and prints one JSON line of what it saw; this checks it.
#[tokio::test]
async fn the_page_in_headless_chromium_follows_resumes_and_publishes() {
    let Some((chromium, modules)) = browser_tools() else { return };
    let data = tempfile::tempdir().unwrap();
    let mut http = Browserside::open(data.path()).await;
    http.server.create_topic("demo", 2, Policy::Always(Always {})).await;
    let history: Vec<_> =
        (0..30).map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}"))).collect();
    http.server.produce("demo", Some(0), history).await.unwrap();

    let script = root().join("tests/browser/e2e.mjs");
    // `SPOOL_SCREENSHOTS=docs/screenshots` refreshes the pictures in docs/http-api.md.
    let shots = std::env::var_os("SPOOL_SCREENSHOTS")
        .map_or_else(|| root().join("target/browser-screenshots"), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new("node")
            .arg(&script)
            .arg(&http.base)
            .env("NODE_PATH", &modules)
            .env("SPOOL_CHROMIUM", &chromium)
            .env("SPOOL_SCREENSHOTS", &shots)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cannot start node"),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    // The script says what it needs by lines on stdout (read on a thread of their own); the
    // test answers on stdin.
    let (lines_sender, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if lines_sender.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut answer = move |text: &str| {
        use std::io::Write;
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    let mut report = None;
    let mut produced = 30;
    while report.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.recv())
            .await
            .expect("the browser script said nothing in time")
            .expect("the browser script ended early");
        let Some((what, rest)) = line.split_once(' ') else { continue };
        match what {
            // Produce N more records to partition 0 while the page watches.
            "produce" => {
                let n: usize = rest.parse().unwrap();
                let records = (produced..produced + n)
                    .map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}")))
                    .collect();
                http.server.produce("demo", Some(0), records).await.unwrap();
                produced += n;
                answer("ok");
            }
            // Restart the server under the page, producing N records before it answers.
            "restart" => {
                let n: usize = rest.parse().unwrap();
                http = http.restart().await;
                let records = (produced..produced + n)
                    .map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}")))
                    .collect();
                http.server.produce("demo", Some(0), records).await.unwrap();
                produced += n;
                answer("ok");
            }
            "report" => report = Some(serde_json::from_str::<Value>(rest).unwrap()),
            _ => eprintln!("browser: {line}"),
        }
    }
    drop(answer);
    let exited = tokio::task::spawn_blocking(move || child.0.wait());
    let status = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .expect("the browser script did not exit")
        .unwrap()
        .unwrap();
    assert!(status.success(), "the browser script failed");
    let report = report.unwrap();
    let seen: Vec<u64> =
        report["offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert_eq!(seen, (0..produced as u64).collect::<Vec<_>>(), "every record once, in order");
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    // The event published from the page, read back through gRPC.
    let published = report["published"].as_str().unwrap();
    let stored =
        http.server.replay("demo", 1, Position::Earliest(Default::default())).await.unwrap();
    assert!(stored.iter().any(|r| value(r) == published), "{published} not in partition 1");
}
