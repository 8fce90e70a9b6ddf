"""kafka-python, unmodified, as static group members: the scenario of `static_scenario.py`.

Usage: kafka_python_static.py HOST:PORT TOPIC GROUP; the topic exists with 4 partitions.
Run by tests/kafka_groups.rs.
"""

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import OffsetAndMetadata

import static_scenario


class Listener(ConsumerRebalanceListener):
    def __init__(self, member):
        self.member = member

    def on_partitions_assigned(self, assigned):
        self.member.on_assign(p.partition for p in assigned)

    def on_partitions_revoked(self, revoked):
        self.member.on_revoke()


class KafkaPython:
    def consumer(self, bootstrap, topic, group, instance_id, member):
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            group_instance_id=instance_id,
            partition_assignment_strategy=[RangePartitionAssignor],
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=100,
            session_timeout_ms=6000,
        )
        consumer.subscribe([topic], listener=Listener(member))
        return consumer

    def poll(self, consumer):
        batches = consumer.poll(timeout_ms=50)
        return [(r.partition, r.value) for records in batches.values() for r in records]

    def member_id(self, consumer):
        return consumer.group_metadata().member_id

    def generation(self, consumer):
        return consumer.group_metadata().generation_id

    def produce(self, bootstrap, topic, values):
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                 enable_idempotence=False,
                                 max_in_flight_requests_per_connection=1)
        for partition, value in values:
            producer.send(topic, value=value, partition=partition)
        producer.flush()
        producer.close()

    def commit(self, consumer, topic, partitions):
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(1, "", -1) for p in partitions})

    def close(self, consumer):
        consumer.close(autocommit=False)


if __name__ == "__main__":
    static_scenario.run(KafkaPython())
