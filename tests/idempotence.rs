//! Idempotent producers end to end, against an in-process server: retried batches land
//! once and in order (also across a restart), sequence errors have their status codes,
//! and producer ids never repeat.

mod common;

use bytes::{Bytes, BytesMut};
use common::{TestServer, always, assert_code, record, value};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::{
    Acks, InitProducerRequest, PartitionAppend, ProduceRequest, ProducerStamp, RecordList,
};
use spool_storage::TimestampMs;
use spool_storage::batch::{BatchBuilder, ProducerStamp as BatchStamp};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

async fn init_producer(server: &TestServer) -> i64 {
    let answer = server.producer().await.init_producer(InitProducerRequest {}).await.unwrap();
    let answer = answer.into_inner();
    assert_eq!(answer.producer_epoch, 0);
    answer.producer_id
}

fn request(partition: u32, stamp: (i64, i32, i32), values: &[String]) -> ProduceRequest {
    ProduceRequest {
        correlation_id: 0,
        topic: "t".into(),
        partition: Some(partition),
        acks: Acks::All as i32,
        payload: Some(Payload::Records(RecordList {
            records: values.iter().map(|v| record(v)).collect(),
        })),
        producer: Some(ProducerStamp {
            producer_id: stamp.0,
            producer_epoch: stamp.1,
            base_sequence: stamp.2,
        }),
    }
}

async fn produce(
    client: &mut ProduceServiceClient<Channel>,
    request: ProduceRequest,
) -> Result<PartitionAppend, tonic::Status> {
    let mut answer = client.produce(request).await?.into_inner();
    assert_eq!(answer.appends.len(), 1);
    Ok(answer.appends.remove(0))
}

/// The values of the batch number `n` of partition `p`: three records.
fn values(p: u32, n: usize) -> Vec<String> {
    (0..3).map(|i| format!("p{p}-{:04}", n * 3 + i)).collect()
}

/// A producer that retries every batch: on a produce stream it sends each batch twice in a
/// row (the retry is in flight before the original's answer arrives, often in the same group
/// commit), and on unary calls it throws the first answer away and sends again. Halfway it
/// stops the server and, after the restart, retries its last batch once more before it goes
/// on. Each record is in the log exactly once, in order, and every retry was answered with
/// the original's offsets.
#[tokio::test]
async fn a_producer_that_retries_every_batch_leaves_each_record_once_and_in_order_across_a_restart()
{
    let data = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    let producer_id = init_producer(&server).await;
    let batches = 40;
    let mut offsets: Vec<Vec<PartitionAppend>> = vec![Vec::new(), Vec::new()];
    let mut last_request = None;
    for phase in 0..2 {
        let range = if phase == 0 { 0..batches / 2 } else { batches / 2..batches };
        // Partition 0 goes through a produce stream, each batch sent twice in a row.
        let (requests, receiver) = mpsc::channel(2 * batches);
        let mut client = server.producer().await;
        let mut answers =
            client.produce_stream(ReceiverStream::new(receiver)).await.unwrap().into_inner();
        for n in range.clone() {
            let mut original = request(0, (producer_id, 0, (n * 3) as i32), &values(0, n));
            original.correlation_id = 2 * n as u64;
            let mut retry = original.clone();
            retry.correlation_id = 2 * n as u64 + 1;
            requests.send(original).await.unwrap();
            requests.send(retry).await.unwrap();
        }
        drop(requests);
        while let Some(answer) = answers.message().await.unwrap() {
            let Some(StreamResult::Ok(ok)) = answer.result else {
                panic!("batch {} failed: {answer:?}", answer.correlation_id / 2);
            };
            let append = ok.appends[0];
            if answer.correlation_id % 2 == 0 {
                offsets[0].push(append);
            } else {
                assert_eq!(offsets[0].last(), Some(&append), "a retry gets the original's offsets");
            }
        }
        // Partition 1 through unary calls: the first answer is dropped, the retry answers.
        let mut client = server.producer().await;
        for n in range {
            let batch = request(1, (producer_id, 0, (n * 3) as i32), &values(1, n));
            let _dropped = produce(&mut client, batch.clone()).await.unwrap();
            let retried = produce(&mut client, batch.clone()).await.unwrap();
            offsets[1].push(retried);
            last_request = Some(batch);
        }
        if phase == 0 {
            server.shutdown().await;
            server = TestServer::start(data.path()).await;
            // The state was rebuilt from the log: the last batch is still a duplicate.
            let mut client = server.producer().await;
            let retried = produce(&mut client, last_request.clone().unwrap()).await.unwrap();
            assert_eq!(Some(&retried), offsets[1].last());
        }
    }
    for partition in 0..2u32 {
        let stored = server.fetch_all("t", partition, 0).await;
        let stored: Vec<&str> = stored.iter().map(value).collect();
        let expected: Vec<String> = (0..batches).flat_map(|n| values(partition, n)).collect();
        assert_eq!(stored, expected, "partition {partition}: each record once, in order");
        let bases: Vec<u64> = offsets[partition as usize].iter().map(|a| a.base_offset).collect();
        let expected_bases: Vec<u64> = (0..batches as u64).map(|n| n * 3).collect();
        assert_eq!(bases, expected_bases);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn sequence_errors_have_their_codes() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    let id = init_producer(&server).await;
    let mut client = server.producer().await;
    let one = |seq: i32| vec![format!("r{seq}")];
    produce(&mut client, request(0, (id, 0, 0), &one(0))).await.unwrap();
    // A gap: sequence 1 was never sent.
    assert_code(
        produce(&mut client, request(0, (id, 0, 2), &one(2))).await,
        Code::FailedPrecondition,
        "expects 1",
    );
    for seq in 1..8 {
        produce(&mut client, request(0, (id, 0, seq), &one(seq))).await.unwrap();
    }
    // Older than the 5 batches remembered.
    assert_code(
        produce(&mut client, request(0, (id, 0, 0), &one(0))).await,
        Code::AlreadyExists,
        "appended long ago",
    );
    // A newer epoch restarts at 0 and fences the old one.
    produce(&mut client, request(0, (id, 1, 0), &one(100))).await.unwrap();
    assert_code(
        produce(&mut client, request(0, (id, 0, 8), &one(8))).await,
        Code::Aborted,
        "fenced",
    );
    assert_code(
        produce(&mut client, request(0, (id + 1_000_000, 0, 0), &one(0))).await,
        Code::FailedPrecondition,
        "never allocated",
    );
    let mut no_partition = request(0, (id, 1, 1), &one(1));
    no_partition.partition = None;
    assert_code(
        produce(&mut client, no_partition).await,
        Code::InvalidArgument,
        "must name its partition",
    );
    assert_code(
        produce(&mut client, request(0, (id, 40_000, 0), &one(0))).await,
        Code::InvalidArgument,
        "producer_epoch 40000",
    );
    assert_code(
        produce(&mut client, request(0, (id, 1, -1), &one(0))).await,
        Code::InvalidArgument,
        "negative",
    );
    let mut raw_with_field = request(0, (id, 1, 1), &one(1));
    raw_with_field.payload = Some(Payload::RawBatch(Bytes::from_static(b"x")));
    assert_code(produce(&mut client, raw_with_field).await, Code::InvalidArgument, "header");
    // Nothing refused was appended.
    let stored: Vec<String> =
        server.fetch_all("t", 0, 0).await.iter().map(|r| value(r).to_owned()).collect();
    let expected: Vec<String> = (0..8).map(|s| format!("r{s}")).chain(["r100".into()]).collect();
    assert_eq!(stored, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn raw_batches_carry_their_stamp_and_are_deduplicated() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    let id = init_producer(&server).await;
    let raw = |sequence: i32, text: &str| {
        let mut builder = BatchBuilder::new(BytesMut::new());
        builder.push(TimestampMs(1), None, Some(text.as_bytes()), &[]);
        builder.push(TimestampMs(1), None, Some(text.as_bytes()), &[]);
        let stamp = BatchStamp { producer_id: id, producer_epoch: 0, base_sequence: sequence };
        ProduceRequest {
            correlation_id: 0,
            topic: "t".into(),
            partition: Some(0),
            acks: Acks::All as i32,
            payload: Some(Payload::RawBatch(builder.finish(stamp).freeze())),
            producer: None,
        }
    };
    let mut client = server.producer().await;
    let first = produce(&mut client, raw(0, "a")).await.unwrap();
    assert_eq!(produce(&mut client, raw(0, "a")).await.unwrap(), first);
    let second = produce(&mut client, raw(2, "b")).await.unwrap();
    assert_eq!((second.base_offset, second.last_offset), (2, 3));
    assert_code(produce(&mut client, raw(9, "c")).await, Code::FailedPrecondition, "expects 4");
    let mut routed = raw(4, "d");
    routed.partition = None;
    assert_code(
        produce(&mut client, routed).await,
        Code::InvalidArgument,
        "must name its partition",
    );
    assert_eq!(server.fetch_all("t", 0, 0).await.len(), 4);
    server.shutdown().await;
}

#[tokio::test]
async fn producer_ids_never_repeat_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let server = TestServer::start(data.path()).await;
        for _ in 0..3 {
            seen.push(init_producer(&server).await);
        }
        server.shutdown().await;
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seen, "ids grow and never repeat: {seen:?}");
}
