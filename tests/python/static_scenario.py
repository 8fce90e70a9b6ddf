"""The static-membership scenario tests/kafka_groups.rs runs with each Kafka client, written
once; `confluent_kafka_static.py` and `kafka_python_static.py` give it their client.

Usage: CLIENT_static.py HOST:PORT TOPIC GROUP; the topic exists with 4 partitions.

1. Members `static-a` and `static-b` (`group.instance.id`, range assignor, 6 s session
   timeout) join and get disjoint assignments that cover the topic.
2. `static-a` is closed: a static member does not send LeaveGroup, so it keeps its place. A
   new consumer with the same instance id starts at once.
3. It is given a new member id and the same partitions, while `static-b` sees no rebalance:
   its assignment callback is not called again, nothing is revoked from it, and (where the
   client shows it) its generation stays. Records produced afterwards are read by each
   member from its own partitions, and `static-b`'s commit is accepted in its generation.

Prints `old-a=ID new-a=ID b=ID` for the caller, which then checks the group with
DescribeGroups. Every wait is on a condition, with a deadline; the exit status is 3 when the
clients made no progress in time.

A client is an object with:
- `consumer(bootstrap, topic, group, instance_id, member)`: a subscribed consumer whose
  rebalance callbacks call `member.on_assign(partitions)` and `member.on_revoke()`;
- `poll(consumer)`: the `(partition, value)` records of one short poll;
- `member_id(consumer)` and `generation(consumer)` (None where the client does not show it);
- `produce(bootstrap, topic, values)`: sends `(partition, value)` pairs and waits for them;
- `commit(consumer, topic, partitions)`: commits offset 1 for each partition, synchronously;
- `close(consumer)`.
"""

import sys
import threading
import time

PARTITIONS = 4
PATIENCE_S = 60
STALLED = 3
STARTED = time.monotonic()


def wait_for(what, condition):
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            print(f"timed out waiting for {what}", file=sys.stderr)
            sys.exit(STALLED)
        time.sleep(0.05)
    # On stderr, which the caller shows if the run fails: where the time went.
    print(f"{time.monotonic() - STARTED:.1f} s: {what}", file=sys.stderr, flush=True)


class Member(threading.Thread):
    """A static consumer polling in its own thread (a client may block in poll while it
    joins), and what its callbacks saw, under a lock."""

    def __init__(self, client, bootstrap, topic, group, instance_id):
        super().__init__(daemon=True)
        self.client = client
        self.lock = threading.Lock()
        self.assigned = set()
        self.assign_calls = 0
        self.revoke_calls = 0
        self.read = set()
        self.halt = threading.Event()
        self.error = None
        self.consumer = client.consumer(bootstrap, topic, group, instance_id, self)
        self.start()

    def on_assign(self, partitions):
        with self.lock:
            self.assign_calls += 1
            self.assigned = set(partitions)

    def on_revoke(self):
        with self.lock:
            self.revoke_calls += 1
            self.assigned = set()

    def run(self):
        try:
            while not self.halt.is_set():
                records = self.client.poll(self.consumer)
                with self.lock:
                    self.read.update(records)
        except Exception as error:  # reported by the main thread
            self.error = error

    def stop(self):
        """Stops polling, so that the main thread may use the consumer."""
        self.halt.set()
        self.join()
        if self.error is not None:
            raise self.error

    def snapshot(self):
        with self.lock:
            return set(self.assigned), (self.assign_calls, self.revoke_calls), set(self.read)


def settled(a, b):
    """Both hold partitions of one generation: disjoint and together every partition."""
    a, b = a.snapshot()[0], b.snapshot()[0]
    return a and b and not (a & b) and a | b == set(range(PARTITIONS))


def run(client):
    bootstrap, topic, group = sys.argv[1:4]
    a = Member(client, bootstrap, topic, group, "static-a")
    b = Member(client, bootstrap, topic, group, "static-b")
    wait_for("both members to be assigned", lambda: settled(a, b))
    a.stop()
    old_a_id = client.member_id(a.consumer)
    a_partitions, _, _ = a.snapshot()
    b_partitions, b_calls, _ = b.snapshot()
    b_generation = client.generation(b.consumer)

    # A static member's close does not leave the group: its place and partitions wait for it.
    client.close(a.consumer)
    restarted = Member(client, bootstrap, topic, group, "static-a")
    wait_for("the restarted member to be assigned", lambda: restarted.snapshot()[0])

    # Records produced now are read by each member from its own partitions, with no rebalance.
    produced = {(p, f"after-{p}".encode()) for p in range(PARTITIONS)}
    client.produce(bootstrap, topic, sorted(produced))
    wait_for("the records produced after the restart",
             lambda: produced <= restarted.snapshot()[2] | b.snapshot()[2])
    restarted.stop()
    b.stop()
    new_a_id = client.member_id(restarted.consumer)
    assert new_a_id != old_a_id, "a restarted member is given a new member id"
    assigned, calls, read = restarted.snapshot()
    # (kafka-python reports an empty revocation before a consumer's first join: only its one
    # assignment, and what follows it, count.)
    assert (assigned, calls[0]) == (a_partitions, 1), (assigned, calls, a_partitions)
    assert {p for p, _ in read} <= a_partitions, read
    assigned, calls, read = b.snapshot()
    assert (assigned, calls) == (b_partitions, b_calls), "b saw a rebalance"
    assert {p for p, _ in read} <= b_partitions, read
    client.commit(b.consumer, topic, sorted(b_partitions))
    assert client.generation(b.consumer) == b_generation, "the generation moved"
    assert client.generation(restarted.consumer) == b_generation, "not the group's generation"
    print(f"old-a={old_a_id} new-a={new_a_id} b={client.member_id(b.consumer)}", flush=True)
    # Closing does not leave: the caller finds both members in the group.
    client.close(restarted.consumer)
    client.close(b.consumer)
