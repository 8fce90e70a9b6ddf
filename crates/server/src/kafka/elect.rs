//! ElectLeaders: Kafka's leader election on demand (`kafka-leader-election`, librdkafka's
//! `elect_leaders`). A `PREFERRED` election hands each partition back to its preferred
//! leader, the first of its replicas, as the cluster's own looks do (`Replica::hand_back_now`,
//! asked of the partition's leader from whichever node took the request). `UNCLEAN` elections
//! are Raft's to refuse: it elects only a replica that holds every committed entry, so a
//! partition with a leader needs none and one without has no replica Spool may elect.
//!
//! A partition led by its preferred leader already is ELECTION_NOT_NEEDED (left out when the
//! request named no partitions, meaning all of them, as Kafka does); a refused hand-over is
//! PREFERRED_LEADER_NOT_AVAILABLE with the reason. A single node leads every partition: none
//! needs an election. With tokens each topic needs `administer`; a request for all
//! partitions covers the topics the caller may administer.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use spool_replication::limits::HAND_BACK_TIMEOUT_MAX;

use super::Shared;
use super::codes::error_code;
use crate::auth::{Action, Caller, Resource};
use crate::limits::LEADER_HAND_BACKS_AT_ONCE;

/// Kafka's election types.
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// One partition's answer: its error code (0: elected) and message.
type Outcome = (i16, Option<String>);

pub(super) async fn elect_leaders(
    shared: &Shared,
    caller: &Caller,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let every = request.topic_partitions.is_none();
    let asked: Vec<(TopicName, Vec<i32>)> = match request.topic_partitions {
        Some(topics) => topics
            .into_iter()
            .map(|asked| {
                let unique: BTreeSet<i32> = asked.partitions.into_iter().collect();
                (asked.topic, unique.into_iter().collect())
            })
            .collect(),
        None => shared
            .topics
            .topics()
            .into_iter()
            .filter(|topic| {
                caller.allow(Action::Administer, Resource::Topic(topic.name.as_str())).is_ok()
            })
            .map(|topic| {
                let name = TopicName(StrBytes::from_string(topic.name.as_str().to_owned()));
                (name, (0..topic.partitions.len() as i32).collect())
            })
            .collect(),
    };
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0))
        .min(HAND_BACK_TIMEOUT_MAX);
    let election_type = request.election_type;
    let each: Vec<(TopicName, i32)> = asked
        .into_iter()
        .flat_map(|(topic, partitions)| partitions.into_iter().map(move |p| (topic.clone(), p)))
        .collect();
    let outcomes: Vec<(TopicName, i32, Outcome)> = futures_util::stream::iter(each)
        .map(|(topic, partition)| async move {
            let outcome = elect(shared, caller, election_type, &topic, partition, timeout).await;
            (topic, partition, outcome)
        })
        .buffered(LEADER_HAND_BACKS_AT_ONCE)
        .collect()
        .await;
    let not_needed = ResponseError::ElectionNotNeeded.code();
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    for (topic, partition, (code, message)) in outcomes {
        if every && code == not_needed {
            continue;
        }
        let result = PartitionResult::default()
            .with_partition_id(partition)
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string));
        match results.last_mut() {
            Some(last) if last.topic == topic => last.partition_result.push(result),
            _ => results.push(
                ReplicaElectionResult::default()
                    .with_topic(topic)
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// Elects `partition` of `topic` as `election_type` asks, within `timeout`.
async fn elect(
    shared: &Shared,
    caller: &Caller,
    election_type: i8,
    topic: &TopicName,
    partition: i32,
    timeout: Duration,
) -> Outcome {
    let id = u32::try_from(partition).unwrap_or(u32::MAX);
    let found = match caller.allow(Action::Administer, Resource::Topic(topic.as_str())) {
        Ok(()) => shared.topics.partition_for_request(topic.as_str(), id).await,
        Err(refused) => Err(refused.into()),
    };
    let partition = match found {
        Ok(partition) => partition,
        Err(error) => return (error_code(&error), Some(error.to_string())),
    };
    let not_needed =
        |message: &str| (ResponseError::ElectionNotNeeded.code(), Some(message.into()));
    match election_type {
        PREFERRED => match partition.hand_back(timeout).await {
            Ok(Some(_)) => (0, None),
            Ok(None) => not_needed("the partition's preferred leader leads it"),
            Err(error) => (
                ResponseError::PreferredLeaderNotAvailable.code(),
                Some(format!("the partition stays where it is led: {error}")),
            ),
        },
        UNCLEAN => match shared.topics.cluster().is_none() || partition.leader().is_some() {
            true => not_needed("the partition has a leader"),
            false => (
                ResponseError::EligibleLeadersNotAvailable.code(),
                Some(
                    "Spool elects only a replica that holds every committed entry (Raft), \
                     never an unclean one; the partition's election is on"
                        .into(),
                ),
            ),
        },
        other => (
            ResponseError::InvalidRequest.code(),
            Some(format!("election type {other} is neither 0 (preferred) nor 1 (unclean)")),
        ),
    }
}
