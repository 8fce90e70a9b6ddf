"""kafka-python, unmodified, with idempotence on (its default), against Spool's Kafka listener:
produce 200 keyed records over two partitions with acks=all, then read both partitions back from
the beginning and check every record is there exactly once, at the offsets the delivery reports
gave.

Usage: kafka_python_idempotent.py HOST:PORT TOPIC (the topic exists, with 2 partitions).
Run by tests/kafka_admin.rs.
"""

import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

COUNT = 200


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    assert producer.config["enable_idempotence"], "idempotence is kafka-python's default"
    futures = [
        producer.send(topic, key=f"key-{i}".encode(), value=f"value {i}".encode(), partition=i % 2)
        for i in range(COUNT)
    ]
    producer.flush()
    delivered = {}
    for i, future in enumerate(futures):
        metadata = future.get(timeout=30)
        delivered[(metadata.partition, metadata.offset)] = f"value {i}".encode()
    producer.close()
    assert len(delivered) == COUNT, f"{len(delivered)} distinct offsets for {COUNT} records"
    print(f"produced {COUNT} records idempotently")

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    consumed = {}
    deadline = time.monotonic() + 60
    while len(consumed) < COUNT and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=1000).values():
            for record in batch:
                where = (record.partition, record.offset)
                assert where not in consumed, f"offset {where} read twice"
                consumed[where] = record.value
    consumer.close()
    assert consumed == delivered, f"consumed {len(consumed)} of {COUNT}"
    values = sorted(consumed.values())
    assert len(set(values)) == COUNT, "a record is stored twice"
    print(f"consumed {COUNT} records once each")


if __name__ == "__main__":
    main()
