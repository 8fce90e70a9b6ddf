"""confluent-kafka (librdkafka), unmodified, consuming as a group through Spool's Kafka
listener: the scenario of `group_scenario.py`.

Usage: confluent_kafka_group.py HOST:PORT TOPIC GROUP ASSIGNOR (range, roundrobin or
cooperative-sticky); the topic exists with 4 partitions. Run by tests/kafka_groups.rs.
"""

from confluent_kafka import Consumer, Producer, TopicPartition

import group_scenario


class ConfluentKafka:
    def produce(self, bootstrap, topic, values):
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "max.in.flight": 1})
        for partition, value in values:
            producer.produce(topic, value=value, partition=partition)
        assert producer.flush(30) == 0

    def consumer(self, bootstrap, topic, group, assignor):
        consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "partition.assignment.strategy": assignor,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": 100,
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
        })
        consumer.subscribe([topic])
        return consumer

    def poll(self, consumer):
        message = consumer.poll(0.1)
        if message is None or message.error() is not None:
            return []
        return [(message.partition(), message.offset(), message.value())]

    def commit(self, consumer, topic, offsets):
        asked = [TopicPartition(topic, p, offset, metadata) for p, (offset, metadata) in offsets.items()]
        for result in consumer.commit(offsets=asked, asynchronous=False):
            assert result.error is None, result

    def committed(self, consumer, topic, partitions):
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        return {tp.partition: (tp.offset, tp.metadata) for tp in found}

    def close(self, consumer):
        consumer.close()


if __name__ == "__main__":
    group_scenario.run(ConfluentKafka())
