"""kafka-python's KafkaAdminClient, unmodified, against Spool's Kafka listener: create TOPIC
(3 partitions, retention.ms 3600000), see a second create refused as TOPIC_ALREADY_EXISTS and a
bad name as INVALID_TOPIC_EXCEPTION, describe its configs and the broker's, raise its retention
with IncrementalAlterConfigs and describe it again, grow it to 5 partitions with CreatePartitions
(and see a shrink refused as INVALID_PARTITIONS), then create and delete TOPIC-doomed. Leaves
TOPIC with 5 partitions and retention.ms 7200000 for the caller to check over gRPC.

Usage: kafka_python_admin.py HOST:PORT TOPIC. Run by tests/kafka_admin.rs.
"""

import sys

from kafka.admin import ConfigResource, KafkaAdminClient, NewPartitions
from kafka.errors import InvalidPartitionsError, InvalidTopicError, TopicAlreadyExistsError


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

    admin.create_topics({doomed: {"num_partitions": 1, "replication_factor": 1}})
    assert doomed in admin.list_topics()
    admin.delete_topics([doomed])
    topics = admin.list_topics()
    assert doomed not in topics and topic in topics, topics
    admin.close()
    print("admin done")


if __name__ == "__main__":
    main()
