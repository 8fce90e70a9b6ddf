"""confluent-kafka (librdkafka), unmodified, consuming as a group through a Spool cluster: two
consumers of one group share a 4-partition topic and together read every record once; they
commit what they read and close; a new member of the group then reads only what was produced
after the commit. Offsets are not assumed to be 0, 1, 2...: on a cluster the Raft log's own
entries take offsets too, as control batches do in Kafka.

Usage: confluent_kafka_cluster_group.py BOOTSTRAP TOPIC GROUP (the topic exists, with 4
partitions). Run by tests/cluster.rs.
"""

import sys
import time

from confluent_kafka import Consumer, Producer

PARTITIONS = 4
FIRST = 10  # records per partition before the commit
LATER = 5  # records per partition after it
PATIENCE_S = 60


def produce(bootstrap, topic, start, count):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    values = set()
    for partition in range(PARTITIONS):
        for i in range(start, start + count):
            value = f"p{partition}-{i}".encode()
            producer.produce(topic, value=value, partition=partition)
            values.add(value)
    assert producer.flush(30) == 0, "not all delivered"
    return values


def consumer(bootstrap, topic, group):
    member = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
    })
    member.subscribe([topic])
    return member


def read_until(members, expected):
    """Polls every member in turn until together they have read `expected`; what each read."""
    read = [[] for _ in members]
    deadline = time.monotonic() + PATIENCE_S
    while sum(len(r) for r in read) < len(expected):
        assert time.monotonic() < deadline, f"read {sum(len(r) for r in read)} of {len(expected)}"
        for index, member in enumerate(members):
            message = member.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            read[index].append(message.value())
    return read


def main() -> None:
    bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    members = [consumer(bootstrap, topic, group) for _ in range(2)]
    # Both have joined and share the partitions before anything is produced, so no partition
    # moves with records read and not committed.
    deadline = time.monotonic() + PATIENCE_S
    while sorted(p.partition for m in members for p in m.assignment()) != list(range(PARTITIONS)):
        assert time.monotonic() < deadline, "the members never shared the partitions"
        for member in members:
            assert member.poll(0.2) is None, "a record before any was produced"
    first = produce(bootstrap, topic, 0, FIRST)
    read = read_until(members, first)
    everything = [value for values in read for value in values]
    assert sorted(everything) == sorted(first), "every record read once, by one member"
    print(f"two members read {len(everything)} records once each")
    for member in members:
        member.commit(asynchronous=False)
        member.close()
    later = produce(bootstrap, topic, FIRST, LATER)
    resumed = consumer(bootstrap, topic, group)
    read = read_until([resumed], later)[0]
    assert sorted(read) == sorted(later), f"read {len(read)}: {sorted(read)[:5]}..."
    assert resumed.poll(1.0) is None, "nothing after the new records"
    resumed.close()
    print("resumed at the committed offsets")


if __name__ == "__main__":
    main()
