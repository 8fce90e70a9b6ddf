//! `spool consume --group` and `spool group list|describe|reset`, through the real binary
//! against `spool serve` on port 0.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(data: &Path) -> Served {
        let mut child = Command::new(SPOOL)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            // The server logs "serving" at info once its data directory is open.
            .env("RUST_LOG", "warn,spool_server=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = mpsc::channel();
        let (serving_tx, serving_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading after the address, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("spool: listening on ") {
                    let _ = address_tx.send(rest.split(',').next().unwrap().to_owned());
                }
                if line.ends_with(" serving") {
                    let _ = serving_tx.send(());
                }
            }
        });
        let address = address_rx.recv().expect("the server prints its address");
        serving_rx.recv().expect("the server logs that it serves");
        Served { child, url: format!("http://{address}") }
    }

    fn spool(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(SPOOL)
            .args(args)
            .env("SPOOL_SERVER", &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let output = self.spool(args, stdin);
        assert!(
            output.status.success(),
            "spool {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_group_consumer_resumes_where_it_committed_and_groups_are_described_and_reset() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "t", "--partitions", "2"], "");
    let lines: String = (0..10).map(|i| format!("e{i}\n")).collect();
    served.ok(&["produce", "t", "--partition", "0"], &lines);
    served.ok(&["produce", "t", "--partition", "1", "--key", "k"], "f0\nf1\n");

    // The first run prints three events and commits exactly those (explicitly, at exit).
    let first =
        served.ok(&["consume", "t", "--group", "g", "--count", "3", "--commit", "on-exit"], "");
    assert_eq!(first.lines().count(), 3);
    // The second resumes after them and stops at the end: every event once in all.
    let second = served.ok(&["consume", "t", "--group", "g"], "");
    let mut all: Vec<&str> = first.lines().chain(second.lines()).collect();
    all.sort_unstable();
    let mut expected: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    expected.extend(["f0".into(), "f1".into()]);
    expected.sort_unstable();
    assert_eq!(all, expected);
    // Nothing left for the group.
    assert_eq!(served.ok(&["consume", "t", "--group", "g"], ""), "");

    let listed = served.ok(&["group", "list"], "");
    assert!(listed.starts_with("g\tstate=EMPTY"), "{listed}");
    let described = served.ok(&["group", "describe", "g"], "");
    assert!(
        described.contains("partition t/0\towner=-\tcommitted=10\tlog_end=10\tlag=0"),
        "{described}"
    );
    assert!(
        described.contains("partition t/1\towner=-\tcommitted=2\tlog_end=2\tlag=0"),
        "{described}"
    );

    let reset = served.ok(&["group", "reset", "g", "--topic", "t", "--to", "earliest"], "");
    assert_eq!(reset, "g\tt/0\tcommitted=0\ng\tt/1\tcommitted=0\n");
    assert_eq!(
        served.ok(&["consume", "t", "--group", "g", "--count", "20"], "").lines().count(),
        12
    );
    let reset = served.ok(&["group", "reset", "g", "--topic", "t", "--to", "2"], "");
    assert_eq!(reset, "g\tt/0\tcommitted=2\ng\tt/1\tcommitted=2\n");
    let rest = served.ok(&["consume", "t", "--group", "g", "--commit", "on-exit"], "");
    assert_eq!(rest.lines().collect::<Vec<_>>(), ["e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"]);

    let refused = served.spool(&["group", "reset", "g", "--topic", "t", "--to", "99"], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("OUT_OF_RANGE"));
    let missing = served.spool(&["group", "describe", "nope"], "");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
    let bad = served.spool(&["consume", "t", "--group", "g", "--from", "5"], "");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("earliest or latest"));
}
