//! What the benchmark ran on and with: cores, memory, CPU, kernel, the data directory's file
//! system, and the build. Read from `/proc`; a value that cannot be read is "unknown".

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub kernel: String,
    pub file_system: String,
    pub build: Build,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub spool_version: &'static str,
    /// `release` or `debug`: a debug build's figures say little.
    pub profile: &'static str,
}

impl Machine {
    pub fn describe(data_dir: &Path) -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib().map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0)),
            cpu: cpu_model().unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
            file_system: file_system(data_dir),
            build: Build {
                spool_version: env!("CARGO_PKG_VERSION"),
                profile: if cfg!(debug_assertions) { "debug" } else { "release" },
            },
        }
    }
}

fn memory_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// The file system type and device of the mount holding `dir` (longest matching mount point
/// in `/proc/self/mountinfo`), like "ext4 on /dev/vda".
pub fn file_system(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options ... - fstype source options
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(mount_point), Some(fs_type), Some(source)) =
            (fields.get(4), fields.get(separator + 1), fields.get(separator + 2))
        else {
            continue;
        };
        if dir.starts_with(mount_point)
            && best.as_ref().is_none_or(|(len, _)| mount_point.len() >= *len)
        {
            best = Some((mount_point.len(), format!("{fs_type} on {source}")));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, description)| description)
}

/// The CPU time this process has used, user and system, in seconds (from `/proc/self/stat`,
/// in the kernel's fixed 100 ticks per second).
pub fn cpu_seconds() -> f64 {
    const TICKS_PER_SECOND: f64 = 100.0;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name in parentheses may hold spaces; the fields follow its `)`.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some((user + system) as f64 / TICKS_PER_SECOND)
        })
        .unwrap_or(0.0)
}

/// The resident memory of this process, in bytes (from `/proc/self/statm`).
pub fn resident_bytes() -> u64 {
    let page_bytes = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_bytes)
}
