"""kafka-python, unmodified, against Spool's Kafka listener: produce 100 records with keys and
headers to one partition, then consume them back from the beginning (no group: the partition is
assigned) and check they are the same, at contiguous offsets matching the delivery reports.

Usage: kafka_python_roundtrip.py HOST:PORT TOPIC (the topic exists, with at least 2 partitions).
Run by tests/kafka.rs.
"""

import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

COUNT = 100
PARTITION = 1


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    # Idempotence off: the plain produce path. kafka_python_idempotent.py runs it on.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    futures = [
        producer.send(
            topic,
            key=f"key-{i}".encode(),
            value=f"value {i}".encode(),
            headers=[("index", str(i).encode())],
            partition=PARTITION,
            timestamp_ms=1_700_000_000_000 + i,
        )
        for i in range(COUNT)
    ]
    producer.flush()
    offsets = [future.get(timeout=30).offset for future in futures]
    assert offsets == list(range(COUNT)), offsets
    producer.close()
    print(f"produced {COUNT} records at offsets 0 to {COUNT - 1}")

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partition = TopicPartition(topic, PARTITION)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    records = []
    deadline = time.monotonic() + 60
    while len(records) < COUNT and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    consumer.close()
    assert len(records) == COUNT, f"consumed {len(records)} of {COUNT} records"
    for i, record in enumerate(records):
        assert record.offset == i, (i, record.offset)
        assert record.key == f"key-{i}".encode(), record
        assert record.value == f"value {i}".encode(), record
        assert record.timestamp == 1_700_000_000_000 + i, record
        assert list(record.headers) == [("index", str(i).encode())], record
    print(f"consumed {COUNT} records, identical")


if __name__ == "__main__":
    main()
