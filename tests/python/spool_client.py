"""A Spool client that no one here wrote: stubs generated from proto/ by grpcio-tools.

Usage: spool_client.py GENERATED_DIR ADDRESS TOKEN

Creates a topic, produces records with keys and headers, subscribes from an offset and
checks it reads back exactly what was written. Prints one JSON line describing what it read;
exits non-zero (with the reason) on any difference.
"""

import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from spool.v1 import consume_pb2, consume_pb2_grpc  # noqa: E402
from spool.v1 import produce_pb2, produce_pb2_grpc  # noqa: E402
from spool.v1 import records_pb2  # noqa: E402
from spool.v1 import topics_pb2, topics_pb2_grpc  # noqa: E402

ADDRESS, TOKEN = sys.argv[2], sys.argv[3]
TOPIC = "python-events"
METADATA = (("authorization", f"Bearer {TOKEN}"),)


def record(key, value, headers):
    return records_pb2.Record(
        key=key,
        value=value,
        headers=[records_pb2.Header(key=k, value=v) for k, v in headers],
    )


WRITTEN = [
    record(b"user-1", b"signed up", [("source", b"web"), ("trace", b"\x00\x01\xff")]),
    record(b"user-2", b"\xe2\x9c\x93 paid", [("source", b"mobile")]),
    record(b"user-1", b"logged in", []),
    record(b"user-3", b"", [("empty", b"")]),
]


def main():
    channel = grpc.insecure_channel(ADDRESS)
    topics = topics_pb2_grpc.TopicServiceStub(channel)
    created = topics.CreateTopic(
        topics_pb2.CreateTopicRequest(name=TOPIC, config=topics_pb2.TopicConfig(partitions=1)),
        metadata=METADATA,
    )
    assert created.topic.name == TOPIC, created

    producer = produce_pb2_grpc.ProduceServiceStub(channel)
    # Two requests, so the subscription starts inside the log rather than at its start.
    first = producer.Produce(
        produce_pb2.ProduceRequest(
            topic=TOPIC, partition=0, records=records_pb2.RecordList(records=WRITTEN[:1])
        ),
        metadata=METADATA,
    )
    assert (first.appends[0].base_offset, first.appends[0].last_offset) == (0, 0), first
    second = producer.Produce(
        produce_pb2.ProduceRequest(
            topic=TOPIC,
            partition=0,
            acks=produce_pb2.ACKS_ALL,
            records=records_pb2.RecordList(records=WRITTEN[1:]),
        ),
        metadata=METADATA,
    )
    assert (second.appends[0].base_offset, second.appends[0].last_offset) == (1, 3), second

    consumer = consume_pb2_grpc.ConsumeServiceStub(channel)
    start_offset = 1
    stream = consumer.Subscribe(
        consume_pb2.SubscribeRequest(
            topic=TOPIC,
            partition=0,
            start=consume_pb2.StartPosition(offset=start_offset),
            stop_at_end=True,
        ),
        metadata=METADATA,
    )
    read = [r for message in stream for r in message.records]
    expected = WRITTEN[start_offset:]
    assert len(read) == len(expected), (len(read), len(expected))
    for offset, (got, want) in enumerate(zip(read, expected), start=start_offset):
        assert got.offset == offset, (got.offset, offset)
        assert got.key == want.key, (offset, got.key, want.key)
        assert got.value == want.value, (offset, got.value, want.value)
        got_headers = [(h.key, h.value) for h in got.headers]
        want_headers = [(h.key, h.value) for h in want.headers]
        assert got_headers == want_headers, (offset, got_headers, want_headers)
        assert got.timestamp_ms > 0, got
    print(
        json.dumps(
            {
                "topic": TOPIC,
                "read": [
                    {"offset": r.offset, "key": r.key.decode(), "headers": len(r.headers)}
                    for r in read
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
