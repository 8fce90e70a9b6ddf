"""kafka-python, unmodified, consuming as a group through Spool's Kafka listener: the scenario
of `group_scenario.py`.

Usage: kafka_python_group.py HOST:PORT TOPIC GROUP ASSIGNOR (range, roundrobin, sticky or
cooperative-sticky); the topic exists with 4 partitions. Run by tests/kafka_groups.rs.
"""

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.structs import OffsetAndMetadata

import group_scenario

ASSIGNORS = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
    "cooperative-sticky": CooperativeStickyAssignor,
}


class KafkaPython:
    def produce(self, bootstrap, topic, values):
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
        )
        for partition, value in values:
            producer.send(topic, value=value, partition=partition)
        producer.flush()
        producer.close()

    def consumer(self, bootstrap, topic, group, assignor):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            partition_assignment_strategy=[ASSIGNORS[assignor]],
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=100,
            session_timeout_ms=6000,
            max_poll_interval_ms=10000,
        )
        consumer.subscribe([topic])
        return consumer

    def poll(self, consumer):
        batches = consumer.poll(timeout_ms=100)
        return [(r.partition, r.offset, r.value) for records in batches.values() for r in records]

    def commit(self, consumer, topic, offsets):
        consumer.commit({
            TopicPartition(topic, p): OffsetAndMetadata(offset, metadata, -1)
            for p, (offset, metadata) in offsets.items()
        })

    def committed(self, consumer, topic, partitions):
        found = {p: consumer.committed(TopicPartition(topic, p), metadata=True) for p in partitions}
        return {p: (c.offset, c.metadata) for p, c in found.items()}

    def close(self, consumer):
        consumer.close(autocommit=False)


if __name__ == "__main__":
    group_scenario.run(KafkaPython())
