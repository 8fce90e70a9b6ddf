"""confluent-kafka's AdminClient (librdkafka), unmodified, against Spool's Kafka listener: create
TOPIC (3 partitions, retention.ms 3600000), see a second create refused as TOPIC_ALREADY_EXISTS
and a bad name as INVALID_TOPIC_EXCEPTION, describe its configs and the broker's, raise its
retention with IncrementalAlterConfigs and describe it again, grow it to 5 partitions with
CreatePartitions (and see a shrink refused as INVALID_PARTITIONS), then create and delete
TOPIC-doomed, commit an offset for group TOPIC-group and delete that group (a second deletion is
GROUP_ID_NOT_FOUND). Leaves TOPIC with 5 partitions and retention.ms 7200000 for the caller to
check over gRPC.

Usage: confluent_kafka_admin.py HOST:PORT TOPIC. Run by tests/kafka_admin.rs.
"""

import sys

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)


def error_code(future) -> int:
    try:
        future.result()
    except KafkaException as error:
        return error.args[0].code()
    raise AssertionError("it succeeded")


def topic_configs(admin: AdminClient, topic: str) -> dict:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    described = admin.describe_configs([resource], request_timeout=30)[resource].result()
    return {name: entry.value for name, entry in described.items()}


def main() -> None:
    bootstrap, topic = sys.argv[1], sys.argv[2]
    doomed = f"{topic}-doomed"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, num_partitions=3, replication_factor=1, config={"retention.ms": "3600000"})
    admin.create_topics([new], operation_timeout=30)[topic].result()
    duplicate = admin.create_topics([new], operation_timeout=30)[topic]
    assert error_code(duplicate) == KafkaError.TOPIC_ALREADY_EXISTS
    print("duplicate create: TOPIC_ALREADY_EXISTS")
    bad = NewTopic("no spaces allowed", num_partitions=1, replication_factor=1)
    assert error_code(admin.create_topics([bad])["no spaces allowed"]) == KafkaError.TOPIC_EXCEPTION
    print("bad name: INVALID_TOPIC_EXCEPTION")

    configs = topic_configs(admin, topic)
    assert configs["retention.ms"] == "3600000", configs
    assert configs["cleanup.policy"] == "delete", configs
    for key in ["retention.bytes", "segment.bytes", "max.message.bytes", "min.insync.replicas",
                "compression.type"]:
        assert key in configs, (key, configs)
    broker = ConfigResource(ResourceType.BROKER, "0")
    broker_configs = admin.describe_configs([broker])[broker].result()
    assert broker_configs["broker.id"].value == "0", broker_configs
    print(f"described: {sorted(configs)}")

    alter = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([alter])[alter].result()
    assert topic_configs(admin, topic)["retention.ms"] == "7200000"
    print("altered retention.ms to 7200000")

    admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=30)[topic].result()
    shrink = admin.create_partitions([NewPartitions(topic, 2)])[topic]
    assert error_code(shrink) == KafkaError.INVALID_PARTITIONS
    print("shrink: INVALID_PARTITIONS")
    partitions = admin.list_topics(topic=topic, timeout=10).topics[topic].partitions
    assert len(partitions) == 5, partitions
    print("grew to 5 partitions")

    admin.create_topics([NewTopic(doomed, num_partitions=1, replication_factor=1)])[doomed].result()
    admin.delete_topics([doomed], operation_timeout=30)[doomed].result()
    topics = admin.list_topics(timeout=10).topics
    assert doomed not in topics and topic in topics, sorted(topics)

    group = f"{topic}-group"
    committed = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 42)])]
    admin.alter_consumer_group_offsets(committed)[group].result()
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    assert [p.offset for p in listed.result().topic_partitions] == [42], listed.result()
    admin.delete_consumer_groups([group], request_timeout=30)[group].result()
    again = admin.delete_consumer_groups([group], request_timeout=30)[group]
    assert error_code(again) == KafkaError.GROUP_ID_NOT_FOUND
    print("group deleted; again: GROUP_ID_NOT_FOUND")
    print("admin done")


if __name__ == "__main__":
    main()
