"""confluent-kafka (librdkafka), unmodified, against Spool's Kafka listener secured with TLS and
tokens: a client whose SASL/PLAIN password is a token with produce and consume grants writes
10 records and reads them back over TLS; a client with a password that is no token is refused
and reads nothing.

Usage: confluent_kafka_sasl.py HOST:PORT TOPIC CA_PEM_PATH TOKEN (the topic exists). Run by
tests/kafka_security.rs.
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

COUNT = 10


def config(bootstrap: str, ca: str, password: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "PLAIN",
        "sasl.username": "ignored",
        "sasl.password": password,
        "ssl.ca.location": ca,
    }


def main() -> None:
    bootstrap, topic, ca, token = sys.argv[1:5]
    reports = []
    producer = Producer({**config(bootstrap, ca, token), "acks": "all"})
    for i in range(COUNT):
        producer.produce(
            topic,
            key=f"key-{i}".encode(),
            value=f"value {i}".encode(),
            partition=0,
            on_delivery=lambda error, message: reports.append((error, message.offset())),
        )
    assert producer.flush(30) == 0, "not all delivered"
    assert [error for error, _ in reports if error is not None] == [], reports
    assert sorted(offset for _, offset in reports) == list(range(COUNT)), reports
    print(f"delivered {COUNT} records over SASL_SSL")

    consumer = Consumer(
        {**config(bootstrap, ca, token), "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    received = []
    deadline = time.monotonic() + 60
    while len(received) < COUNT and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        assert message.error() is None, message.error()
        received.append((message.key(), message.value()))
    consumer.close()
    expected = [(f"key-{i}".encode(), f"value {i}".encode()) for i in range(COUNT)]
    assert received == expected, received
    print(f"consumed {COUNT} records over SASL_SSL, identical")

    errors = []
    refused = Producer({**config(bootstrap, ca, "not-a-token"), "error_cb": errors.append})
    try:
        refused.list_topics(timeout=10)
        raise AssertionError("a client with a bad password listed the topics")
    except KafkaException as error:
        print(f"a bad password is refused: {error}")
    deadline = time.monotonic() + 20
    while not errors and time.monotonic() < deadline:
        refused.poll(0.5)
    assert any("uthentication" in str(e) for e in errors), errors
    print(f"its error: {errors[0]}")


if __name__ == "__main__":
    main()
