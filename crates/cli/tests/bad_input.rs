//! Malformed input through the `spool` command: each row exits non-zero with a one-line
//! message that says what was wrong, and the server stays up and writes nothing outside its
//! data directory. (The full table of malformed requests is tests/bad_input.rs, through the
//! gRPC API; this one checks that the command carries those answers to a person.)

mod common;

use common::Served;

/// (arguments, standard input, a fragment of the error message)
const ROWS: &[(&[&str], &str, &str)] = &[
    // Topic names.
    (&["topic", "create", "../escape"], "", "bad topic name"),
    (&["topic", "create", ""], "", "must not be empty"),
    (&["topic", "create", "a/b"], "", "bad topic name"),
    (&["topic", "create", "caf\u{e9}"], "", "bad topic name"),
    (&["topic", "describe", "../../etc"], "", "bad topic name"),
    (&["topic", "delete", ".."], "", "reserved"),
    (&["produce", "../t"], "x\n", "bad topic name"),
    (&["consume", "../t"], "", "bad topic name"),
    // Topic settings.
    (&["topic", "create", "fresh", "--partitions", "257"], "", "partition count 257"),
    (&["topic", "create", "fresh", "--partitions=-1"], "", "invalid value '-1'"),
    (&["topic", "create", "fresh", "--partitions", "99999999999"], "", "99999999999"),
    (&["topic", "create", "fresh", "--fsync", "sometimes"], "", "sometimes"),
    (&["topic", "create", "fresh", "--fsync", "interval:0"], "", "fsync interval 0 ms"),
    (&["topic", "create", "fresh", "--fsync", "interval:-5"], "", "interval"),
    (&["topic", "create", "fresh", "--segment-bytes", "1"], "", "segment size 1"),
    (&["topic", "create", "fresh", "--retention-ms", "0"], "", "retention_ms"),
    (&["topic", "create", "fresh", "--compression", "brotli"], "", "use producer (store batches"),
    (&["topic", "alter", "t", "--compression", "zip"], "", "unknown topic compression \"zip\""),
    (&["topic", "create", "t"], "", "already exists"),
    // Producing.
    (&["produce", "nowhere"], "x\n", "topic nowhere does not exist (NOT_FOUND)"),
    (&["produce", "t", "--partition", "9"], "x\n", "partition 9 does not exist"),
    (&["produce", "t", "--header", "no-equals-sign"], "x\n", "NAME=VALUE"),
    (&["produce", "t", "--acks", "most"], "x\n", "most"),
    (&["produce", "never-synced", "--acks", "all"], "x\n", "fsync policy `never`"),
    // Consuming.
    (&["consume", "t", "--partition", "0", "--from", "99"], "", "OUT_OF_RANGE"),
    (&["consume", "t", "--partition", "0", "--from", "yesterday"], "", "yesterday"),
    (&["consume", "t", "--partition", "0", "--from=-5"], "", "-5"),
    (&["consume", "t", "--partition", "7"], "", "partition 7 does not exist"),
    (&["consume", "nowhere"], "", "topic nowhere does not exist"),
    // Groups.
    (&["group", "describe", "../g"], "", "group name"),
    (&["group", "describe", "unheard-of"], "", "NOT_FOUND"),
    (&["group", "reset", "g", "--topic", "nowhere", "--to", "earliest"], "", "nowhere"),
    (&["group", "reset", "g", "--topic", "t", "--to", "99"], "", "OUT_OF_RANGE"),
];

#[test]
fn malformed_commands_exit_non_zero_with_a_clear_message() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let served = Served::start(&data);
    served.ok(&["topic", "create", "t"], "");
    served.ok(&["topic", "create", "never-synced", "--fsync", "never"], "");
    served.ok(&["produce", "t", "--partition", "0"], "a\nb\n");

    let mut failures = Vec::new();
    for (args, stdin, message_has) in ROWS {
        let output = served.spool(args, stdin);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            failures.push(format!("spool {args:?}: exited 0"));
        } else if !stderr.contains(message_has) {
            failures.push(format!("spool {args:?}: {stderr:?} lacks {message_has:?}"));
        } else if !stderr.starts_with("error:") && !stderr.lines().all(|l| l.starts_with("spool: "))
        {
            // clap's usage errors ("error: ...", exit status 2) come with a usage hint; every
            // other error is lines of "spool: ..." (produce adds a count of what failed).
            failures.push(format!("spool {args:?}: not one 'spool: ' line per error: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));

    // The server is still up and unchanged: the two records are there, and nothing was
    // created beside the data directory.
    assert_eq!(served.ok(&["consume", "t"], ""), "a\nb\n");
    assert!(served.terminate(), "the server stops cleanly");
    let beside: Vec<_> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(beside, ["data"]);
    let mut topics: Vec<_> = std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    topics.sort();
    assert_eq!(topics, ["never-synced", "t"]);
}
