//! One owned partition of one member: reads the log from where the group left off and sends
//! records into the member's queue, waiting for new records at the end.
//!
//! The start is the group's committed offset when it is within the log, else the group's
//! reset choice (earliest or latest). Each message is tagged with the generation of the
//! latest assignment the member was sent. When the feed reaches the visible end it sends one
//! message without records ("caught up"), then waits on the partition's notification. It
//! only reads when the member's records queue has room, so a member that does not read stops
//! its feeds (flow control). A read error ends the member's stream with its status.
//!
//! Every message carries the feed's `alive` flag: the member's task clears it before it
//! queues the assignment that revokes the partition, and the member's stream drops messages
//! whose flag is cleared, so records never follow their partition's revocation even though
//! assignments overtake queued records.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::limits::GROUP_READ_BYTES;
use spool_broker::group::{GroupName, OffsetReset, TopicPartition};
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::{MemberEvent, PartitionRecords};
use spool_storage::Offset;
use tokio::sync::mpsc;
use tonic::Status;

use super::Groups;
use crate::auth::{Action, Caller, Resource};
use crate::consume::{Wire, answer};
use crate::error::ServiceError;
use crate::partition::Partition;

/// Assignments and commit results toward a member: sent before any queued records.
pub(crate) type Outbound = mpsc::Sender<Result<MemberEvent, Status>>;

/// One records message, with its feed's flag (see the module docs).
#[derive(Debug)]
pub(crate) struct FeedItem {
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) event: MemberEvent,
}

/// Records toward a member.
pub(crate) type RecordsOut = mpsc::Sender<FeedItem>;

/// Everything a feed needs.
pub(crate) struct Feed {
    pub(crate) groups: Arc<Groups>,
    pub(crate) caller: Caller,
    pub(crate) group: GroupName,
    pub(crate) partition: TopicPartition,
    pub(crate) reset: OffsetReset,
    pub(crate) wire: Wire,
    /// The generation of the latest assignment sent to the member.
    pub(crate) generation: Arc<AtomicU64>,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) out: RecordsOut,
    /// Where a failed feed reports the status that ends the member's stream.
    pub(crate) failed: mpsc::Sender<Status>,
}

impl Feed {
    pub(crate) async fn run(self) {
        if let Err(error) = self.feed().await {
            let _ = self.failed.try_send(Status::from(error));
        }
    }

    /// The committed offset if it is within the log, else the reset choice.
    fn start(&self, log: &Partition) -> Result<Offset, ServiceError> {
        let committed = self.groups.lock().coordinator.committed(&self.group, &self.partition);
        let state = log.state()?;
        Ok(match (committed, self.reset) {
            (Some(offset), _)
                if (state.log_start_offset..=state.log_end_offset).contains(&offset) =>
            {
                offset
            }
            (_, OffsetReset::Earliest) => state.log_start_offset,
            (_, OffsetReset::Latest) => state.log_end_offset,
        })
    }

    async fn feed(&self) -> Result<(), ServiceError> {
        let topic = self.partition.topic.as_str();
        let log = self.groups.topics.partition(topic, self.partition.partition)?;
        log.refresh().await?;
        let mut offset = self.start(&log)?;
        let mut changes = log.watch();
        let mut caught_up_sent = false;
        loop {
            changes.borrow_and_update();
            let read = log.read(offset, GROUP_READ_BYTES).await?;
            if read.bytes.is_empty() && caught_up_sent {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() {
                        // The partition closed: its topic was deleted, or the server stops.
                        log.state()?;
                        return Ok(());
                    },
                    () = self.out.closed() => return Ok(()),
                }
                continue;
            }
            self.caller.allow(Action::Consume, Resource::Topic(topic))?;
            let from = offset;
            offset = read.next_offset;
            caught_up_sent = read.bytes.is_empty() || read.next_offset >= read.log_end_offset;
            let read_answer = answer(&log, read, from, self.wire)?;
            let Ok(permit) = self.out.reserve().await else { return Ok(()) };
            let event = MemberEvent {
                kind: Some(Kind::Records(PartitionRecords {
                    topic: topic.to_owned(),
                    partition: self.partition.partition,
                    generation: self.generation.load(Ordering::SeqCst),
                    records: read_answer.records,
                    raw_batches: read_answer.raw_batches,
                    next_offset: read_answer.next_offset,
                    log_end_offset: read_answer.log_end_offset,
                    start_offset: from.0,
                })),
            };
            permit.send(FeedItem { alive: self.alive.clone(), event });
        }
    }
}
