//! `spool`: the one binary. `spool serve` runs the server; the other commands are its
//! clients (`topic`, `produce`, `consume`), except `dump` and `verify`, which read files
//! offline.
//!
//! Errors print one line, `spool: ...`, and exit with status 1. Every client command goes
//! through spool-client.

mod client;
mod cluster;
mod config;
mod dump;
mod group;
mod request;
mod serve;
mod token;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use spool_client::Acks;

/// Spool: a durable, log-structured event store.
#[derive(Debug, Parser)]
#[command(name = "spool", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Every setting is a flag, an environment variable or a key of the
    /// --config file (precedence: flag > environment > file > default).
    Serve(config::ServeArgs),
    /// Make bearer tokens for the server's token file.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Create, list, describe or delete topics.
    Topic {
        #[command(flatten)]
        server: ServerArg,
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce each line of standard input as one event.
    Produce {
        #[command(flatten)]
        server: ServerArg,
        topic: String,
        /// The partition to produce to; without it, by the key's hash, or round-robin.
        #[arg(long)]
        partition: Option<u32>,
        /// The key of every event.
        #[arg(long)]
        key: Option<String>,
        /// A header for every event, as NAME=VALUE; repeat for more.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// What to wait for: none (nothing), leader (the append) or all (the sync to disk)
        /// [default: all, or leader on an fsync `never` topic, which refuses all].
        #[arg(long, value_name = "LEVEL")]
        acks: Option<Acks>,
        /// How each batch's records are compressed: none, gzip, snappy, lz4 or zstd (stored
        /// as sent; every consumer decompresses) [default: none].
        #[arg(long, value_name = "CODEC", default_value = "none")]
        compression: spool_client::Codec,
        /// Print nothing on standard error but errors (by default: how many records were
        /// stored, in which partitions and at which offsets).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print events, one line each.
    Consume {
        #[command(flatten)]
        server: ServerArg,
        topic: String,
        /// Only this partition; without it, every partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Where to start: earliest, latest, an offset (without --partition, the same offset
        /// in every partition, each of which must hold it), or an RFC 3339 time.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Keep following the end of the partitions instead of stopping there. A server that
        /// goes away (a restart) is waited for, with a line on standard error: then it
        /// resumes after the last event printed.
        #[arg(long)]
        follow: bool,
        /// `value` prints the value; `json` prints an object with topic, partition, offset,
        /// timestamp, key, headers and value (bytes that are not UTF-8 as {"base64": ...}).
        #[arg(long, value_enum, default_value = "value")]
        format: Format,
        /// Consume as a member of this group: the server assigns its partitions and keeps
        /// its committed offsets (--from then says where to start without one: earliest or
        /// latest).
        #[arg(long, conflicts_with = "partition")]
        group: Option<String>,
        /// With --group: when to commit what was printed.
        #[arg(long, value_enum, default_value = "auto", requires = "group")]
        commit: group::CommitMode,
        /// With --group: the member's session timeout, in milliseconds.
        #[arg(long, default_value_t = 10_000, requires = "group")]
        session_timeout_ms: u32,
    },
    /// A cluster's nodes and replicated partitions; hand partitions back to their preferred
    /// leaders.
    Cluster {
        #[command(flatten)]
        server: ServerArg,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// List, describe, reset or delete consumer groups.
    Group {
        #[command(flatten)]
        server: ServerArg,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Send a request to TOPIC and print the reply's value (request-reply over the log; see
    /// `spool respond`).
    Request {
        #[command(flatten)]
        server: ServerArg,
        topic: String,
        /// The request's value; without it, all of standard input.
        value: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// How long to wait for the reply: 500ms, 5s, 2m.
        #[arg(long, default_value = "30s", value_parser = request::parse_duration)]
        timeout: std::time::Duration,
        /// The topic the reply goes to (it must exist); default TOPIC.replies.
        #[arg(long)]
        reply_topic: Option<String>,
        #[arg(long, default_value_t = 0)]
        reply_partition: u32,
    },
    /// Answer requests to TOPIC as a member of GROUP: each request's value goes to COMMAND's
    /// standard input and its standard output is the reply; a non-zero exit is a reply with
    /// an error. Runs until Ctrl-C.
    Respond {
        #[command(flatten)]
        server: ServerArg,
        topic: String,
        #[arg(long)]
        group: String,
        /// The member's session timeout, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        session_timeout_ms: u32,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Read a segment (.log) or index (.index, .timeindex) file offline and print its
    /// batches or entries, with any CRC or format error found.
    Dump {
        file: PathBuf,
        /// Also print every record of every batch (.log files).
        #[arg(long)]
        records: bool,
    },
    /// Check every batch's CRCs and every index entry under a data directory, offline and
    /// without changing anything; exits with status 1 when it finds damage.
    Verify {
        /// The data directory (or any directory in it, such as one partition's).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Benchmark Spool (a running server, or one in-process), the disk under it, or a peer.
    Bench {
        #[command(subcommand)]
        command: spool_bench::BenchCommand,
    },
}

/// How a client command reaches the server. These flags may also come before the command
/// (`spool --server URL topic list`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
struct ServerArg {
    /// The server's URL; `HOST:PORT` means `http://HOST:PORT`. A cluster's nodes may be
    /// listed, separated by commas: the command goes on through the next when one stops.
    #[arg(long, env = "SPOOL_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
    /// The bearer token to send (better from the environment than on the command line).
    #[arg(long, env = "SPOOL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The CA (PEM) that signed an https:// server's certificate.
    #[arg(long, env = "SPOOL_CA_CERT", value_name = "FILE", global = true)]
    ca_cert: Option<PathBuf>,
    /// The client certificate (PEM) for a server that requires mutual TLS.
    #[arg(long, env = "SPOOL_CLIENT_CERT", value_name = "FILE", global = true)]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SPOOL_CLIENT_KEY", value_name = "FILE", global = true)]
    client_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// How many partitions (1 to 256); a key always lands in the same one.
        #[arg(long, default_value_t = 1, value_parser = parse_partitions)]
        partitions: u32,
        /// always, interval:MS or never.
        #[arg(long, default_value = "always")]
        fsync: String,
        /// Delete segments older than this many milliseconds [default: keep forever].
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Delete old segments while the partition is larger than this [default: no limit].
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Roll to a new segment at this size [default: the server's, 128 MiB].
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// The codec batches are stored in: producer (each as sent) or none, gzip, snappy,
        /// lz4, zstd (a batch sent in another codec is re-encoded when it arrives).
        #[arg(long, value_name = "CODEC", default_value = "producer")]
        compression: spool_client::TopicCompression,
        /// How many nodes hold each partition [default: 3 on a cluster of three nodes or
        /// more, else 1]; every node still takes each partition's writes and reads.
        #[arg(long, value_name = "N")]
        replication_factor: Option<u32>,
    },
    /// List topics.
    List,
    /// Show a topic's configuration and partitions.
    Describe { name: String },
    /// Delete a topic and all its events.
    Delete { name: String },
    /// Change a live topic's settings; each takes effect without a restart.
    Alter {
        name: String,
        /// always, interval:MS or never.
        #[arg(long)]
        fsync: Option<String>,
        /// Delete segments older than this; 0 removes the limit.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Delete old segments while the partition stays this large; 0 removes the limit.
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Roll to a new segment at this size.
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// The codec batches produced from now on are stored in: producer, none, gzip,
        /// snappy, lz4 or zstd (stored batches keep theirs).
        #[arg(long, value_name = "CODEC")]
        compression: Option<spool_client::TopicCompression>,
        /// Grow the topic to this many partitions (never fewer): records keep theirs, and a
        /// key's later records may go to another partition.
        #[arg(long, value_parser = parse_partitions)]
        partitions: Option<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Value,
    Json,
}

/// A partition count: the server checks the upper bound; 0 is never a count.
fn parse_partitions(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("a topic has at least one partition".to_owned()),
        Ok(count) => Ok(count),
        Err(error) => Err(format!("not a partition count: {error}")),
    }
}

/// The connection flags a client command also takes before its name.
const CONNECTION_FLAGS: [&str; 5] =
    ["--server", "--token", "--ca-cert", "--client-cert", "--client-key"];
/// The commands that take them.
const CLIENT_COMMANDS: [&str; 6] = ["topic", "produce", "consume", "group", "request", "respond"];

/// Moves connection flags written before a client command's name to just after it, where
/// clap reads them: `spool --server URL topic list` is `spool topic --server URL list`.
fn connection_flags_after_command(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut leading = Vec::new();
    let mut index = 1;
    while let Some(arg) = args.get(index).and_then(|a| a.to_str()) {
        let flag = arg.split_once('=').map_or(arg, |(flag, _)| flag);
        if !CONNECTION_FLAGS.contains(&flag) {
            break;
        }
        let takes_next = !arg.contains('=');
        let end = (index + 1 + usize::from(takes_next)).min(args.len());
        leading.extend_from_slice(&args[index..end]);
        index = end;
    }
    let command = args.get(index).and_then(|a| a.to_str());
    if leading.is_empty() || !command.is_some_and(|c| CLIENT_COMMANDS.contains(&c)) {
        return args;
    }
    let mut moved = vec![args[0].clone(), args[index].clone()];
    moved.extend(leading);
    moved.extend_from_slice(&args[index + 1..]);
    moved
}

/// An error and its causes on one line, each message once (a cause's text is often part of
/// the message that wraps it already).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (kill, systemd, container runtimes).
pub(crate) async fn stop_requested() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM; only SIGINT stops this command");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Writes a line to standard output; when the reader went away (`spool topic list | head -1`)
/// the command has nothing left to do and ends quietly.
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("spool: writing to standard output failed: {error}");
        std::process::exit(1);
    }
}

/// `println!` that ends the command quietly when standard output's reader went away.
macro_rules! out {
    ($($arg:tt)*) => { $crate::print_line(format_args!($($arg)*)) };
}
pub(crate) use out;

fn main() -> ExitCode {
    let args = connection_flags_after_command(std::env::args_os().collect());
    let matches = <Cli as clap::CommandFactory>::command().get_matches_from(args);
    let cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let outcome = match cli.command {
        Command::Dump { file, records } => dump::run(&file, records),
        Command::Verify { data } => verify::run(&data),
        Command::Bench { command } => block_on(async move { Ok(spool_bench::run(command).await?) }),
        Command::Serve(args) => {
            let serve_matches = matches.subcommand_matches("serve").expect("serve was parsed");
            let print_config = args.print_config;
            config::ServeConfig::resolve(args, serve_matches).and_then(|config| {
                if print_config {
                    print!("{}", config.to_toml());
                    return Ok(());
                }
                block_on(async move { serve::run(config).await })
            })
        }
        Command::Token { command } => token::run(command),
        Command::Topic { server, command } => {
            block_on(async move { client::topic(&server, command).await })
        }
        Command::Produce { server, topic, partition, key, headers, acks, compression, quiet } => {
            let options =
                client::ProduceOptions { topic, partition, key, headers, acks, compression, quiet };
            block_on(async move { client::produce(&server, options).await })
        }
        Command::Consume {
            server,
            topic,
            partition,
            from,
            count,
            follow,
            format,
            group: Some(group),
            commit,
            session_timeout_ms,
        } => {
            let _ = partition;
            let options = group::GroupConsumeOptions {
                topic,
                group,
                from,
                count,
                follow,
                format,
                commit,
                session_timeout_ms,
            };
            block_on(async move { group::consume(&server, options).await })
        }
        Command::Consume { server, topic, partition, from, count, follow, format, .. } => {
            let options = client::ConsumeOptions { topic, partition, from, count, follow, format };
            block_on(async move { client::consume(&server, options).await })
        }
        Command::Cluster { server, command } => {
            block_on(async move { cluster::cluster(&server, command).await })
        }
        Command::Group { server, command } => {
            block_on(async move { group::group(&server, command).await })
        }
        Command::Request { server, topic, value, key, timeout, reply_topic, reply_partition } => {
            let options = request::RequestOptions {
                topic,
                value,
                key,
                timeout,
                reply_topic,
                reply_partition,
            };
            block_on(async move { request::request(&server, options).await })
        }
        Command::Respond { server, topic, group, session_timeout_ms, command } => {
            let options = request::RespondOptions { topic, group, command, session_timeout_ms };
            block_on(async move { request::respond(&server, options).await })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spool: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(command)
}
