//! `spool consume TOPIC --group G` (a group member that prints what it is given) and
//! `spool group list|describe|reset|delete`.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use spool_client::{
    GroupConfig, GroupEvent, GroupInfo, GroupRecord, Header, OffsetReset, Reconnect,
    ReconnectEvent, StartAt, TopicPartition,
};

use crate::client::{
    Printed, Written, connect, parse_from, report_reconnect, server_url, write_record, written,
};
use crate::{Format, ServerArg, out};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List every group: those with members and those with committed offsets only (for
    /// these, `topics` are the topics they committed offsets for).
    List,
    /// Show a group's members, assignments, and per partition the committed offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets for every partition of a topic, or for one. Refused
    /// while the group has members.
    Reset {
        group: String,
        #[arg(long)]
        topic: String,
        /// Only this partition; the others keep their committed offsets.
        #[arg(long)]
        partition: Option<u32>,
        /// earliest, latest, an offset, or an RFC 3339 time.
        #[arg(long)]
        to: String,
    },
    /// Delete a group: forget its committed offsets, for good. Refused while the group has
    /// members. Prints the offsets it had, to reset a new group to them if needed.
    Delete {
        group: String,
        /// Only the group's offsets of this topic (the group keeps the others); refused while
        /// a member consumes the topic.
        #[arg(long)]
        topic: Option<String>,
        /// With --topic: only this partition's offset.
        #[arg(long, requires = "topic")]
        partition: Option<u32>,
    },
}

/// When `spool consume --group` commits what it printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CommitMode {
    /// After every message it prints (and when partitions are taken away, and at the end).
    Auto,
    /// Only when partitions are taken away and when it stops (after --count events, at the
    /// end without --follow, or on Ctrl-C).
    OnExit,
}

pub(crate) struct GroupConsumeOptions {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) from: String,
    pub(crate) count: Option<u64>,
    pub(crate) follow: bool,
    pub(crate) format: Format,
    pub(crate) commit: CommitMode,
    pub(crate) session_timeout_ms: u32,
}

fn partition_name(p: &TopicPartition) -> String {
    format!("{}/{}", p.topic, p.partition)
}

/// A group member's record as the printing code takes it.
fn shown<'a>(topic: &'a str, partition: u32, record: &'a GroupRecord) -> Printed<'a> {
    Printed {
        topic,
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: record
            .headers
            .iter()
            .map(|(key, value)| Header::new(key, value.as_deref()))
            .collect(),
    }
}

/// Prints what the group gives this member until --count, the end (without --follow),
/// Ctrl-C or SIGTERM; then commits what was printed and leaves.
pub(crate) async fn consume(
    server: &ServerArg,
    options: GroupConsumeOptions,
) -> anyhow::Result<()> {
    let reset = match parse_from("--from", &options.from)? {
        StartAt::Earliest => OffsetReset::Earliest,
        StartAt::Latest => OffsetReset::Latest,
        _ => bail!(
            "--from with --group is where to start without a committed offset: earliest or latest"
        ),
    };
    let config = GroupConfig {
        session_timeout: Duration::from_millis(u64::from(options.session_timeout_ms)),
        reset,
        commit: match options.commit {
            CommitMode::Auto => spool_client::CommitMode::Auto,
            CommitMode::OnExit => spool_client::CommitMode::Explicit,
        },
        ..GroupConfig::new(&options.group, &[&options.topic])
    };
    let client = connect(server).await?;
    let mut consumer = client.group_consumer(config).await?;
    eprintln!("spool: joined group {} as member {}", options.group, consumer.member_id());
    let mut member_id = consumer.member_id().to_owned();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // SIGTERM (kill, systemd, container runtimes) stops the member as Ctrl-C does: it
    // commits what was printed and leaves the group.
    let interrupted = crate::stop_requested();
    tokio::pin!(interrupted);
    // With --follow, a lost server is waited for: the member joins again and skips what it
    // printed before (committing past it), so nothing is printed twice.
    let reconnect = Reconnect::default();
    let url = server_url(&server.server);
    let report = |event: &ReconnectEvent| {
        let resuming = match event {
            ReconnectEvent::Waiting { resume_at, .. } if !resume_at.is_empty() => {
                let at: Vec<String> = resume_at
                    .iter()
                    .map(|(p, offset)| format!("{} at offset {offset}", partition_name(p)))
                    .collect();
                format!("rejoining group {}, resuming {}", options.group, at.join(", "))
            }
            ReconnectEvent::Waiting { .. } => {
                format!("rejoining group {} at its committed offsets", options.group)
            }
            ReconnectEvent::Reconnected { .. } => format!("rejoined group {}", options.group),
        };
        report_reconnect(&url, &resuming, event);
    };
    loop {
        if options.count.is_some_and(|count| printed >= count)
            || (!options.follow && consumer.caught_up())
        {
            break;
        }
        let polled = async {
            match options.follow {
                true => consumer.poll_reconnecting(&reconnect, report).await,
                false => consumer.poll().await,
            }
        };
        let event = tokio::select! {
            event = polled => event?,
            _ = &mut interrupted => break,
        };
        // A member that rejoined as itself keeps its partitions; one the server no longer
        // counted is a new member of the group.
        if consumer.member_id() != member_id {
            eprintln!(
                "spool: joined group {} as new member {} (the server no longer counted member {member_id})",
                options.group,
                consumer.member_id()
            );
            member_id = consumer.member_id().to_owned();
        }
        let records = match event {
            GroupEvent::Assigned(assignment) => {
                let owned: Vec<String> = assignment.owned.iter().map(partition_name).collect();
                eprintln!(
                    "spool: generation {}: consuming [{}]",
                    assignment.generation,
                    owned.join(", ")
                );
                continue;
            }
            GroupEvent::Records(records) => records,
        };
        for record in &records.records {
            if options.count.is_some_and(|count| printed >= count) {
                // Only what was printed counts as processed.
                consumer.set_position(&records.topic, records.partition, record.offset)?;
                break;
            }
            let shown = shown(&records.topic, records.partition, record);
            match written(write_record(&mut out, options.format, &shown))? {
                Written::Yes => printed += 1,
                Written::ReaderGone => return Ok(()),
            }
        }
        if let Written::ReaderGone = written(out.flush())? {
            return Ok(());
        }
    }
    Ok(consumer.close().await?)
}

fn print_group(group: &GroupInfo) {
    let reset = match group.reset {
        Some(OffsetReset::Latest) => "latest",
        Some(OffsetReset::Earliest) => "earliest",
        None => "-",
    };
    out!(
        "{}\tstate={}\tgeneration={}\tmembers={}\ttopics={}\treset={}",
        group.name,
        group.state,
        group.generation,
        group.members.len(),
        if group.topics.is_empty() { "-".to_owned() } else { group.topics.join(",") },
        reset,
    );
}

pub(crate) async fn group(server: &ServerArg, command: GroupCommand) -> anyhow::Result<()> {
    let client = connect(server).await?;
    match command {
        GroupCommand::List => {
            for group in &client.list_groups().await? {
                print_group(group);
            }
        }
        GroupCommand::Describe { group } => {
            let group = client.describe_group(&group).await?;
            print_group(&group);
            for member in &group.members {
                let owned: Vec<String> = member.owned.iter().map(partition_name).collect();
                let revoking: Vec<String> = member.revoking.iter().map(partition_name).collect();
                let revoking = match revoking.is_empty() {
                    true => String::new(),
                    false => format!("\trevoking=[{}]", revoking.join(",")),
                };
                let awaiting = match member.awaiting_rejoin {
                    true => "\tawaiting_rejoin (kept for its session timeout)",
                    false => "",
                };
                out!(
                    "  member {}\tsession_timeout_ms={}\towned=[{}]{revoking}{awaiting}",
                    member.member_id,
                    member.session_timeout_ms,
                    owned.join(",")
                );
            }
            let optional = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            for p in &group.partitions {
                out!(
                    "  partition {}/{}\towner={}{}\tcommitted={}\tlog_end={}\tlag={}",
                    p.topic,
                    p.partition,
                    p.owner.as_deref().unwrap_or("-"),
                    if p.revoking { " (revoking)" } else { "" },
                    optional(p.committed_offset),
                    optional(p.log_end_offset),
                    optional(p.lag),
                );
            }
        }
        GroupCommand::Reset { group, topic, partition, to } => {
            let to = parse_from("--to", &to)?;
            let reset = match partition {
                Some(partition) => {
                    client.reset_group_partition(&group, &topic, partition, to).await?
                }
                None => client.reset_group(&group, &topic, to).await?,
            };
            for (partition, offset) in reset {
                out!("{group}\t{}/{}\tcommitted={offset}", partition.topic, partition.partition);
            }
        }
        GroupCommand::Delete { group, topic, partition } => {
            let forgotten = match &topic {
                Some(topic) => {
                    let forgotten = client.delete_group_offsets(&group, topic, partition).await?;
                    out!("deleted {group}'s offsets of {topic}");
                    forgotten
                }
                None => {
                    let forgotten = client.delete_group(&group).await?;
                    out!("deleted {group}");
                    forgotten
                }
            };
            for (partition, offset) in forgotten {
                out!("  partition {}/{}\tcommitted={offset}", partition.topic, partition.partition);
            }
        }
    }
    Ok(())
}
