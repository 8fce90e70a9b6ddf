//! `spool request` and `spool respond` through the real binary against `spool serve` on
//! port 0: a command answers requests, its failures come back as errors, and a request
//! nobody answers times out.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{SPOOL, Served};

/// A `spool respond` child, interrupted (or killed) when dropped.
struct Responder(Child);

impl Responder {
    fn start(served: &Served, command: &[&str]) -> Responder {
        let mut child = Command::new(SPOOL)
            .args(["respond", "requests", "--group", "answerers", "--"])
            .args(command)
            .env("SPOOL_SERVER", &served.url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("respond: {line}");
            }
        });
        Responder(child)
    }

    /// Ctrl-C: the responder commits, leaves its group and exits cleanly.
    fn interrupt(mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let status = self.0.wait().unwrap();
        assert!(status.success(), "spool respond exits cleanly on Ctrl-C: {status}");
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_command_answers_requests_and_its_failures_and_silence_are_reported() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "requests", "--partitions", "2"], "");
    served.ok(&["topic", "create", "requests.replies"], "");

    let upper = "v=$(cat); if [ \"$v\" = fail ]; then echo broken >&2; exit 3; fi; \
                 printf %s \"$v\" | tr a-z A-Z";
    let responder = Responder::start(&served, &["sh", "-c", upper]);

    assert_eq!(served.ok(&["request", "requests", "hello"], ""), "HELLO");
    assert_eq!(served.ok(&["request", "requests", "--key", "k"], "from stdin"), "FROM STDIN");
    let failed = served.spool(&["request", "requests", "fail"], "");
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("the responder failed") && stderr.contains("broken"), "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    responder.interrupt();

    // Nobody answers now: the request times out, and says so.
    let silent = served.spool(&["request", "requests", "late", "--timeout", "300ms"], "");
    assert!(!silent.status.success());
    let stderr = String::from_utf8_lossy(&silent.stderr);
    assert!(stderr.contains("no reply to request"), "{stderr}");

    let bad = served.spool(&["request", "requests", "x", "--timeout", "5 hours"], "");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("like 500ms or 5s"));
    let missing = served.spool(&["respond", "requests", "--group", "g"], "");
    assert!(!missing.status.success());
}
