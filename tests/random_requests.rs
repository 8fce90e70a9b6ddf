//! Random sequences of well-formed requests with arbitrary field values (names, partitions,
//! configurations, records, raw batches damaged at random, offsets, positions, group joins,
//! commits and resets) against an in-process server, checked against a model of what it must
//! store. `bad_input.rs` holds the cases we thought of; this finds the ones we did not.
//!
//! Every answer must come in time with a status a person can act on: never INTERNAL, UNKNOWN,
//! UNAVAILABLE or DATA_LOSS (the disk is healthy, so one of those means a bug or a panic),
//! never an empty message. A name the API refuses gets INVALID_ARGUMENT, as does a request
//! malformed in itself (an unknown enum value, no records, a fetch wait past the limit),
//! whether or not its topic exists; "topic ... does not exist" comes only when the model
//! says so, and ALREADY_EXISTS
//! only when it says the topic is there. At the end, every partition holds exactly the
//! records whose produce was acknowledged (nothing a refused request sent), before and after
//! a restart, and nothing was written outside the data directory. proptest shrinks a failure
//! to a short sequence and prints it; the seed is kept in
//! `tests/random_requests.proptest-regressions`.
//!
//! The requests and their generators are in `random_requests/ops.rs`; this file runs them
//! against the server and the model.

mod common;
#[path = "random_requests/ops.rs"]
mod ops;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::{LoneDataDir, TestServer};
use ops::{Damage, NAMES, Op, op, raw_batch, settings_valid, value_bytes};
use proptest::prelude::*;
use spool_proto::limits::FETCH_WAIT_MS_MAX;
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind as EventKind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::{
    Acks, AlterTopicRequest, CommitOffsets, CommitResult, CreateTopicRequest, DeleteGroupRequest,
    DeleteTopicRequest, DescribeGroupRequest, DescribeTopicRequest, ElectLeadersRequest,
    ElectLeadersTopic, Encoding, FetchRequest, Header, JoinGroup, Leave, MemberRequest,
    PartitionOffset, ProduceRequest, ProducerStamp as WireStamp, Record, RecordList,
    ResetGroupRequest, StartPosition, SubscribeRequest, TopicConfig, elect_leaders_result,
};
use spool_storage::batch::ProducerStamp;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Only a guard against a hang; every call answers long before.
const GUARD: Duration = Duration::from_secs(60);

/// What the server must hold for one topic.
#[derive(Debug)]
struct TopicModel {
    partitions: u32,
    /// Records acknowledged per partition.
    counts: BTreeMap<u32, u64>,
    /// Every acknowledged record as (key, value): which partition each went to is the
    /// server's choice (key hash, round robin) when a request names none, so the contents are
    /// compared as a multiset over the topic, the counts per partition.
    records: Vec<(Option<Bytes>, Option<Bytes>)>,
    /// Records were acknowledged whose content the model cannot know (a raw batch the server
    /// accepted after damage, an answer without offsets), or retention may delete some: only
    /// the answers are checked, not the stored contents.
    unknown: bool,
    /// Acknowledged with `acks` none or leader: visible only once a sync covers it, which a
    /// clean shutdown does, so the contents are compared after the restart only.
    unsettled: bool,
}
/// A status is one a client can act on: the disk is healthy and every request well-formed
/// protobuf, so INTERNAL, UNKNOWN (a panic), UNAVAILABLE or DATA_LOSS is a bug.
fn actionable(op: &Op, status: &Status) -> Result<(), TestCaseError> {
    let code = status.code();
    prop_assert!(
        !matches!(code, Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss),
        "{op:?} answered {code:?}: {}",
        status.message()
    );
    prop_assert!(!status.message().trim().is_empty(), "{op:?} answered {code:?} with no message");
    Ok(())
}

/// The answer for a request naming `name`: INVALID_ARGUMENT for a name the API refuses,
/// NOT_FOUND only for a valid name the model says is absent.
fn check_name(
    op: &Op,
    name: usize,
    model: &BTreeMap<usize, TopicModel>,
    outcome: &Result<(), Status>,
) -> Result<(), TestCaseError> {
    let (text, valid) = NAMES[name];
    match outcome {
        Ok(()) => prop_assert!(valid && model.contains_key(&name), "{op:?} accepted for {text:?}"),
        Err(status) => {
            actionable(op, status)?;
            if !valid {
                prop_assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{:?}: {}",
                    op,
                    status.message()
                );
            } else if status.message().contains(&format!("topic {text} does not exist")) {
                prop_assert_eq!(status.code(), Code::NotFound);
                prop_assert!(!model.contains_key(&name), "{op:?}: {}", status.message());
            }
        }
    }
    Ok(())
}

async fn call<T>(future: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(GUARD, future).await.expect("the server answers")
}

/// Runs `ops` against the server, keeping `model` up to date, checking every answer.
async fn run(
    server: &TestServer,
    ops: &[Op],
    model: &mut BTreeMap<usize, TopicModel>,
) -> Result<(), TestCaseError> {
    let mut topics = server.topics().await;
    let mut produce = server.producer().await;
    let consume = server.consumer().await;
    let mut groups = GroupServiceClient::new(server.channel().await);
    for (serial, op) in ops.iter().enumerate() {
        let serial = serial as u64;
        match op {
            Op::Create { name, partitions, fsync, sizes, compression } => {
                let request = CreateTopicRequest {
                    name: NAMES[*name].0.into(),
                    config: Some(TopicConfig {
                        partitions: *partitions,
                        fsync: *fsync,
                        retention_ms: sizes.0,
                        retention_bytes: sizes.1,
                        segment_bytes: sizes.2,
                        compression: compression.unwrap_or_default(),
                        replication_factor: None,
                    }),
                };
                let outcome = call(topics.create_topic(request)).await;
                if !settings_valid(Some(*partitions), *fsync, sizes, *compression, false) {
                    let code = outcome.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                match outcome {
                    Ok(created) => {
                        let (text, valid) = NAMES[*name];
                        prop_assert!(valid, "{op:?}: created {text:?}");
                        prop_assert!(!model.contains_key(name), "{op:?}: created twice");
                        let partitions = created.into_inner().topic.unwrap().partitions.len();
                        let unknown = sizes.0.is_some() || sizes.1.is_some();
                        let topic = TopicModel {
                            partitions: partitions as u32,
                            counts: BTreeMap::new(),
                            records: Vec::new(),
                            unknown,
                            unsettled: false,
                        };
                        model.insert(*name, topic);
                    }
                    Err(status) => {
                        actionable(op, &status)?;
                        if status.code() == Code::AlreadyExists {
                            prop_assert!(model.contains_key(name), "{op:?}: {}", status.message());
                        }
                        if !NAMES[*name].1 {
                            prop_assert_eq!(status.code(), Code::InvalidArgument);
                        }
                    }
                }
            }
            Op::Delete { name } => {
                let request = DeleteTopicRequest { name: NAMES[*name].0.into() };
                let outcome = call(topics.delete_topic(request)).await.map(drop);
                check_name(op, *name, model, &outcome)?;
                if outcome.is_ok() {
                    model.remove(name);
                }
            }
            Op::Describe { name } => {
                let request = DescribeTopicRequest { name: NAMES[*name].0.into() };
                let outcome = call(topics.describe_topic(request)).await;
                if let Ok(described) = &outcome {
                    let described = described.get_ref().topic.as_ref().unwrap();
                    let expected = model.get(name).map(|topic| topic.partitions as usize);
                    prop_assert_eq!(Some(described.partitions.len()), expected);
                }
                check_name(op, *name, model, &outcome.map(drop))?;
            }
            Op::Elect { name, partitions, timeout_ms } => {
                let asked = ElectLeadersTopic {
                    topic: NAMES[*name].0.into(),
                    partitions: partitions.clone(),
                };
                let request = ElectLeadersRequest { topics: vec![asked], timeout_ms: *timeout_ms };
                let outcome = call(topics.elect_leaders(request)).await;
                if *timeout_ms > 60_000 {
                    let code = outcome.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                if let (Ok(answered), Some(topic)) = (&outcome, model.get(name)) {
                    // A single node leads every partition: none needs handing back.
                    let answered = &answered.get_ref().results;
                    let not_needed = elect_leaders_result::Outcome::NotNeeded;
                    prop_assert!(
                        answered.iter().all(|r| r.outcome() == not_needed),
                        "{answered:?}"
                    );
                    let distinct: BTreeSet<u32> = partitions.iter().copied().collect();
                    let expected = if partitions.is_empty() {
                        topic.partitions as usize
                    } else {
                        distinct.len()
                    };
                    prop_assert_eq!(answered.len(), expected, "{:?}", op);
                }
                check_name(op, *name, model, &outcome.map(drop))?;
            }
            Op::Alter { name, fsync, sizes, compression } => {
                let request = AlterTopicRequest {
                    name: NAMES[*name].0.into(),
                    fsync: *fsync,
                    retention_ms: sizes.0,
                    retention_bytes: sizes.1,
                    segment_bytes: sizes.2,
                    compression: *compression,
                    partitions: None,
                };
                let outcome = call(topics.alter_topic(request)).await.map(drop);
                check_name(op, *name, model, &outcome)?;
                if !settings_valid(None, *fsync, sizes, *compression, true) {
                    let code = outcome.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                if outcome.is_ok() && (sizes.0.is_some() || sizes.1.is_some()) {
                    model.get_mut(name).unwrap().unknown = true;
                }
            }
            Op::Produce { name, partition, acks, records, raw, stamp } => {
                let wire = |(producer_id, producer_epoch, base_sequence): (i64, i32, i32)| {
                    WireStamp { producer_id, producer_epoch, base_sequence }
                };
                let (payload, producer, damaged) = match raw {
                    Some((damage, batch_stamp)) => {
                        let batch_stamp =
                            batch_stamp.map_or(ProducerStamp::NONE, |s| ProducerStamp {
                                producer_id: s.0,
                                producer_epoch: s.1 as i16,
                                base_sequence: s.2,
                            });
                        let batch = raw_batch(records, serial, damage, batch_stamp);
                        let damaged = !matches!(damage, Damage::None);
                        (Payload::RawBatch(batch), stamp.map(wire), damaged)
                    }
                    None => {
                        let records = records
                            .iter()
                            .enumerate()
                            .map(|(index, spec)| Record {
                                key: spec.key.clone().map(Bytes::from),
                                value: value_bytes(spec, serial, index),
                                headers: spec
                                    .headers
                                    .iter()
                                    .map(|(key, value)| Header {
                                        key: key.clone(),
                                        value: value.clone().map(Bytes::from),
                                    })
                                    .collect(),
                                timestamp_ms: spec.timestamp_ms,
                            })
                            .collect();
                        (Payload::Records(RecordList { records }), stamp.map(wire), false)
                    }
                };
                let request = ProduceRequest {
                    correlation_id: serial,
                    topic: NAMES[*name].0.into(),
                    partition: *partition,
                    acks: *acks,
                    payload: Some(payload),
                    producer,
                };
                let outcome = call(produce.produce(request)).await;
                let answered = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
                check_name(op, *name, model, &answered)?;
                // A request malformed in itself is refused as such, whether its topic exists.
                let malformed =
                    Acks::try_from(*acks).is_err() || (raw.is_none() && records.is_empty());
                if malformed {
                    let code = answered.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                let Ok(answer) = outcome else { continue };
                prop_assert!(!records.is_empty(), "{op:?}: an empty produce was accepted");
                let topic = model.get_mut(name).unwrap();
                let appends = answer.into_inner().appends;
                if damaged || appends.is_empty() {
                    topic.unknown = true;
                    continue;
                }
                topic.unsettled |= *acks == Acks::None as i32 || *acks == Acks::Leader as i32;
                let counted: u64 = appends.iter().map(|a| a.last_offset - a.base_offset + 1).sum();
                prop_assert_eq!(counted, records.len() as u64, "{:?}: {:?}", op, appends);
                for append in &appends {
                    prop_assert!(append.partition < topic.partitions, "{:?}", append);
                    let count = topic.counts.entry(append.partition).or_default();
                    if !topic.unknown {
                        prop_assert_eq!(
                            append.base_offset,
                            *count,
                            "{:?}: offsets must follow the acknowledged ones",
                            op
                        );
                    }
                    *count += append.last_offset - append.base_offset + 1;
                }
                for (index, spec) in records.iter().enumerate() {
                    let key = spec.key.clone().map(Bytes::from);
                    topic.records.push((key, value_bytes(spec, serial, index)));
                }
            }
            Op::Fetch { name, partition, offset, max_bytes, max_wait_ms, encoding } => {
                let request = FetchRequest {
                    topic: NAMES[*name].0.into(),
                    partition: *partition,
                    offset: *offset,
                    max_bytes: *max_bytes,
                    max_wait_ms: *max_wait_ms,
                    encoding: *encoding,
                };
                let outcome = call(consume.clone().fetch(request)).await;
                if *max_wait_ms > FETCH_WAIT_MS_MAX || Encoding::try_from(*encoding).is_err() {
                    let code = outcome.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                if let Ok(fetched) = &outcome {
                    let fetched = fetched.get_ref();
                    prop_assert!(fetched.next_offset <= fetched.log_end_offset, "{fetched:?}");
                }
                check_name(op, *name, model, &outcome.map(drop))?;
            }
            Op::Replay { name, partition, position, encoding } => {
                let request = SubscribeRequest {
                    topic: NAMES[*name].0.into(),
                    partition: *partition,
                    start: position.map(|position| StartPosition { position: Some(position) }),
                    encoding: *encoding,
                    stop_at_end: true,
                };
                let outcome = call(async {
                    let mut stream = consume.clone().subscribe(request).await?.into_inner();
                    let mut offsets = Vec::new();
                    while let Some(message) = stream.message().await? {
                        offsets.extend(message.records.iter().map(|record| record.offset));
                    }
                    Ok(offsets)
                })
                .await;
                if let Ok(offsets) = &outcome {
                    prop_assert!(offsets.is_sorted_by(|a, b| a < b), "{op:?}: {offsets:?}");
                }
                if Encoding::try_from(*encoding).is_err() {
                    let code = outcome.as_ref().err().map(Status::code);
                    prop_assert_eq!(code, Some(Code::InvalidArgument), "{:?}", op);
                }
                let outcome = outcome.map(drop);
                check_name(op, *name, model, &outcome)?;
            }
            Op::Join { group, topics, member_id, .. } => {
                let result = call(join(&groups, op)).await;
                match &result {
                    Err(status) => {
                        actionable(op, status)?;
                        let invalid = !NAMES[*group].1
                            || topics.iter().any(|t| !NAMES[*t].1)
                            || member_id.len() > 64;
                        if invalid {
                            prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", op);
                        }
                    }
                    Ok(Some(answer)) => {
                        let code = Code::from_i32(answer.code);
                        let status = Status::new(code, answer.message.clone());
                        if code != Code::Ok {
                            actionable(op, &status)?;
                        }
                    }
                    Ok(None) => {}
                }
                if result.is_ok() {
                    prop_assert!(member_id.len() <= 64, "{:?} accepted", op);
                }
            }
            Op::DeleteGroup { group } => {
                let request =
                    DeleteGroupRequest { group: NAMES[*group].0.into(), ..Default::default() };
                match call(groups.delete_group(request)).await {
                    Ok(_) => prop_assert!(NAMES[*group].1, "{op:?} accepted"),
                    Err(status) => {
                        actionable(op, &status)?;
                        if !NAMES[*group].1 {
                            prop_assert_eq!(status.code(), Code::InvalidArgument);
                        }
                    }
                }
            }
            Op::DescribeGroup { group } => {
                let request = DescribeGroupRequest { group: NAMES[*group].0.into() };
                match call(groups.describe_group(request)).await {
                    Ok(_) => prop_assert!(NAMES[*group].1, "{op:?} accepted"),
                    Err(status) => {
                        actionable(op, &status)?;
                        if !NAMES[*group].1 {
                            prop_assert_eq!(status.code(), Code::InvalidArgument);
                        }
                    }
                }
            }
            Op::ResetGroup { group, name, to, partition } => {
                let request = ResetGroupRequest {
                    group: NAMES[*group].0.into(),
                    topic: NAMES[*name].0.into(),
                    to: to.map(|position| StartPosition { position: Some(position) }),
                    partition: *partition,
                };
                match call(groups.reset_group(request)).await {
                    Ok(_) => {
                        prop_assert!(NAMES[*group].1 && model.contains_key(name), "{op:?} accepted")
                    }
                    Err(status) => {
                        actionable(op, &status)?;
                        if !NAMES[*group].1 || !NAMES[*name].1 {
                            prop_assert_eq!(status.code(), Code::InvalidArgument);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// One member's visit to a group (an [`Op::Join`]): joins, waits for its first assignment,
/// commits if asked and leaves. The commit's answer, if one was asked for.
async fn join(
    groups: &GroupServiceClient<Channel>,
    op: &Op,
) -> Result<Option<CommitResult>, Status> {
    let Op::Join { group, topics, session_timeout_ms, reset, encoding, commit, member_id } = op
    else {
        unreachable!("join runs Join ops")
    };
    let (requests, queued) = mpsc::channel(4);
    let send = |kind| {
        let requests = requests.clone();
        async move {
            // The server may already have ended the stream; its status says why.
            let _ = requests.send(MemberRequest { kind: Some(kind) }).await;
        }
    };
    send(RequestKind::Join(JoinGroup {
        group: NAMES[*group].0.into(),
        topics: topics.iter().map(|t| NAMES[*t].0.to_owned()).collect(),
        session_timeout_ms: *session_timeout_ms,
        reset: *reset,
        encoding: *encoding,
        member_id: member_id.clone(),
    }))
    .await;
    let mut events = groups.clone().join(ReceiverStream::new(queued)).await?.into_inner();
    let generation = loop {
        match events.message().await?.and_then(|event| event.kind) {
            Some(EventKind::Assignment(assignment)) => break assignment.generation,
            Some(_) => continue,
            None => return Err(Status::unknown("the join stream ended without an assignment")),
        }
    };
    let mut answer = None;
    if let Some((skew, offsets)) = commit {
        let offsets = offsets
            .iter()
            .map(|(topic, partition, offset)| PartitionOffset {
                topic: NAMES[*topic].0.into(),
                partition: *partition,
                offset: *offset,
            })
            .collect();
        let generation = generation.wrapping_add(*skew);
        send(RequestKind::Commit(CommitOffsets { commit_id: 7, generation, offsets })).await;
        answer = loop {
            match events.message().await?.and_then(|event| event.kind) {
                Some(EventKind::CommitResult(result)) => break Some(result),
                Some(_) => continue,
                None => {
                    return Err(Status::unknown("the join stream ended without a commit result"));
                }
            }
        };
    }
    send(RequestKind::Leave(Leave {})).await;
    Ok(answer)
}

/// Every partition of every topic the model knows in full holds exactly the acknowledged
/// records; `settled_only` skips the topics some of whose records may not be visible yet.
async fn check_stored(
    server: &TestServer,
    model: &BTreeMap<usize, TopicModel>,
    settled_only: bool,
) -> Result<(), TestCaseError> {
    let mut topics = server.topics().await;
    for (name, topic) in model {
        let text = NAMES[*name].0;
        let described = call(topics.describe_topic(DescribeTopicRequest { name: text.into() }))
            .await
            .map_err(|status| TestCaseError::fail(format!("describe {text}: {status}")))?;
        let described = described.into_inner().topic.unwrap();
        prop_assert_eq!(described.partitions.len(), topic.partitions as usize);
        if topic.unknown || (settled_only && topic.unsettled) {
            continue;
        }
        let mut found = Vec::new();
        for partition in 0..topic.partitions {
            let records = server.fetch_all(text, partition, 0).await;
            let expected = topic.counts.get(&partition).copied().unwrap_or(0);
            prop_assert_eq!(
                records.len() as u64,
                expected,
                "topic {} partition {}",
                text,
                partition
            );
            found.extend(records.into_iter().map(|record| (record.key, record.value)));
        }
        let mut expected = topic.records.clone();
        expected.sort();
        found.sort();
        prop_assert!(
            found == expected,
            "topic {text}: the stored records differ from the acknowledged ones"
        );
    }
    Ok(())
}

async fn scenario(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = LoneDataDir::new();
    let data = &dir.data;
    let mut model = BTreeMap::new();
    let server = TestServer::start(data).await;
    run(&server, &ops, &mut model).await?;
    check_stored(&server, &model, true).await?;
    server.shutdown().await;
    let server = TestServer::start(data).await;
    check_stored(&server, &model, false).await?;
    server.shutdown().await;
    prop_assert_eq!(dir.beside(), Vec::<std::ffi::OsString>::new());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_get_actionable_answers_and_lose_nothing(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        common::block_on(scenario(ops))?;
    }
}
