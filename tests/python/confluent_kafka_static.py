"""confluent-kafka (librdkafka), unmodified, as two static group members (`group.instance.id`)
through Spool's Kafka listener: one restarts within its session timeout and gets its
partitions back without a rebalance.

Usage: confluent_kafka_static.py HOST:PORT TOPIC GROUP; the topic exists with 4 partitions.
Run by tests/kafka_groups.rs, which then checks the group with DescribeGroups.

1. Members `static-a` and `static-b` (range assignor, 6 s session timeout) join and get
   disjoint assignments that cover the topic.
2. `static-a` is closed: a static member does not send LeaveGroup, so it keeps its place.
   A new consumer with the same instance id starts at once.
3. It is given a new member id and the same partitions, while `static-b` sees no rebalance:
   its assignment callback is not called again and nothing is revoked from it. Records
   produced afterwards are read by each member from its own partitions, and `static-b`'s
   commit is accepted in its generation.

Prints `old-a=ID new-a=ID b=ID` for the caller. Every wait is on a condition, with a deadline.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

PARTITIONS = 4
PATIENCE_S = 60


def wait_for(what, condition, consumers):
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        for member in consumers:
            member.poll_once()


class Member:
    """A static consumer and what its callbacks saw."""

    def __init__(self, bootstrap, topic, group, instance_id):
        self.assigned = set()
        self.assign_calls = 0
        self.revoke_calls = 0
        self.read = set()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.instance.id": instance_id,
            "partition.assignment.strategy": "range",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": 100,
            "session.timeout.ms": 6000,
        })
        self.consumer.subscribe([topic], on_assign=self.on_assign, on_revoke=self.on_revoke)

    def on_assign(self, consumer, partitions):
        self.assign_calls += 1
        self.assigned = {p.partition for p in partitions}

    def on_revoke(self, consumer, partitions):
        self.revoke_calls += 1
        self.assigned = set()

    def poll_once(self):
        message = self.consumer.poll(0.05)
        if message is not None and message.error() is None:
            self.read.add((message.partition(), message.value()))


def settled(a, b):
    """Both hold partitions of one generation: disjoint and together every partition."""
    return a.assigned and b.assigned and not (a.assigned & b.assigned) \
        and a.assigned | b.assigned == set(range(PARTITIONS))


def main():
    bootstrap, topic, group = sys.argv[1:4]
    a = Member(bootstrap, topic, group, "static-a")
    b = Member(bootstrap, topic, group, "static-b")
    wait_for("both members to be assigned", lambda: settled(a, b), [a, b])
    old_a_id = a.consumer.memberid()
    a_partitions, b_partitions = set(a.assigned), set(b.assigned)
    b_calls = (b.assign_calls, b.revoke_calls)

    # A static member's close does not leave the group: its place and partitions wait for it.
    a.consumer.close()
    restarted = Member(bootstrap, topic, group, "static-a")
    wait_for("the restarted member to be assigned", lambda: restarted.assigned, [restarted, b])
    new_a_id = restarted.consumer.memberid()
    assert new_a_id != old_a_id, "a restarted member is given a new member id"
    assert restarted.assigned == a_partitions, (restarted.assigned, a_partitions)

    # Records produced now are read by each member from its own partitions, with no rebalance.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    produced = {(p, f"after-{p}".encode()) for p in range(PARTITIONS)}
    for partition, value in sorted(produced):
        producer.produce(topic, value=value, partition=partition)
    assert producer.flush(30) == 0
    everything_read = lambda: produced <= restarted.read | b.read
    wait_for("the records produced after the restart", everything_read, [restarted, b])
    assert {p for p, _ in restarted.read} <= a_partitions, restarted.read
    assert {p for p, _ in b.read} <= b_partitions, b.read
    asked = [TopicPartition(topic, p, 1) for p in sorted(b_partitions)]
    for result in b.consumer.commit(offsets=asked, asynchronous=False):
        assert result.error is None, result
    assert (b.assign_calls, b.revoke_calls) == b_calls, "b saw a rebalance"
    assert b.assigned == b_partitions, (b.assigned, b_partitions)
    assert restarted.assign_calls == 1 and restarted.revoke_calls == 0
    print(f"old-a={old_a_id} new-a={new_a_id} b={b.consumer.memberid()}", flush=True)
    # Closing does not leave: the caller finds both members in the group.
    restarted.consumer.close()
    b.consumer.close()


if __name__ == "__main__":
    main()
