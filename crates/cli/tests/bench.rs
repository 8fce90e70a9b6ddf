//! `spool bench` as a user runs it: tiny workloads against an in-process server, checking the
//! shape of what it prints (never the figures: a slow machine is not a failure).

use std::process::Command;

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// Runs `spool bench ARGS` with its scratch files under `dir`; returns standard output.
fn bench(dir: &std::path::Path, args: &[&str]) -> String {
    bench_and_stderr(dir, args).0
}

/// Runs `spool bench ARGS` with its scratch files under `dir`; returns standard output and
/// standard error.
fn bench_and_stderr(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let output =
        Command::new(SPOOL).arg("bench").args(args).arg("--data").arg(dir).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "spool bench failed: {stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

#[test]
fn produce_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "produce",
        "--messages",
        "50",
        "--batch",
        "10",
        "--message-size",
        "100",
        "--json",
        "--disk-mib",
        "1",
        "--disk-seconds",
        "0.05",
    ];
    let stdout = bench(dir.path(), &args);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object per workload and target: {stdout}");
    let result: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(result["workload"], "produce");
    assert_eq!(result["target"], "spool");
    assert_eq!(result["messages"], 50);
    assert_eq!(result["bytes"], 5000);
    for field in ["seconds", "msgs_per_sec", "mb_per_sec"] {
        assert!(result[field].as_f64().unwrap() > 0.0, "{field} in {result}");
    }
    let latency = &result["latency_us"];
    for field in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(latency[field].as_f64().unwrap() > 0.0, "latency_us.{field} in {result}");
    }
    assert!(latency["p50"].as_f64() <= latency["max"].as_f64());
    let settings = &result["settings"];
    assert_eq!(
        (settings["batch"].as_u64(), settings["message_size"].as_u64()),
        (Some(10), Some(100))
    );
    assert_eq!(settings["acks"], "all");
    assert_eq!(settings["fsync"], "always");
    assert!(result["durability"].as_str().unwrap().contains("fsync always"));
    // The disk measured in the same run, and the ratio to it.
    assert!(result["disk"]["sync_4k"]["fdatasync_per_sec"].as_f64().unwrap() > 0.0);
    assert!(result["vs_disk"]["of_write_fdatasync"].as_f64().unwrap() > 0.0);
    assert!(result["vs_disk"]["of_sync_loop_1m"].as_f64().unwrap() > 0.0);
    // Tails against the disk's only where both sides have samples enough: none here.
    let vs_disk = result["vs_disk"].as_object().unwrap();
    assert!(vs_disk["p99_of_fdatasync_p99"].is_null() || vs_disk["p99_of_fdatasync_p99"].is_f64());
    assert!(vs_disk.contains_key("p999_of_fdatasync_p999"), "{result}");
    assert!(result["machine"]["cores"].as_u64().unwrap() >= 1);
    // The disk writing the bytes the topic stored, measured right after it.
    let stored = result["stored"]["disk_bytes"].as_u64().unwrap();
    assert_eq!(result["disk_same_bytes"]["bytes"].as_u64(), Some(stored.max(1 << 20)), "{result}");
    assert!(vs_disk["of_write_fdatasync_same_bytes"].as_f64().unwrap() > 0.0, "{result}");
    // The in-process server's fsyncs, read from its histogram: 5 acks=all batches on an
    // `always` topic need at least one, and at most one each.
    let fsyncs = result["server_fsyncs"]["count"].as_u64().unwrap();
    assert!((1..=5).contains(&fsyncs), "{result}");
    assert!(result["server_fsyncs"]["sum_seconds"].as_f64().unwrap() > 0.0, "{result}");
    // The harness removed its topic and its in-process server's directory.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn html_report_is_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let report_arg = report.to_str().unwrap().to_owned();
    let data = tempfile::tempdir().unwrap();
    let args = [
        "e2e",
        "--messages",
        "40",
        "--message-size",
        "64",
        "--rate",
        "2000",
        "--no-disk",
        "--report",
        &report_arg,
    ];
    let stdout = bench(data.path(), &args);
    assert!(stdout.contains("E2e against spool"), "{stdout}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("<polyline"), "plots are inline SVG");
    assert!(html.contains("Latency by percentile"));
    // A run of 20 ms has at most one throughput sample: no line to draw, and the page says so.
    assert!(
        html.contains("Throughput over time")
            || html.contains("Not plotted, the run being too short: throughput over time"),
        "{html}"
    );
    // 40 latencies support p50, not p99.
    assert!(html.contains("<td>n/a</td>"), "{html}");
    assert!(html.contains("<h2>Settings</h2><table>") && html.contains("<h2>Machine</h2><table>"));
    let lower = html.to_lowercase();
    assert!(!lower.contains("http://") && !lower.contains("https://"), "no references out");
    assert!(!lower.contains("<script"), "no scripts");
    assert!(!lower.contains(" src=") && !lower.contains("<link"), "nothing loaded");
}

#[test]
fn consume_replays_what_it_produced_whole_for_the_duration() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "consume",
        "--messages",
        "300",
        "--batch",
        "50",
        "--partitions",
        "2",
        "--duration",
        "0.2",
        "--json",
    ];
    let stdout = bench(dir.path(), &args);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["workload"], "consume");
    assert_eq!(result["settings"]["replay_seconds"], 0.2);
    // Each replay reads every produced message; there is at least one.
    let messages = result["messages"].as_u64().unwrap();
    assert!(messages >= 300 && messages.is_multiple_of(300), "{messages} replayed");
}

#[test]
fn disk_json_reports_the_four_measurements_in_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = bench_and_stderr(
        dir.path(),
        &["disk", "--disk-mib", "2", "--disk-seconds", "0.05", "--json"],
    );
    assert!(stderr.starts_with("measuring the disk under "), "{stderr}");
    let disk: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for field in ["buffered_write_mb_per_sec", "write_fdatasync_mb_per_sec"] {
        assert!(disk[field].as_f64().unwrap() > 0.0, "{field} in {disk}");
    }
    // Each figure is the median of 2 to 5 rounds, every round reported.
    let rounds = disk["buffered_write_rounds"]["each"].as_array().unwrap();
    assert!((2..=5).contains(&rounds.len()), "{disk}");
    assert!(disk["sync_4k"]["rounds"]["settled"].is_boolean(), "{disk}");
    assert!(disk["warnings"].is_array(), "{disk}");
    assert_eq!(disk["sync_4k"]["append_bytes"], 4096);
    assert_eq!(disk["sync_64k"]["append_bytes"], 65536);
    assert_eq!(disk["sync_1m"]["append_bytes"], 1 << 20);
    assert_eq!(disk["sync_16m"]["append_bytes"], 16 << 20);
    assert!(disk["sync_16m"]["fdatasync_per_sec"].as_f64().unwrap() > 0.0, "{disk}");
    assert!(disk["sync_64k"]["latency_us"]["p50"].as_f64().unwrap() > 0.0);
    // O_DIRECT, where the file system takes it (tmpfs does not).
    let direct = &disk["direct_fdatasync_mb_per_sec"];
    assert!(direct.is_null() || direct.as_f64().unwrap() > 0.0, "{disk}");
    assert_eq!(direct.is_null(), disk["direct_fdatasync_rounds"].is_null(), "{disk}");
}

#[test]
fn bad_options_are_refused_with_a_reason() {
    let output = Command::new(SPOOL)
        .args([
            "bench",
            "produce",
            "--fsync",
            "never",
            "--acks",
            "all",
            "--messages",
            "1",
            "--no-disk",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--acks all needs a synced topic"), "{stderr}");
}

/// `spool bench produce ARGS --json --no-disk` on JSON events: the one result.
fn produce_json_events(dir: &std::path::Path, compression: &str) -> serde_json::Value {
    let args = [
        "produce",
        "--messages",
        "2000",
        "--batch",
        "500",
        "--payload",
        "json",
        "--compression",
        compression,
        "--json",
        "--no-disk",
    ];
    serde_json::from_str(bench(dir, &args).trim()).unwrap()
}

#[test]
fn a_compressed_run_reports_fewer_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let plain = produce_json_events(dir.path(), "none");
    let zstd = produce_json_events(dir.path(), "zstd");
    for (result, codec) in [(&plain, "none"), (&zstd, "zstd")] {
        assert_eq!(result["settings"]["compression"], codec, "{result}");
        assert_eq!(result["settings"]["payload"], "json", "{result}");
        // Throughput counts the payload as sent, uncompressed.
        assert_eq!(result["bytes"], 2000 * 1024, "{result}");
        assert_eq!(result["stored"]["payload_bytes"], 2000 * 1024, "{result}");
    }
    let disk_bytes = |r: &serde_json::Value| r["stored"]["disk_bytes"].as_u64().unwrap();
    // Uncompressed, the log holds the payload and each record's and batch's framing.
    assert!(disk_bytes(&plain) > 2000 * 1024, "{plain}");
    assert!(plain["stored"]["ratio"].as_f64().unwrap() < 1.0, "{plain}");
    // JSON events compress (the codec benchmark's events: 7× with zstd); well under half here.
    assert!(disk_bytes(&zstd) * 2 < disk_bytes(&plain), "{zstd}");
    assert!(zstd["stored"]["ratio"].as_f64().unwrap() > 2.0, "{zstd}");
}

#[test]
fn e2e_reads_the_send_time_from_json_events() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "e2e",
        "--messages",
        "40",
        "--message-size",
        "200",
        "--rate",
        "2000",
        "--payload",
        "json",
        "--compression",
        "lz4",
        "--json",
        "--no-disk",
    ];
    let result: serde_json::Value = serde_json::from_str(bench(dir.path(), &args).trim()).unwrap();
    assert_eq!(result["messages"], 40);
    // Every message's latency comes from its stamp, which a JSON event keeps in "sent".
    assert_eq!(result["latency_us"]["samples"], 40, "{result}");
    assert_eq!(result["settings"]["compression"], "lz4");
}

#[test]
fn a_json_payload_too_small_for_an_event_is_refused() {
    let output = Command::new(SPOOL)
        .args(["bench", "produce", "--payload", "json", "--message-size", "20", "--no-disk"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--message-size must be at least 27"), "{stderr}");
}

#[test]
fn partitions_reports_what_a_server_with_many_partitions_holds_and_its_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = bench(dir.path(), &["partitions", "--count", "20", "--topics", "2", "--json"]);
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (result["partitions_asked"].as_u64(), result["partitions"].as_u64()),
        (Some(20), Some(20))
    );
    assert_eq!(result["topics"], 2, "{result}");
    assert!(result["refused"].is_null(), "{result}");
    assert!(result["create_seconds"].as_f64().unwrap() > 0.0, "{result}");
    // The figures are the server's own (a child process), read from /proc.
    let empty = &result["empty"];
    let created = &result["after_create"];
    for field in ["rss_bytes", "open_files", "memory_maps", "disk_bytes"] {
        assert!(empty[field].as_u64().unwrap() > 0, "empty.{field} in {result}");
        assert!(created[field].as_u64().unwrap() > 0, "after_create.{field} in {result}");
        assert!(result["per_partition"][field].is_number(), "per_partition.{field} in {result}");
    }
    // Every partition holds at least its active segment's log file open.
    assert!(created["open_files"].as_u64().unwrap() >= 20, "{result}");
    assert!(
        created["disk_bytes"].as_u64().unwrap() > empty["disk_bytes"].as_u64().unwrap(),
        "{result}"
    );
    // One batch of 10 records to each partition, twice, then as many batches to one
    // partition.
    let produce = &result["produce"];
    for rate in ["first_spread", "spread", "one_partition"] {
        assert_eq!(produce[rate]["batches"], 20, "{rate} in {result}");
        assert_eq!(produce[rate]["messages"], 200, "{rate} in {result}");
        assert!(produce[rate]["msgs_per_sec"].as_f64().unwrap() > 0.0, "{rate} in {result}");
        assert!(produce[rate]["batches_per_sec"].as_f64().unwrap() > 0.0, "{rate} in {result}");
    }
    assert!(produce["spread_vs_one"].as_f64().unwrap() > 0.0, "{result}");
    // Both restarts came back serving every partition and every acknowledged record; one
    // more batch of 10 to each partition went in before the SIGKILL.
    let clean = &result["restart_clean"];
    let killed = &result["restart_killed"];
    assert!(clean["stop_seconds"].as_f64().unwrap() > 0.0, "{result}");
    assert!(killed["stop_seconds"].is_null(), "{result}");
    for (restart, acknowledged) in [(clean, 600), (killed, 800)] {
        assert!(restart["start_seconds"].as_f64().unwrap() > 0.0, "{result}");
        assert_eq!(restart["partitions"], 20, "{result}");
        assert_eq!(restart["acknowledged"], acknowledged, "{result}");
        assert_eq!(restart["records"], acknowledged, "{result}");
        assert!(restart["idle"]["open_files"].as_u64().unwrap() >= 20, "{result}");
    }
    // The server's directory is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn partitions_refuses_a_topic_over_256_partitions() {
    let output = Command::new(SPOOL)
        .args(["bench", "partitions", "--count", "1000", "--topics", "3"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("a topic has at most 256"), "{stderr}");
}
