"""confluent-kafka (librdkafka), unmodified, consuming as a group through Spool's Kafka listener.

Two consumers share a 4-partition topic under one assignor: their assignments are disjoint and
complete and together they read every record; when one leaves, the other takes every
partition; it commits with metadata and closes; a new consumer of the same group resumes at
the committed offsets, and reads the metadata back.

Usage: confluent_kafka_group.py HOST:PORT TOPIC GROUP ASSIGNOR (range, roundrobin or
cooperative-sticky); the topic exists with 4 partitions. Run by tests/kafka_groups.rs.
"""

import faulthandler
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

PARTITIONS = 4
FIRST = 10  # records per partition before the commit
LATER = 5  # records per partition after it
PATIENCE_S = 60


class Stalled(Exception):
    """The clients made no progress in time (exit status 3, see tests/kafka_groups.rs)."""


def wait_for(what, condition, *members):
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            seen = [(sorted(m.snapshot()[0]), len(m.snapshot()[1])) for m in members]
            raise Stalled(f"timed out waiting for {what}; (owned, read) by each: {seen}")
        time.sleep(0.05)


def produce(bootstrap, topic, start, count):
    # One request at a time: the records of a partition are stored in the order sent.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "max.in.flight": 1})
    for partition in range(PARTITIONS):
        for i in range(start, start + count):
            producer.produce(topic, value=f"p{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


class Member(threading.Thread):
    """One consumer polling in its own thread; what it owns and reads, under a lock."""

    def __init__(self, bootstrap, topic, group, assignor):
        super().__init__(daemon=True)
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "partition.assignment.strategy": assignor,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": 100,
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 10000,
        })
        self.consumer.subscribe([topic])
        self.lock = threading.Lock()
        self.owned = set()
        self.read = {}
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                message = self.consumer.poll(0.1)
                with self.lock:
                    if message is not None and message.error() is None:
                        self.read[(message.partition(), message.offset())] = message.value()
                    self.owned = {tp.partition for tp in self.consumer.assignment()}
        except Exception as error:  # reported by the main thread
            self.error = error

    def snapshot(self):
        if self.error:
            raise self.error
        with self.lock:
            return set(self.owned), dict(self.read)

    def finish(self):
        self.stop.set()
        self.join(timeout=PATIENCE_S)


def main():
    bootstrap, topic, group, assignor = sys.argv[1:5]
    produce(bootstrap, topic, 0, FIRST)
    a = Member(bootstrap, topic, group, assignor)
    b = Member(bootstrap, topic, group, assignor)
    a.start()
    b.start()

    def shared_and_read():
        (owned_a, read_a), (owned_b, read_b) = a.snapshot(), b.snapshot()
        complete = owned_a | owned_b == set(range(PARTITIONS))
        disjoint = owned_a and owned_b and not owned_a & owned_b
        return complete and disjoint and len(read_a.keys() | read_b.keys()) == PARTITIONS * FIRST

    wait_for("two members sharing every partition and reading every record", shared_and_read, a, b)
    owned_a, owned_b = a.snapshot()[0], b.snapshot()[0]
    print(f"assignment {assignor}: a={sorted(owned_a)} b={sorted(owned_b)}")
    values = {**a.snapshot()[1], **b.snapshot()[1]}
    assert values[(2, 3)] == b"p2-3", values[(2, 3)]

    # b leaves the group: a takes every partition.
    b.finish()
    b.consumer.close()
    wait_for("the survivor to own every partition", lambda: a.snapshot()[0] == set(range(PARTITIONS)), a)
    print("the survivor owns every partition")

    # a commits the end of every partition, with metadata, and closes.
    a.finish()
    offsets = [TopicPartition(topic, p, FIRST, f"meta-{p}") for p in range(PARTITIONS)]
    for result in a.consumer.commit(offsets=offsets, asynchronous=False):
        assert result.error is None, result
    a.consumer.close()
    print("committed")

    produce(bootstrap, topic, FIRST, LATER)
    c = Member(bootstrap, topic, group, assignor)
    c.start()
    wait_for("the restarted group to read what came after the commit",
             lambda: len(c.snapshot()[1]) >= PARTITIONS * LATER, c)
    c.finish()
    read = c.snapshot()[1]
    expected = {(p, o): f"p{p}-{o}".encode() for p in range(PARTITIONS) for o in range(FIRST, FIRST + LATER)}
    differ = {k: (read.get(k), expected.get(k)) for k in read.keys() | expected.keys() if read.get(k) != expected.get(k)}
    assert not differ, f"(read, expected) where they differ: {differ}"
    committed = c.consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    for tp in committed:
        assert tp.offset == FIRST and tp.metadata == f"meta-{tp.partition}", tp
    c.consumer.close()
    print("resumed at the committed offsets, metadata read back")


if __name__ == "__main__":
    try:
        main()
    except Stalled as stalled:
        print(f"STALLED: {stalled}", file=sys.stderr)
        sys.exit(3)
