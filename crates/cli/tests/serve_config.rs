//! `spool serve`'s configuration through the real binary: precedence of flag, environment,
//! file and default; refusal of unknown keys, bad values and unsafe combinations; and a
//! server secured by tokens driven by `spool token` and `spool topic alter`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// `spool ARGS` with no SPOOL_* or RUST_LOG variables but those given.
fn spool(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(SPOOL);
    command.env_clear().args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn refused(output: &Output, message_has: &str) {
    assert!(!output.status.success(), "accepted: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(message_has), "{stderr:?} lacks {message_has:?}");
}

/// The line of `--print-config` output for `key`.
fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    printed.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{key}: {printed}"))
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spool.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\nlog_format = \"json\"\nmetrics = \"127.0.0.1:9001\"\ndata = \"/srv/spool\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let printed = ok(&spool(
        &["serve", "--config", file, "--print-config", "--listen", "127.0.0.1:7003"],
        &[("SPOOL_LISTEN", "127.0.0.1:7002"), ("SPOOL_METRICS", "127.0.0.1:9002")],
    ));
    assert_eq!(line(&printed, "listen"), "listen = \"127.0.0.1:7003\"  # flag");
    assert_eq!(line(&printed, "metrics"), "metrics = \"127.0.0.1:9002\"  # environment");
    assert_eq!(line(&printed, "log_format"), "log_format = \"json\"  # config file");
    assert_eq!(line(&printed, "data"), "data = \"/srv/spool\"  # config file");
    assert_eq!(line(&printed, "log"), "log = \"info,openraft=error\"  # default");
    assert_eq!(line(&printed, "allow_insecure_remote"), "allow_insecure_remote = false  # default");
    assert!(printed.contains("# tokens =  # not set"), "{printed}");

    // RUST_LOG is the log filter's default; SPOOL_LOG (or --log) overrides it.
    let printed = ok(&spool(&["serve", "--print-config"], &[("RUST_LOG", "warn")]));
    assert_eq!(line(&printed, "log"), "log = \"warn\"  # default");
    let printed =
        ok(&spool(&["serve", "--print-config"], &[("RUST_LOG", "warn"), ("SPOOL_LOG", "debug")]));
    assert_eq!(line(&printed, "log"), "log = \"debug\"  # environment");

    // What --print-config prints is itself a config file that gives the same configuration.
    let again = dir.path().join("again.toml");
    let first = ok(&spool(&["serve", "--config", file, "--print-config"], &[]));
    std::fs::write(&again, &first).unwrap();
    let second = ok(&spool(&["serve", "--config", again.to_str().unwrap(), "--print-config"], &[]));
    let values = |printed: &str| {
        printed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  #").next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&first), values(&second));
}

#[test]
fn unknown_keys_and_bad_values_stop_the_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let unknown = write("unknown.toml", "listen = \"127.0.0.1:7070\"\ncolour = \"blue\"\n");
    refused(&spool(&["serve", "--config", &unknown, "--print-config"], &[]), "colour");
    let bad = write("bad.toml", "listen = \"not an address\"\n");
    refused(&spool(&["serve", "--config", &bad, "--print-config"], &[]), "listen");
    let wrong_type = write("type.toml", "allow_insecure_remote = \"yes\"\n");
    refused(&spool(&["serve", "--config", &wrong_type], &[]), "allow_insecure_remote");
    refused(&spool(&["serve", "--config", "/no/such/file.toml"], &[]), "/no/such/file.toml");
    refused(&spool(&["serve", "--print-config"], &[("SPOOL_LOG_FORMAT", "xml")]), "log-format");
    refused(&spool(&["serve", "--print-config", "--listen", "localhost"], &[]), "--listen");
    refused(&spool(&["serve", "--print-config", "--log", "info,=="], &[]), "log");
    refused(
        &spool(&["serve", "--print-config", "--tls-cert", "/c.pem"], &[]),
        "tls_cert is set but tls_key is not",
    );
    refused(
        &spool(&["serve", "--print-config", "--tls-client-ca", "/ca.pem"], &[]),
        "tls_client_ca",
    );
}

#[test]
fn a_non_loopback_address_needs_tls_and_tokens_or_an_explicit_flag() {
    refused(
        &spool(&["serve", "--print-config", "--listen", "0.0.0.0:7070"], &[]),
        "not a loopback address",
    );
    // TLS without tokens is not enough.
    refused(
        &spool(
            &["serve", "--print-config", "--listen", "0.0.0.0:7070"],
            &[("SPOOL_TLS_CERT", "/c.pem"), ("SPOOL_TLS_KEY", "/k.pem")],
        ),
        "not a loopback address",
    );
    let secured = spool(
        &["serve", "--print-config", "--listen", "0.0.0.0:7070", "--tokens", "/t.toml"],
        &[("SPOOL_TLS_CERT", "/c.pem"), ("SPOOL_TLS_KEY", "/k.pem")],
    );
    ok(&secured);
    let accepted = ok(&spool(
        &["serve", "--print-config", "--listen", "0.0.0.0:7070", "--allow-insecure-remote"],
        &[],
    ));
    assert_eq!(line(&accepted, "allow_insecure_remote"), "allow_insecure_remote = true  # flag");
}

struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(data: &Path, tokens: &Path) -> Served {
        let mut child = Command::new(SPOOL)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .arg("--tokens")
            .arg(tokens)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("spool: listening on ") {
                    let _ = address_tx.send(rest.split(',').next().unwrap().to_owned());
                }
            }
        });
        let address = address_rx.recv().expect("the server prints its address");
        Served { child, url: format!("http://{address}") }
    }

    fn spool(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut command = Command::new(SPOOL);
        command.env_clear().env("SPOOL_SERVER", &self.url).args(args);
        if let Some(token) = token {
            command.env("SPOOL_TOKEN", token);
        }
        command.output().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tokens_made_by_spool_token_secure_the_server_and_alter_works_live() {
    let made = ok(&spool(&["token", "create", "operator"], &[]));
    let token = made.lines().next().unwrap().to_owned();
    assert!(token.starts_with("spool_") && token.len() == 6 + 64, "{token}");
    let entry: String = made
        .lines()
        .skip_while(|l| !l.starts_with("[[token]]"))
        .take_while(|l| !l.starts_with("topics"))
        .map(|l| format!("{l}\n"))
        .collect();
    let hashed = Command::new(SPOOL)
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(token.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let digest = ok(&hashed).trim().to_owned();
    assert!(entry.contains(&digest), "{entry}");

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("{entry}topics = {{ \"*\" = [\"administer\"] }}\n")).unwrap();
    let served = Served::start(&dir.path().join("data"), &tokens);

    let anonymous = served.spool(&["topic", "create", "orders"], None);
    refused(&anonymous, "UNAUTHENTICATED");
    ok(&served.spool(&["topic", "create", "orders", "--fsync", "never"], Some(&token)));
    let altered = ok(&served.spool(
        &["topic", "alter", "orders", "--fsync", "interval:50", "--retention-ms", "60000"],
        Some(&token),
    ));
    assert!(altered.contains("fsync=interval:50\tretention_ms=60000"), "{altered}");
    refused(
        &served.spool(&["topic", "alter", "orders", "--segment-bytes", "1"], Some(&token)),
        "INVALID_ARGUMENT",
    );
    let grown = ok(&served.spool(&["topic", "alter", "orders", "--partitions", "3"], Some(&token)));
    assert!(grown.contains("partitions=3"), "{grown}");
    refused(
        &served.spool(&["topic", "alter", "orders", "--partitions", "2"], Some(&token)),
        "never removed",
    );
    // Administer does not include produce.
    let with_line = Command::new(SPOOL)
        .env_clear()
        .env("SPOOL_SERVER", &served.url)
        .env("SPOOL_TOKEN", &token)
        .args(["produce", "orders"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"an event\n")?;
            child.wait_with_output()
        })
        .unwrap();
    refused(&with_line, "PERMISSION_DENIED");
}

/// `spool serve --kafka` serves Kafka clients on the address it logs: an ApiVersions v0
/// request, written by hand, is answered.
#[test]
fn the_kafka_listener_answers_on_the_address_it_logs() {
    use std::io::{Read, Write};

    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (address_tx, address_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kafka = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("Kafka clients at ") {
                kafka = rest.split(',').next().map(str::to_owned);
            }
            if line.starts_with("spool: listening on ") {
                let _ = address_tx.send(kafka.take());
            }
        }
    });
    let address = address_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the server starts")
        .expect("the server logs the Kafka listener's address before it is ready");
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    // Length 10; API key 18 (ApiVersions), version 0, correlation id 7, client id null.
    stream.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff]).unwrap();
    let mut head = [0u8; 14];
    stream.read_exact(&mut head).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(head[4..8], 7i32.to_be_bytes(), "correlation id");
    assert_eq!(head[8..10], 0i16.to_be_bytes(), "error code");
    assert_eq!(head[10..14], 24i32.to_be_bytes(), "APIs served");
}
