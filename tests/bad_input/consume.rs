//! The rows of ConsumeService: fetches and subscriptions past the end, of topics and
//! partitions that are not there, over the limits, and in encodings that do not exist.

use spool_proto::limits::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::{DeleteTopicRequest, FetchRequest, StartPosition, SubscribeRequest};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Clients, Row, row};

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

/// The first answer of a subscription: its first message, or its refusal.
async fn first_message(
    mut consume: ConsumeServiceClient<Channel>,
    request: SubscribeRequest,
) -> Result<String, Status> {
    let mut stream = consume.subscribe(request).await?.into_inner();
    let message = stream.message().await?;
    Ok(format!("{message:?}"))
}

pub fn consume_rows(c: &Clients) -> Vec<Row> {
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
