"""confluent-kafka (librdkafka), unmodified, with enable.idempotence=true, against Spool's Kafka
listener: produce 200 keyed records over two partitions, then read both partitions back from the
beginning and check every record is there exactly once, at the offsets the delivery reports gave.

Usage: confluent_kafka_idempotent.py HOST:PORT TOPIC (the topic exists, with 2 partitions).
Run by tests/kafka_admin.rs.
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

COUNT = 200


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    errors = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            # An idempotence failure is fatal: report it rather than carry on.
            "error_cb": errors.append,
        }
    )
    reports = []
    for i in range(COUNT):
        producer.produce(
            topic,
            key=f"key-{i}".encode(),
            value=f"value {i}".encode(),
            partition=i % 2,
            on_delivery=lambda error, message: reports.append(
                (error, message.partition(), message.offset(), message.value())
            ),
        )
    assert producer.flush(30) == 0, "not all delivered"
    assert not errors, errors
    failed = [r for r in reports if r[0] is not None]
    assert not failed, failed[:3]
    delivered = {(partition, offset): value for _, partition, offset, value in reports}
    assert len(delivered) == COUNT, f"{len(delivered)} distinct offsets for {COUNT} records"
    print(f"produced {COUNT} records idempotently")

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
    consumed = {}
    deadline = time.monotonic() + 60
    while len(consumed) < COUNT and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        assert message.error() is None, message.error()
        where = (message.partition(), message.offset())
        assert where not in consumed, f"offset {where} read twice"
        consumed[where] = message.value()
    consumer.close()
    assert consumed == delivered, f"consumed {len(consumed)} of {COUNT}"
    assert len(set(consumed.values())) == COUNT, "a record is stored twice"
    print(f"consumed {COUNT} records once each")


if __name__ == "__main__":
    main()
