//! The browser listener's built-in page in headless Chromium (`tests/browser/*.mjs`), against
//! an in-process server with its HTTP listener on port 0.
//!
//! The tests need Debian's `chromium` (`/usr/bin/chromium`, or `SPOOL_CHROMIUM`), and
//! `playwright-core` from npm under `target/ci/node_modules` (or `SPOOL_BROWSER_NODE_MODULES`);
//! `.ci/run` installs both. Without them they print why they skip; with
//! `SPOOL_REQUIRE_BROWSER=1` (CI sets it) a missing tool fails them instead.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::http::Browserside;
use common::{header, keyed, record, value};
use serde_json::{Value, json};
use spool_proto::v1::Record;
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

/// A script in `tests/browser/` driving the page at `base`: it asks for things by lines on
/// its standard output (read on a thread of their own) and is answered on its standard input.
struct Script {
    child: KillOnDrop,
    stdin: std::process::ChildStdin,
    lines: tokio::sync::mpsc::Receiver<String>,
}

impl Script {
    fn start(name: &str, base: &str, chromium: &Path, modules: &Path) -> Script {
        // `SPOOL_SCREENSHOTS=docs/screenshots` refreshes the pictures in docs/http-api.md.
        let shots = std::env::var_os("SPOOL_SCREENSHOTS")
            .map_or_else(|| root().join("target/browser-screenshots"), PathBuf::from);
        std::fs::create_dir_all(&shots).unwrap();
        let mut child = KillOnDrop(
            std::process::Command::new("node")
                .arg(root().join("tests/browser").join(name))
                .arg(base)
                .env("NODE_PATH", modules)
                .env("SPOOL_CHROMIUM", chromium)
                .env("SPOOL_SCREENSHOTS", &shots)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .expect("cannot start node"),
        );
        let stdin = child.0.stdin.take().unwrap();
        let stdout = child.0.stdout.take().unwrap();
        let (lines_sender, lines) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { return };
                if lines_sender.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        Script { child, stdin, lines }
    }

    /// The next line the script prints.
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(120), self.lines.recv())
            .await
            .expect("the browser script said nothing in time")
            .expect("the browser script ended early")
    }

    /// The script's `report {JSON}`, its other lines passed on as notes.
    async fn report(&mut self) -> Value {
        loop {
            let line = self.line().await;
            match line.split_once(' ') {
                Some(("report", json)) => return serde_json::from_str(json).unwrap(),
                _ => eprintln!("browser: {line}"),
            }
        }
    }

    fn answer(&mut self, text: &str) {
        use std::io::Write;
        self.stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for the script to exit, which it must do successfully.
    async fn finish(self) {
        let Script { mut child, stdin, .. } = self;
        drop(stdin);
        let exited = tokio::task::spawn_blocking(move || child.0.wait());
        let status = tokio::time::timeout(Duration::from_secs(60), exited)
            .await
            .expect("the browser script did not exit")
            .unwrap()
            .unwrap();
        assert!(status.success(), "the browser script failed");
    }
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

    let mut script = Script::start("e2e.mjs", &http.base, &chromium, &modules);
    let mut report = None;
    let mut produced = 30;
    while report.is_none() {
        let line = script.line().await;
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
                script.answer("ok");
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
                script.answer("ok");
            }
            "report" => report = Some(serde_json::from_str::<Value>(rest).unwrap()),
            _ => eprintln!("browser: {line}"),
        }
    }
    script.finish().await;
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

/// 2024-05-01T12:00:00Z, in milliseconds since the Unix epoch.
const NOON_MS: i64 = 1_714_564_800_000;

/// The page in the America/St_Johns time zone: a hint before anything is watched, a link to what
/// it watches (and such a link opened, with an RFC 3339 `from`), long values cut with a button
/// that shows them whole, headers apart from the value, binary fields as `spool consume
/// --format json` prints them, local times with their offset, and refused links explained.
#[tokio::test]
async fn the_page_links_hints_truncates_and_shows_records_as_consume_json_does() {
    let Some((chromium, modules)) = browser_tools() else { return };
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("view", 1, Policy::Always(Always {})).await;
    let long: String = "0123456789".repeat(500);
    let at = |seconds: i64| Some(NOON_MS + seconds * 1000);
    let records = vec![
        Record { timestamp_ms: at(-3600), ..keyed("k0", "an hour before noon") },
        Record {
            timestamp_ms: at(0),
            headers: vec![header("trace", "abc"), header("source", "test")],
            ..keyed("user-1", &long)
        },
        Record {
            timestamp_ms: at(1),
            key: Some(Bytes::from_static(&[0xff, 0x00])),
            headers: vec![header("h", "v")],
            ..record("text value")
        },
        Record {
            timestamp_ms: at(2),
            value: Some(Bytes::from_static(&[0x00, 0xff, 0x10])),
            ..keyed("k3", "")
        },
    ];
    http.server.produce("view", Some(0), records).await.unwrap();

    let mut script = Script::start("view.mjs", &http.base, &chromium, &modules);
    let report = script.report().await;
    script.finish().await;

    assert_eq!(report["hint"]["visible"], true, "{report}");
    assert!(report["hint"]["text"].as_str().unwrap().contains("Nothing is watched"), "{report}");
    assert_eq!(report["hintWhileWatching"], false, "{report}");
    assert_eq!(report["zone"], "times in America/St_Johns");
    assert_eq!(report["linked"], "?topic=view&partition=0&from=earliest");
    // The link from noon UTC starts at offset 1, the first record stamped at or after it.
    assert_eq!(report["offsets"], json!([1, 2, 3]), "{report}");
    assert_eq!(report["from"], "2024-05-01T12:00:00Z");

    let long_record = &report["records"]["1"];
    assert_eq!(long_record["time"], "2024-05-01 09:30:00.000 -02:30", "{report}");
    let title = long_record["timeTitle"].as_str().unwrap();
    assert!(
        title.contains("America/St_Johns") && title.contains("2024-05-01T12:00:00.000Z"),
        "{title}"
    );
    assert_eq!(long_record["key"], "user-1");
    let cut = long_record["value"].as_str().unwrap();
    assert!(cut.ends_with('…') && cut.chars().count() < 300, "{cut}");
    assert!(long.starts_with(cut.trim_end_matches('…')), "{cut}");
    assert_eq!(long_record["expand"], "show all 5,000 characters");
    assert_eq!(long_record["headers"], json!([["trace", "abc"], ["source", "test"]]));
    assert_eq!(report["expanded"]["value"], long.as_str());
    assert_eq!(report["expanded"]["expand"], "show less");
    assert_eq!(report["folded"]["value"], cut);

    // `spool consume --format json` prints a binary field as {"base64": ...} and a text field
    // as its text, field by field, though the API encodes the whole record in base64.
    let binary_key = &report["records"]["2"];
    assert_eq!(binary_key["key"], r#"{"base64":"/wA="}"#, "{report}");
    assert!(binary_key["keyClass"].as_str().unwrap().contains("b64"), "{report}");
    assert_eq!(binary_key["value"], "text value");
    assert_eq!(binary_key["headers"], json!([["h", "v"]]));
    assert_eq!(binary_key["time"], "2024-05-01 09:30:01.000 -02:30");
    let binary_value = &report["records"]["3"];
    assert_eq!(binary_value["key"], "k3");
    assert_eq!(binary_value["value"], r#"{"base64":"AP8Q"}"#, "{report}");
    assert_eq!(binary_value["headers"], json!([]));

    let bad_from = report["badFrom"].as_str().unwrap();
    assert!(
        bad_from.contains(r#"`from` is "soon""#) && bad_from.contains("RFC 3339"),
        "{bad_from}"
    );
    assert!(report["unknownTopic"].as_str().unwrap().contains(r#"topic "nope""#), "{report}");
}
