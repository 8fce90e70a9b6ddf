//! The group consumer against an in-process server: members sharing partitions, a member
//! leaving, commits surviving the members that made them, and a removed member rejoining.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestServer;
use spool_client::{
    Client, CommitMode, Fsync, GroupConfig, GroupConsumer, GroupError, GroupEvent, ProducerConfig,
    Record, TopicPartition,
};

/// Only guards against a hang: every wait below ends on an event.
const HANG_GUARD: Duration = Duration::from_secs(60);

async fn produce(client: &Client, topic: &str, partitions: u32, per_partition: u32, tag: &str) {
    let producer = client.producer(topic, ProducerConfig::default()).await.unwrap();
    for partition in 0..partitions {
        for n in 0..per_partition {
            let value = format!("{tag}-{partition}-{n}");
            producer.send(Record::value(value.as_bytes()).with_partition(partition)).await.unwrap();
        }
    }
    producer.close().await.unwrap();
}

/// What one member saw.
#[derive(Debug, Default)]
struct Seen {
    values: Vec<String>,
    revoked: Vec<TopicPartition>,
}

/// Polls until `done` holds (checked after every event and before the first poll).
async fn poll_until(
    member: &mut GroupConsumer,
    seen: &mut Seen,
    done: impl Fn(&GroupConsumer, &Seen) -> bool,
) {
    let run = async {
        while !done(member, seen) {
            match member.poll().await.unwrap() {
                GroupEvent::Assigned(assignment) => seen.revoked.extend(assignment.revoked),
                GroupEvent::Records(records) => seen.values.extend(
                    records
                        .records
                        .iter()
                        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()),
                ),
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, run).await.expect("the member reaches its state");
}

fn owned(member: &GroupConsumer) -> BTreeSet<u32> {
    member.owned().map(|p| p.partition).collect()
}

fn explicit(group: &str, topic: &str) -> GroupConfig {
    GroupConfig { commit: CommitMode::Explicit, ..GroupConfig::new(group, &[topic]) }
}

fn expected(tag: &str, partitions: u32, per_partition: u32) -> BTreeSet<String> {
    (0..partitions)
        .flat_map(|p| (0..per_partition).map(move |n| format!("{tag}-{p}-{n}")))
        .collect()
}

fn once(values: &[String]) -> BTreeSet<String> {
    let set: BTreeSet<String> = values.iter().cloned().collect();
    assert_eq!(set.len(), values.len(), "no record is delivered twice: {values:?}");
    set
}

#[tokio::test]
async fn two_members_share_partitions_and_resume_from_committed_offsets() {
    let server = TestServer::start().await;
    let client = server.with_topic("orders", 4, Fsync::Always).await;
    produce(&client, "orders", 4, 10, "first").await;

    // Alone, the first member owns every partition and reads all of it.
    let mut a = client.group_consumer(explicit("billing", "orders")).await.unwrap();
    let mut a_seen = Seen::default();
    poll_until(&mut a, &mut a_seen, |m, _| m.caught_up()).await;
    assert_eq!(owned(&a), BTreeSet::from([0, 1, 2, 3]));
    assert_eq!(once(&a_seen.values), expected("first", 4, 10));
    a.commit().await.unwrap();

    // A second member joins: two partitions move to it, and only after the first member has
    // committed what it read of them. Between the two, every new record arrives once.
    produce(&client, "orders", 4, 5, "second").await;
    let b_client = server.client().await;
    let b_task = tokio::spawn(async move {
        let mut b = b_client.group_consumer(explicit("billing", "orders")).await.unwrap();
        let mut seen = Seen::default();
        poll_until(&mut b, &mut seen, |m, _| owned(m).len() == 2 && m.caught_up()).await;
        (b, seen)
    });
    a_seen = Seen::default();
    poll_until(&mut a, &mut a_seen, |m, s| !s.revoked.is_empty() && m.caught_up()).await;
    let (mut b, mut b_seen) = b_task.await.unwrap();
    assert_eq!(owned(&a).len(), 2);
    assert!(owned(&a).is_disjoint(&owned(&b)));
    let revoked: BTreeSet<u32> = a_seen.revoked.iter().map(|p| p.partition).collect();
    assert_eq!(revoked, owned(&b));
    let mut both = a_seen.values.clone();
    both.extend(b_seen.values.iter().cloned());
    assert_eq!(once(&both), expected("second", 4, 5));

    // The first member leaves (committing on its way out); the second takes over its
    // partitions from where it committed: nothing is delivered again.
    a.close().await.unwrap();
    b_seen = Seen::default();
    poll_until(&mut b, &mut b_seen, |m, _| owned(m).len() == 4 && m.caught_up()).await;
    assert_eq!(b_seen.values, Vec::<String>::new());
    produce(&client, "orders", 4, 2, "third").await;
    poll_until(&mut b, &mut b_seen, |m, s| s.values.len() == 8 && m.caught_up()).await;
    assert_eq!(once(&b_seen.values), expected("third", 4, 2));
    b.close().await.unwrap();

    // The commits outlive their members: a new member of the group finds nothing to read,
    // while a member of another group reads everything.
    let mut c = client.group_consumer(explicit("billing", "orders")).await.unwrap();
    let mut c_seen = Seen::default();
    poll_until(&mut c, &mut c_seen, |m, _| m.caught_up()).await;
    assert_eq!(c_seen.values, Vec::<String>::new());
    c.close().await.unwrap();
    let mut other = client.group_consumer(explicit("audit", "orders")).await.unwrap();
    let mut other_seen = Seen::default();
    poll_until(&mut other, &mut other_seen, |m, _| m.caught_up()).await;
    assert_eq!(other_seen.values.len(), 4 * (10 + 5 + 2));
    other.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn automatic_commits_and_a_partial_position_are_resumed_from() {
    let server = TestServer::start().await;
    let client = server.with_topic("events", 1, Fsync::Always).await;
    produce(&client, "events", 1, 10, "e").await;

    // Auto mode: the poll after a message commits it. Stop after the 4th record, as a
    // consumer with a count would: the position goes back to the 5th.
    let mut member = client.group_consumer(GroupConfig::new("g", &["events"])).await.unwrap();
    let first = loop {
        if let GroupEvent::Records(records) = member.poll().await.unwrap()
            && !records.records.is_empty()
        {
            break records;
        }
    };
    assert_eq!(first.records[0].offset, 0);
    member.set_position("events", 0, 4).unwrap();
    assert_eq!(member.position("events", 0), Some(4));
    assert!(matches!(member.set_position("events", 7, 0), Err(GroupError::NotOwned { .. })));
    member.close().await.unwrap();

    let mut again = client.group_consumer(GroupConfig::new("g", &["events"])).await.unwrap();
    let mut seen = Seen::default();
    poll_until(&mut again, &mut seen, |m, _| m.caught_up()).await;
    assert_eq!(seen.values, (4..10).map(|n| format!("e-0-{n}")).collect::<Vec<_>>());
    // An explicit commit works in automatic mode too; dropping the member then leaves.
    let answered = again.commit().await;
    assert_eq!(answered, Ok(()));
    drop(again);

    let mut third = client.group_consumer(GroupConfig::new("g", &["events"])).await.unwrap();
    let mut seen = Seen::default();
    poll_until(&mut third, &mut seen, |m, _| m.caught_up()).await;
    assert_eq!(seen.values, Vec::<String>::new());
    third.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_member_commits_everything_it_handed_out() {
    let server = TestServer::start().await;
    let client = server.with_topic("bulky", 1, Fsync::Always).await;
    // Records of 600 KiB arrive one per message, so the poll that hands out the last one
    // finds the commit of the one before still in flight.
    let producer = client.producer("bulky", ProducerConfig::default()).await.unwrap();
    let value = vec![b'x'; 600 * 1024];
    for _ in 0..4 {
        producer.send(Record::value(&value)).await.unwrap().wait().await.unwrap();
    }
    producer.close().await.unwrap();
    let mut member = client.group_consumer(GroupConfig::new("idle", &["bulky"])).await.unwrap();
    let mut seen = Seen::default();
    poll_until(&mut member, &mut seen, |m, _| m.caught_up()).await;
    assert_eq!(seen.values.len(), 4);
    // Nothing more comes: the member waits in `poll`, and still commits all it handed out.
    let idle = tokio::spawn(async move {
        let _ = member.poll().await;
        member
    });
    let committed = async {
        loop {
            let group = client.describe_group("idle").await.unwrap();
            if group.partitions.iter().all(|p| p.committed_offset == Some(4)) {
                break;
            }
            // Polled: the server announces no commit, so the test asks until it sees it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, committed).await.expect("the idle member commits");
    idle.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_member_that_stops_answering_is_removed_and_can_rejoin() {
    let server = TestServer::start().await;
    let client = server.with_topic("jobs", 2, Fsync::Always).await;
    let short = GroupConfig {
        session_timeout: Duration::from_millis(300),
        ..GroupConfig::new("workers", &["jobs"])
    };
    let mut stuck = client.group_consumer(short.clone()).await.unwrap();
    let mut seen = Seen::default();
    poll_until(&mut stuck, &mut seen, |m, _| m.caught_up()).await;
    assert_eq!(owned(&stuck).len(), 2);

    // A second member joins; the first does not poll, so it never acknowledges the
    // revocation and is removed once its session timeout passes. Then the second owns all.
    let mut live = client.group_consumer(short.clone()).await.unwrap();
    let mut live_seen = Seen::default();
    poll_until(&mut live, &mut live_seen, |m, _| owned(m).len() == 2 && m.caught_up()).await;

    let removed = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match stuck.poll().await {
                Ok(_) => continue,
                Err(error) => break error,
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(removed, GroupError::Removed(_)), "{removed:?}");

    // Rejoined, it gets its share back once the live member gives it up.
    stuck.rejoin().await.unwrap();
    let live_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        poll_until(&mut live, &mut seen, |m, _| owned(m).len() == 1 && m.caught_up()).await;
        live
    });
    poll_until(&mut stuck, &mut seen, |m, _| owned(m).len() == 1 && m.caught_up()).await;
    let live = live_task.await.unwrap();
    live.close().await.unwrap();
    stuck.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn joining_errors_a_caller_can_match_on() {
    let server = TestServer::start().await;
    let client = server.with_topic("present", 1, Fsync::Always).await;
    let missing = client.group_consumer(GroupConfig::new("g", &["absent"])).await.unwrap_err();
    assert!(
        matches!(&missing, GroupError::Rejected(e) if e.code == spool_client::ErrorCode::NotFound),
        "{missing:?}"
    );
    let bad = GroupConfig {
        session_timeout: Duration::from_millis(1),
        ..GroupConfig::new("g", &["present"])
    };
    assert!(matches!(client.group_consumer(bad).await, Err(GroupError::BadConfig { .. })));
    let bad_name = client.group_consumer(GroupConfig::new("no spaces", &["present"])).await;
    assert!(
        matches!(&bad_name, Err(GroupError::Rejected(e)) if e.code == spool_client::ErrorCode::InvalidArgument),
        "{bad_name:?}"
    );
    server.shutdown().await;
}
