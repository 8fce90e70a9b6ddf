"""confluent-kafka (librdkafka), unmodified, asking a Spool cluster for a preferred leader
election (Kafka's ElectLeaders) of one partition: prints `elected TOPIC/PARTITION` when the
partition was handed to its preferred leader, or the error the cluster answered.

Usage: confluent_kafka_elect_leaders.py BOOTSTRAP TOPIC PARTITION. Run by tests/cluster.rs.
"""

import sys

from confluent_kafka import ElectionType, TopicPartition
from confluent_kafka.admin import AdminClient


def main() -> None:
    bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    asked = TopicPartition(topic, partition)
    # Without timeouts: this release passes them to its C side wrongly (SystemError).
    future = admin.elect_leaders(ElectionType.PREFERRED, [asked])
    for elected, error in future.result(timeout=60).items():
        if error is None:
            print(f"elected {elected.topic}/{elected.partition}")
        else:
            print(f"{elected.topic}/{elected.partition}: {error}")


if __name__ == "__main__":
    main()
