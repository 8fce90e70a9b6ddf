//! The server `spool bench partitions` measures: `spool serve` as a child process on
//! `127.0.0.1:0`, started, stopped with SIGTERM or SIGKILL and waited for; and what
//! `/proc/PID` and its data directory say it holds ([`Resources`]).
//!
//! Readiness is the line `spool: listening on ADDRESS, ...` the server prints on standard
//! error once recovery is done and health says SERVING (the CLI's tests wait for it the
//! same way). The child gets no `SPOOL_*` setting from the environment (a token file or a
//! config file meant for another server), and logs at `warn`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::BenchError;

/// How long a server may take to serve (recovery included) or to stop after SIGTERM; only a
/// guard against a hang.
const START_TIMEOUT: Duration = Duration::from_secs(600);
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// The last lines of the server's log kept, to show when it fails.
const LOG_LINES_KEPT: usize = 40;

/// What the server holds at one moment, idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Resources {
    /// The server's resident memory (`VmRSS` in `/proc/PID/status`).
    pub rss_bytes: u64,
    /// Entries of `/proc/PID/fd`: files, directories, sockets and pipes.
    pub open_files: u64,
    /// Lines of `/proc/PID/maps`: mapped files (index files among them), the heap's and
    /// the allocator's regions, and two per thread (its stack and guard page).
    pub memory_maps: u64,
    /// Those of them that map a file (their path starts with `/`): the binary and its
    /// libraries, index files, segments being read. Unlike the others, these do not come
    /// and go with threads.
    pub file_maps: u64,
    /// The server's threads (`Threads` in `/proc/PID/status`): the runtime's blocking
    /// threads that opened or closed logs stay about 10 s after their last task.
    pub threads: u64,
    /// Bytes allocated to every file and directory under the data directory.
    pub disk_bytes: u64,
}

/// `spool serve` as a child process, killed on drop.
pub(crate) struct Server {
    /// Taken while the process is waited for.
    child: Option<Child>,
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    data: PathBuf,
    /// The last lines the server wrote to its standard error.
    log: Arc<Mutex<VecDeque<String>>>,
    /// Becomes true when the server closes its standard error: it exited.
    exited: watch::Receiver<bool>,
}

impl Server {
    /// Starts `spool serve` on a free loopback port over `data`, and waits for the line that
    /// names its address; returns the server and the time from spawning it to that line.
    pub(crate) async fn start(spool: &Path, data: &Path) -> Result<(Server, Duration), BenchError> {
        let mut command = Command::new(spool);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SPOOL_") {
                command.env_remove(name);
            }
        }
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--log-format", "human"])
            .arg("--data")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {} serve", spool.display()), e))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES_KEPT)));
        let (address_tx, address_rx) = oneshot::channel();
        let (exited_tx, exited) = watch::channel(false);
        let lines = log.clone();
        std::thread::spawn(move || {
            // Keep reading after the address, so the server never blocks on a full pipe.
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(rest) = line.strip_prefix("spool: listening on ")
                    && let Some(tx) = address_tx.take()
                {
                    let address = rest.split(',').next().unwrap_or_default().to_owned();
                    let _ = tx.send((address, Instant::now()));
                }
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if lines.len() == LOG_LINES_KEPT {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
            exited_tx.send_replace(true);
        });
        let pid = child.id();
        let mut server = Server {
            child: Some(child),
            pid,
            url: String::new(),
            data: data.to_owned(),
            log,
            exited,
        };
        match tokio::time::timeout(START_TIMEOUT, address_rx).await {
            Ok(Ok((address, serving))) => {
                server.url = format!("http://{address}");
                Ok((server, serving - started))
            }
            Ok(Err(_)) => {
                let error = BenchError::Server("it stopped before serving".into());
                Err(server.explain(error).await)
            }
            Err(_) => Err(BenchError::Timeout(format!(
                "the server did not serve within {} s; its last log lines:\n{}",
                START_TIMEOUT.as_secs(),
                server.log_tail()
            ))),
        }
    }

    /// Runs `work`, unless the server exits first: then `work`'s requests would only fail
    /// to connect, and the exit is the reason.
    pub(crate) async fn when_alive<T>(
        &self,
        work: impl Future<Output = Result<T, BenchError>>,
    ) -> Result<T, BenchError> {
        let mut exited = self.exited.clone();
        tokio::select! {
            done = work => done,
            _ = exited.wait_for(|exited| *exited) => Err(BenchError::Server("it exited".into())),
        }
    }

    /// `error`, with the server's exit status and last log lines if it has exited.
    pub(crate) async fn explain(mut self, error: BenchError) -> BenchError {
        if !*self.exited.borrow() || self.child.is_none() {
            // Still running: the error is the workload's.
            return error;
        }
        match self.wait().await {
            Ok(status) => BenchError::Server(format!(
                "{error}; the server exited ({status}); its last log lines:\n{}",
                self.log_tail()
            )),
            Err(waiting) => BenchError::Server(format!("{error}; {waiting}")),
        }
    }

    fn log_tail(&self) -> String {
        let lines = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    fn proc_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{name}", self.pid))
    }

    /// The server's figures now, and its data directory's.
    pub(crate) fn resources(&self) -> Result<Resources, BenchError> {
        let read = |name: &str| {
            let path = self.proc_path(name);
            std::fs::read_to_string(&path).map_err(|e| {
                BenchError::io(format!("reading {} (Linux's /proc)", path.display()), e)
            })
        };
        let fd = self.proc_path("fd");
        let open_files = std::fs::read_dir(&fd)
            .map_err(|e| BenchError::io(format!("listing {}", fd.display()), e))?
            .count() as u64;
        let status = read("status")?;
        let maps = read("maps")?;
        Ok(Resources {
            rss_bytes: status_number(&status, "VmRSS:").map_or(0, |kib| kib * 1024),
            open_files,
            memory_maps: maps.lines().count() as u64,
            file_maps: file_maps(&maps),
            threads: status_number(&status, "Threads:").unwrap_or(0),
            disk_bytes: allocated_bytes(&self.data)?,
        })
    }

    /// The soft open-file limit the server runs with (it raises it to the hard one).
    pub(crate) fn open_files_max(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(self.proc_path("limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
    }

    /// SIGTERM, as a service manager would stop it; the time until it exited, which it must
    /// do cleanly.
    pub(crate) async fn terminate(mut self) -> Result<Duration, BenchError> {
        let started = Instant::now();
        // SAFETY: kill only sends a signal. The pid is our child's, not yet waited for, so
        // it cannot have been reused.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            let error = std::io::Error::last_os_error();
            return Err(BenchError::io("sending SIGTERM to the server".into(), error));
        }
        let status = self.wait().await?;
        let stopped = started.elapsed();
        if !status.success() {
            return Err(BenchError::Server(format!(
                "after SIGTERM it exited with {status}; its last log lines:\n{}",
                self.log_tail()
            )));
        }
        Ok(stopped)
    }

    /// SIGKILL: the process ends at once, with no chance to sync or close anything.
    pub(crate) async fn kill(mut self) -> Result<(), BenchError> {
        if let Some(child) = self.child.as_mut() {
            child.kill().map_err(|e| BenchError::io("killing the server".into(), e))?;
        }
        self.wait().await.map(drop)
    }

    /// Waits for the process to exit, at most [`STOP_TIMEOUT`] (then kills it).
    async fn wait(&mut self) -> Result<ExitStatus, BenchError> {
        let mut child = self.child.take().expect("running");
        let mut waiting = tokio::task::spawn_blocking(move || child.wait());
        let waited = match tokio::time::timeout(STOP_TIMEOUT, &mut waiting).await {
            Ok(waited) => waited,
            Err(_) => {
                // SAFETY: as in `terminate`: the child is not yet waited for.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                let _ = waiting.await;
                return Err(BenchError::Timeout(format!(
                    "the server did not exit within {} s",
                    STOP_TIMEOUT.as_secs()
                )));
            }
        };
        waited
            .map_err(|e| BenchError::Server(format!("waiting for the server: {e}")))?
            .map_err(|e| BenchError::io("waiting for the server".into(), e))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The number after `field` (`VmRSS:`, in KiB; `Threads:`) in a `/proc/PID/status`.
fn status_number(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// The lines of a `/proc/PID/maps` that map a file: a path (from `/`) in the sixth field.
fn file_maps(maps: &str) -> u64 {
    let maps_file =
        |line: &&str| line.split_whitespace().nth(5).is_some_and(|p| p.starts_with('/'));
    maps.lines().filter(maps_file).count() as u64
}

/// The bytes allocated to `dir` and everything under it (`st_blocks` × 512), never following
/// a symbolic link.
fn allocated_bytes(dir: &Path) -> Result<u64, BenchError> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = match std::fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BenchError::io(format!("reading {}", path.display()), e)),
        };
        bytes += metadata.blocks() * 512;
        if metadata.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| BenchError::io(format!("listing {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| BenchError::io(format!("listing {}", path.display()), e))?;
                pending.push(entry.path());
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_threads_are_read_from_proc_status() {
        let status = "Name:\tspool\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(status_number(status, "VmRSS:"), Some(12345));
        assert_eq!(status_number(status, "Threads:"), Some(3));
        assert_eq!(status_number("Name:\tspool\n", "VmRSS:"), None);
    }

    #[test]
    fn file_maps_are_the_maps_with_a_path() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:00 1234    /usr/bin/spool
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f0000100000-7f0000101000 r--s 00000000 fd:00 99      /d/topics/t/0/00000000000000000000.index
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0       [stack]
";
        assert_eq!(file_maps(maps), 2);
        assert_eq!(maps.lines().count(), 4);
    }

    #[test]
    fn allocated_bytes_count_blocks_of_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let empty = allocated_bytes(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), vec![1u8; 10_000]).unwrap();
        // A sparse file: a megabyte long, nothing allocated.
        std::fs::File::create(dir.path().join("sparse")).unwrap().set_len(1 << 20).unwrap();
        let filled = allocated_bytes(dir.path()).unwrap();
        // 10,000 bytes take at least three 4 KiB blocks; the sparse file adds none of its MiB.
        assert!(filled >= empty + 12 * 1024, "{empty} -> {filled}");
        assert!(filled < empty + (1 << 20), "{empty} -> {filled}");
    }
}
