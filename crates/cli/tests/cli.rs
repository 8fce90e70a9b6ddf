//! Drives the real `spool` binary as a user would: `serve` on port 0, then `topic`,
//! `produce`, `consume` and `dump` against it, then SIGTERM; `verify` on a clean and a
//! damaged data directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SPOOL, Served, stdout};

#[test]
fn produce_and_consume_through_the_spool_binary() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());

    let created = stdout(&served.spool(&["topic", "create", "orders", "--partitions", "2"], ""));
    assert!(created.starts_with("orders\tpartitions=2\tfsync=always"), "{created}");

    let produced = served.spool(
        &[
            "produce",
            "orders",
            "--partition",
            "1",
            "--key",
            "customer-9",
            "--header",
            "source=test",
        ],
        "first order\nsecond order\nthird order\n",
    );
    stdout(&produced);
    let values = stdout(&served.spool(&["consume", "orders", "--partition", "1"], ""));
    assert_eq!(values, "first order\nsecond order\nthird order\n");

    let json = stdout(&served.spool(
        &[
            "consume",
            "orders",
            "--partition",
            "1",
            "--from",
            "1",
            "--count",
            "1",
            "--format",
            "json",
        ],
        "",
    ));
    let event: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["partition"], 1);
    assert_eq!(event["offset"], 1);
    assert_eq!(event["key"], "customer-9");
    assert_eq!(event["value"], "second order");
    assert_eq!(event["headers"][0]["key"], "source");
    assert_eq!(event["headers"][0]["value"], "test");

    // Every partition, from a time before all of them.
    let everything =
        stdout(&served.spool(&["consume", "orders", "--from", "2000-01-01T00:00:00Z"], ""));
    assert_eq!(everything.lines().count(), 3);

    // An offset without --partition starts every partition there, when each one holds it.
    served.ok(&["produce", "orders", "--partition", "0"], "zero\n");
    let from_one = served.ok(&["consume", "orders", "--from", "1"], "");
    assert_eq!(from_one, "second order\nthird order\n");
    let past_one = served.spool(&["consume", "orders", "--from", "2"], "");
    assert!(!past_one.status.success());
    let message = String::from_utf8(past_one.stderr).unwrap();
    assert!(
        message.contains("--from 2 applies to every partition of orders, but partition 0 holds offsets 0 to 0: add --partition"),
        "{message}"
    );
    assert_eq!(
        served.ok(&["consume", "orders", "--from", "2", "--partition", "1"], ""),
        "third order\n"
    );

    let described = stdout(&served.spool(&["topic", "describe", "orders"], ""));
    assert!(described.contains("partition 1\tlog_start_offset=0\tlog_end_offset=3"), "{described}");

    // A single node leads every partition: none needs handing back.
    let elected = served.ok(&["cluster", "elect-leaders"], "");
    assert_eq!(elected, "every partition is on its preferred leader\n");
    let elected = served.ok(&["cluster", "elect-leaders", "orders", "--partition", "1"], "");
    assert_eq!(elected, "orders partition 1: on its preferred leader already\n");
    let unknown = served.spool(&["cluster", "elect-leaders", "orders", "--partition", "2"], "");
    let message = String::from_utf8(unknown.stderr).unwrap();
    assert!(message.contains("partition 2 does not exist (NOT_FOUND)"), "{message}");

    // Errors are one line and a non-zero exit.
    let missing = served.spool(&["produce", "nowhere"], "lost\n");
    assert!(!missing.status.success());
    let message = String::from_utf8(missing.stderr).unwrap();
    assert!(message.contains("topic nowhere does not exist (NOT_FOUND)"), "{message}");
    let out_of_range = served.spool(&["consume", "orders", "--partition", "0", "--from", "7"], "");
    assert!(!out_of_range.status.success());
    let message = String::from_utf8(out_of_range.stderr).unwrap();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("OUT_OF_RANGE"), "{message}");

    assert!(served.terminate(), "spool serve exits 0 on SIGTERM");
    assert!(data.path().join("topics/orders/1/clean-shutdown").exists());

    // The stored segment reads back offline, and damage is reported.
    let segment = data.path().join("topics/orders/1/00000000000000000000.log");
    let dumped = Command::new(SPOOL).arg("dump").arg(&segment).output().unwrap();
    let text = stdout(&dumped);
    assert!(text.contains("offsets 0 to 2 (3 records)"), "{text}");
    assert!(text.contains("crc") && text.contains("ok"), "{text}");
    // Zeros after the batches (an active segment's runway, left by a crash) are no error.
    let mut bytes = std::fs::read(&segment).unwrap();
    let runway = tempfile::tempdir().unwrap();
    let with_zeros = runway.path().join("00000000000000000000.log");
    std::fs::write(&with_zeros, [&bytes[..], &[0u8; 100_000][..]].concat()).unwrap();
    let dumped = Command::new(SPOOL).arg("dump").arg(&with_zeros).output().unwrap();
    let text = stdout(&dumped);
    assert!(text.contains("100000 bytes of zeros written ahead of the appends"), "{text}");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let damaged = Command::new(SPOOL).arg("dump").arg(&segment).output().unwrap();
    assert!(!damaged.status.success());
    assert!(String::from_utf8_lossy(&damaged.stdout).contains("CRC mismatch"));
    let index = data.path().join("topics/orders/1/00000000000000000000.index");
    stdout(&Command::new(SPOOL).arg("dump").arg(&index).output().unwrap());
}

#[test]
fn a_server_that_cannot_start_says_why_in_one_line() {
    let data = tempfile::tempdir().unwrap();
    // 192.0.2.1 (TEST-NET-1) is never an address of this machine, so binding it fails.
    let output = Command::new(SPOOL)
        .args(["serve", "--listen", "192.0.2.1:7070", "--allow-insecure-remote", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8(output.stderr).unwrap();
    let last = message.lines().last().unwrap();
    assert!(last.starts_with("spool: cannot listen on 192.0.2.1:7070"), "{message}");
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused_and_the_first_is_unharmed() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "t"], "");
    served.ok(&["produce", "t"], "before\n");

    let output = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "a second server on one data directory must not start");
    let message = String::from_utf8(output.stderr).unwrap();
    let last = message.lines().last().unwrap();
    assert!(last.contains("is in use by another Spool server (process"), "{message}");
    assert!(last.contains(&data.path().display().to_string()), "{message}");

    served.ok(&["produce", "t"], "after\n");
    assert_eq!(served.ok(&["consume", "t"], ""), "before\nafter\n");
    assert!(served.terminate(), "the first server stops cleanly");
    // The lock went with the process: the directory serves again.
    let again = Served::start(data.path());
    assert_eq!(again.ok(&["consume", "t"], ""), "before\nafter\n");
    assert!(again.terminate());
}

/// Every file under `dir` and its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn verify(data: &Path) -> std::process::Output {
    Command::new(SPOOL).args(["verify", "--data"]).arg(data).output().unwrap()
}

#[test]
fn verify_finds_the_damage_that_consume_reports_as_data_loss_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "t"], "");
    // One produce per 40 lines of ~100 bytes: batches of ~4 KiB, so the segment's index has
    // entries, and a batch in the middle lies before the last (where start-up does not look).
    let lines: Vec<String> = (0..1200).map(|i| format!("line {i:04} {}", "x".repeat(90))).collect();
    for chunk in lines.chunks(40) {
        served.ok(&["produce", "t", "--quiet"], &(chunk.join("\n") + "\n"));
    }
    assert!(served.terminate());

    let clean = verify(data.path());
    let report = stdout(&clean);
    assert!(report.contains("topics/t/0: 1 segments, offsets 0 to 1199"), "{report}");
    assert!(report.contains(": ok"), "{report}");
    assert!(
        report.contains("1200 records checked: 0 damaged batches, 0 wrong index entries"),
        "{report}"
    );

    // A byte of a record in the middle batch flipped, as a disk might.
    let segment = data.path().join("topics/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut batches = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (base, batch_bytes) = spool_storage::batch::peek_prefix(&bytes[at..]).unwrap();
        batches.push((at, base.0));
        at += batch_bytes as usize;
    }
    let (position, offset) = batches[batches.len() / 2];
    let next = batches[batches.len() / 2 + 1];
    bytes[position + spool_storage::batch::BATCH_HEADER_BYTES + 20] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let before = files_under(data.path());
    let damaged = verify(data.path());
    assert_eq!(damaged.status.code(), Some(1), "verify fails on damage");
    let report = String::from_utf8(damaged.stdout).unwrap();
    let finding = format!(
        "damage: {} at byte {position}: damaged batch (batch CRC mismatch",
        segment.display()
    );
    assert!(report.contains(&finding), "{report}");
    let lost = format!(
        "offsets {offset} to {} cannot be read; the next intact batch starts at byte {} with offset {}",
        next.1 - 1,
        next.0,
        next.1
    );
    assert!(report.contains(&lost), "{report}");
    assert!(report.contains("topics/t/0: ") && report.contains("DAMAGED"), "{report}");
    let message = String::from_utf8(damaged.stderr).unwrap();
    assert!(
        message.starts_with("spool: 1 of ") && message.contains("logs are damaged"),
        "{message}"
    );
    assert_eq!(files_under(data.path()), before, "verify changes nothing");

    // `spool consume` prints every record before the damage, then DATA_LOSS, and fails.
    let served = Served::start(data.path());
    let consumed = served.spool(&["consume", "t"], "");
    assert!(!consumed.status.success());
    let printed = String::from_utf8(consumed.stdout).unwrap();
    assert_eq!(printed.lines().collect::<Vec<_>>(), lines[..offset as usize]);
    let message = String::from_utf8(consumed.stderr).unwrap();
    for part in [
        "DATA_LOSS".to_owned(),
        "partition 0 of topic t".to_owned(),
        format!("offset {offset} cannot be read"),
        format!("byte {position} of "),
    ] {
        assert!(message.contains(&part), "{message:?} lacks {part:?}");
    }

    // Beside a running server: it takes no lock, so it neither fails nor gets in the way.
    assert_eq!(verify(data.path()).status.code(), Some(1));
    served.ok(&["produce", "t"], "after the check\n");
    assert!(served.terminate());

    let missing = verify(&data.path().join("nothing here"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

#[test]
fn produce_compresses_and_every_reader_decompresses() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path());
    served.ok(&["topic", "create", "events"], "");
    let lines: String = (0..200)
        .map(|i| format!("{{\"event\":\"click\",\"page\":\"/home\",\"n\":{i}}}\n"))
        .collect();
    served.ok(&["produce", "events", "--compression", "zstd", "--quiet"], &lines);
    assert_eq!(served.ok(&["consume", "events"], ""), lines, "read back as produced");
    let unknown = served.spool(&["produce", "events", "--compression", "brotli"], "x\n");
    assert!(!unknown.status.success());
    let message = String::from_utf8(unknown.stderr).unwrap();
    assert!(message.contains("zstd"), "the accepted codecs are named: {message}");
    // A topic that requires lz4 stores the uncompressed batches `produce` sends in lz4.
    let created = served.ok(&["topic", "create", "required", "--compression", "lz4"], "");
    assert!(created.contains("compression=lz4"), "{created}");
    served.ok(&["produce", "required", "--quiet"], &lines);
    assert_eq!(served.ok(&["consume", "required"], ""), lines, "read back as produced");
    assert!(served.terminate());
    let required = data.path().join("topics/required/0/00000000000000000000.log");
    let dumped = Command::new(SPOOL).arg("dump").arg(&required).output().unwrap();
    assert!(stdout(&dumped).contains("format v2, codec lz4"), "{}", stdout(&dumped));
    let segment = data.path().join("topics/events/0/00000000000000000000.log");
    let dumped = Command::new(SPOOL).arg("dump").arg(&segment).arg("--records").output().unwrap();
    let text = stdout(&dumped);
    assert!(text.contains("format v2, codec zstd"), "{text}");
    assert!(
        text.contains(r#"value "{\"event\":\"click\",\"page\":\"/home\",\"n\":199}""#),
        "{text}"
    );
    let on_disk = std::fs::metadata(&segment).unwrap().len() as usize;
    assert!(on_disk < lines.len() / 2, "{on_disk} bytes on disk for {} of JSON", lines.len());
}

#[test]
fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new("prlimit");
    command.arg("--nofile=256:4096").arg(SPOOL).args(common::serve_args(data.path()));
    command.env("RUST_LOG", "info");
    // prlimit sets the limit and then runs the server in its own place.
    let served = Served::spawn(command);
    let log = served.log();
    assert!(log.contains("open-file limit raised from 256 to the hard limit 4096"), "{log}");
    assert!(served.terminate());
}

#[test]
fn partitions_max_refuses_creates_past_it() {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(SPOOL);
    command.args(common::serve_args(data.path())).args(["--partitions-max", "300"]);
    command.env("RUST_LOG", "info");
    let served = Served::spawn(command);
    assert!(served.log().contains("partition limit: 300"), "{}", served.log());
    served.ok(&["topic", "create", "a", "--partitions", "256"], "");
    let refused = served.spool(&["topic", "create", "b", "--partitions", "45"], "");
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("would make 301, over the server's limit of 300"), "{message}");
    assert!(message.contains("--partitions-max"), "{message}");
    served.ok(&["topic", "create", "b", "--partitions", "44"], "");
    assert!(served.terminate());
}

#[test]
fn a_start_or_topic_create_past_the_open_file_limit_is_refused_with_the_fix() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let limited = |soft_and_hard: &str| {
        let mut command = Command::new("prlimit");
        command.arg(format!("--nofile={soft_and_hard}")).arg(SPOOL);
        command.args(common::serve_args(data.path()));
        command
    };
    // 400 files: 256 kept for connections and 50 for sealed segments leave room for about 60
    // partitions beside the server's own files.
    let served = Served::spawn(limited("400:400"));
    let refused = served.spool(&["topic", "create", "wide", "--partitions", "200"], "");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    for part in ["200 more open files", "limit of 400", "ulimit -n", "RESOURCE_EXHAUSTED"] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert!(!data.path().join("topics/wide").exists(), "nothing was created");
    served.ok(&["topic", "create", "narrow", "--partitions", "30"], "");
    assert!(served.terminate());

    // 250 more partitions under a larger limit; then a start with 400 files is refused.
    let served = Served::spawn(limited("4096:4096"));
    served.ok(&["topic", "create", "wide", "--partitions", "250"], "");
    assert!(served.terminate());
    let refused = limited("400:400").output().unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    for part in ["opening its 280 partitions", "limit of 400", "LimitNOFILE"] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
}
