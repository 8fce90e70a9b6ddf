//! Results as a person reads them: a text table, a comparison between targets, and a
//! self-contained HTML page whose plots are inline SVG (no script or style is fetched from
//! anywhere, so the file can be mailed or archived as it is).

use std::fmt::Write;

use crate::disk::Rounds;
use crate::stats::{FsyncTotals, samples_for, shows};
use crate::{BenchResult, DiskLimits, LatencySummary, PayloadKind, Settings, StoredBytes};

/// The percentiles a summary holds, by name.
fn percentiles(latency: &LatencySummary) -> [(&'static str, f64, f64); 5] {
    [
        ("p50", 50.0, latency.p50),
        ("p90", 90.0, latency.p90),
        ("p99", 99.0, latency.p99),
        ("p99.9", 99.9, latency.p999),
        ("p99.99", 99.99, latency.p9999),
    ]
}

/// A percentile's figure, or "n/a" when the samples are too few for it.
fn percentile_cell(latency: &LatencySummary, percentile: f64, value: f64) -> String {
    if shows(percentile, latency.samples) { format!("{value:.0}") } else { "n/a".into() }
}

/// The percentiles the samples support, the maximum, and which are left out, like
/// "p50 120  p90 180  max 950; p99 and above n/a (412 samples)".
fn latency_line(latency: &LatencySummary) -> String {
    let mut parts = Vec::new();
    let mut first_missing = None;
    for (name, percentile, value) in percentiles(latency) {
        if shows(percentile, latency.samples) {
            parts.push(format!("{name} {value:.0}"));
        } else if first_missing.is_none() {
            first_missing = Some(name);
        }
    }
    parts.push(format!("max {:.0}", latency.max));
    let mut line = parts.join("  ");
    match first_missing {
        Some("p99.99") => {
            let _ = write!(line, "; p99.99 n/a ({} samples)", latency.samples);
        }
        Some(name) => {
            let _ = write!(line, "; {name} and above n/a ({} samples)", latency.samples);
        }
        None => {}
    }
    line
}

/// Why some percentiles are "n/a", for the end of a table that has any.
fn percentile_note(latencies: &[&LatencySummary]) -> Option<String> {
    let hidden = latencies.iter().any(|l| !shows(99.99, l.samples));
    hidden.then(|| {
        format!(
            "n/a: too few samples for that percentile; one needs 10 samples beyond it ({} for p99, {} for p99.99)",
            samples_for(99.0),
            samples_for(99.99)
        )
    })
}

/// A measurement's rounds, like "3 rounds: 1402, 1486, 1523".
fn rounds_text(rounds: &Rounds) -> String {
    let each: Vec<String> = rounds.each.iter().map(|f| format!("{f:.0}")).collect();
    let settled = if rounds.settled { "" } else { ", did not settle" };
    format!("{} rounds: {}{settled}", rounds.each.len(), each.join(", "))
}

/// `--payload`'s name.
fn payload_name(settings: &Settings) -> &'static str {
    match settings.payload {
        PayloadKind::Pattern => "pattern",
        PayloadKind::Json => "json",
    }
}

/// Like "512.0 MB of payload produced, 90.1 MB of segment files: ratio 5.68".
fn stored_text(stored: &StoredBytes) -> String {
    format!(
        "{} of payload produced, {} of segment files: ratio {:.2}",
        megabytes(stored.payload_bytes),
        megabytes(stored.disk_bytes),
        stored.ratio
    )
}

/// Bytes in MB (10^6), or in bytes where that would show 0.0 MB.
fn megabytes(bytes: u64) -> String {
    if bytes < 100_000 { format!("{bytes} bytes") } else { format!("{:.1} MB", bytes as f64 / 1e6) }
}

/// One result as a table.
pub fn table(result: &BenchResult) -> String {
    let s = &result.settings;
    let m = &result.machine;
    let mut out = String::new();
    let _ =
        writeln!(out, "== {:?} against {} ({})", result.workload, result.target, result.durability);
    let _ = writeln!(
        out,
        "settings    producers {}, consumers {}, partitions {}, message {} B, batch {}, linger {} ms, in flight {}, rate {}",
        s.producers,
        s.consumers,
        s.partitions,
        s.message_size,
        s.batch,
        s.linger_ms,
        s.in_flight,
        s.rate.map_or_else(|| "unlimited".into(), |r| format!("{r} msg/s"))
    );
    let direct = if s.direct_writes { "" } else { ", direct writes off" };
    let _ = writeln!(out, "payload     {}, compression {}{direct}", payload_name(s), s.compression);
    if let (Some(messages), Some(seconds)) = (s.messages, s.replay_seconds) {
        let _ = writeln!(
            out,
            "replay      {messages} messages produced, then read from the start again and again for {seconds} s"
        );
    }
    let _ = writeln!(
        out,
        "machine     {} cores, {:.1} GiB, {}, kernel {}, {}; spool {} ({} build)",
        m.cores,
        m.memory_gib,
        m.cpu,
        m.kernel,
        m.file_system,
        m.build.spool_version,
        m.build.profile
    );
    let _ = writeln!(out, "messages    {} in {:.2} s", result.messages, result.seconds);
    let _ = writeln!(
        out,
        "throughput  {:.0} msg/s, {:.1} MB/s of payload (uncompressed)",
        result.msgs_per_sec, result.mb_per_sec
    );
    if let Some(stored) = &result.stored {
        let _ = writeln!(out, "on disk     {}", stored_text(stored));
    }
    let _ = writeln!(out, "latency µs  {}", latency_line(&result.latency_us));
    let _ = writeln!(out, "            ({})", result.latency_of);
    if let Some(rss) = result.timeline.iter().map(|s| s.rss_mib).reduce(f64::max) {
        let first = result.timeline.first().map_or(0.0, |s| s.rss_mib);
        let last = result.timeline.last().map_or(0.0, |s| s.rss_mib);
        let _ = writeln!(
            out,
            "memory      resident {first:.0} MiB at start, {last:.0} at end, {rss:.0} at most (this process)"
        );
    }
    if !result.timeline.is_empty() {
        let busy: f64 =
            result.timeline.iter().map(|s| s.cpu_cores).sum::<f64>() / result.timeline.len() as f64;
        let per_gb = busy * result.seconds / (result.mb_per_sec * result.seconds / 1e3).max(1e-9);
        let _ = writeln!(
            out,
            "cpu         {busy:.2} cores busy, {per_gb:.2} core-seconds per GB (this process)"
        );
    }
    if let Some(fsyncs) = &result.server_fsyncs {
        let _ = writeln!(out, "fsyncs      {}", fsyncs_text(fsyncs));
    }
    if let Some(slowest) = slowest_second(result) {
        let _ = writeln!(out, "slowest s   {slowest}");
    }
    if let (Some(disk), Some(vs)) = (&result.disk, &result.vs_disk) {
        let _ = writeln!(
            out,
            "vs disk     {:.2}× buffered write ({:.0} MB/s), {:.2}× write+fdatasync ({:.0} MB/s)",
            vs.of_buffered_write,
            disk.buffered_write_mb_per_sec,
            vs.of_write_fdatasync,
            disk.write_fdatasync_mb_per_sec
        );
        if let (Some(direct), Some(ratio)) =
            (disk.direct_fdatasync_mb_per_sec, vs.of_direct_write_fdatasync)
        {
            let _ = writeln!(
                out,
                "            {ratio:.2}× O_DIRECT write+fdatasync, no page cache ({direct:.0} MB/s)"
            );
        }
        if let (Some(same), Some(ratio)) =
            (&result.disk_same_bytes, vs.of_write_fdatasync_same_bytes)
        {
            let _ = writeln!(
                out,
                "            {ratio:.2}× the disk writing the same {} once and fdatasyncing ({:.0} MB/s, right after)",
                size(same.bytes as f64),
                same.mb_per_sec
            );
        }
        if let (Some(direct), Some(ratio)) = (
            result.disk_same_bytes.and_then(|same| same.direct_mb_per_sec),
            vs.of_direct_write_fdatasync_same_bytes,
        ) {
            let _ = writeln!(
                out,
                "            {ratio:.2}× the same with O_DIRECT, no page cache ({direct:.0} MB/s, right after)"
            );
        }
        let _ = writeln!(
            out,
            "            {:.2}× serial 1 MiB write+fdatasync ({:.0} MB/s), {:.2}× serial 16 MiB ({:.0} MB/s)",
            vs.of_sync_loop_1m,
            disk.sync_1m.mb_per_sec(),
            vs.of_sync_loop_16m,
            disk.sync_16m.mb_per_sec()
        );
        let _ = writeln!(
            out,
            "            {:.1} msgs per 4 KiB fdatasync ({:.0}/s); p50 {:+.0} µs from the disk's p50 append+fdatasync ({:.0} µs)",
            vs.msgs_per_fdatasync_4k,
            disk.sync_4k.fdatasync_per_sec,
            vs.p50_minus_fdatasync_p50_us,
            disk.sync_4k.latency_us.p50
        );
        let tails: Vec<String> = [
            ("p99", vs.p99_of_fdatasync_p99, disk.sync_4k.latency_us.p99),
            ("p99.9", vs.p999_of_fdatasync_p999, disk.sync_4k.latency_us.p999),
        ]
        .into_iter()
        .filter_map(|(name, ratio, disk)| {
            ratio.map(|ratio| format!("{name} {ratio:.2}× the disk's ({disk:.0} µs)"))
        })
        .collect();
        if !tails.is_empty() {
            let _ = writeln!(
                out,
                "            tails against the disk's 4 KiB append+fdatasync: {}",
                tails.join(", ")
            );
        }
        for warning in &disk.warnings {
            let _ = writeln!(out, "WARNING     the disk's figures: {warning}");
        }
    }
    out.push('\n');
    out
}

/// A bound of the fsync histogram, in microseconds: "≤ 500 µs", "≤ 2.5 ms", "over 2.5 s".
fn bound_text(us: f64) -> String {
    match us {
        us if !us.is_finite() => "over the last bucket".into(),
        us if us < 1000.0 => format!("≤ {us:.0} µs"),
        us => format!("≤ {} ms", us / 1000.0),
    }
}

/// The in-process server's fsyncs over a run, in a line.
pub(crate) fn fsyncs_text(fsyncs: &FsyncTotals) -> String {
    let mut parts = vec![format!(
        "{} by the in-process server, mean {:.0} µs",
        fsyncs.count,
        fsyncs.mean_us().unwrap_or(0.0)
    )];
    for (name, percentile) in [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)] {
        if let Some(bound) =
            fsyncs.bound_us(percentile / 100.0).filter(|_| shows(percentile, fsyncs.count))
        {
            parts.push(format!("{name} {}", bound_text(bound)));
        }
    }
    if let Some(bound) = fsyncs.bound_us(1.0) {
        parts.push(format!("slowest {}", bound_text(bound)));
    }
    format!(
        "{} (bounds of its histogram's buckets); its writers spent {:.1} s appending and {:.1} s in fsyncs",
        parts.join(", "),
        fsyncs.append_seconds,
        fsyncs.sum_seconds
    )
}

/// The second with the largest latency, and the server's fsyncs in it: where a stall shows,
/// and whether a slow fsync explains it.
fn slowest_second(result: &BenchResult) -> Option<String> {
    let second = result.timeline.iter().filter(|s| s.latency_max_us.is_some()).max_by(|a, b| {
        a.latency_max_us.partial_cmp(&b.latency_max_us).unwrap_or(std::cmp::Ordering::Equal)
    })?;
    let mut text = format!(
        "{:.0} s into the run: latency p99 {:.0} µs, max {:.0} µs",
        second.seconds,
        second.latency_p99_us.unwrap_or(0.0),
        second.latency_max_us.unwrap_or(0.0)
    );
    if let Some(fsyncs) = second.fsyncs.as_ref().filter(|_| result.server_fsyncs.is_some()) {
        let _ = write!(text, "; the server's {} fsyncs in that second", fsyncs.count);
        if let Some(slowest) = fsyncs.bound_us(1.0) {
            let _ = write!(text, ", slowest {}", bound_text(slowest));
        }
    }
    Some(text)
}

/// Every result against the first, for a side-by-side run.
pub fn comparison(results: &[BenchResult]) -> String {
    let mut out = String::from("== comparison (same run, same machine)\n");
    let _ = writeln!(
        out,
        "{:<16} {:<44} {:<11} {:>12} {:>12} {:>10} {:>10}",
        "target", "durability", "compression", "msg/s", "payload MB/s", "p50 µs", "p99 µs"
    );
    for r in results {
        let l = &r.latency_us;
        let _ = writeln!(
            out,
            "{:<16} {:<44} {:<11} {:>12.0} {:>12.1} {:>10} {:>10}",
            r.target,
            r.durability,
            r.settings.compression,
            r.msgs_per_sec,
            r.mb_per_sec,
            percentile_cell(l, 50.0, l.p50),
            percentile_cell(l, 99.0, l.p99)
        );
    }
    if results.iter().any(|r| !shows(99.0, r.latency_us.samples)) {
        let _ = writeln!(out, "(n/a: fewer than {} latency samples)", samples_for(99.0));
    }
    if let Some(first) = results.first() {
        for other in &results[1..] {
            let _ = writeln!(
                out,
                "{} / {} ({}): {:.2}× the throughput",
                first.target,
                other.target,
                other.durability,
                first.msgs_per_sec / other.msgs_per_sec.max(1e-9)
            );
        }
    }
    out.push('\n');
    out
}

/// `spool bench disk` as a table.
pub fn disk_table(disk: &DiskLimits) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== disk under {} ({})", disk.dir, disk.file_system);
    let _ = writeln!(
        out,
        "buffered sequential write   {:.0} MB/s ({})",
        disk.buffered_write_mb_per_sec,
        rounds_text(&disk.buffered_write_rounds)
    );
    let _ = writeln!(
        out,
        "write then fdatasync        {:.0} MB/s ({})",
        disk.write_fdatasync_mb_per_sec,
        rounds_text(&disk.write_fdatasync_rounds)
    );
    match (disk.direct_fdatasync_mb_per_sec, &disk.direct_fdatasync_rounds) {
        (Some(direct), Some(rounds)) => {
            let _ = writeln!(
                out,
                "O_DIRECT write, fdatasync   {direct:.0} MB/s ({})",
                rounds_text(rounds)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "O_DIRECT write, fdatasync   not measured: the file system refuses O_DIRECT"
            );
        }
    }
    for rate in [&disk.sync_4k, &disk.sync_64k, &disk.sync_1m, &disk.sync_16m] {
        let _ = writeln!(
            out,
            "append {:>8} + fdatasync {:.0}/s, {:.0} MB/s ({}), µs {}",
            size(rate.append_bytes as f64),
            rate.fdatasync_per_sec,
            rate.mb_per_sec(),
            rounds_text(&rate.rounds),
            latency_line(&rate.latency_us)
        );
    }
    let _ = writeln!(out, "(each figure is the median round)");
    for warning in &disk.warnings {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    out
}

/// A size in bytes, KiB or MiB: "512 B", "4.0 KiB", "16.0 MiB".
pub(crate) fn size(bytes: f64) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    match bytes.abs() {
        b if b < KIB => format!("{bytes:.0} B"),
        b if b < MIB => format!("{:.1} KiB", bytes / KIB),
        _ => format!("{:.1} MiB", bytes / MIB),
    }
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PLOT_WIDTH: f64 = 640.0;
const PLOT_HEIGHT: f64 = 260.0;
const MARGIN: f64 = 50.0;
const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// A line plot of several series as an SVG element; `x_label` ticks come from `x_ticks`.
/// A series of fewer than two points draws no line and is left out; `None` when none is left.
fn svg_plot(
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_ticks: &[(f64, String)],
    log_y: bool,
) -> Option<String> {
    let series: Vec<&(String, Vec<(f64, f64)>)> =
        series.iter().filter(|(_, points)| points.len() >= 2).collect();
    if series.is_empty() {
        return None;
    }
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (0.0f64, f64::MAX, 0.0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
        y_min = y_min.min(y);
    }
    if x_max <= 0.0 {
        x_max = 1.0;
    }
    let transform_y = |y: f64| if log_y { y.max(1e-3).log10() } else { y };
    let (low, high) = if log_y {
        (
            transform_y(y_min.max(1e-3)).floor(),
            transform_y(y_max.max(1e-3)).ceil().max(transform_y(y_min.max(1e-3)).floor() + 1.0),
        )
    } else {
        (0.0, if y_max > 0.0 { y_max * 1.1 } else { 1.0 })
    };
    let px = |x: f64| MARGIN + x / x_max * (PLOT_WIDTH - 2.0 * MARGIN);
    let py = |y: f64| {
        PLOT_HEIGHT - MARGIN + 10.0
            - (transform_y(y) - low) / (high - low) * (PLOT_HEIGHT - 1.5 * MARGIN)
    };
    let mut svg = format!(
        "<svg width=\"{PLOT_WIDTH}\" height=\"{PLOT_HEIGHT}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{MARGIN}\" y=\"16\" font-weight=\"bold\">{t}</text>\
         <text x=\"4\" y=\"{mid}\" transform=\"rotate(-90 10 {mid})\" font-size=\"11\">{y}</text>\
         <line x1=\"{MARGIN}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#444\"/>\
         <line x1=\"{MARGIN}\" y1=\"24\" x2=\"{MARGIN}\" y2=\"{bottom}\" stroke=\"#444\"/>",
        t = escape(title),
        y = escape(y_label),
        mid = PLOT_HEIGHT / 2.0,
        bottom = PLOT_HEIGHT - MARGIN + 10.0,
        right = PLOT_WIDTH - MARGIN,
    );
    for (x, label) in x_ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            px(*x),
            PLOT_HEIGHT - MARGIN + 24.0,
            escape(label)
        );
    }
    let y_ticks: Vec<f64> = if log_y {
        (low as i32..=high as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|i| high * f64::from(i) / 4.0).collect()
    };
    for y in y_ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            MARGIN - 4.0,
            py(y) + 3.0,
            format_number(y)
        );
    }
    for (index, (name, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            path.join(" "),
            MARGIN + 10.0,
            36.0 + 14.0 * index as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

fn format_number(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else if value >= 1.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Where a percentile sits on the plot's x axis: -log10(1 - p), so 90, 99, 99.9 are evenly
/// spaced.
fn percentile_x(percentile: f64) -> f64 {
    let remaining = (1.0 - percentile / 100.0).max(1e-6);
    -remaining.log10()
}

/// The results as one self-contained HTML page.
pub fn html(results: &[BenchResult]) -> String {
    let name = |r: &BenchResult| format!("{} ({})", r.target, r.durability);
    let throughput: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| (name(r), r.timeline.iter().map(|s| (s.seconds, s.msgs_per_sec)).collect()))
        .collect();
    let memory: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| (name(r), r.timeline.iter().map(|s| (s.seconds, s.rss_mib)).collect()))
        .collect();
    let latency_over_time: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .flat_map(|r| {
            let series = |label: &str, value: fn(&crate::Sample) -> Option<f64>| {
                let points = r.timeline.iter().filter_map(|s| value(s).map(|v| (s.seconds, v)));
                (format!("{} {label}", name(r)), points.collect::<Vec<_>>())
            };
            [series("p99", |s| s.latency_p99_us), series("max", |s| s.latency_max_us)]
        })
        .collect();
    let fsyncs_over_time: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .filter(|r| r.server_fsyncs.is_some())
        .flat_map(|r| {
            let series = |label: &str, value: fn(&FsyncTotals) -> Option<f64>| {
                let points = r.timeline.iter().filter_map(|s| {
                    let v = s.fsyncs.as_ref().and_then(value)?;
                    v.is_finite().then_some((s.seconds, v))
                });
                (format!("{} {label}", name(r)), points.collect::<Vec<_>>())
            };
            [
                series("mean", FsyncTotals::mean_us),
                series("slowest (bucket bound)", |f| f.bound_us(1.0)),
            ]
        })
        .collect();
    let seconds_max = results.iter().map(|r| r.seconds).fold(1.0, f64::max);
    let time_ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            (seconds_max * f64::from(i) / 4.0, format!("{:.0} s", seconds_max * f64::from(i) / 4.0))
        })
        .collect();
    let latency: Vec<(String, Vec<(f64, f64)>)> = results
        .iter()
        .map(|r| {
            (name(r), r.latency_percentiles.iter().map(|&(p, us)| (percentile_x(p), us)).collect())
        })
        .collect();
    let percentile_ticks: Vec<(f64, String)> = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
        .iter()
        .map(|&p| (percentile_x(p), format!("p{p}")))
        .collect();
    let mut page = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>spool bench</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}\
         td:first-child,th:first-child{text-align:left}svg{display:block;margin:1em 0}</style></head><body>\n",
    );
    let workload = results.first().map_or("none".to_owned(), |r| format!("{:?}", r.workload));
    let _ = writeln!(page, "<h1>spool bench: {}</h1>", escape(&workload));
    page.push_str("<table><tr><th>target</th><th>durability</th><th>compression</th><th>messages</th><th>seconds</th><th>msg/s</th><th>payload MB/s</th><th>p50 µs</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>vs write+fdatasync</th><th>payload / on disk</th></tr>\n");
    for r in results {
        let l = &r.latency_us;
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.0}</td><td>{:.1}</td>{}<td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.target),
            escape(&r.durability),
            r.settings.compression,
            r.messages,
            r.seconds,
            r.msgs_per_sec,
            r.mb_per_sec,
            percentiles(l)
                .iter()
                .map(|&(_, p, value)| format!("<td>{}</td>", percentile_cell(l, p, value)))
                .collect::<String>(),
            l.max,
            r.vs_disk.map_or_else(|| "–".into(), |v| format!("{:.2}×", v.of_write_fdatasync)),
            r.stored.map_or_else(|| "–".into(), |s| format!("{:.2}", s.ratio))
        );
    }
    page.push_str("</table>\n");
    page.push_str(
        "<p>MB/s counts the payload as produced, uncompressed, whatever the codec.</p>\n",
    );
    for r in results {
        if let Some(stored) = &r.stored {
            let _ = writeln!(
                page,
                "<p>On disk ({}, {}): {}; the topic's segment files once the workload was done, before the topic was deleted.</p>",
                escape(&r.target),
                escape(&r.durability),
                escape(&stored_text(stored))
            );
        }
    }
    let latencies: Vec<&LatencySummary> = results.iter().map(|r| &r.latency_us).collect();
    if let Some(note) = percentile_note(&latencies) {
        let _ = writeln!(page, "<p>{}</p>", escape(&note));
    }
    if let Some(first) = results.first() {
        let _ = writeln!(page, "<p>Latency: {}.</p>", escape(first.latency_of));
    }
    for r in results {
        if let Some(fsyncs) = &r.server_fsyncs {
            let _ = writeln!(
                page,
                "<p>Fsyncs ({}): {}.</p>",
                escape(&name(r)),
                escape(&fsyncs_text(fsyncs))
            );
        }
        if let Some(slowest) = slowest_second(r) {
            let _ = writeln!(
                page,
                "<p>Slowest second ({}): {}.</p>",
                escape(&name(r)),
                escape(&slowest)
            );
        }
    }
    let plots = [
        (
            svg_plot("Throughput over time", "messages/s", &throughput, &time_ticks, false),
            "throughput over time (one sample a second)",
        ),
        (
            svg_plot("Latency by percentile", "µs (log)", &latency, &percentile_ticks, true),
            "latency by percentile (too few samples)",
        ),
        (
            svg_plot("Latency over time", "µs (log)", &latency_over_time, &time_ticks, true),
            "latency over time (p99 and max of each second)",
        ),
        (
            svg_plot(
                "The in-process server's fsyncs over time",
                "µs (log)",
                &fsyncs_over_time,
                &time_ticks,
                true,
            ),
            "the in-process server's fsyncs over time (mean and slowest of each second)",
        ),
        (
            svg_plot("Resident memory of the harness", "MiB", &memory, &time_ticks, false),
            "resident memory (one sample a second)",
        ),
    ];
    let mut left_out = Vec::new();
    for (plot, name) in plots {
        match plot {
            Some(svg) => page.push_str(&svg),
            None => left_out.push(name),
        }
    }
    if !left_out.is_empty() {
        let _ = writeln!(
            page,
            "<p>Not plotted, the run being too short: {}.</p>",
            escape(&left_out.join("; "))
        );
    }
    if let Some(first) = results.first() {
        let settings = serde_json::to_value(&first.settings).expect("serializable");
        let machine = serde_json::to_value(&first.machine).expect("serializable");
        let _ = writeln!(page, "<h2>Settings</h2>{}", fields_table(&settings));
        let _ = writeln!(page, "<h2>Machine</h2>{}", fields_table(&machine));
        if let Some(disk) = &first.disk {
            let _ = writeln!(page, "<h2>Disk</h2>{}", disk_html(disk));
        }
    }
    page.push_str("</body></html>\n");
    page
}

/// A JSON object's fields as a two-column table, nested objects' fields named by their path
/// ("build profile"); an absent value is "–".
fn fields_table(value: &serde_json::Value) -> String {
    fn rows(prefix: &str, value: &serde_json::Value, out: &mut String) {
        match value {
            serde_json::Value::Object(fields) => {
                for (name, field) in fields {
                    let name = name.replace('_', " ");
                    let path = if prefix.is_empty() { name } else { format!("{prefix} {name}") };
                    rows(&path, field, out);
                }
            }
            serde_json::Value::Null => {
                let _ = write!(out, "<tr><td>{}</td><td>–</td></tr>", escape(prefix));
            }
            serde_json::Value::String(text) => {
                let _ =
                    write!(out, "<tr><td>{}</td><td>{}</td></tr>", escape(prefix), escape(text));
            }
            other => {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(prefix),
                    escape(&other.to_string())
                );
            }
        }
    }
    let mut out = String::from("<table>");
    rows("", value, &mut out);
    out.push_str("</table>");
    out
}

/// The disk's figures as a table, with its warnings.
fn disk_html(disk: &DiskLimits) -> String {
    let mut out = format!(
        "<p>Under {} ({}); each figure is the median round.</p>\
         <table><tr><th>measurement</th><th>figure</th><th>rounds</th><th>latency µs</th></tr>",
        escape(&disk.dir),
        escape(&disk.file_system)
    );
    let sequential = [
        ("buffered sequential write", disk.buffered_write_mb_per_sec, &disk.buffered_write_rounds),
        ("write then fdatasync", disk.write_fdatasync_mb_per_sec, &disk.write_fdatasync_rounds),
    ];
    for (name, figure, rounds) in sequential {
        let _ = write!(
            out,
            "<tr><td>{name}</td><td>{figure:.0} MB/s</td><td>{}</td><td>–</td></tr>",
            escape(&rounds_text(rounds))
        );
    }
    if let (Some(figure), Some(rounds)) =
        (disk.direct_fdatasync_mb_per_sec, &disk.direct_fdatasync_rounds)
    {
        let _ = write!(
            out,
            "<tr><td>O_DIRECT write then fdatasync</td><td>{figure:.0} MB/s</td><td>{}</td><td>–</td></tr>",
            escape(&rounds_text(rounds))
        );
    }
    for rate in [&disk.sync_4k, &disk.sync_64k, &disk.sync_1m, &disk.sync_16m] {
        let _ = write!(
            out,
            "<tr><td>append {} + fdatasync</td><td>{:.0}/s, {:.0} MB/s</td><td>{}</td><td>{}</td></tr>",
            size(rate.append_bytes as f64),
            rate.fdatasync_per_sec,
            rate.mb_per_sec(),
            escape(&rounds_text(&rate.rounds)),
            escape(&latency_line(&rate.latency_us))
        );
    }
    out.push_str("</table>");
    for warning in &disk.warnings {
        let _ = write!(out, "<p><strong>WARNING:</strong> {}</p>", escape(warning));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AcksArg, Machine, Settings, Workload};

    fn latency(samples: u64) -> LatencySummary {
        LatencySummary {
            p50: 100.0,
            p90: 200.0,
            p99: 300.0,
            p999: 400.0,
            p9999: 500.0,
            max: 900.0,
            mean: 120.0,
            samples,
        }
    }

    #[test]
    fn a_latency_line_shows_only_what_its_samples_support() {
        assert_eq!(
            latency_line(&latency(100_000)),
            "p50 100  p90 200  p99 300  p99.9 400  p99.99 500  max 900"
        );
        assert_eq!(latency_line(&latency(20)), "p50 100  max 900; p90 and above n/a (20 samples)");
        assert_eq!(
            latency_line(&latency(10_000)),
            "p50 100  p90 200  p99 300  p99.9 400  max 900; p99.99 n/a (10000 samples)"
        );
    }

    fn result(samples: u64, timeline: Vec<crate::Sample>) -> BenchResult {
        let settings = Settings {
            workload: Workload::E2e,
            producers: 1,
            consumers: 1,
            partitions: 1,
            message_size: 64,
            payload: PayloadKind::Json,
            compression: spool_client::Codec::Zstd,
            batch: 1,
            linger_ms: 0,
            in_flight: 256,
            acks: AcksArg::All,
            idempotent: false,
            fsync: "always".into(),
            direct_writes: true,
            replication_factor: None,
            messages: Some(samples),
            duration_seconds: None,
            replay_seconds: None,
            rate: Some(2000),
        };
        BenchResult {
            workload: Workload::E2e,
            target: "spool".into(),
            durability: "fsync always, acks all".into(),
            messages: samples,
            bytes: samples * 64,
            seconds: 0.02,
            msgs_per_sec: 2000.0,
            mb_per_sec: 0.128,
            latency_us: latency(samples),
            latency_of: "send to receipt",
            stored: Some(StoredBytes::new(samples * 64, 1000)),
            settings,
            machine: Machine::describe(std::path::Path::new("/")),
            disk: None,
            vs_disk: None,
            timeline,
            server_fsyncs: None,
            disk_same_bytes: None,
            latency_percentiles: vec![(0.0, 50.0), (50.0, 100.0), (100.0, 900.0)],
        }
    }

    #[test]
    fn the_report_leaves_out_empty_plots_and_tabulates_settings() {
        let one_sample = vec![crate::Sample {
            seconds: 0.02,
            msgs_per_sec: 2000.0,
            mb_per_sec: 0.1,
            rss_mib: 20.0,
            cpu_cores: 0.5,
            latency_p99_us: Some(800.0),
            latency_max_us: Some(900.0),
            fsyncs: None,
        }];
        let page = html(&[result(40, one_sample)]);
        assert!(page.contains("Latency by percentile"), "{page}");
        assert!(!page.contains("Throughput over time"), "a plot of one point is left out");
        assert!(page.contains("Not plotted, the run being too short: throughput over time"));
        assert!(page.contains("<td>n/a</td>") && page.contains("n/a: too few samples"));
        assert!(page.contains("<tr><td>message size</td><td>64</td></tr>"), "{page}");
        assert!(page.contains("<tr><td>duration seconds</td><td>–</td></tr>"), "{page}");
        assert!(page.contains("<tr><td>build profile</td>"), "{page}");
        assert!(!page.contains("<pre>") && !page.contains("\"message_size\""), "no raw JSON");
        // The codec and payload are echoed; throughput is named as uncompressed payload.
        assert!(page.contains("<tr><td>compression</td><td>zstd</td></tr>"), "{page}");
        assert!(page.contains("<tr><td>payload</td><td>json</td></tr>"), "{page}");
        assert!(page.contains("<th>payload MB/s</th>") && page.contains("<td>2.56</td>"), "{page}");
        assert!(
            page.contains(
                "2560 bytes of payload produced, 1000 bytes of segment files: ratio 2.56"
            )
        );
    }

    /// A second of a run: its latency and the server's fsyncs in it.
    fn second(seconds: f64, max_us: f64, slowest_fsync: f64) -> crate::Sample {
        let fsyncs = FsyncTotals {
            count: 2,
            sum_seconds: 0.002,
            append_seconds: 0.001,
            buckets: vec![(0.001, 1), (slowest_fsync, 2)],
        };
        crate::Sample {
            seconds,
            msgs_per_sec: 2000.0,
            mb_per_sec: 0.1,
            rss_mib: 20.0,
            cpu_cores: 0.5,
            latency_p99_us: Some(max_us / 2.0),
            latency_max_us: Some(max_us),
            fsyncs: Some(fsyncs),
        }
    }

    #[test]
    fn a_stall_is_shown_beside_the_fsyncs_of_its_second() {
        let timeline =
            vec![second(1.0, 900.0, 0.001), second(2.0, 40_000.0, 0.05), second(3.0, 800.0, 0.001)];
        let mut result = result(40, timeline);
        result.server_fsyncs = Some(FsyncTotals {
            count: 6,
            sum_seconds: 0.06,
            append_seconds: 0.5,
            buckets: vec![(0.001, 4), (0.05, 6), (f64::INFINITY, 6)],
        });
        let text = table(&result);
        assert!(
            text.contains("\nslowest s   2 s into the run: latency p99 20000 µs, max 40000 µs; the server's 2 fsyncs in that second, slowest ≤ 50 ms\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nfsyncs      6 by the in-process server, mean 10000 µs, slowest ≤ 50 ms"
            ),
            "{text}"
        );
        let page = html(&[result]);
        assert!(
            page.contains("Latency over time")
                && page.contains("spool (fsync always, acks all) max"),
            "{page}"
        );
        assert!(page.contains("The in-process server's fsyncs over time"), "{page}");
    }

    #[test]
    fn the_table_says_what_was_sent_and_what_it_took_on_disk() {
        let mut result = result(40, Vec::new());
        result.stored = Some(StoredBytes::new(512_000_000, 90_100_000));
        let text = table(&result);
        assert!(text.contains("\npayload     json, compression zstd\n"), "{text}");
        assert!(text.contains("MB/s of payload (uncompressed)"), "{text}");
        assert!(
            text.contains(
                "\non disk     512.0 MB of payload produced, 90.1 MB of segment files: ratio 5.68\n"
            ),
            "{text}"
        );
        let nats = BenchResult { target: "nats".into(), stored: None, ..result.clone() };
        assert!(!table(&nats).contains("on disk"));
    }
}
