//! OffsetForLeaderEpoch: clients (librdkafka among them) ask it, after a leader change or
//! before resuming a fetch, where the epoch their position came from ended, to detect a
//! truncated log. Spool is one node whose partitions never change leader: every partition is
//! at leader epoch 0 (as Metadata says), and epoch 0 ends at the partition's visible end, the
//! high watermark a fetch reports. An earlier or later epoch never existed: its answer is
//! epoch -1 at offset -1 (Kafka's "undefined"), and a client that says the current epoch is
//! past 0 gets UNKNOWN_LEADER_EPOCH.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use super::Shared;
use super::codes::error_code;
use crate::auth::{Action, Caller};

/// The one leader epoch.
const EPOCH: i32 = 0;

pub(super) fn offset_for_leader_epoch(
    shared: &Shared,
    caller: &Caller,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|asked| {
            let topic = shared.topic(caller, Action::Describe, asked.topic.as_str());
            let partitions = asked
                .partitions
                .into_iter()
                .map(|p| {
                    let answer = EpochEndOffset::default().with_partition(p.partition);
                    let end = match &topic {
                        Ok(_) if p.current_leader_epoch > EPOCH => {
                            Err(ResponseError::UnknownLeaderEpoch.code())
                        }
                        Ok(topic) => u32::try_from(p.partition)
                            .map_err(|_| ResponseError::UnknownTopicOrPartition.code())
                            .and_then(|id| topic.partition(id).map_err(|e| error_code(&e)))
                            .and_then(|partition| partition.state().map_err(|e| error_code(&e)))
                            .map(|state| state.log_end_offset.0 as i64),
                        Err(error) => Err(error_code(error)),
                    };
                    match end {
                        Ok(end) if p.leader_epoch == EPOCH => {
                            answer.with_leader_epoch(EPOCH).with_end_offset(end)
                        }
                        Ok(_) => answer.with_leader_epoch(-1).with_end_offset(-1),
                        Err(code) => {
                            answer.with_error_code(code).with_leader_epoch(-1).with_end_offset(-1)
                        }
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(asked.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
