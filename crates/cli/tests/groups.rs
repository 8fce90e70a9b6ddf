//! `spool consume --group` and `spool group list|describe|reset|delete`, through the real
//! binary against `spool serve` on port 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{SPOOL, Served};

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

#[test]
fn a_group_is_reset_per_partition_listed_with_its_topics_and_deleted_for_good() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "t", "--partitions", "2"], "");
    served.ok(&["produce", "t", "--partition", "0"], "a0\na1\na2\n");
    served.ok(&["produce", "t", "--partition", "1"], "b0\nb1\nb2\n");
    assert_eq!(served.ok(&["consume", "t", "--group", "g"], "").lines().count(), 6);

    // Without members, the list shows the topics the group has committed offsets for.
    let listed = served.ok(&["group", "list"], "");
    assert_eq!(listed, "g\tstate=EMPTY\tgeneration=0\tmembers=0\ttopics=t\treset=-\n");

    let reset =
        served.ok(&["group", "reset", "g", "--topic", "t", "--partition", "1", "--to", "1"], "");
    assert_eq!(reset, "g\tt/1\tcommitted=1\n");
    assert_eq!(served.ok(&["consume", "t", "--group", "g"], ""), "b1\nb2\n");
    let missing =
        served.spool(&["group", "reset", "g", "--topic", "t", "--partition", "2", "--to", "0"], "");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));

    // A group with a live member is not deleted.
    let mut member = Command::new(SPOOL)
        .args(["consume", "t", "--group", "g", "--follow"])
        .env("SPOOL_SERVER", &served.url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut member_log = BufReader::new(member.stderr.take().unwrap()).lines();
    let assigned = member_log.find(|line| line.as_ref().unwrap().contains("generation"));
    assert!(assigned.is_some(), "the member reports its assignment");
    let refused = served.spool(&["group", "delete", "g"], "");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("1 live members") && message.contains("FAILED_PRECONDITION"));
    assert!(
        Command::new("kill").args(["-TERM", &member.id().to_string()]).status().unwrap().success()
    );
    assert!(member.wait().unwrap().success(), "the member commits and leaves on SIGTERM");

    // One partition's offset alone, then the rest.
    let args = ["group", "delete", "g", "--topic", "t", "--partition", "1"];
    let deleted = served.ok(&args, "");
    assert_eq!(deleted, "deleted g's offsets of t\n  partition t/1\tcommitted=3\n");
    let deleted = served.ok(&["group", "delete", "g"], "");
    assert_eq!(deleted, "deleted g\n  partition t/0\tcommitted=3\n");
    assert_eq!(served.ok(&["group", "list"], ""), "");
    let again = served.spool(&["group", "delete", "g"], "");
    assert!(String::from_utf8_lossy(&again.stderr).contains("NOT_FOUND"));

    // The deletion was durable when it was answered: a crash right after keeps it.
    served.kill();
    let served = Served::start(data.path());
    assert_eq!(served.ok(&["group", "list"], ""), "");
    let all = served.ok(&["consume", "t", "--group", "g"], "");
    assert_eq!(all.lines().count(), 6, "a member of g starts afresh: {all}");
    assert!(served.terminate());
}
