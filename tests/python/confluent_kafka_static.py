"""confluent-kafka (librdkafka), unmodified, as static group members: the scenario of
`static_scenario.py`.

Usage: confluent_kafka_static.py HOST:PORT TOPIC GROUP; the topic exists with 4 partitions.
Run by tests/kafka_groups.rs.
"""

from confluent_kafka import Consumer, Producer, TopicPartition

import static_scenario


class ConfluentKafka:
    def consumer(self, bootstrap, topic, group, instance_id, member):
        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.instance.id": instance_id,
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": 100,
            "session.timeout.ms": 6000,
        })
        consumer.subscribe(
            [topic],
            on_assign=lambda _, partitions: member.on_assign(p.partition for p in partitions),
            on_revoke=lambda _, partitions: member.on_revoke(),
        )
        return consumer

    def poll(self, consumer):
        message = consumer.poll(0.05)
        if message is None or message.error() is not None:
            return []
        return [(message.partition(), message.value())]

    def member_id(self, consumer):
        return consumer.memberid()

    def generation(self, consumer):
        return None  # librdkafka's group metadata is opaque

    def produce(self, bootstrap, topic, values):
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for partition, value in values:
            producer.produce(topic, value=value, partition=partition)
        assert producer.flush(30) == 0

    def commit(self, consumer, topic, partitions):
        asked = [TopicPartition(topic, p, 1) for p in partitions]
        for result in consumer.commit(offsets=asked, asynchronous=False):
            assert result.error is None, result

    def close(self, consumer):
        consumer.close()


if __name__ == "__main__":
    static_scenario.run(ConfluentKafka())
