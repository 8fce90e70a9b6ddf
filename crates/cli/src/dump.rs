//! `spool dump FILE`: reads a segment's log or index file offline, prints what it holds and
//! every error found, and fails if it found any.
//!
//! Index entries are decoded with spool-storage's `index` module, which documents their layout.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::out;

use anyhow::{Context, bail};
use spool_storage::batch::{self, BATCH_PREFIX_BYTES, BatchView};
use spool_storage::index::{OFFSET_ENTRY_BYTES, OffsetEntry, TIME_ENTRY_BYTES, TimeEntry};

pub(crate) fn run(path: &Path, records: bool) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let base = name
        .split('.')
        .next()
        .filter(|stem| stem.len() == 20)
        .and_then(|stem| stem.parse::<u64>().ok());
    let errors = if name.ends_with(".log") {
        dump_log(path, records)?
    } else if name.ends_with(".timeindex") {
        dump_time_index(path, base)?
    } else if name.ends_with(".index") {
        dump_offset_index(path, base)?
    } else {
        bail!(
            "{} is not a segment file: expected a name ending in .log, .index or .timeindex",
            path.display()
        );
    };
    if errors > 0 {
        bail!("{}: {errors} error(s) found", path.display());
    }
    Ok(())
}

/// Whether the rest of `reader` is zeros.
fn zeros(reader: &mut impl Read) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut chunk)? {
            0 => return Ok(true),
            n if chunk[..n].iter().any(|&byte| byte != 0) => return Ok(false),
            _ => {}
        }
    }
}

fn printable(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "null".to_owned(),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Reads whole batches one at a time; returns the number of errors found.
fn dump_log(path: &Path, records: bool) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let file_bytes = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut position = 0u64;
    let mut expected_offset: Option<u64> = None;
    let (mut batches, mut record_count, mut errors) = (0u64, 0u64, 0u64);
    let mut buffer = Vec::new();
    while position < file_bytes {
        let mut prefix = [0u8; BATCH_PREFIX_BYTES];
        let available = (file_bytes - position).min(BATCH_PREFIX_BYTES as u64) as usize;
        reader.read_exact(&mut prefix[..available])?;
        let batch_bytes = match batch::peek_prefix(&prefix[..available]) {
            Ok((_, batch_bytes)) => batch_bytes as u64,
            Err(_) if prefix[..available].iter().all(|&byte| byte == 0) && zeros(&mut reader)? => {
                out!(
                    "position {position}: {} bytes of zeros written ahead of the appends (the active segment's runway), not batches: a clean close or the next start cuts them",
                    file_bytes - position
                );
                break;
            }
            Err(error) => {
                out!("position {position}: error: {error}; the rest of the file is not read");
                errors += 1;
                break;
            }
        };
        if position + batch_bytes > file_bytes {
            out!(
                "position {position}: error: batch of {batch_bytes} bytes runs past the end of the file ({} bytes left): a torn write",
                file_bytes - position
            );
            errors += 1;
            break;
        }
        buffer.clear();
        buffer.extend_from_slice(&prefix);
        buffer.resize(batch_bytes as usize, 0);
        reader.read_exact(&mut buffer[BATCH_PREFIX_BYTES..])?;
        match batch::check_stored_records(&buffer) {
            Ok(header) => {
                let base = header.base_offset.0;
                let codec = header.codec().map_or_else(|e| e.to_string(), |c| c.to_string());
                let crcs = if header.version == batch::BATCH_VERSION_2 {
                    "frame crc and crc32c"
                } else {
                    "crc"
                };
                out!(
                    "position {position}: offsets {base} to {} ({} records), {batch_bytes} bytes, format v{}, codec {codec}, timestamps {} to {}, {crcs} {:#010x} ok",
                    header.last_offset().0,
                    header.record_count,
                    header.version,
                    header.first_timestamp.0,
                    header.max_timestamp.0,
                    header.crc,
                );
                if let Some(expected) = expected_offset
                    && expected != base
                {
                    out!(
                        "position {position}: error: batch starts at offset {base}, but the previous one ended before {expected}"
                    );
                    errors += 1;
                }
                expected_offset = Some(header.next_offset().0);
                if records {
                    let view = BatchView::new(&buffer).expect("checked above");
                    for record in view.records().iter().flatten() {
                        let headers: Vec<String> = record
                            .headers()
                            .flatten()
                            .map(|h| {
                                format!("{}={}", String::from_utf8_lossy(h.key), printable(h.value))
                            })
                            .collect();
                        out!(
                            "  offset {} timestamp {} key {} value {} headers [{}]",
                            record.offset.0,
                            record.timestamp.0,
                            printable(record.key),
                            printable(record.value),
                            headers.join(", ")
                        );
                    }
                }
                batches += 1;
                record_count += u64::from(header.record_count);
            }
            Err(error) => {
                out!("position {position}: error: {error}");
                errors += 1;
            }
        }
        position += batch_bytes;
    }
    out!(
        "{batches} batches, {record_count} records, {position} of {file_bytes} bytes read, {errors} error(s)"
    );
    Ok(errors)
}

/// Reads an index file's fixed-size entries. Trailing all-zero entries are the unused part of
/// an active segment's preallocated index.
fn read_entries(path: &Path, entry_bytes: usize) -> anyhow::Result<(Vec<Vec<u8>>, usize, u64)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut errors = 0;
    if bytes.len() % entry_bytes != 0 {
        out!("error: {} bytes is not a whole number of {entry_bytes}-byte entries", bytes.len());
        errors += 1;
    }
    let mut entries: Vec<Vec<u8>> = bytes.chunks_exact(entry_bytes).map(<[u8]>::to_vec).collect();
    let used = entries.iter().rposition(|e| e.iter().any(|&b| b != 0)).map_or(0, |i| i + 1);
    let unused = entries.len() - used;
    entries.truncate(used);
    Ok((entries, unused, errors))
}

fn dump_offset_index(path: &Path, base: Option<u64>) -> anyhow::Result<u64> {
    let (entries, unused, mut errors) = read_entries(path, OFFSET_ENTRY_BYTES)?;
    let mut previous: Option<(u32, u32)> = None;
    for (i, entry) in entries.iter().enumerate() {
        let OffsetEntry { relative_offset: relative, position } =
            OffsetEntry::decode(entry[..].try_into().expect("whole entries"));
        let absolute =
            base.map_or_else(String::new, |b| format!(" (offset {})", b + u64::from(relative)));
        out!("entry {i}: relative offset {relative}{absolute} at position {position}");
        if position == 0 {
            out!("entry {i}: error: position 0 is never indexed (the first batch is implied)");
            errors += 1;
        }
        if let Some((r, p)) = previous
            && (relative <= r || position <= p)
        {
            out!("entry {i}: error: entries must strictly increase in offset and position");
            errors += 1;
        }
        previous = Some((relative, position));
    }
    out!("{} entries, {unused} unused preallocated entries, {errors} error(s)", entries.len());
    Ok(errors)
}

fn dump_time_index(path: &Path, base: Option<u64>) -> anyhow::Result<u64> {
    let (entries, unused, mut errors) = read_entries(path, TIME_ENTRY_BYTES)?;
    let mut previous: Option<(i64, u32)> = None;
    for (i, entry) in entries.iter().enumerate() {
        let TimeEntry { timestamp_ms: timestamp, relative_offset: relative } =
            TimeEntry::decode(entry[..].try_into().expect("whole entries"));
        let time = chrono::DateTime::from_timestamp_millis(timestamp)
            .map_or_else(String::new, |t| {
                format!(" ({})", t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            });
        let absolute =
            base.map_or_else(String::new, |b| format!(" (offset {})", b + u64::from(relative)));
        out!("entry {i}: timestamp {timestamp}{time} at relative offset {relative}{absolute}");
        if let Some((t, r)) = previous
            && (timestamp <= t || relative < r)
        {
            out!("entry {i}: error: timestamps must strictly increase and offsets not decrease");
            errors += 1;
        }
        previous = Some((timestamp, relative));
    }
    out!("{} entries, {unused} unused preallocated entries, {errors} error(s)", entries.len());
    Ok(errors)
}
