"""kafka-python's KafkaAdminClient, unmodified, against Spool's Kafka listener: create TOPIC
(3 partitions, retention.ms 3600000), see a second create refused as TOPIC_ALREADY_EXISTS and a
bad name as INVALID_TOPIC_EXCEPTION, describe its configs and the broker's, raise its retention
with IncrementalAlterConfigs and describe it again, grow it to 5 partitions with CreatePartitions
(and see a shrink refused as INVALID_PARTITIONS), delete a group's committed offsets with
OffsetDelete (refused GROUP_SUBSCRIBED_TO_TOPIC for the topic a live member consumes), then create
and delete TOPIC-doomed. Leaves TOPIC with 5 partitions and retention.ms 7200000 for the caller to
check over gRPC.

Usage: kafka_python_admin.py HOST:PORT TOPIC. Run by tests/kafka_admin.rs.
"""

import sys
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, KafkaAdminClient, NewPartitions
from kafka.errors import (
    GroupIdNotFoundError,
    GroupSubscribedToTopicError,
    InvalidPartitionsError,
    InvalidTopicError,
    NoError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata


def topic_configs(admin: KafkaAdminClient, topic: str) -> dict:
    described = admin.describe_configs([ConfigResource("TOPIC", topic)], config_filter="all")
    return {name: config["value"] for name, config in described["topic"][topic].items()}


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    doomed = f"{topic}-doomed"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    new = {"num_partitions": 3, "replication_factor": 1, "configs": {"retention.ms": "3600000"}}
    admin.create_topics({topic: new})
    try:
        admin.create_topics({topic: new})
        raise AssertionError("a second create succeeded")
    except TopicAlreadyExistsError:
        print("duplicate create: TOPIC_ALREADY_EXISTS")
    try:
        admin.create_topics({"no spaces allowed": {"num_partitions": 1, "replication_factor": 1}})
        raise AssertionError("a bad name was created")
    except InvalidTopicError:
        print("bad name: INVALID_TOPIC_EXCEPTION")

    configs = topic_configs(admin, topic)
    assert configs["retention.ms"] == "3600000", configs
    assert configs["cleanup.policy"] == "delete", configs
    for key in ["retention.bytes", "segment.bytes", "max.message.bytes", "min.insync.replicas",
                "compression.type"]:
        assert key in configs, (key, configs)
    broker = admin.describe_configs([ConfigResource("BROKER", "0")], config_filter="all")
    assert broker["broker"]["0"]["broker.id"]["value"] == "0", broker
    print(f"described: {sorted(configs)}")

    altered = admin.alter_configs(
        [ConfigResource("TOPIC", topic, configs={"retention.ms": "7200000"})], incremental=True
    )
    assert altered["topic"][topic] == "OK", altered
    assert topic_configs(admin, topic)["retention.ms"] == "7200000"
    print("altered retention.ms to 7200000")

    admin.create_partitions({topic: NewPartitions(total_count=5)})
    try:
        admin.create_partitions({topic: NewPartitions(total_count=2)})
        raise AssertionError("a shrink succeeded")
    except InvalidPartitionsError:
        print("shrink: INVALID_PARTITIONS")
    described = admin.describe_topics([topic])
    assert len(described[0]["partitions"]) == 5, described
    print("grew to 5 partitions")

    delete_group_offsets(admin, bootstrap, topic)

    admin.create_topics({doomed: {"num_partitions": 1, "replication_factor": 1}})
    assert doomed in admin.list_topics()
    admin.delete_topics([doomed])
    topics = admin.list_topics()
    assert doomed not in topics and topic in topics, topics
    admin.close()
    print("admin done")


def delete_group_offsets(admin: KafkaAdminClient, bootstrap: str, topic: str) -> None:
    """A group's committed offsets of TOPIC and TOPIC-other, deleted: TOPIC's at once, and
    TOPIC-other's once the member consuming it has left."""
    group, other = f"{topic}-readers", f"{topic}-other"
    admin.create_topics({other: {"num_partitions": 1, "replication_factor": 1}})
    mine, theirs = TopicPartition(topic, 0), TopicPartition(other, 0)
    committed = {mine: OffsetAndMetadata(0, "", -1), theirs: OffsetAndMetadata(0, "", -1)}
    assert admin.alter_group_offsets(group, committed) == {mine: NoError, theirs: NoError}
    consumer = KafkaConsumer(
        other, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the consumer was never assigned a partition"
        consumer.poll(timeout_ms=200)
    deleted = admin.delete_group_offsets(group, [mine, theirs])
    assert deleted == {mine: NoError, theirs: GroupSubscribedToTopicError}, deleted
    offsets = {tp: o.offset for tp, o in admin.list_group_offsets(group)[group].items()}
    assert offsets == {theirs: 0}, offsets
    consumer.close()
    assert admin.delete_group_offsets(group, [theirs]) == {theirs: NoError}
    assert admin.list_group_offsets(group) == {group: {}}
    try:
        admin.delete_group_offsets(group, [theirs])
        raise AssertionError("offsets of a group with none were deleted")
    except GroupIdNotFoundError:
        print("offsets deleted; then GROUP_ID_NOT_FOUND")


if __name__ == "__main__":
    main()
