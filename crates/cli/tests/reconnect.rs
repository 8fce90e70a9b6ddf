//! `spool consume --follow`, plain and as a group member, through a restart of `spool serve`
//! on the same address, after SIGTERM or SIGKILL: the follower says on standard error that it
//! lost the server and is retrying, resumes once the server is back, and prints every record
//! exactly once, in order. Every wait is on a line of output, with a timeout only as a failure
//! guard.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{SPOOL, Served};

/// A failure guard only: every wait below ends on the line it waits for.
const GUARD: Duration = Duration::from_secs(60);

/// A loopback address nothing listens on now, for a server that must come back on it.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn serve_at(data: &Path, address: &str) -> Command {
    let mut command = Command::new(SPOOL);
    command.env("RUST_LOG", "warn").args(["serve", "--listen", address, "--data"]).arg(data);
    command
}

/// `spool consume ... --follow` as a child process, its output read line by line.
struct Follower {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every line of standard error read so far.
    said: Vec<String>,
}

fn lines(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Follower {
    fn start(url: &str, args: &[&str]) -> Follower {
        let mut child = Command::new(SPOOL)
            .args(args)
            .env("SPOOL_SERVER", url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Follower { child, stdout, stderr, said: Vec::new() }
    }

    /// The next `n` lines it prints.
    fn printed(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                self.stdout.recv_timeout(GUARD).unwrap_or_else(|_| {
                    panic!("the follower printed {i} of {n} lines; stderr: {:?}", self.said)
                })
            })
            .collect()
    }

    /// The first line of standard error that has every one of `parts`, reading more until
    /// one comes.
    fn says(&mut self, parts: &[&str]) -> String {
        let matches = |line: &String| parts.iter().all(|part| line.contains(part));
        if let Some(line) = self.said.iter().find(|line| matches(line)) {
            return line.clone();
        }
        loop {
            let Ok(line) = self.stderr.recv_timeout(GUARD) else {
                panic!("the follower never said {parts:?}; it said {:?}", self.said);
            };
            self.said.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// SIGTERM. Returns how it exited, what it printed after the lines already read, and
    /// everything it said on standard error.
    fn stop(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        self.said.extend(self.stderr.iter());
        (status, self.stdout.iter().collect(), self.said)
    }
}

/// Per partition, in the order printed: values are `p{partition}-{n}`.
fn by_partition(printed: &[String]) -> [Vec<String>; 2] {
    let mut split: [Vec<String>; 2] = Default::default();
    for line in printed {
        let partition: usize = line[1..2].parse().unwrap();
        split[partition].push(line.clone());
    }
    split
}

fn values(partition: u32, from: u32, to: u32) -> String {
    (from..to).map(|n| format!("p{partition}-{n}\n")).collect()
}

/// How the server goes away.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: streams end with UNAVAILABLE ("the server is shutting down").
    Terminate,
    /// SIGKILL: connections break under the streams.
    Kill,
}

/// Runs `spool consume t ... --follow` with `args` through a restart of the server, producing
/// before and after it, and checks what it printed and said. Returns the server, restarted.
fn follow_through_a_restart(data: &Path, args: &[&str], stop: Stop, resuming: &[&str]) -> Served {
    let address = free_address();
    let url = format!("http://{address}");
    let served = Served::spawn(serve_at(data, &address));
    served.ok(&["topic", "create", "t", "--partitions", "2"], "");
    served.ok(&["produce", "t", "--partition", "0"], &values(0, 0, 3));
    served.ok(&["produce", "t", "--partition", "1"], &values(1, 0, 2));

    let mut command = vec!["consume", "t", "--follow"];
    command.extend_from_slice(args);
    let mut follower = Follower::start(&url, &command);
    let mut printed = follower.printed(5);

    match stop {
        Stop::Terminate => assert!(served.terminate(), "the server stops cleanly"),
        Stop::Kill => served.kill(),
    }
    let lost = follower.says(&["lost the server at", "retrying in"]);
    assert!(lost.starts_with(&format!("spool: lost the server at {url}: ")), "{lost}");
    assert!(lost.contains("(UNAVAILABLE); retrying in 100ms ("), "{lost}");
    for part in resuming {
        follower.says(&[part]);
    }

    let served = Served::spawn(serve_at(data, &address));
    follower.says(&["reconnected to", &url]);
    served.ok(&["produce", "t", "--partition", "0"], &values(0, 3, 5));
    served.ok(&["produce", "t", "--partition", "1"], &values(1, 2, 4));
    printed.extend(follower.printed(4));
    let (status, rest, said) = follower.stop();
    printed.extend(rest);
    // A group member commits and leaves on SIGTERM; a plain follower just ends.
    if args.contains(&"--group") {
        assert!(status.success(), "the member failed: {status}; it said {said:?}");
        // The restarted server took the stored member back, and the member rejoined as it.
        let new_member = said.iter().any(|line| line.contains("as new member"));
        assert!(!new_member, "the member rejoined as a new one: {said:?}");
    }

    let [zero, one] = by_partition(&printed);
    assert_eq!(zero.concat(), values(0, 0, 5).replace('\n', ""), "{printed:?}; said {said:?}");
    assert_eq!(one.concat(), values(1, 0, 4).replace('\n', ""), "{printed:?}; said {said:?}");
    served
}

#[test]
fn a_follower_resumes_after_the_last_record_it_printed_when_the_server_restarts() {
    for stop in [Stop::Terminate, Stop::Kill] {
        let data = tempfile::tempdir().unwrap();
        let served = follow_through_a_restart(
            data.path(),
            &[],
            stop,
            &["resuming partition 0 at offset 3", "resuming partition 1 at offset 2"],
        );
        assert!(served.terminate());
    }
}

/// With `--commit on-exit` the server has nothing committed when it stops: the member
/// rejoins, is given every record again, and must skip those it printed. With `auto` the
/// commit of the last records may or may not have reached the server.
#[test]
fn a_group_member_rejoins_when_the_server_restarts_and_prints_nothing_twice() {
    for (commit, stop) in [("on-exit", Stop::Terminate), ("auto", Stop::Kill)] {
        let data = tempfile::tempdir().unwrap();
        let served = follow_through_a_restart(
            data.path(),
            &["--group", "g", "--commit", commit],
            stop,
            &["rejoining group g, resuming t/0 at offset 3, t/1 at offset 2"],
        );
        // What was printed before the restart was committed after it, and the rest at exit.
        let described = served.ok(&["group", "describe", "g"], "");
        assert!(described.contains("partition t/0\towner=-\tcommitted=5"), "{commit}: {described}");
        assert!(described.contains("partition t/1\towner=-\tcommitted=4"), "{commit}: {described}");
        assert!(served.terminate());
    }
}

/// Only a lost server is waited for: a topic that does not exist still ends a follower at
/// once, with the server's reason.
#[test]
fn a_follower_of_a_missing_topic_still_fails_at_once() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    for args in
        [&["consume", "nope", "--follow"][..], &["consume", "nope", "--follow", "--group", "g"]]
    {
        let output = served.spool(args, "");
        assert!(!output.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("NOT_FOUND") && !said.contains("retrying"), "{args:?}: {said}");
    }
    assert!(served.terminate());
}
