//! Following a partition for one browser subscription (SSE or WebSocket), as the gRPC
//! subscription does: read a chunk of log by offset, queue it, repeat, and at the end wait on
//! the partition's data-free notification. The queue holds
//! [`HTTP_SUBSCRIBE_QUEUE_DEPTH`](crate::limits::HTTP_SUBSCRIBE_QUEUE_DEPTH) chunks;
//! when the browser does not take them, the reads stop, so a slow or stalled browser costs
//! at most [`HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX`] of log on the server and never makes
//! another subscriber wait. Records are turned into JSON only as the transport sends them.

use std::sync::Arc;

use crate::limits::{HTTP_SUBSCRIBE_READ_BYTES, HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX};
use spool_proto::v1::SubscribeResponse;
use spool_storage::Offset;
use tokio::sync::mpsc;

use super::error::HttpError;
use crate::auth::{Action, Caller, Resource};
use crate::consume::{Wire, answer, reserve_queued};
use crate::error::ServiceError;
use crate::metrics::Buffered;
use crate::partition::Partition;
use crate::topic_table::TopicTable;

/// What a subscription's queue carries toward its transport.
#[derive(Debug)]
pub(crate) enum Item {
    /// Records at or after the offset asked for, and the log bytes they hold on the server
    /// (released when the transport has written them).
    Records(SubscribeResponse, Buffered),
    /// Nothing new for the keep-alive interval ([`HTTP_KEEP_ALIVE`](crate::limits::HTTP_KEEP_ALIVE),
    /// or less when the connections' idle timeout is shorter).
    KeepAlive,
    /// The last item: why the subscription ended (shutdown, a revoked grant, a deleted topic).
    End(HttpError),
}

/// Feeds one subscription from `offset` until its queue's receiver goes away, shutdown
/// begins, or an error ends it. The caller's token and grant are checked again before every
/// chunk, against the token file as it is now.
pub(crate) async fn feed(
    topics: Arc<TopicTable>,
    caller: Caller,
    partition: Arc<Partition>,
    mut offset: Offset,
    queue: mpsc::Sender<Item>,
    keep_alive: std::time::Duration,
) {
    let stop = topics.streams_stop.clone();
    let mut changes = partition.watch();
    let _subscriber = partition.metrics.subscriber();
    loop {
        changes.borrow_and_update();
        let read = match partition.read(offset, HTTP_SUBSCRIBE_READ_BYTES).await {
            Ok(read) => read,
            Err(error) => {
                let _ = queue.send(Item::End(error.into())).await;
                return;
            }
        };
        if read.bytes.is_empty() {
            // A token revoked while nothing arrives ends the stream now: each wait checks the
            // grant first and ends at the token file's reload.
            let mut reloads = caller.watch_reloads();
            if let Err(error) =
                caller.allow(Action::Consume, Resource::Topic(partition.topic().as_str()))
            {
                let _ = queue.send(Item::End(error.into())).await;
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = reloads.next() => {}
                () = tokio::time::sleep(keep_alive) => {
                    // Only when there is room: a keep-alive never waits behind records.
                    let _ = queue.try_send(Item::KeepAlive);
                }
                () = queue.closed() => return,
                () = stop.cancelled() => {
                    let _ = queue.try_send(Item::End(ServiceError::ShuttingDown.into()));
                    return;
                }
            }
            continue;
        }
        if let Err(error) =
            caller.allow(Action::Consume, Resource::Topic(partition.topic().as_str()))
        {
            let _ = queue.send(Item::End(error.into())).await;
            return;
        }
        let bytes = read.bytes.len() as u64;
        assert!(
            bytes <= HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX,
            "a read of {bytes} bytes is over the per-subscriber bound"
        );
        let buffered = topics.metrics.buffered(bytes);
        let from = offset;
        offset = read.next_offset;
        let item = match answer(&partition, read, from, Wire::Records) {
            Ok(records) => Item::Records(records, buffered),
            Err(error) => Item::End(error.into()),
        };
        let last = matches!(item, Item::End(_));
        let Some(permit) = reserve_queued(&queue, &topics.metrics, &stop).await else { return };
        permit.send(item);
        if last {
            return;
        }
    }
}
