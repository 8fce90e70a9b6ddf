"""confluent-kafka (librdkafka, bundled in its wheel), unmodified, against Spool's Kafka
listener: produce 20 records with keys and headers under each codec (none, gzip, snappy, lz4,
zstd) to one partition, then consume them all back from the beginning (no group: the partition
is assigned) and check they are the same, at the offsets the delivery reports gave.

Usage: confluent_kafka_roundtrip.py HOST:PORT TOPIC (the topic exists). Run by tests/kafka.rs.
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 20


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    sent = {}
    for codec in CODECS:
        reports = []
        producer = Producer(
            {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20}
        )
        for i in range(PER_CODEC):
            key = f"{codec}-{i}".encode()
            value = (f"{codec} value {i} " * 20).encode()
            producer.produce(
                topic,
                key=key,
                value=value,
                headers=[("codec", codec.encode())],
                partition=0,
                on_delivery=lambda error, message: reports.append(
                    (error, message.offset(), message.key(), message.value())
                ),
            )
        assert producer.flush(30) == 0, f"{codec}: not all delivered"
        failed = [r for r in reports if r[0] is not None]
        assert not failed, f"{codec}: {failed[:3]}"
        for _, offset, key, value in reports:
            sent[offset] = (key, value, codec)
        print(f"{codec}: {len(reports)} records delivered")
    total = len(CODECS) * PER_CODEC
    assert sorted(sent) == list(range(total)), sorted(sent)

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    received = []
    deadline = time.monotonic() + 60
    while len(received) < total and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        assert message.error() is None, message.error()
        received.append(message)
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.close()
    assert len(received) == total, f"consumed {len(received)} of {total}"
    assert (low, high) == (0, total), (low, high)
    for message in received:
        key, value, codec = sent[message.offset()]
        assert (message.key(), message.value()) == (key, value), message.offset()
        assert message.headers() == [("codec", codec.encode())], message.headers()
    print(f"consumed {total} records, identical")


if __name__ == "__main__":
    main()
