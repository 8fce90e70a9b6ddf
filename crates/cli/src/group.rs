//! `spool consume TOPIC --group G` (a group member that prints what it is given) and
//! `spool group list|describe|reset`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use spool_client::{GroupConfig, GroupEvent, GroupRecord, OffsetReset, TopicPartition};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::{
    ConsumedRecord, DescribeGroupRequest, GroupDescription, GroupState, Header, ListGroupsRequest,
    OffsetReset as WireReset, ResetGroupRequest, StartPosition,
};

use crate::client::{connect, parse_from, status_error, write_record};
use crate::{Format, ServerArg};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List every group: those with members and those with committed offsets only.
    List,
    /// Show a group's members, assignments, and per partition the committed offset and lag.
    Describe { group: String },
    /// Move a group's committed offsets for every partition of a topic. Refused while the
    /// group has members.
    Reset {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or an RFC 3339 time.
        #[arg(long)]
        to: String,
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

fn wire_partition_name(p: &spool_proto::v1::TopicPartition) -> String {
    format!("{}/{}", p.topic, p.partition)
}

/// A consumed record as the printing code takes it (its bytes are shared, not copied).
fn wire_record(record: &GroupRecord) -> ConsumedRecord {
    ConsumedRecord {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record
            .headers
            .iter()
            .map(|(key, value)| Header { key: key.clone(), value: value.clone() })
            .collect(),
    }
}

/// Prints what the group gives this member until --count, the end (without --follow) or
/// Ctrl-C; then commits what was printed and leaves.
pub(crate) async fn consume(
    server: &ServerArg,
    options: GroupConsumeOptions,
) -> anyhow::Result<()> {
    let reset = match parse_from(&options.from)? {
        Position::Earliest(_) => OffsetReset::Earliest,
        Position::Latest(_) => OffsetReset::Latest,
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
    let client = crate::request::client(server).await?;
    let mut consumer = client.group_consumer(config).await?;
    eprintln!("spool: joined group {} as member {}", options.group, consumer.member_id());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if options.count.is_some_and(|count| printed >= count)
            || (!options.follow && consumer.caught_up())
        {
            break;
        }
        let event = tokio::select! {
            event = consumer.poll() => event?,
            _ = &mut interrupted => break,
        };
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
            let wire = wire_record(record);
            match write_record(&mut out, options.format, &records.topic, records.partition, &wire) {
                Ok(()) => printed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => return Err(error).context("writing to standard output failed"),
            }
        }
        match out.flush() {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error).context("writing to standard output failed"),
        }
    }
    Ok(consumer.close().await?)
}

fn state_name(state: i32) -> &'static str {
    match GroupState::try_from(state) {
        Ok(GroupState::Empty) => "EMPTY",
        Ok(GroupState::Rebalancing) => "REBALANCING",
        Ok(GroupState::Stable) => "STABLE",
        Ok(GroupState::Unspecified) | Err(_) => "UNKNOWN",
    }
}

fn print_group(group: &GroupDescription) {
    let reset = match WireReset::try_from(group.reset) {
        Ok(WireReset::Latest) => "latest",
        Ok(WireReset::Earliest) => "earliest",
        _ => "-",
    };
    println!(
        "{}\tstate={}\tgeneration={}\tmembers={}\ttopics={}\treset={}",
        group.name,
        state_name(group.state),
        group.generation,
        group.members.len(),
        if group.topics.is_empty() { "-".to_owned() } else { group.topics.join(",") },
        reset,
    );
}

pub(crate) async fn group(server: &ServerArg, command: GroupCommand) -> anyhow::Result<()> {
    let mut client = GroupServiceClient::new(connect(server).await?);
    match command {
        GroupCommand::List => {
            let listed =
                client.list_groups(ListGroupsRequest {}).await.map_err(status_error)?.into_inner();
            for group in &listed.groups {
                print_group(group);
            }
        }
        GroupCommand::Describe { group } => {
            let described = client
                .describe_group(DescribeGroupRequest { group })
                .await
                .map_err(status_error)?
                .into_inner();
            let Some(group) = described.group else {
                bail!("the server sent an empty description")
            };
            print_group(&group);
            for member in &group.members {
                let owned: Vec<String> = member.owned.iter().map(wire_partition_name).collect();
                let revoking: Vec<String> =
                    member.revoking.iter().map(wire_partition_name).collect();
                print!(
                    "  member {}\tsession_timeout_ms={}\towned=[{}]",
                    member.member_id,
                    member.session_timeout_ms,
                    owned.join(",")
                );
                if revoking.is_empty() {
                    println!()
                } else {
                    println!("\trevoking=[{}]", revoking.join(","))
                }
            }
            let optional = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            for p in &group.partitions {
                println!(
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
        GroupCommand::Reset { group, topic, to } => {
            let position = parse_from(&to)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--from", "--to")))?;
            let reset = client
                .reset_group(ResetGroupRequest {
                    group: group.clone(),
                    topic,
                    to: Some(StartPosition { position: Some(position) }),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for offset in &reset.offsets {
                println!(
                    "{group}\t{}/{}\tcommitted={}",
                    offset.topic, offset.partition, offset.offset
                );
            }
        }
    }
    Ok(())
}
