//! Results as a person reads them: a text table, a comparison between targets, and a
//! self-contained HTML page whose plots are inline SVG (no script or style is fetched from
//! anywhere, so the file can be mailed or archived as it is).

use std::fmt::Write;

use crate::{BenchResult, DiskLimits, LatencySummary};

fn latency_line(latency: &LatencySummary) -> String {
    format!(
        "p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  p99.99 {:.0}  max {:.0}",
        latency.p50, latency.p90, latency.p99, latency.p999, latency.p9999, latency.max
    )
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
        "throughput  {:.0} msg/s, {:.1} MB/s",
        result.msgs_per_sec, result.mb_per_sec
    );
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
    if let (Some(disk), Some(vs)) = (&result.disk, &result.vs_disk) {
        let _ = writeln!(
            out,
            "vs disk     {:.2}× buffered write ({:.0} MB/s), {:.2}× write+fdatasync ({:.0} MB/s)",
            vs.of_buffered_write,
            disk.buffered_write_mb_per_sec,
            vs.of_write_fdatasync,
            disk.write_fdatasync_mb_per_sec
        );
        let _ = writeln!(
            out,
            "            {:.1} msgs per 4 KiB fdatasync ({:.0}/s); p50 {:+.0} µs from the disk's p50 append+fdatasync ({:.0} µs)",
            vs.msgs_per_fdatasync_4k,
            disk.sync_4k.fdatasync_per_sec,
            vs.p50_minus_fdatasync_p50_us,
            disk.sync_4k.latency_us.p50
        );
    }
    out.push('\n');
    out
}

/// Every result against the first, for a side-by-side run.
pub fn comparison(results: &[BenchResult]) -> String {
    let mut out = String::from("== comparison (same run, same machine)\n");
    let _ = writeln!(
        out,
        "{:<8} {:<44} {:>12} {:>10} {:>10} {:>10}",
        "target", "durability", "msg/s", "MB/s", "p50 µs", "p99 µs"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<8} {:<44} {:>12.0} {:>10.1} {:>10.0} {:>10.0}",
            r.target,
            r.durability,
            r.msgs_per_sec,
            r.mb_per_sec,
            r.latency_us.p50,
            r.latency_us.p99
        );
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
    let _ = writeln!(out, "buffered sequential write   {:.0} MB/s", disk.buffered_write_mb_per_sec);
    let _ =
        writeln!(out, "write then fdatasync        {:.0} MB/s", disk.write_fdatasync_mb_per_sec);
    for rate in [&disk.sync_4k, &disk.sync_64k] {
        let _ = writeln!(
            out,
            "append {:>2} KiB + fdatasync   {:.0}/s, µs {}",
            rate.append_bytes / 1024,
            rate.fdatasync_per_sec,
            latency_line(&rate.latency_us)
        );
    }
    out
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
fn svg_plot(
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    x_ticks: &[(f64, String)],
    log_y: bool,
) -> String {
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
    svg
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
    page.push_str("<table><tr><th>target</th><th>durability</th><th>messages</th><th>seconds</th><th>msg/s</th><th>MB/s</th><th>p50 µs</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>vs write+fdatasync</th></tr>\n");
    for r in results {
        let l = &r.latency_us;
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.0}</td><td>{:.1}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td></tr>",
            escape(&r.target),
            escape(&r.durability),
            r.messages,
            r.seconds,
            r.msgs_per_sec,
            r.mb_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.p9999,
            l.max,
            r.vs_disk.map_or_else(|| "–".into(), |v| format!("{:.2}×", v.of_write_fdatasync))
        );
    }
    page.push_str("</table>\n");
    if let Some(first) = results.first() {
        let _ = writeln!(page, "<p>Latency: {}.</p>", escape(first.latency_of));
    }
    page.push_str(&svg_plot("Throughput over time", "messages/s", &throughput, &time_ticks, false));
    page.push_str(&svg_plot(
        "Latency by percentile",
        "µs (log)",
        &latency,
        &percentile_ticks,
        true,
    ));
    page.push_str(&svg_plot("Resident memory of the harness", "MiB", &memory, &time_ticks, false));
    if let Some(first) = results.first() {
        let settings = serde_json::to_string_pretty(&first.settings).expect("serializable");
        let machine = serde_json::to_string_pretty(&first.machine).expect("serializable");
        let _ = writeln!(page, "<h2>Settings</h2><pre>{}</pre>", escape(&settings));
        let _ = writeln!(page, "<h2>Machine</h2><pre>{}</pre>", escape(&machine));
        if let Some(disk) = &first.disk {
            let _ = writeln!(page, "<h2>Disk</h2><pre>{}</pre>", escape(&disk_table(disk)));
        }
    }
    page.push_str("</body></html>\n");
    page
}
