"""The consumer-group scenario tests/kafka_groups.rs runs with each Kafka client, written once;
`kafka_python_group.py` and `confluent_kafka_group.py` give it their client.

Two consumers share a 4-partition topic under one assignor: their assignments are disjoint and
complete and together they read every record; when one leaves, the other takes every
partition; it commits with metadata and closes; a new consumer of the same group resumes at
the committed offsets, and reads the metadata back.

A client is an object with:
- `produce(bootstrap, topic, values)`: sends `(partition, value)` pairs, one request at a
  time (so a partition's records are stored in the order sent), and waits for them;
- `consumer(bootstrap, topic, group, assignor)`: a subscribed consumer, nothing committed
  automatically;
- `poll(consumer)`: the `(partition, offset, value)` records of one short poll;
- `commit(consumer, topic, offsets)`: commits `{partition: (offset, metadata)}`, synchronously;
- `committed(consumer, topic, partitions)`: `{partition: (offset, metadata)}`;
- `close(consumer)`: leaves the group without committing.
"""

import sys
import threading
import time

PARTITIONS = 4
FIRST = 10  # records per partition before the commit
LATER = 5  # records per partition after it
PATIENCE_S = 60
STALLED = 3  # the exit status when the clients made no progress in time


class Stalled(Exception):
    """The clients made no progress in time (exit status 3, see tests/kafka_groups.rs)."""


def wait_for(what, condition, *members):
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            seen = [(sorted(m.snapshot()[0]), len(m.snapshot()[1])) for m in members]
            raise Stalled(f"timed out waiting for {what}; (owned, read) by each: {seen}")
        time.sleep(0.05)


def values(start, count):
    return [(p, f"p{p}-{i}".encode()) for p in range(PARTITIONS) for i in range(start, start + count)]


class Member(threading.Thread):
    """One consumer polling in its own thread; what it owns and reads, under a lock."""

    def __init__(self, client, bootstrap, topic, group, assignor):
        super().__init__(daemon=True)
        self.client = client
        self.consumer = client.consumer(bootstrap, topic, group, assignor)
        self.lock = threading.Lock()
        self.owned = set()
        self.read = {}
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stop.is_set():
                records = self.client.poll(self.consumer)
                with self.lock:
                    for partition, offset, value in records:
                        self.read[(partition, offset)] = value
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


def scenario(client):
    bootstrap, topic, group, assignor = sys.argv[1:5]
    client.produce(bootstrap, topic, values(0, FIRST))
    a = Member(client, bootstrap, topic, group, assignor)
    b = Member(client, bootstrap, topic, group, assignor)
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
    read = {**a.snapshot()[1], **b.snapshot()[1]}
    assert read[(2, 3)] == b"p2-3", read[(2, 3)]

    # b leaves the group: a takes every partition.
    b.finish()
    client.close(b.consumer)
    wait_for("the survivor to own every partition", lambda: a.snapshot()[0] == set(range(PARTITIONS)), a)
    print("the survivor owns every partition")

    # a commits the end of every partition, with metadata, and closes.
    a.finish()
    client.commit(a.consumer, topic, {p: (FIRST, f"meta-{p}") for p in range(PARTITIONS)})
    client.close(a.consumer)
    print("committed")

    client.produce(bootstrap, topic, values(FIRST, LATER))
    c = Member(client, bootstrap, topic, group, assignor)
    c.start()
    wait_for("the restarted group to read what came after the commit",
             lambda: len(c.snapshot()[1]) >= PARTITIONS * LATER, c)
    c.finish()
    read = c.snapshot()[1]
    expected = {(p, o): f"p{p}-{o}".encode() for p in range(PARTITIONS) for o in range(FIRST, FIRST + LATER)}
    differ = {k: (read.get(k), expected.get(k)) for k in read.keys() | expected.keys() if read.get(k) != expected.get(k)}
    assert not differ, f"(read, expected) where they differ: {differ}"
    committed = client.committed(c.consumer, topic, range(PARTITIONS))
    for p in range(PARTITIONS):
        assert committed[p] == (FIRST, f"meta-{p}"), (p, committed[p])
    client.close(c.consumer)
    print("resumed at the committed offsets, metadata read back")


def run(client):
    """Runs the scenario; a stall exits with status 3."""
    try:
        scenario(client)
    except Stalled as stalled:
        print(f"STALLED: {stalled}", file=sys.stderr)
        sys.exit(STALLED)
