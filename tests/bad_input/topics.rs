//! The rows of TopicService: names that escape the data directory, are empty, overlong or not
//! UTF-8; fsync, retention and segment settings out of range; topics that exist or do not.

use spool_broker::limits::PARTITIONS_PER_TOPIC_MAX;
use spool_proto::v1::fsync_policy::Policy;
use spool_proto::v1::{
    AlterTopicRequest, DeleteTopicRequest, DescribeTopicRequest, FsyncPolicy, TopicConfig,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Clients, Row, create, partitions, row};

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

pub fn topic_rows(c: &Clients, channel: &Channel) -> Vec<Row> {
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
        (
            "compression 7",
            TopicConfig { compression: 7, ..partitions(1) },
            "compression is 7, which is not one of its values",
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
    let mut topics = c.topics.clone();
    let request =
        AlterTopicRequest { name: "t".into(), compression: Some(-1), ..Default::default() };
    let call = async move { topics.alter_topic(request).await };
    rows.push(row("AlterTopic compression -1", Code::InvalidArgument, "compression is -1", call));
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
