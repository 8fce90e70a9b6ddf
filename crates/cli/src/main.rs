//! `spool`: the one binary. `spool serve` runs the server; the other commands are its
//! clients (`topic`, `produce`, `consume`), except `dump`, which reads files offline.
//!
//! Errors print one line, `spool: ...`, and exit with status 1.

mod client;
mod dump;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Spool: a durable, log-structured event store.
#[derive(Debug, Parser)]
#[command(name = "spool", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Where topics are stored.
        #[arg(long, env = "SPOOL_DATA", default_value = "./data")]
        data: PathBuf,
        /// The address to listen on (port 0 picks a free port).
        #[arg(long, env = "SPOOL_LISTEN", default_value = "127.0.0.1:7070")]
        listen: String,
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
        /// What to wait for: nothing, the append, or the sync to disk.
        #[arg(long, value_enum)]
        acks: Option<AcksArg>,
    },
    /// Print events, one line each.
    Consume {
        #[command(flatten)]
        server: ServerArg,
        topic: String,
        /// Only this partition; without it, every partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Where to start: earliest, latest, an offset, or an RFC 3339 time.
        #[arg(long, default_value = "earliest")]
        from: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Keep following the end of the partitions instead of stopping there.
        #[arg(long)]
        follow: bool,
        /// `value` prints the value; `json` prints an object with topic, partition, offset,
        /// timestamp, key, headers and value (bytes that are not UTF-8 as {"base64": ...}).
        #[arg(long, value_enum, default_value = "value")]
        format: Format,
    },
    /// Read a segment (.log) or index (.index, .timeindex) file offline and print its
    /// batches or entries, with any CRC or format error found.
    Dump {
        file: PathBuf,
        /// Also print every record of every batch (.log files).
        #[arg(long)]
        records: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServerArg {
    /// The server's URL.
    #[arg(long, env = "SPOOL_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    server: String,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// always, interval:MS or never.
        #[arg(long, default_value = "always")]
        fsync: String,
        #[arg(long)]
        retention_ms: Option<u64>,
        #[arg(long)]
        retention_bytes: Option<u64>,
        #[arg(long)]
        segment_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Show a topic's configuration and partitions.
    Describe { name: String },
    /// Delete a topic and all its events.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Value,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Dump { file, records } => dump::run(&file, records),
        Command::Serve { data, listen } => {
            block_on(async move { serve::run(&data, &listen).await })
        }
        Command::Topic { server, command } => {
            block_on(async move { client::topic(&server.server, command).await })
        }
        Command::Produce { server, topic, partition, key, headers, acks } => {
            let options = client::ProduceOptions { topic, partition, key, headers, acks };
            block_on(async move { client::produce(&server.server, options).await })
        }
        Command::Consume { server, topic, partition, from, count, follow, format } => {
            let options = client::ConsumeOptions { topic, partition, from, count, follow, format };
            block_on(async move { client::consume(&server.server, options).await })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spool: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(command)
}
