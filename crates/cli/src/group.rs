//! `spool consume TOPIC --group G` (a group member that prints what it is given) and
//! `spool group list|describe|reset`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use spool_broker::limits::RESPONSE_BYTES_MAX;
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::{
    CommitOffsets, DescribeGroupRequest, GroupDescription, GroupState, Heartbeat, JoinGroup, Leave,
    ListGroupsRequest, MemberEvent, MemberRequest, OffsetReset, PartitionOffset, ResetGroupRequest,
    RevocationDone, StartPosition, TopicPartition,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

use crate::client::{code_name, connect, parse_from, status_error, write_record};
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

/// The member's side of the stream: what it owns, where it is, and its commits in flight.
struct Consumer {
    requests: mpsc::Sender<MemberRequest>,
    events: Streaming<MemberEvent>,
    topic: String,
    generation: u64,
    owned: BTreeSet<u32>,
    /// Per partition: the next offset to commit (one past the last printed) and the
    /// partition's end when last heard.
    position: BTreeMap<u32, (u64, u64)>,
    /// Positions printed but not yet committed.
    uncommitted: BTreeSet<u32>,
    next_commit_id: u64,
    /// Revocations to acknowledge once the commit with this id is answered.
    revoking: BTreeMap<u64, Vec<TopicPartition>>,
}

impl Consumer {
    async fn send(&self, kind: RequestKind) -> anyhow::Result<()> {
        self.requests
            .send(MemberRequest { kind: Some(kind) })
            .await
            .map_err(|_| anyhow::anyhow!("the group stream closed"))
    }

    /// Commits the positions of `partitions` that have something new; returns the commit's
    /// id, or `None` when there was nothing to commit.
    async fn commit(&mut self, partitions: &[u32]) -> anyhow::Result<Option<u64>> {
        let offsets: Vec<PartitionOffset> = partitions
            .iter()
            .filter(|p| self.uncommitted.contains(p))
            .filter_map(|p| {
                self.position.get(p).map(|(offset, _)| PartitionOffset {
                    topic: self.topic.clone(),
                    partition: *p,
                    offset: *offset,
                })
            })
            .collect();
        if offsets.is_empty() {
            return Ok(None);
        }
        for offset in &offsets {
            self.uncommitted.remove(&offset.partition);
        }
        self.next_commit_id += 1;
        let commit_id = self.next_commit_id;
        let commit = CommitOffsets { commit_id, generation: self.generation, offsets };
        self.send(RequestKind::Commit(commit)).await?;
        Ok(Some(commit_id))
    }

    fn caught_up(&self) -> bool {
        self.generation > 0
            && self.revoking.is_empty()
            && self.owned.iter().all(|p| self.position.get(p).is_some_and(|(at, end)| at >= end))
    }
}

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
    let mut client = GroupServiceClient::new(connect(server).await?)
        .max_decoding_message_size(RESPONSE_BYTES_MAX);
    let (requests, request_stream) = mpsc::channel(16);
    let join = JoinGroup {
        group: options.group.clone(),
        topics: vec![options.topic.clone()],
        session_timeout_ms: options.session_timeout_ms,
        reset: reset as i32,
        encoding: 0,
    };
    requests.send(MemberRequest { kind: Some(RequestKind::Join(join)) }).await?;
    let events =
        client.join(ReceiverStream::new(request_stream)).await.map_err(status_error)?.into_inner();
    let mut consumer = Consumer {
        requests,
        events,
        topic: options.topic.clone(),
        generation: 0,
        owned: BTreeSet::new(),
        position: BTreeMap::new(),
        uncommitted: BTreeSet::new(),
        next_commit_id: 0,
        revoking: BTreeMap::new(),
    };
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        u64::from(options.session_timeout_ms / 3).max(10),
    ));
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
            event = consumer.events.message() => event.map_err(status_error)?,
            _ = heartbeat.tick() => {
                consumer.send(RequestKind::Heartbeat(Heartbeat {})).await?;
                continue;
            }
            _ = &mut interrupted => break,
        };
        let Some(event) = event else { bail!("the server ended the group stream") };
        match event.kind {
            Some(Kind::Joined(joined)) => {
                eprintln!("spool: joined group {} as member {}", options.group, joined.member_id);
            }
            Some(Kind::Assignment(assignment)) => {
                consumer.generation = assignment.generation;
                consumer.owned = assignment.owned.iter().map(|p| p.partition).collect();
                let owned: Vec<String> = assignment.owned.iter().map(partition_name).collect();
                eprintln!(
                    "spool: generation {}: consuming [{}]",
                    assignment.generation,
                    owned.join(", ")
                );
                if !assignment.revoked.is_empty() {
                    let revoked: Vec<u32> =
                        assignment.revoked.iter().map(|p| p.partition).collect();
                    let committed = consumer.commit(&revoked).await?;
                    for p in &revoked {
                        consumer.position.remove(p);
                        consumer.uncommitted.remove(p);
                    }
                    match committed {
                        Some(id) => {
                            consumer.revoking.insert(id, assignment.revoked);
                        }
                        None => {
                            let done = RevocationDone { partitions: assignment.revoked };
                            consumer.send(RequestKind::RevocationDone(done)).await?;
                        }
                    }
                }
            }
            Some(Kind::Records(records)) => {
                let mut next = records.next_offset;
                for record in &records.records {
                    if options.count.is_some_and(|count| printed >= count) {
                        next = record.offset;
                        break;
                    }
                    match write_record(
                        &mut out,
                        options.format,
                        &options.topic,
                        records.partition,
                        record,
                    ) {
                        Ok(()) => printed += 1,
                        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                            return Ok(());
                        }
                        Err(error) => {
                            return Err(error).context("writing to standard output failed");
                        }
                    }
                }
                match out.flush() {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(error) => return Err(error).context("writing to standard output failed"),
                }
                consumer.position.insert(records.partition, (next, records.log_end_offset));
                if !records.records.is_empty() {
                    consumer.uncommitted.insert(records.partition);
                }
                if options.commit == CommitMode::Auto {
                    consumer.commit(&[records.partition]).await?;
                }
            }
            Some(Kind::CommitResult(result)) => {
                if result.code != Code::Ok as i32 {
                    let code = code_name(Code::from_i32(result.code));
                    eprintln!("spool: a commit was refused: {} ({code})", result.message);
                }
                if let Some(partitions) = consumer.revoking.remove(&result.commit_id) {
                    consumer
                        .send(RequestKind::RevocationDone(RevocationDone { partitions }))
                        .await?;
                }
            }
            None => {}
        }
    }
    finish(&mut consumer).await
}

/// Commits what was printed, waits for the answer, and leaves the group.
async fn finish(consumer: &mut Consumer) -> anyhow::Result<()> {
    let owned: Vec<u32> = consumer.owned.iter().copied().collect();
    if let Some(commit_id) = consumer.commit(&owned).await? {
        loop {
            let event = consumer.events.message().await.map_err(status_error)?;
            let Some(event) = event else {
                bail!("the server ended the stream before the final commit was answered")
            };
            if let Some(Kind::CommitResult(result)) = event.kind
                && result.commit_id == commit_id
            {
                if result.code != Code::Ok as i32 {
                    let code = code_name(Code::from_i32(result.code));
                    bail!("the final commit was refused: {} ({code})", result.message);
                }
                break;
            }
        }
    }
    consumer.send(RequestKind::Leave(Leave {})).await?;
    while consumer.events.message().await.map_err(status_error)?.is_some() {}
    Ok(())
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
    let reset = match OffsetReset::try_from(group.reset) {
        Ok(OffsetReset::Latest) => "latest",
        Ok(OffsetReset::Earliest) => "earliest",
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
                let owned: Vec<String> = member.owned.iter().map(partition_name).collect();
                let revoking: Vec<String> = member.revoking.iter().map(partition_name).collect();
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
