//! `spool serve` as a child process on port 0, and the `spool` command run against it: the
//! harness every test of the real binary shares.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// How long a server may take to print its address; only a guard against a hung start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `spool serve`, killed on drop.
pub struct Served {
    child: Child,
    /// The server's pid when `child` is a wrapper (strace) that runs it.
    wrapped: Option<u32>,
    pub url: String,
    /// Every line the server wrote to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
    /// The thread that reads them; it ends when the server closes its stderr.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// `spool serve` on a free loopback port over `data`.
    pub fn start(data: &Path) -> Served {
        Served::spawn(serve_command(data))
    }

    /// Starts `command`, which runs `spool serve` (possibly under a wrapper such as strace),
    /// and waits for the line that names its address: it comes once recovery is done and the
    /// server answers.
    pub fn spawn(mut command: Command) -> Served {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            // Keep reading after the address, so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("spool: listening on ") {
                    let _ = address_tx.send(rest.split(',').next().unwrap().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let Ok(address) = address_rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            panic!("the server printed no address; its log:\n{}", log.lock().unwrap().join("\n"));
        };
        Served { child, wrapped: None, url: format!("http://{address}"), log, reader: Some(reader) }
    }

    /// [`Served::spawn`] for a `command` that runs the server as its only child process (a
    /// wrapper such as strace); signals then go to the server itself.
    pub fn spawn_wrapped(command: Command) -> Served {
        let mut served = Served::spawn(command);
        let pid = served.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .expect("the wrapper's children are listed in /proc");
        let server = children.split_whitespace().next().expect("the wrapper runs the server");
        served.wrapped = Some(server.parse().unwrap());
        served
    }

    /// `spool ARGS` against this server, with `stdin` as its input.
    pub fn spool(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(SPOOL)
            .args(args)
            .env("SPOOL_SERVER", &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A command that fails before it reads its input closes the pipe first: that is
        // its answer to check, not a failure to write.
        match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.unwrap(),
        }
        child.wait_with_output().unwrap()
    }

    /// `spool ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let output = self.spool(args, stdin);
        assert!(
            output.status.success(),
            "spool {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The server's stderr so far, one string.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL to a wrapped server: killing its wrapper alone could leave it running.
    fn kill_wrapped(&mut self) {
        if let Some(pid) = self.wrapped.take() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }

    /// SIGTERM, as a service manager would stop it; returns whether it exited 0.
    pub fn terminate(self) -> bool {
        self.terminate_and_log().0.success()
    }

    /// SIGTERM; returns how it exited, and all it wrote to stderr.
    pub fn terminate_and_log(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.wrapped.take().unwrap_or(self.child.id()).to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }

    /// SIGKILL: the process ends at once, with no chance to flush or sync anything.
    pub fn kill(mut self) {
        self.kill_wrapped();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill_wrapped();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spool serve` on port 0 over `data`.
pub fn serve_command(data: &Path) -> Command {
    let mut command = Command::new(SPOOL);
    command.env("RUST_LOG", "warn").args(serve_args(data));
    command
}

/// The arguments after `spool`, for a wrapper (such as strace) that runs the binary itself.
pub fn serve_args(data: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["serve", "--listen", "127.0.0.1:0", "--data"].map(Into::into).to_vec();
    args.push(data.into());
    args
}

/// The stdout of a command that must have succeeded.
pub fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}
