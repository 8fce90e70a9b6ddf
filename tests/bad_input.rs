//! Every malformed request we could think of, through the gRPC API, as one table: each row
//! names the request, the status code the API documents for it and a fragment of the message
//! a person would act on. After the table the server still serves, and nothing was created
//! outside its data directory.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{LoneDataDir, TestServer, header, record};
use spool_broker::limits::PARTITIONS_PER_TOPIC_MAX;
use spool_proto::limits::{
    FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX, REQUEST_BYTES_MAX, TIMESTAMP_MS_MAX,
};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind as EventKind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, AlterTopicRequest, CommitOffsets, CreateTopicRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeTopicRequest, FetchRequest, FsyncPolicy, JoinGroup,
    MemberRequest, PartitionOffset, ProduceRequest, ProducerStamp as WireStamp, Record, RecordList,
    ResetGroupRequest, StartPosition, SubscribeRequest, TopicConfig,
};
use spool_storage::TimestampMs;
use spool_storage::batch::{BATCH_MAGIC, BatchBuilder, ProducerStamp, field};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Only a guard against a hang; every call answers long before.
const GUARD: Duration = Duration::from_secs(60);

type Call = Pin<Box<dyn Future<Output = Result<String, Status>> + Send>>;

/// One row: a request, the code it must get, and a fragment of the message.
struct Row {
    request: String,
    code: Code,
    message_has: &'static str,
    call: Call,
}

fn row<T: Debug>(
    request: impl Into<String>,
    code: Code,
    message_has: &'static str,
    call: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Row {
    let call = async move { call.await.map(|answer| format!("{answer:?}")) };
    Row { request: request.into(), code, message_has, call: Box::pin(call) }
}

/// Runs every row; returns one line per row that did not get its code and message.
async fn run(rows: Vec<Row>) -> Vec<String> {
    let mut failures = Vec::new();
    for Row { request, code, message_has, call } in rows {
        let outcome = tokio::time::timeout(GUARD, call).await.expect("the server answers");
        match outcome {
            Ok(answer) => failures.push(format!("{request}: accepted, answered {answer:.200}")),
            Err(status) if status.code() != code || !status.message().contains(message_has) => {
                failures.push(format!(
                    "{request}: expected {code:?} with {message_has:?}, got {:?} {:?}",
                    status.code(),
                    status.message()
                ));
            }
            Err(_) => {}
        }
    }
    failures
}

struct Clients {
    topics: TopicServiceClient<Channel>,
    produce: ProduceServiceClient<Channel>,
    consume: ConsumeServiceClient<Channel>,
    groups: GroupServiceClient<Channel>,
}

fn create(name: &str, config: TopicConfig) -> CreateTopicRequest {
    CreateTopicRequest { name: name.into(), config: Some(config) }
}

fn partitions(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, ..Default::default() }
}

fn produce(topic: &str, partition: Option<u32>, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        correlation_id: 0,
        topic: topic.into(),
        partition,
        acks: 0,
        payload: Some(Payload::Records(RecordList { records })),
        producer: None,
    }
}

fn raw(bytes: impl Into<Bytes>) -> ProduceRequest {
    ProduceRequest {
        payload: Some(Payload::RawBatch(bytes.into())),
        ..produce("t", Some(0), vec![])
    }
}

fn stamped(timestamp_ms: i64) -> Record {
    Record { timestamp_ms: Some(timestamp_ms), ..record("x") }
}

fn fetch(offset: u64) -> FetchRequest {
    FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
        encoding: 0,
    }
}

fn subscribe(position: Position) -> SubscribeRequest {
    SubscribeRequest {
        topic: "t".into(),
        partition: 0,
        start: Some(StartPosition { position: Some(position) }),
        encoding: 0,
        stop_at_end: true,
    }
}

/// A valid raw batch of three records, for the damaged variants.
fn good_batch() -> BytesMut {
    let mut builder = BatchBuilder::new(BytesMut::new());
    for value in [&b"a"[..], b"b", b"c"] {
        builder.push(TimestampMs(1_000), None, Some(value), &[]);
    }
    builder.finish(ProducerStamp::NONE)
}

/// Rewrites the batch's CRC after a change to the bytes it covers, so that only the change
/// itself is wrong.
fn recrc(mut batch: BytesMut) -> BytesMut {
    let crc = crc32fast::hash(&batch[field::ATTRIBUTES..]);
    batch[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    batch
}

fn with(mut batch: BytesMut, at: usize, bytes: &[u8]) -> BytesMut {
    batch[at..at + bytes.len()].copy_from_slice(bytes);
    batch
}

/// The first answer of a subscription: its first message, or its refusal.
async fn first_message(
    mut consume: ConsumeServiceClient<Channel>,
    request: SubscribeRequest,
) -> Result<String, Status> {
    let mut stream = consume.subscribe(request).await?.into_inner();
    let message = stream.message().await?;
    Ok(format!("{message:?}"))
}

/// Joins a group over a stream and sends `then` once the first assignment arrives; a
/// non-OK commit result is returned as the status it carries.
async fn join_then(
    mut groups: GroupServiceClient<Channel>,
    join: JoinGroup,
    then: impl FnOnce(u64) -> Option<RequestKind> + Send + 'static,
) -> Result<String, Status> {
    let (requests, requests_rx) = tokio::sync::mpsc::channel(4);
    let send = |kind| MemberRequest { kind: Some(kind) };
    requests.send(send(RequestKind::Join(join))).await.unwrap();
    let mut events =
        groups.join(tokio_stream::wrappers::ReceiverStream::new(requests_rx)).await?.into_inner();
    let mut then = Some(then);
    while let Some(event) = events.message().await? {
        match event.kind {
            Some(EventKind::Assignment(assignment)) => {
                if let Some(request) = then.take().and_then(|then| then(assignment.generation)) {
                    requests.send(send(request)).await.unwrap();
                }
            }
            Some(EventKind::CommitResult(result)) if result.code != 0 => {
                return Err(Status::new(Code::from_i32(result.code), result.message));
            }
            Some(EventKind::CommitResult(result)) => return Ok(format!("{result:?}")),
            _ => {}
        }
    }
    Ok("the stream ended".into())
}

fn join(group: &str, topics: &[&str]) -> JoinGroup {
    JoinGroup {
        group: group.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn commit(generation: u64, topic: &str, offset: u64) -> Option<RequestKind> {
    Some(RequestKind::Commit(CommitOffsets {
        commit_id: 1,
        generation,
        offsets: vec![PartitionOffset { topic: topic.into(), partition: 0, offset }],
    }))
}

/// CreateTopicRequest with a name that is not UTF-8: a protobuf `string` cannot hold one,
/// so it is encoded by hand (field 1, bytes).
#[derive(Clone, PartialEq, prost::Message)]
struct CreateTopicRawName {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

async fn create_with_raw_name(channel: Channel, name: Vec<u8>) -> Result<String, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/spool.v1.TopicService/CreateTopic");
    let codec = tonic_prost::ProstCodec::<CreateTopicRawName, CreateTopicRawName>::default();
    let answer = grpc.unary(tonic::Request::new(CreateTopicRawName { name }), path, codec).await?;
    Ok(format!("{:?}", answer.into_inner()))
}

fn topic_rows(c: &Clients, channel: &Channel) -> Vec<Row> {
    let mut rows = Vec::new();
    let long = "x".repeat(250);
    for name in ["", ".", "..", "../escape", "../../tmp/escape", "/abs", "a/b", "a\\b", "a\0b"]
        .into_iter()
        .chain(["caf\u{e9}", "spaces here", "tab\there", long.as_str()])
    {
        let mut topics = c.topics.clone();
        let request = create(name, partitions(1));
        let call = async move { topics.create_topic(request).await };
        rows.push(row(
            format!("CreateTopic name {name:.40?}"),
            Code::InvalidArgument,
            "topic name",
            call,
        ));
    }
    for name in ["", "../t", &"y".repeat(300)] {
        let mut topics = c.topics.clone();
        let request = DescribeTopicRequest { name: name.into() };
        let call = async move { topics.describe_topic(request).await };
        rows.push(row(
            format!("DescribeTopic {name:.40?}"),
            Code::InvalidArgument,
            "topic name",
            call,
        ));
        let mut topics = c.topics.clone();
        let request = DeleteTopicRequest { name: name.into() };
        let call = async move { topics.delete_topic(request).await };
        rows.push(row(
            format!("DeleteTopic {name:.40?}"),
            Code::InvalidArgument,
            "topic name",
            call,
        ));
    }
    for bytes in [vec![0xff, 0xfe], b"ok\xc3".to_vec(), b"..\x80/x".to_vec()] {
        let call = create_with_raw_name(channel.clone(), bytes.clone());
        // tonic refuses a message that does not decode before the service sees it, and
        // answers INTERNAL for that: not the code we would pick, but no name is created.
        rows.push(row(
            format!("CreateTopic non-UTF-8 name {bytes:?}"),
            Code::Internal,
            "UTF-8",
            call,
        ));
    }
    let configs = [
        ("257 partitions", partitions(PARTITIONS_PER_TOPIC_MAX + 1), "partition count 257"),
        ("u32::MAX partitions", partitions(u32::MAX), "partition count 4294967295"),
        (
            "fsync interval 0",
            TopicConfig {
                fsync: Some(FsyncPolicy { policy: Some(Policy::IntervalMs(0)) }),
                ..partitions(1)
            },
            "fsync interval 0 ms",
        ),
        (
            "fsync interval u64::MAX",
            TopicConfig {
                fsync: Some(FsyncPolicy { policy: Some(Policy::IntervalMs(u64::MAX)) }),
                ..partitions(1)
            },
            "fsync interval",
        ),
        ("retention_ms 0", TopicConfig { retention_ms: Some(0), ..partitions(1) }, "retention_ms"),
        (
            "retention_bytes 0",
            TopicConfig { retention_bytes: Some(0), ..partitions(1) },
            "retention_bytes",
        ),
        (
            "segment_bytes 1",
            TopicConfig { segment_bytes: Some(1), ..partitions(1) },
            "segment size 1",
        ),
        (
            "segment_bytes u64::MAX",
            TopicConfig { segment_bytes: Some(u64::MAX), ..partitions(1) },
            "segment size",
        ),
    ];
    for (what, config, message_has) in configs {
        let mut topics = c.topics.clone();
        let request = create("fresh", config);
        let call = async move { topics.create_topic(request).await };
        rows.push(row(format!("CreateTopic {what}"), Code::InvalidArgument, message_has, call));
    }
    let mut topics = c.topics.clone();
    let call = async move { topics.create_topic(create("t", partitions(1))).await };
    rows.push(row("CreateTopic of an existing name", Code::AlreadyExists, "already exists", call));
    let mut topics = c.topics.clone();
    let request = AlterTopicRequest { name: "nope".into(), ..Default::default() };
    let call = async move { topics.alter_topic(request).await };
    rows.push(row("AlterTopic of an unknown topic", Code::NotFound, "nope", call));
    let mut topics = c.topics.clone();
    let request =
        AlterTopicRequest { name: "t".into(), segment_bytes: Some(1), ..Default::default() };
    let call = async move { topics.alter_topic(request).await };
    rows.push(row("AlterTopic segment_bytes 1", Code::InvalidArgument, "segment size 1", call));
    // The alter's own mistake comes before whether its topic exists.
    let mut topics = c.topics.clone();
    let request =
        AlterTopicRequest { name: "nope".into(), segment_bytes: Some(1), ..Default::default() };
    let call = async move { topics.alter_topic(request).await };
    rows.push(row(
        "AlterTopic segment_bytes 1 of an unknown topic",
        Code::InvalidArgument,
        "segment size 1",
        call,
    ));
    let mut topics = c.topics.clone();
    let call = async move {
        let config = TopicConfig { segment_bytes: Some(1), ..partitions(1) };
        topics.create_topic(create("t", config)).await
    };
    rows.push(row(
        "CreateTopic segment_bytes 1 of an existing name",
        Code::InvalidArgument,
        "segment size 1",
        call,
    ));
    rows
}

fn produce_rows(c: &Clients, producer_id: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |what: &str, code, message_has, request: ProduceRequest| {
        let mut produce = c.produce.clone();
        let call = async move { produce.produce(request).await };
        rows.push(row(format!("Produce {what}"), code, message_has, call));
    };
    add(
        "to an unknown topic",
        Code::NotFound,
        "topic nope does not exist",
        produce("nope", None, vec![record("x")]),
    );
    add("to a deleted topic", Code::NotFound, "gone", produce("gone", None, vec![record("x")]));
    add(
        "to partition 9 of 1",
        Code::NotFound,
        "partition 9 does not exist",
        produce("t", Some(9), vec![record("x")]),
    );
    add(
        "to partition u32::MAX",
        Code::NotFound,
        "does not exist",
        produce("t", Some(u32::MAX), vec![record("x")]),
    );
    add(
        "to a topic named ../t",
        Code::InvalidArgument,
        "topic name",
        produce("../t", Some(0), vec![record("x")]),
    );
    add(
        "with an empty record list",
        Code::InvalidArgument,
        "empty record list",
        produce("t", Some(0), vec![]),
    );
    add(
        "with no payload",
        Code::InvalidArgument,
        "no records",
        ProduceRequest { payload: None, ..produce("t", Some(0), vec![]) },
    );
    for timestamp_ms in [-1, i64::MIN, TIMESTAMP_MS_MAX + 1, i64::MAX] {
        add(
            &format!("with timestamp {timestamp_ms}"),
            Code::InvalidArgument,
            "timestamp",
            produce("t", Some(0), vec![stamped(timestamp_ms)]),
        );
    }
    let crowded =
        Record { headers: (0..65).map(|i| header(&i.to_string(), "v")).collect(), ..record("x") };
    add(
        "with 65 headers",
        Code::InvalidArgument,
        "65 headers",
        produce("t", Some(0), vec![crowded]),
    );
    let huge_header =
        Record { headers: vec![header("h", &"v".repeat(8 * 1024 * 1024))], ..record("x") };
    add(
        "with an 8 MiB header",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![huge_header]),
    );
    let huge_key = Record { key: Some(Bytes::from(vec![1u8; 8 * 1024 * 1024])), ..record("x") };
    add(
        "with an 8 MiB key",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![huge_key]),
    );
    let big = Record { value: Some(Bytes::from(vec![7u8; 8 * 1024 * 1024 + 1])), ..record("") };
    add(
        "with a record over 8 MiB",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![big]),
    );
    let half = Record { value: Some(Bytes::from(vec![7u8; 4 * 1024 * 1024])), ..record("") };
    add(
        "with a batch over 8 MiB",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![half.clone(), half]),
    );
    add(
        "with 100001 records",
        Code::InvalidArgument,
        "100001 records",
        produce("t", Some(0), vec![Record { value: None, ..record("") }; 100_001]),
    );
    for acks in [42, -1, i32::MAX] {
        add(
            &format!("with acks {acks}"),
            Code::InvalidArgument,
            "acks",
            ProduceRequest { acks, ..produce("t", Some(0), vec![record("x")]) },
        );
    }
    // A request malformed in itself is refused as such, whether its topic exists.
    add(
        "with acks 42, to a topic that does not exist",
        Code::InvalidArgument,
        "acks",
        ProduceRequest { acks: 42, ..produce("nope", Some(0), vec![record("x")]) },
    );
    add(
        "of no records, to a topic that does not exist",
        Code::InvalidArgument,
        "empty record list",
        produce("nope", Some(0), vec![]),
    );
    add(
        "with acks=all to an fsync never topic",
        Code::FailedPrecondition,
        "fsync policy `never`",
        ProduceRequest {
            acks: Acks::All as i32,
            ..produce("unsynced", Some(0), vec![record("x")])
        },
    );
    let stamp = |producer_id, producer_epoch, base_sequence| WireStamp {
        producer_id,
        producer_epoch,
        base_sequence,
    };
    add(
        "idempotent without a partition",
        Code::InvalidArgument,
        "must name its partition",
        ProduceRequest { producer: Some(stamp(1, 0, 0)), ..produce("t", None, vec![record("x")]) },
    );
    add(
        "with producer epoch 40000",
        Code::InvalidArgument,
        "producer_epoch 40000",
        ProduceRequest {
            producer: Some(stamp(1, 40_000, 0)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );
    add(
        "with base sequence -5",
        Code::InvalidArgument,
        "base_sequence -5",
        ProduceRequest {
            producer: Some(stamp(1, 0, -5)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );
    add(
        "with a producer id the server never gave",
        Code::FailedPrecondition,
        "producer id 987654321 was never allocated by this server",
        ProduceRequest {
            producer: Some(stamp(987_654_321, 0, 0)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );

    // Raw batches: each row breaks one thing of a valid batch.
    let good = good_batch();
    let length = good.len() - 12;
    let raw_rows: Vec<(&str, &str, BytesMut)> = vec![
        ("empty", "truncated", BytesMut::new()),
        ("of 11 bytes", "truncated", good[..11].into()),
        ("cut in its header", "truncated", good[..40].into()),
        ("cut in its records", "truncated", good[..good.len() - 1].into()),
        ("with a trailing byte", "length field accounts for", {
            let mut longer = good.clone();
            longer.extend_from_slice(&[0]);
            longer
        }),
        ("with a wrong CRC", "CRC mismatch", with(good.clone(), field::CRC, &[0, 0, 0, 0])),
        ("with a flipped record byte", "CRC mismatch", {
            let mut flipped = good.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 0x40;
            flipped
        }),
        ("with length 0", "length field", with(good.clone(), field::LENGTH, &0u32.to_le_bytes())),
        (
            "with length u32::MAX",
            "length field",
            with(good.clone(), field::LENGTH, &u32::MAX.to_le_bytes()),
        ),
        (
            "with length one short",
            "",
            with(good.clone(), field::LENGTH, &(length as u32 - 1).to_le_bytes()),
        ),
        (
            "with length one long",
            "truncated",
            with(good.clone(), field::LENGTH, &(length as u32 + 1).to_le_bytes()),
        ),
        ("with magic 0x00", "magic", with(good.clone(), field::MAGIC, &[0])),
        ("with Kafka's magic 2", "magic", with(good.clone(), field::MAGIC, &[2])),
        ("with version 9", "version 9", with(good.clone(), field::VERSION, &[9])),
        (
            "with a compression codec",
            "compression codec 1",
            recrc(with(good.clone(), field::ATTRIBUTES, &1u16.to_le_bytes())),
        ),
        (
            "claiming 0 records",
            "declares 0 records",
            recrc(with(good.clone(), field::RECORD_COUNT, &0u32.to_le_bytes())),
        ),
        (
            "claiming 2 of its 3 records",
            "",
            recrc(with(good.clone(), field::RECORD_COUNT, &2u32.to_le_bytes())),
        ),
        (
            "claiming 4 of its 3 records",
            "",
            recrc(with(good.clone(), field::RECORD_COUNT, &4u32.to_le_bytes())),
        ),
        (
            "claiming u32::MAX records",
            "records",
            recrc(with(good.clone(), field::RECORD_COUNT, &u32::MAX.to_le_bytes())),
        ),
        (
            "with max timestamp before first",
            "timestamp",
            recrc(with(good.clone(), field::MAX_TIMESTAMP, &0i64.to_le_bytes())),
        ),
        (
            "with a lying max timestamp",
            "timestamp",
            recrc(with(good.clone(), field::MAX_TIMESTAMP, &5_000i64.to_le_bytes())),
        ),
        (
            "of random bytes",
            "invalid batch",
            BytesMut::from(&b"not a batch at all, just some text"[..]),
        ),
        ("of only a magic byte", "", {
            let mut bytes = BytesMut::from(&[0u8; 12][..]);
            bytes.extend_from_slice(&[BATCH_MAGIC, 1]);
            bytes
        }),
    ];
    for (what, message_has, bytes) in raw_rows {
        add(
            &format!("a raw batch {what}"),
            Code::InvalidArgument,
            message_has,
            raw(bytes.freeze()),
        );
    }
    // Fire-and-forget waits for no append, so a damaged batch must be refused before it is
    // queued: answering OK and dropping it later would lose it without a word.
    add(
        "a raw batch with a wrong CRC, acks=none",
        Code::InvalidArgument,
        "CRC mismatch",
        ProduceRequest {
            acks: Acks::None as i32,
            ..raw(with(good.clone(), field::CRC, &[0, 0, 0, 0]).freeze())
        },
    );
    add(
        "a raw batch and a producer stamp",
        Code::InvalidArgument,
        "leave the request's `producer` unset",
        ProduceRequest { producer: Some(stamp(producer_id, 0, 0)), ..raw(good.clone().freeze()) },
    );
    // Larger than the server decodes at all: tonic refuses it (with OUT_OF_RANGE) unread.
    let mut unlimited = c.produce.clone().max_encoding_message_size(usize::MAX);
    let oversized =
        Record { value: Some(Bytes::from(vec![0u8; REQUEST_BYTES_MAX + 1])), ..record("") };
    let request = produce("t", Some(0), vec![oversized]);
    let call = async move { unlimited.produce(request).await };
    rows.push(row(
        "Produce a message over the request limit",
        Code::OutOfRange,
        "message length too large",
        call,
    ));
    rows
}

fn consume_rows(c: &Clients) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |what: &str, code, message_has, request: FetchRequest| {
        let mut consume = c.consume.clone();
        let call = async move { consume.fetch(request).await };
        rows.push(row(format!("Fetch {what}"), code, message_has, call));
    };
    add("past the end", Code::OutOfRange, "the log holds offsets 0 to 2", fetch(4));
    add("at u64::MAX", Code::OutOfRange, "offsets 0 to 2", fetch(u64::MAX));
    add(
        "of an unknown topic",
        Code::NotFound,
        "does not exist",
        FetchRequest { topic: "nope".into(), ..fetch(0) },
    );
    add(
        "of topic ../t",
        Code::InvalidArgument,
        "topic name",
        FetchRequest { topic: "../t".into(), ..fetch(0) },
    );
    add(
        "of an unknown partition",
        Code::NotFound,
        "partition 7",
        FetchRequest { partition: 7, ..fetch(0) },
    );
    add(
        "of max_bytes u32::MAX",
        Code::InvalidArgument,
        "max_bytes",
        FetchRequest { max_bytes: u32::MAX, ..fetch(0) },
    );
    add(
        "of max_bytes one over the limit",
        Code::InvalidArgument,
        "max_bytes",
        FetchRequest { max_bytes: FETCH_BYTES_MAX + 1, ..fetch(0) },
    );
    add(
        "waiting one ms over the limit",
        Code::InvalidArgument,
        "max_wait_ms",
        FetchRequest { max_wait_ms: FETCH_WAIT_MS_MAX + 1, ..fetch(0) },
    );
    add(
        "in encoding 7",
        Code::InvalidArgument,
        "encoding",
        FetchRequest { encoding: 7, ..fetch(0) },
    );
    add(
        "in encoding -1",
        Code::InvalidArgument,
        "encoding",
        FetchRequest { encoding: -1, ..fetch(0) },
    );
    add(
        "in encoding 7, from a topic that does not exist",
        Code::InvalidArgument,
        "encoding",
        FetchRequest { topic: "nope".into(), encoding: 7, ..fetch(0) },
    );
    let subscriptions = [
        ("from offset 4", Code::OutOfRange, "offsets 0 to 2", subscribe(Position::Offset(4))),
        (
            "from offset u64::MAX",
            Code::OutOfRange,
            "offsets 0 to 2",
            subscribe(Position::Offset(u64::MAX)),
        ),
        (
            "in encoding 9",
            Code::InvalidArgument,
            "encoding",
            SubscribeRequest { encoding: 9, ..subscribe(Position::Earliest(Earliest {})) },
        ),
        (
            "to a deleted topic",
            Code::NotFound,
            "gone",
            SubscribeRequest { topic: "gone".into(), ..subscribe(Position::Earliest(Earliest {})) },
        ),
        (
            "to topic ..",
            Code::InvalidArgument,
            "topic name",
            SubscribeRequest { topic: "..".into(), ..subscribe(Position::Earliest(Earliest {})) },
        ),
    ];
    for (what, code, message_has, request) in subscriptions {
        let call = first_message(c.consume.clone(), request);
        rows.push(row(format!("Subscribe {what}"), code, message_has, call));
    }
    // A live subscription to a topic that is deleted under it is ended, not left hanging.
    let (mut consume, mut topics) = (c.consume.clone(), c.topics.clone());
    let call = async move {
        let request = SubscribeRequest {
            topic: "deleting".into(),
            stop_at_end: false,
            ..subscribe(Position::Earliest(Earliest {}))
        };
        let mut stream = consume.subscribe(request).await?.into_inner();
        stream.message().await?.expect("the topic's one record");
        topics.delete_topic(DeleteTopicRequest { name: "deleting".into() }).await?;
        while stream.message().await?.is_some() {}
        Ok("the stream ended with OK")
    };
    rows.push(row("Subscribe to a topic deleted under it", Code::NotFound, "deleted", call));
    rows
}

fn group_rows(c: &Clients) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add_join = |what: &str, code, message_has, join: JoinGroup| {
        let call = join_then(c.groups.clone(), join, |_| None);
        rows.push(row(format!("Join {what}"), code, message_has, call));
    };
    add_join("group \"\"", Code::InvalidArgument, "group name", join("", &["t"]));
    add_join("group ../g", Code::InvalidArgument, "group name", join("../g", &["t"]));
    add_join("with no topics", Code::InvalidArgument, "", join("g", &[]));
    add_join("an unknown topic", Code::NotFound, "nope", join("g", &["nope"]));
    add_join("topic ../t", Code::InvalidArgument, "topic name", join("g", &["../t"]));
    // What the request gets wrong comes before what does not exist, in any order.
    add_join(
        "an unknown topic, then topic a/b",
        Code::InvalidArgument,
        "topic name",
        join("g", &["nope", "a/b"]),
    );
    add_join(
        "an unknown topic with reset 99",
        Code::InvalidArgument,
        "reset",
        JoinGroup { reset: 99, ..join("g", &["nope"]) },
    );
    add_join(
        "with a session timeout of 1 ms",
        Code::InvalidArgument,
        "session",
        JoinGroup { session_timeout_ms: 1, ..join("g", &["t"]) },
    );
    add_join(
        "with reset 99",
        Code::InvalidArgument,
        "reset",
        JoinGroup { reset: 99, ..join("g", &["t"]) },
    );
    add_join(
        "with encoding 5",
        Code::InvalidArgument,
        "encoding",
        JoinGroup { encoding: 5, ..join("g", &["t"]) },
    );
    // A stream whose first message is not a join.
    let mut groups = c.groups.clone();
    let call = async move {
        let first = MemberRequest { kind: Some(RequestKind::Heartbeat(Default::default())) };
        let mut events = groups.join(tokio_stream::iter([first])).await?.into_inner();
        events.message().await
    };
    rows.push(row(
        "Join stream opened by a heartbeat",
        Code::InvalidArgument,
        "group protocol",
        call,
    ));
    let stale = [
        ("a commit naming generation 0", 0, "t", 1, Code::FailedPrecondition, "generation"),
        (
            "a commit naming a future generation",
            u64::MAX,
            "t",
            1,
            Code::FailedPrecondition,
            "generation",
        ),
        (
            "a commit past the partition's end",
            1,
            "t",
            99,
            Code::InvalidArgument,
            "visible end is 3",
        ),
        ("a commit of a partition not owned", 1, "unsynced", 0, Code::FailedPrecondition, ""),
    ];
    for (i, (what, generation, topic, offset, code, message_has)) in stale.into_iter().enumerate() {
        // Each in its own group, so each member owns t's partition at generation 1.
        let call = join_then(c.groups.clone(), join(&format!("stale{i}"), &["t"]), move |g| {
            commit(if generation == 1 { g } else { generation }, topic, offset)
        });
        rows.push(row(format!("Join then {what}"), code, message_has, call));
    }
    let mut groups = c.groups.clone();
    let call =
        async move { groups.describe_group(DescribeGroupRequest { group: "../g".into() }).await };
    rows.push(row("DescribeGroup ../g", Code::InvalidArgument, "group name", call));
    let mut groups = c.groups.clone();
    let call = async move {
        groups.describe_group(DescribeGroupRequest { group: "unheard".into() }).await
    };
    rows.push(row("DescribeGroup of an unknown group", Code::NotFound, "unheard", call));
    let reset = |group: &str, topic: &str, to: Option<Position>| ResetGroupRequest {
        group: group.into(),
        topic: topic.into(),
        to: to.map(|position| StartPosition { position: Some(position) }),
    };
    for (what, code, message_has, request) in [
        (
            "to an offset past the end",
            Code::OutOfRange,
            "",
            reset("idle", "t", Some(Position::Offset(99))),
        ),
        ("of an unknown topic", Code::NotFound, "nope", reset("idle", "nope", None)),
        ("of topic ../t", Code::InvalidArgument, "topic name", reset("idle", "../t", None)),
        ("of group \"\"", Code::InvalidArgument, "group name", reset("", "t", None)),
    ] {
        let mut groups = c.groups.clone();
        let call = async move { groups.reset_group(request).await };
        rows.push(row(format!("ResetGroup {what}"), code, message_has, call));
    }
    rows
}

/// Every entry under `dir`, recursively, relative to it.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_its_status_and_the_server_stays_up() {
    let dir = LoneDataDir::new();
    let data = dir.data.clone();
    let server = TestServer::start(&data).await;
    server.create_topic("t", 1, Policy::Always(Always {})).await;
    server.create_topic("unsynced", 1, Policy::Never(Never {})).await;
    server.create_topic("gone", 1, Policy::Always(Always {})).await;
    server.produce("t", Some(0), vec![record("a"), record("b"), record("c")]).await.unwrap();
    server.create_topic("deleting", 1, Policy::Always(Always {})).await;
    server.produce("deleting", Some(0), vec![record("last words")]).await.unwrap();
    let mut topics = server.topics().await;
    topics.delete_topic(DeleteTopicRequest { name: "gone".into() }).await.unwrap();
    // A group with committed offsets and no members, for ResetGroup.
    let channel = server.channel().await;
    let mut groups = GroupServiceClient::new(channel.clone());
    groups
        .reset_group(ResetGroupRequest { group: "idle".into(), topic: "t".into(), to: None })
        .await
        .unwrap();

    let clients = Clients {
        topics,
        produce: server.producer().await,
        consume: server.consumer().await,
        groups,
    };
    let mut rows = topic_rows(&clients, &channel);
    let producer_id = clients
        .produce
        .clone()
        .init_producer(spool_proto::v1::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner()
        .producer_id;
    rows.extend(produce_rows(&clients, producer_id));
    rows.extend(consume_rows(&clients));
    rows.extend(group_rows(&clients));
    let count = rows.len();
    let failures = run(rows).await;
    eprintln!("bad input: {count} malformed requests, {} answered otherwise", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The edges of what is valid are accepted, as the API documents them: timestamps from 0
    // to the end of year 9999, a tombstone, partitions not set (one), a start time before
    // every record (the earliest) or after every record (the visible end).
    let edges = vec![stamped(0), stamped(TIMESTAMP_MS_MAX), Record { value: None, ..record("") }];
    server.produce("t", Some(0), edges).await.unwrap();
    let mut topics = server.topics().await;
    let created = topics.create_topic(create("defaulted", partitions(0))).await.unwrap();
    assert_eq!(created.into_inner().topic.unwrap().partitions.len(), 1);
    topics.delete_topic(DeleteTopicRequest { name: "defaulted".into() }).await.unwrap();
    for (timestamp_ms, records) in [(-1, 6), (i64::MIN, 6), (i64::MAX, 0)] {
        let replayed = server.replay("t", 0, Position::TimestampMs(timestamp_ms)).await.unwrap();
        assert_eq!(replayed.len(), records, "replay from timestamp {timestamp_ms}");
    }
    // Still serving, with nothing stored by any refused request.
    server.produce("t", Some(0), vec![record("d")]).await.unwrap();
    let stored = server.fetch_all("t", 0, 0).await;
    assert_eq!(stored.len(), 7, "only the accepted produces stored records");
    server.shutdown().await;

    let outside: Vec<_> =
        tree(dir.parent()).into_iter().filter(|p| !p.starts_with("data")).collect();
    assert!(outside.is_empty(), "files outside the data directory: {outside:?}");
    let topics: Vec<_> = std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut topics = topics;
    topics.sort();
    assert_eq!(topics, ["t", "unsynced"], "no topic directory but the created ones");
}
