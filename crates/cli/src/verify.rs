//! `spool verify --data DIR`: checks every log under a data directory offline with
//! spool-storage's `verify` (every batch's CRCs and offsets, every index entry the next start
//! would trust), prints one line per log with what it found, then a summary, and fails when
//! it found damage.
//!
//! It changes nothing and takes no lock: files are opened read-only, so it may run on a
//! directory a server is using (see `spool_storage::verify` for what that means for the
//! last segments).

use std::io;
use std::path::Path;

use anyhow::{Context, bail};
use spool_storage::fs::{EntryKind, FileSystem, StdFileSystem};
use spool_storage::verify::{LogCheck, Severity, find_logs, verify_log};

use crate::out;

pub(crate) fn run(data: &Path) -> anyhow::Result<()> {
    let fs = StdFileSystem;
    match fs.entry_kind(data).with_context(|| format!("cannot read {}", data.display()))? {
        Some(EntryKind::Directory) => {}
        Some(_) => bail!("{} is not a directory: give the data directory", data.display()),
        None => bail!("{} does not exist", data.display()),
    }
    let logs = find_logs(&fs, data).with_context(|| format!("cannot read {}", data.display()))?;
    if logs.is_empty() {
        bail!(
            "{} holds no partition logs: is it a data directory (`spool serve --data`)?",
            data.display()
        );
    }
    let mut total = Total::default();
    for dir in &logs {
        let name = match dir.strip_prefix(data) {
            Ok(relative) if relative.as_os_str().is_empty() => ".".to_owned(),
            Ok(relative) => relative.display().to_string(),
            Err(_) => dir.display().to_string(),
        };
        match verify_log(&fs, dir) {
            Ok(check) => {
                report(&name, &check);
                total.add(&check);
            }
            // Deleted since it was found: a topic deleted, or an internal log compacted, by a
            // server running on the directory.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                out!("{name}: gone while being checked (deleted by a running server)");
            }
            Err(error) => return Err(error).with_context(|| format!("cannot read {name}")),
        }
    }
    out!(
        "{} logs, {} segments, {} batches, {} records checked: {} damaged batches, {} wrong index entries",
        total.logs,
        total.segments,
        total.batches,
        total.records,
        total.damaged_batches,
        total.index_errors
    );
    if total.damaged_logs > 0 {
        bail!(
            "{} of {} logs are damaged: readers get DATA_LOSS where they reach the damage (see above for where)",
            total.damaged_logs,
            total.logs
        );
    }
    Ok(())
}

/// One log's line, then its findings indented.
fn report(name: &str, check: &LogCheck) {
    let offsets = match check.end_offset.0.checked_sub(1) {
        Some(last) if check.batches > 0 => format!("offsets {} to {last}", check.start_offset),
        _ => "no records".to_owned(),
    };
    let verdict = if check.is_damaged() {
        "DAMAGED"
    } else if check.findings.is_empty() {
        "ok"
    } else {
        "ok (the next start repairs what is listed)"
    };
    out!(
        "{name}: {} segments, {offsets}, {} batches, {} records{}: {verdict}",
        check.segments,
        check.batches,
        check.records,
        if check.clean_shutdown { "" } else { ", not closed cleanly" }
    );
    for finding in &check.findings {
        let severity = match finding.severity {
            Severity::Damage => "damage",
            Severity::Repairable => "repairable",
        };
        out!("  {severity}: {finding}");
    }
    if check.findings_dropped > 0 {
        out!("  and {} more", check.findings_dropped);
    }
}

#[derive(Debug, Default)]
struct Total {
    logs: u64,
    damaged_logs: u64,
    segments: u64,
    batches: u64,
    records: u64,
    damaged_batches: u64,
    index_errors: u64,
}

impl Total {
    fn add(&mut self, check: &LogCheck) {
        self.logs += 1;
        self.damaged_logs += u64::from(check.is_damaged());
        self.segments += check.segments;
        self.batches += check.batches;
        self.records += check.records;
        self.damaged_batches += check.damaged_batches;
        self.index_errors += check.index_errors;
    }
}
