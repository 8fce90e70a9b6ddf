use super::*;
use crate::TopicName;
use crate::group::{
    CommitRecord, CommittedOffsets, Coordinator, OffsetReset, Subscription, TopicPartition,
};
use crate::limits::CLASSIC_INITIAL_REBALANCE_DELAY_MS;
use spool_storage::Offset;

fn t(ms: i64) -> TimestampMs {
    TimestampMs(ms)
}

fn g() -> GroupName {
    GroupName::parse("g").unwrap()
}

fn m(member_id: &str) -> MemberRef<'_> {
    MemberRef::dynamic(member_id)
}

fn request(member_id: &str, protocols: &[(&str, &[u8])]) -> JoinRequest {
    JoinRequest {
        member_id: member_id.to_owned(),
        instance_id: None,
        client_id: "client".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout_ms: 1000,
        rebalance_timeout_ms: 5000,
        protocol_type: "consumer".to_owned(),
        protocols: protocols.iter().map(|(n, m)| ((*n).to_owned(), m.to_vec())).collect(),
        require_known_member_id: true,
    }
}

/// The member ids and metadata the leader's join answer lists.
fn metadata_of(joined: &Joined) -> Vec<(String, Vec<u8>)> {
    joined.members.iter().map(|m| (m.member_id.clone(), m.metadata.clone())).collect()
}

/// The answer to `ticket` among `replies`, if there is one.
fn join_answer(replies: &Replies, ticket: Ticket) -> Option<Result<Joined, ClassicError>> {
    replies.joins.iter().find(|(t, _)| *t == ticket).map(|(_, a)| a.clone())
}

fn sync_answer(replies: &Replies, ticket: Ticket) -> Option<Result<Vec<u8>, ClassicError>> {
    replies.syncs.iter().find(|(t, _)| *t == ticket).map(|(_, a)| a.clone())
}

/// A new member's two joins (the first answered MEMBER_ID_REQUIRED); returns its id, the
/// second join's ticket and replies.
fn join_new(c: &mut ClassicGroups, now: i64, metadata: &[u8]) -> (String, Ticket, Replies) {
    let (ticket, replies) = c.join(&g(), request("", &[("range", metadata)]), true, t(now));
    let Some(Err(ClassicError::MemberIdRequired { member_id })) = join_answer(&replies, ticket)
    else {
        panic!("a new member is given an id first: {replies:?}")
    };
    let (ticket, replies) = c.join(&g(), request(&member_id, &[("range", metadata)]), true, t(now));
    (member_id, ticket, replies)
}

#[test]
fn two_members_join_the_leader_assigns_and_both_get_their_assignment() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, ticket, replies) = join_new(&mut c, 0, b"a-meta");
    let joined = join_answer(&replies, ticket).unwrap().unwrap();
    assert_eq!((joined.generation, joined.leader.as_str()), (1, a.as_str()));
    assert_eq!(metadata_of(&joined), vec![(a.clone(), b"a-meta".to_vec())]);
    let (sync, replies) = c.sync(&g(), m(&a), 1, vec![(a.clone(), b"all".to_vec())], t(1));
    assert_eq!(sync_answer(&replies, sync), Some(Ok(b"all".to_vec())));

    // A second member starts a rebalance: the first hears of it by heartbeat and rejoins.
    let (b, b_join, replies) = join_new(&mut c, 10, b"b-meta");
    assert_eq!(join_answer(&replies, b_join), None, "it waits for the first member");
    assert_eq!(c.heartbeat(&g(), m(&a), 1, t(11)), Err(ClassicError::RebalanceInProgress));
    let (a_join, replies) = c.join(&g(), request(&a, &[("range", b"a-meta")]), true, t(12));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    let follower = join_answer(&replies, b_join).unwrap().unwrap();
    assert_eq!((leader.generation, leader.leader.as_str()), (2, a.as_str()));
    assert_eq!(leader.members.len(), 2, "the leader gets every member's metadata");
    assert!(follower.members.is_empty(), "a follower gets none");
    assert_eq!(follower.protocol_name, "range");

    // The follower's sync waits for the leader's.
    let (b_sync, replies) = c.sync(&g(), m(&b), 2, Vec::new(), t(13));
    assert_eq!(sync_answer(&replies, b_sync), None);
    assert_eq!(c.heartbeat(&g(), m(&b), 2, t(13)), Ok(()), "heartbeats are fine meanwhile");
    let assignments = vec![(a.clone(), b"p0".to_vec()), (b.clone(), b"p1".to_vec())];
    let (a_sync, replies) = c.sync(&g(), m(&a), 2, assignments, t(14));
    assert_eq!(sync_answer(&replies, a_sync), Some(Ok(b"p0".to_vec())));
    assert_eq!(sync_answer(&replies, b_sync), Some(Ok(b"p1".to_vec())));
    let described = c.describe(&g()).unwrap();
    assert_eq!(described.state, ClassicState::Stable);
    assert_eq!(described.members.len(), 2);
}

#[test]
fn errors_are_kafkas_unknown_member_illegal_generation_and_inconsistent_protocol() {
    let mut c = ClassicGroups::new(7, 0);
    assert_eq!(c.heartbeat(&g(), m("nobody"), 1, t(0)), Err(ClassicError::UnknownMemberId));
    let (ticket, replies) = c.join(&g(), request("nobody", &[("range", b"")]), true, t(0));
    assert_eq!(join_answer(&replies, ticket), Some(Err(ClassicError::UnknownMemberId)));
    let (a, _, _) = join_new(&mut c, 0, b"");
    assert_eq!(c.heartbeat(&g(), m(&a), 5, t(1)), Err(ClassicError::IllegalGeneration));
    assert_eq!(c.heartbeat(&g(), m("other"), 1, t(1)), Err(ClassicError::UnknownMemberId));
    let (_, replies) = c.sync(&g(), m(&a), 9, Vec::new(), t(1));
    assert_eq!(replies.syncs[0].1, Err(ClassicError::IllegalGeneration));
    let (ticket, replies) = c.join(&g(), request("", &[("roundrobin", b"")]), true, t(2));
    assert_eq!(join_answer(&replies, ticket), Some(Err(ClassicError::InconsistentGroupProtocol)));
    let mut other_type = request("", &[("range", b"")]);
    other_type.protocol_type = "connect".to_owned();
    let (ticket, replies) = c.join(&g(), other_type, true, t(2));
    assert_eq!(join_answer(&replies, ticket), Some(Err(ClassicError::InconsistentGroupProtocol)));
    let mut short = request("", &[("range", b"")]);
    short.session_timeout_ms = 1;
    let (ticket, replies) = c.join(&g(), short, true, t(2));
    assert!(matches!(
        join_answer(&replies, ticket),
        Some(Err(ClassicError::InvalidSessionTimeout { .. }))
    ));
}

#[test]
fn the_protocol_is_one_every_member_supports_chosen_by_vote() {
    let mut c = ClassicGroups::new(7, 0);
    let protocols: &[(&str, &[u8])] = &[("cooperative-sticky", b"c"), ("range", b"r")];
    let (ticket, replies) = c.join(&g(), request("", protocols), true, t(0));
    let Some(Err(ClassicError::MemberIdRequired { member_id: a })) = join_answer(&replies, ticket)
    else {
        panic!()
    };
    let (ticket, replies) = c.join(&g(), request(&a, protocols), true, t(0));
    assert_eq!(join_answer(&replies, ticket).unwrap().unwrap().protocol_name, "cooperative-sticky");
    // A member offering only range joins: range is the one both support.
    let (ticket, replies) = c.join(&g(), request("", &[("range", b"r2")]), true, t(1));
    let Some(Err(ClassicError::MemberIdRequired { member_id: b })) = join_answer(&replies, ticket)
    else {
        panic!()
    };
    let (b_join, _) = c.join(&g(), request(&b, &[("range", b"r2")]), true, t(1));
    let (a_join, replies) = c.join(&g(), request(&a, protocols), true, t(2));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    assert_eq!(leader.protocol_name, "range");
    assert_eq!(metadata_of(&leader), vec![(a, b"r".to_vec()), (b, b"r2".to_vec())]);
    assert!(join_answer(&replies, b_join).is_some());
}

#[test]
fn a_silent_member_is_removed_after_its_session_timeout_and_the_survivor_rebalances() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"");
    c.sync(&g(), m(&a), 1, vec![(a.clone(), b"x".to_vec())], t(0));
    let (b, b_join, _) = join_new(&mut c, 0, b"");
    let (a_join, replies) = c.join(&g(), request(&a, &[("range", b"")]), true, t(0));
    assert!(join_answer(&replies, a_join).is_some() && join_answer(&replies, b_join).is_some());
    let (_, replies) = c.sync(&g(), m(&a), 2, Vec::new(), t(0));
    assert_eq!(replies.syncs.len(), 1);
    // b syncs, then falls silent; a keeps heartbeating.
    c.sync(&g(), m(&b), 2, Vec::new(), t(0));
    assert_eq!(c.next_deadline(), Some(t(1000)));
    assert_eq!(c.heartbeat(&g(), m(&a), 2, t(900)), Ok(()));
    let replies = c.tick(t(1000));
    assert_eq!(replies.expired, vec![(g(), b.clone())]);
    assert_eq!(c.heartbeat(&g(), m(&b), 2, t(1001)), Err(ClassicError::UnknownMemberId));
    assert_eq!(c.heartbeat(&g(), m(&a), 2, t(1001)), Err(ClassicError::RebalanceInProgress));
    let (a_join, replies) = c.join(&g(), request(&a, &[("range", b"")]), true, t(1002));
    let joined = join_answer(&replies, a_join).unwrap().unwrap();
    assert_eq!((joined.generation, joined.members.len()), (3, 1));
}

#[test]
fn a_member_that_does_not_rejoin_by_the_rebalance_deadline_is_removed() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"");
    c.sync(&g(), m(&a), 1, Vec::new(), t(0));
    let (b, b_join, _) = join_new(&mut c, 100, b"");
    // a heartbeats (so its session holds) but never rejoins.
    assert_eq!(c.heartbeat(&g(), m(&a), 1, t(900)), Err(ClassicError::RebalanceInProgress));
    assert_eq!(c.heartbeat(&g(), m(&a), 1, t(1800)), Err(ClassicError::RebalanceInProgress));
    let replies = c.tick(t(5100));
    let joined = join_answer(&replies, b_join).unwrap().unwrap();
    assert_eq!((joined.generation, joined.leader.clone(), joined.members.len()), (2, b, 1));
    assert_eq!(c.heartbeat(&g(), m(&a), 1, t(5101)), Err(ClassicError::UnknownMemberId));
}

/// A rebalance timeout of `i32::MAX` (as some clients give) waits 30 minutes at most.
#[test]
fn a_join_phase_lasts_at_most_thirty_minutes_whatever_the_rebalance_timeout() {
    let mut c = ClassicGroups::new(7, 0);
    let forever = |member_id: &str| {
        let mut join = request(member_id, &[("range", b"")]);
        join.rebalance_timeout_ms = i32::MAX;
        join
    };
    let (ticket, replies) = c.join(&g(), forever(""), true, t(0));
    let Some(Err(ClassicError::MemberIdRequired { member_id: a })) = join_answer(&replies, ticket)
    else {
        panic!("{replies:?}")
    };
    c.join(&g(), forever(&a), true, t(0));
    c.sync(&g(), m(&a), 1, Vec::new(), t(0));
    let (_, b_join, _) = join_new(&mut c, 100, b"");
    // a keeps its session but never rejoins.
    let thirty_minutes = 30 * 60 * 1000;
    for at in (500..thirty_minutes).step_by(500) {
        let _ = c.heartbeat(&g(), m(&a), 1, t(at));
        assert!(join_answer(&c.tick(t(at)), b_join).is_none(), "answered at {at} ms");
    }
    let replies = c.tick(t(thirty_minutes + 100));
    assert_eq!(join_answer(&replies, b_join).unwrap().unwrap().generation, 2);
    assert_eq!(
        c.heartbeat(&g(), m(&a), 1, t(thirty_minutes + 101)),
        Err(ClassicError::UnknownMemberId)
    );
}

#[test]
fn leaving_rebalances_and_the_last_one_out_forgets_the_group() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"");
    c.sync(&g(), m(&a), 1, Vec::new(), t(0));
    let (b, b_join, _) = join_new(&mut c, 0, b"");
    let replies = c.leave(&g(), m(&a), t(1)).unwrap();
    let joined = join_answer(&replies, b_join).unwrap().unwrap();
    assert_eq!((joined.generation, joined.leader.as_str()), (2, b.as_str()));
    assert_eq!(c.leave(&g(), m(&a), t(2)), Err(ClassicError::UnknownMemberId));
    c.leave(&g(), m(&b), t(2)).unwrap();
    assert!(!c.is_live(&g()));
    assert_eq!(c.bytes, 0, "every byte held is given back");
}

#[test]
fn commits_need_the_generation_but_a_group_without_members_takes_simple_commits() {
    let mut c = Coordinator::new(7, CommittedOffsets::default());
    let tp = TopicPartition { topic: TopicName::parse("t").unwrap(), partition: 0 };
    let offsets = vec![(tp.clone(), Offset(5))];
    let metadata: BTreeMap<TopicPartition, String> = [(tp.clone(), "m".to_owned())].into();
    c.classic_commit(&g(), "", -1, offsets.clone(), metadata.clone(), t(0)).unwrap();
    assert_eq!(c.committed(&g(), &tp), Some(Offset(5)));
    assert_eq!(c.committed_metadata(&g(), &tp), "m");
    assert_eq!(
        c.classic_commit(&g(), "x", 3, offsets.clone(), BTreeMap::new(), t(0)),
        Err(ClassicError::IllegalGeneration)
    );
    let (ticket, replies) = c.classic_join(&g(), request("", &[("range", b"")]), t(0)).unwrap();
    let Some(Err(ClassicError::MemberIdRequired { member_id: a })) = join_answer(&replies, ticket)
    else {
        panic!()
    };
    c.classic_join(&g(), request(&a, &[("range", b"")]), t(0)).unwrap();
    c.classic_mut().tick(t(3000));
    assert_eq!(
        c.classic_commit(&g(), &a, 1, offsets.clone(), BTreeMap::new(), t(0)),
        Err(ClassicError::RebalanceInProgress),
        "not while the assignment is being decided"
    );
    c.classic_mut().sync(&g(), m(&a), 1, Vec::new(), t(0));
    assert_eq!(
        c.classic_commit(&g(), "", -1, offsets.clone(), BTreeMap::new(), t(0)),
        Err(ClassicError::UnknownMemberId)
    );
    assert_eq!(
        c.classic_commit(&g(), &a, 2, offsets.clone(), BTreeMap::new(), t(0)),
        Err(ClassicError::IllegalGeneration)
    );
    let record =
        c.classic_commit(&g(), &a, 1, vec![(tp.clone(), Offset(9))], BTreeMap::new(), t(0));
    assert_eq!(record.unwrap().offsets, vec![(tp.clone(), Offset(9))]);
    assert_eq!(c.committed_metadata(&g(), &tp), "");
}

#[test]
fn a_name_is_live_under_one_protocol_at_a_time() {
    let mut c = Coordinator::new(7, CommittedOffsets::default());
    let subscription = Subscription {
        topics: [(TopicName::parse("t").unwrap(), 2)].into(),
        reset: OffsetReset::Earliest,
    };
    let (spool_member, _) = c.join(&g(), subscription.clone(), 1000, None, t(0)).unwrap();
    assert_eq!(
        c.classic_join(&g(), request("", &[("range", b"")]), t(0)).map(|_| ()),
        Err(ClassicError::InUseBySpool { group: g() })
    );
    let tp = TopicPartition { topic: TopicName::parse("t").unwrap(), partition: 0 };
    assert_eq!(
        c.classic_commit(&g(), "", -1, vec![(tp, Offset(1))], BTreeMap::new(), t(0)),
        Err(ClassicError::InUseBySpool { group: g() })
    );
    c.leave(&g(), &spool_member, t(1));
    let mut plain = request("", &[("range", b"")]);
    plain.require_known_member_id = false;
    let (ticket, _) = c.classic_join(&g(), plain, t(1)).unwrap();
    let replies = c.classic_mut().tick(t(3001));
    assert!(
        join_answer(&replies, ticket).unwrap().is_ok(),
        "a join without MEMBER_ID_REQUIRED (v3 and older) is answered after the delay"
    );
    assert!(matches!(
        c.join(&g(), subscription, 1000, None, t(2)),
        Err(crate::group::JoinError::InUseByKafka { .. })
    ));
    assert!(c.reset(&g(), Vec::new()).is_err(), "nor reset while Kafka members are live");
    let described = c.describe(&g()).unwrap();
    assert_eq!((described.members.len(), described.generation), (1, 1));
}

#[test]
fn a_leader_that_heartbeats_but_never_syncs_is_removed_at_the_rebalance_timeout() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"");
    c.sync(&g(), m(&a), 1, vec![(a.clone(), b"x".to_vec())], t(0));
    let (b, b_join, _) = join_new(&mut c, 0, b"");
    let (_, replies) = c.join(&g(), request(&a, &[("range", b"")]), true, t(0));
    assert!(join_answer(&replies, b_join).is_some());
    // b waits for the leader's assignment; the leader heartbeats but never sends it.
    let (b_sync, replies) = c.sync(&g(), m(&b), 2, Vec::new(), t(10));
    assert_eq!(sync_answer(&replies, b_sync), None);
    for now in (1000..5000).step_by(1000) {
        assert_eq!(c.heartbeat(&g(), m(&a), 2, t(now)), Ok(()));
        assert!(c.tick(t(now)).syncs.is_empty());
    }
    assert_eq!(c.next_deadline(), Some(t(5000)), "the rebalance timeout after the join");
    let replies = c.tick(t(5000));
    assert_eq!(replies.expired, vec![(g(), a.clone())]);
    assert_eq!(sync_answer(&replies, b_sync), Some(Err(ClassicError::RebalanceInProgress)));
    assert_eq!(c.heartbeat(&g(), m(&a), 2, t(5001)), Err(ClassicError::UnknownMemberId));
}

#[test]
fn bytes_held_follow_metadata_and_assignments() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"12345");
    assert_eq!(c.bytes, "range".len() + 5);
    c.sync(&g(), m(&a), 1, vec![(a.clone(), b"abc".to_vec())], t(0));
    assert_eq!(c.bytes, "range".len() + 5 + 3);
    // A rejoin with other metadata and a new assignment replace the old ones.
    let (_, _) = c.join(&g(), request(&a, &[("range", b"1")]), true, t(1));
    c.sync(&g(), m(&a), 2, vec![(a.clone(), b"abcdef".to_vec())], t(1));
    assert_eq!(c.bytes, "range".len() + 1 + 6);
    c.leave(&g(), m(&a), t(2)).unwrap();
    assert_eq!(c.bytes, 0);
}

#[test]
fn the_first_join_phase_waits_the_initial_delay_and_is_extended_while_members_arrive() {
    let mut c = ClassicGroups::new(7, 3000);
    let (a, a_join, replies) = join_new(&mut c, 0, b"");
    assert_eq!(join_answer(&replies, a_join), None, "the first member waits the delay");
    assert_eq!(c.next_deadline(), Some(t(3000)));
    let (b, b_join, _) = join_new(&mut c, 2000, b"");
    // A member arrived during the delay: it is extended once more.
    assert!(c.tick(t(3000)).joins.is_empty());
    assert_eq!(c.next_deadline(), Some(t(5000)), "capped by the rebalance timeout of 5 s");
    let replies = c.tick(t(5000));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    let follower = join_answer(&replies, b_join).unwrap().unwrap();
    assert_eq!((leader.generation, follower.generation), (1, 1));
    assert_eq!((leader.leader.clone(), leader.members.len()), (a.clone(), 2));
    assert_eq!(follower.member_id, b);
}

#[test]
fn consumer_assignments_are_read_for_describing_only() {
    let mut bytes = vec![0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0];
    bytes.extend([0, 0, 0, 0]); // no user data
    assert_eq!(consumer_assignment(&bytes), Some(vec![("t".to_owned(), 3), ("t".to_owned(), 0)]));
    assert_eq!(consumer_assignment(b""), None);
    // A count past the bytes fails at once, without reserving for it.
    assert_eq!(consumer_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
    assert_eq!(consumer_assignment(&[0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff]), None);
}

/// A consumer's metadata (`ConsumerProtocolSubscription` v0) subscribing to `topics`.
fn subscription_of(topics: &[&str]) -> Vec<u8> {
    let mut bytes = vec![0, 0];
    bytes.extend((topics.len() as i32).to_be_bytes());
    for topic in topics {
        bytes.extend((topic.len() as i16).to_be_bytes());
        bytes.extend(topic.as_bytes());
    }
    bytes.extend([0, 0, 0, 0]); // no user data
    bytes
}

#[test]
fn the_topics_a_group_consumes_are_read_from_its_members_subscriptions() {
    let topics = Some(vec!["t".to_owned(), "u".to_owned()]);
    assert_eq!(consumer_subscription(&subscription_of(&["t", "u"])), topics);
    assert_eq!(consumer_subscription(b""), None);
    // A count past the bytes fails at once, without reserving for it.
    assert_eq!(consumer_subscription(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
    let mut c = ClassicGroups::new(7, 0);
    assert_eq!(c.consumed_topics(&g()), None, "not live");
    join_new(&mut c, 0, &subscription_of(&["t"]));
    let consumed = ConsumedTopics::Some(["t".to_owned()].into());
    assert_eq!(c.consumed_topics(&g()), Some(consumed));
    // A member whose metadata is not a subscription may consume anything.
    join_new(&mut c, 1, b"not a subscription");
    assert_eq!(c.consumed_topics(&g()), Some(ConsumedTopics::Every));

    let mut c = ClassicGroups::new(8, 0);
    let mut connect = request("", &[("sessions", b"")]);
    connect.protocol_type = "connect".to_owned();
    let (ticket, replies) = c.join(&g(), connect.clone(), true, t(0));
    let Some(Err(ClassicError::MemberIdRequired { member_id })) = join_answer(&replies, ticket)
    else {
        panic!("a new member is given an id first: {replies:?}")
    };
    connect.member_id = member_id;
    c.join(&g(), connect, true, t(0));
    assert_eq!(c.consumed_topics(&g()), Some(ConsumedTopics::NotConsumers));
}

/// A Kafka group's offsets are forgotten for the topics its members do not consume; until
/// its first join phase has chosen a protocol, it may consume any.
#[test]
fn a_kafka_groups_offsets_are_deleted_but_of_the_topics_it_consumes() {
    let tp = |topic: &str, partition| TopicPartition {
        topic: TopicName::parse(topic).unwrap(),
        partition,
    };
    let mut committed = CommittedOffsets::default();
    committed.apply(&CommitRecord {
        group: g(),
        offsets: vec![(tp("t", 0), Offset(3)), (tp("u", 0), Offset(4)), (tp("u", 1), Offset(5))],
        metadata: [(tp("u", 0), "seen".to_owned())].into(),
    });
    // The coordinator's first join phase lasts its initial delay.
    let mut c = Coordinator::new(7, committed);
    let (a, _, _) = join_new(c.classic_mut(), 0, &subscription_of(&["t"]));
    let asked = [tp("t", 0), tp("u", 0), tp("v", 0)];
    let deletion = c.delete_offsets(&g(), &asked).unwrap();
    assert_eq!(deletion.consumed, asked.iter().cloned().collect(), "no protocol chosen yet");
    assert_eq!(deletion.record(), None);
    c.classic_mut().tick(t(CLASSIC_INITIAL_REBALANCE_DELAY_MS as i64));
    let deletion = c.delete_offsets(&g(), &asked).unwrap();
    assert_eq!(deletion.consumed, [tp("t", 0)].into());
    assert_eq!(deletion.forgotten, [(tp("u", 0), Offset(4))].into(), "v-0 had none");
    let record = deletion.record().expect("something forgotten");
    assert_eq!(OffsetsRecord::decode(&record.encode()).unwrap(), record);
    assert_eq!(c.committed(&g(), &tp("t", 0)), Some(Offset(3)));
    assert_eq!(c.committed(&g(), &tp("u", 0)), None);
    assert_eq!(c.committed_offsets().metadata(&g(), &tp("u", 0)), "");
    assert_eq!(c.committed(&g(), &tp("u", 1)), Some(Offset(5)));
    c.classic_mut().leave(&g(), m(&a), t(3_001)).unwrap();
    let deletion = c.delete_offsets(&g(), &[tp("t", 0)]).unwrap();
    assert_eq!(deletion.forgotten, [(tp("t", 0), Offset(3))].into(), "nobody consumes it now");
}

fn static_request(member_id: &str, instance_id: &str, metadata: &[u8]) -> JoinRequest {
    JoinRequest {
        instance_id: Some(instance_id.to_owned()),
        ..request(member_id, &[("range", metadata)])
    }
}

fn static_ref<'a>(member_id: &'a str, instance_id: &'a str) -> MemberRef<'a> {
    MemberRef { member_id, instance_id: Some(instance_id) }
}

/// Two static members `a-1` and `b-1` join (neither is asked for MEMBER_ID_REQUIRED), the
/// leader assigns `pa` and `pb`, and the group is stable at generation 2. Their member ids.
fn two_static_members(c: &mut ClassicGroups) -> (String, String) {
    let (ticket, replies) = c.join(&g(), static_request("", "a-1", b"a"), true, t(0));
    let a = join_answer(&replies, ticket).unwrap().unwrap().member_id;
    c.sync(&g(), static_ref(&a, "a-1"), 1, vec![(a.clone(), b"pa".to_vec())], t(0));
    let (b_join, _) = c.join(&g(), static_request("", "b-1", b"b"), true, t(0));
    let (a_join, replies) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(0));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    let b = join_answer(&replies, b_join).unwrap().unwrap().member_id;
    assert_eq!((leader.generation, leader.leader.as_str()), (2, a.as_str()));
    let instances: Vec<Option<String>> =
        leader.members.iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(instances, vec![Some("a-1".to_owned()), Some("b-1".to_owned())]);
    let assignments = vec![(a.clone(), b"pa".to_vec()), (b.clone(), b"pb".to_vec())];
    c.sync(&g(), static_ref(&a, "a-1"), 2, assignments, t(0));
    c.sync(&g(), static_ref(&b, "b-1"), 2, Vec::new(), t(0));
    assert_eq!(c.describe(&g()).unwrap().state, ClassicState::Stable);
    (a, b)
}

#[test]
fn a_restarted_static_member_gets_its_assignment_back_and_its_old_id_is_fenced() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, old_b) = two_static_members(&mut c);
    // b restarts: it joins with its instance id and no member id, and is answered at once.
    let (ticket, replies) = c.join(&g(), static_request("", "b-1", b"b"), true, t(100));
    let joined = join_answer(&replies, ticket).unwrap().unwrap();
    let b = joined.member_id.clone();
    assert_ne!(b, old_b, "a new member id");
    assert_eq!((joined.generation, joined.leader.as_str()), (2, a.as_str()));
    assert!(joined.members.is_empty());
    let (sync, replies) = c.sync(&g(), static_ref(&b, "b-1"), 2, Vec::new(), t(101));
    assert_eq!(sync_answer(&replies, sync), Some(Ok(b"pb".to_vec())), "the old assignment");
    assert_eq!(c.heartbeat(&g(), static_ref(&a, "a-1"), 2, t(102)), Ok(()), "no rebalance");
    assert_eq!(c.describe(&g()).unwrap().generation, 2);

    // The old member id is fenced wherever it shows up with the instance id.
    let fenced = Err(ClassicError::FencedInstanceId);
    assert_eq!(c.heartbeat(&g(), static_ref(&old_b, "b-1"), 2, t(103)), fenced);
    assert_eq!(c.heartbeat(&g(), m(&old_b), 2, t(103)), Err(ClassicError::UnknownMemberId));
    let (sync, replies) = c.sync(&g(), static_ref(&old_b, "b-1"), 2, Vec::new(), t(103));
    assert_eq!(sync_answer(&replies, sync), Some(Err(ClassicError::FencedInstanceId)));
    let (ticket, replies) = c.join(&g(), static_request(&old_b, "b-1", b"b"), true, t(103));
    assert_eq!(join_answer(&replies, ticket), Some(Err(ClassicError::FencedInstanceId)));
    assert_eq!(c.check_commit_instance(&g(), static_ref(&old_b, "b-1"), 2), fenced);
    assert_eq!(c.check_commit_instance(&g(), static_ref(&b, "b-1"), 2), Ok(()));
    assert_eq!(
        c.check_commit_instance(&g(), static_ref(&b, "c-1"), 2),
        Err(ClassicError::UnknownMemberId)
    );
    let described = c.describe(&g()).unwrap();
    assert_eq!(described.state, ClassicState::Stable);
    let members: Vec<(String, Option<String>)> =
        described.members.iter().map(|m| (m.member_id.clone(), m.instance_id.clone())).collect();
    assert!(members.contains(&(b.clone(), Some("b-1".to_owned()))), "{members:?}");
    assert_eq!(members.len(), 2);
}

#[test]
fn a_restarted_static_leader_is_answered_as_a_follower_and_leads_from_the_next_rebalance() {
    let mut c = ClassicGroups::new(7, 0);
    let (old_a, b) = two_static_members(&mut c);
    let (ticket, replies) = c.join(&g(), static_request("", "a-1", b"a"), true, t(100));
    let joined = join_answer(&replies, ticket).unwrap().unwrap();
    let a = joined.member_id.clone();
    // The old leader's id: the restarted leader does not assign.
    assert_eq!((joined.generation, joined.leader.as_str()), (2, old_a.as_str()));
    assert!(joined.members.is_empty());
    let (sync, replies) = c.sync(&g(), static_ref(&a, "a-1"), 2, Vec::new(), t(101));
    assert_eq!(sync_answer(&replies, sync), Some(Ok(b"pa".to_vec())));
    assert_eq!(c.heartbeat(&g(), static_ref(&b, "b-1"), 2, t(102)), Ok(()));
    // A new member joins: at the rebalance, the restarted member leads.
    let (_, new_join, _) = join_new(&mut c, 200, b"");
    let (b_join, _) = c.join(&g(), static_request(&b, "b-1", b"b"), true, t(201));
    let (a_join, replies) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(202));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    assert_eq!((leader.generation, leader.leader.as_str()), (3, a.as_str()));
    assert_eq!(leader.members.len(), 3);
    assert!(join_answer(&replies, b_join).is_some() && join_answer(&replies, new_join).is_some());
}

#[test]
fn a_static_member_that_stays_away_keeps_its_place_until_its_session_timeout() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, b) = two_static_members(&mut c);
    // b is gone (no LeaveGroup); a new member's join phase ends at its deadline without b,
    // which keeps its place in the new generation.
    let (n, new_join, _) = join_new(&mut c, 0, b"");
    let (a_join, _) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(0));
    assert_eq!(
        c.heartbeat(&g(), static_ref(&b, "b-1"), 2, t(900)),
        Err(ClassicError::RebalanceInProgress)
    );
    let replies = c.tick(t(5000));
    let leader = join_answer(&replies, a_join).unwrap().unwrap();
    assert!(join_answer(&replies, new_join).is_some());
    assert_eq!(leader.generation, 3);
    let listed: Vec<&str> = leader.members.iter().map(|m| m.member_id.as_str()).collect();
    assert!(listed.contains(&b.as_str()), "b stays, and is assigned to: {listed:?}");
    assert!(replies.expired.is_empty());
    // Its session timeout (from its last heartbeat, or the join phase's end) removes it, and
    // the group rebalances.
    c.sync(&g(), static_ref(&a, "a-1"), 3, Vec::new(), t(5001));
    c.sync(&g(), m(&n), 3, Vec::new(), t(5500));
    assert_eq!(c.next_deadline(), Some(t(6000)));
    let replies = c.tick(t(6000));
    assert_eq!(replies.expired, vec![(g(), b.clone())]);
    assert_eq!(
        c.heartbeat(&g(), static_ref(&a, "a-1"), 3, t(6001)),
        Err(ClassicError::RebalanceInProgress)
    );
    assert_eq!(
        c.heartbeat(&g(), static_ref(&b, "b-1"), 3, t(6001)),
        Err(ClassicError::UnknownMemberId),
        "the instance is no longer known"
    );
    // Back after its session timeout, it joins as a new member.
    let (b_join, replies) = c.join(&g(), static_request("", "b-1", b"b"), true, t(6002));
    assert_eq!(join_answer(&replies, b_join), None, "it waits for the rebalance");
}

#[test]
fn a_static_member_that_stays_away_is_removed_at_its_session_timeout() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, b) = two_static_members(&mut c);
    assert_eq!(c.heartbeat(&g(), static_ref(&a, "a-1"), 2, t(900)), Ok(()));
    assert_eq!(c.next_deadline(), Some(t(1000)));
    let replies = c.tick(t(1000));
    assert_eq!(replies.expired, vec![(g(), b)]);
    assert_eq!(
        c.heartbeat(&g(), static_ref(&a, "a-1"), 2, t(1001)),
        Err(ClassicError::RebalanceInProgress)
    );
    let (a_join, replies) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(1002));
    let joined = join_answer(&replies, a_join).unwrap().unwrap();
    assert_eq!((joined.generation, joined.members.len()), (3, 1));
}

#[test]
fn leave_group_names_a_static_member_by_instance_id_and_fences_a_stale_member_id() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, b) = two_static_members(&mut c);
    assert_eq!(
        c.leave(&g(), static_ref(&a, "b-1"), t(1)).map(|_| ()),
        Err(ClassicError::FencedInstanceId)
    );
    assert_eq!(
        c.leave(&g(), static_ref("", "z-1"), t(1)).map(|_| ()),
        Err(ClassicError::UnknownMemberId)
    );
    c.leave(&g(), static_ref("", "b-1"), t(1)).unwrap();
    assert_eq!(
        c.heartbeat(&g(), static_ref(&b, "b-1"), 2, t(2)),
        Err(ClassicError::UnknownMemberId)
    );
    assert_eq!(
        c.heartbeat(&g(), static_ref(&a, "a-1"), 2, t(2)),
        Err(ClassicError::RebalanceInProgress)
    );
    c.leave(&g(), static_ref(&a, "a-1"), t(3)).unwrap();
    assert!(!c.is_live(&g()));
    assert_eq!(c.bytes, 0);
    // A member id given out with MEMBER_ID_REQUIRED may leave before it joins.
    let (ticket, replies) = c.join(&g(), request("", &[("range", b"")]), true, t(4));
    let Some(Err(ClassicError::MemberIdRequired { member_id })) = join_answer(&replies, ticket)
    else {
        panic!()
    };
    c.leave(&g(), m(&member_id), t(5)).unwrap();
    assert!(!c.is_live(&g()));
}

#[test]
fn a_static_member_restarting_while_the_leader_assigns_makes_the_group_rebalance() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, old_b) = two_static_members(&mut c);
    let (_, new_join, _) = join_new(&mut c, 10, b"");
    let (b_join, _) = c.join(&g(), static_request(&old_b, "b-1", b"b"), true, t(11));
    let (a_join, replies) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(12));
    assert!(join_answer(&replies, a_join).is_some() && join_answer(&replies, new_join).is_some());
    assert!(join_answer(&replies, b_join).is_some());
    let (old_sync, _) = c.sync(&g(), static_ref(&old_b, "b-1"), 3, Vec::new(), t(13));
    // b restarts before the leader assigned: its old sync is fenced and the group rebalances.
    let (b_join, replies) = c.join(&g(), static_request("", "b-1", b"b"), true, t(14));
    assert_eq!(sync_answer(&replies, old_sync), Some(Err(ClassicError::FencedInstanceId)));
    assert_eq!(join_answer(&replies, b_join), None);
    assert_eq!(c.describe(&g()).unwrap().state, ClassicState::PreparingRebalance);
}

#[test]
fn instance_ids_are_one_to_249_bytes() {
    let mut c = ClassicGroups::new(7, 0);
    for instance_id in [String::new(), "i".repeat(250)] {
        let (ticket, replies) = c.join(&g(), static_request("", &instance_id, b""), true, t(0));
        assert_eq!(
            join_answer(&replies, ticket),
            Some(Err(ClassicError::InvalidInstanceId { bytes: instance_id.len() }))
        );
    }
    let (ticket, replies) = c.join(&g(), static_request("", &"i".repeat(249), b""), true, t(0));
    assert!(join_answer(&replies, ticket).unwrap().is_ok());
}

#[test]
fn a_join_phase_left_with_only_absent_static_members_waits_for_them() {
    let mut c = ClassicGroups::new(7, 0);
    let (ticket, replies) = c.join(&g(), static_request("", "a-1", b"a"), true, t(0));
    let a = join_answer(&replies, ticket).unwrap().unwrap().member_id;
    c.sync(&g(), static_ref(&a, "a-1"), 1, vec![(a.clone(), b"pa".to_vec())], t(0));
    // A dynamic member comes and goes; a heartbeats but does not rejoin in time.
    let (n, _, _) = join_new(&mut c, 0, b"");
    c.leave(&g(), m(&n), t(10)).unwrap();
    for now in (900..=4500).step_by(900) {
        let beat = c.heartbeat(&g(), static_ref(&a, "a-1"), 1, t(now));
        assert_eq!(beat, Err(ClassicError::RebalanceInProgress));
        assert!(c.tick(t(now)).expired.is_empty());
    }
    // At the deadline nobody rejoined: no generation without members that heard of it; the
    // phase waits another rebalance timeout, and a is kept.
    assert!(c.tick(t(5000)).joins.is_empty());
    let described = c.describe(&g()).unwrap();
    assert_eq!((described.state, described.generation), (ClassicState::PreparingRebalance, 1));
    assert_eq!(c.next_deadline(), Some(t(5500)), "a's session, from its last heartbeat");
    let (a_join, replies) = c.join(&g(), static_request(&a, "a-1", b"a"), true, t(5200));
    let joined = join_answer(&replies, a_join).unwrap().unwrap();
    assert_eq!((joined.generation, joined.leader.as_str()), (2, a.as_str()));
}

/// A group that settles is marked for storing; its stored state, folded and taken back by a
/// new coordinator, keeps its members, generation and assignments: they heartbeat, sync and
/// commit on as before, and a member silent for its session timeout is removed. A group gone
/// once stored is stored as having no members.
#[test]
fn a_settled_group_is_stored_and_taken_back_with_its_members_and_assignments() {
    let mut c = ClassicGroups::new(7, 0);
    let (a, _, _) = join_new(&mut c, 0, b"a-meta");
    assert!(c.take_records().is_empty(), "nothing settled yet");
    let (_, replies) = c.sync(&g(), m(&a), 1, vec![(a.clone(), b"all".to_vec())], t(1));
    assert_eq!(replies.syncs.len(), 1);
    let records = c.take_records();
    assert_eq!(records.len(), 1);
    let (record, encoded) = &records[0];
    assert_eq!(encoded, &OffsetsRecord::Classic(record.clone()).encode());
    let stable = record.stable.clone().expect("a stable group");
    assert_eq!((stable.generation, stable.leader.as_str()), (1, a.as_str()));
    assert_eq!(stable.members[0].metadata, b"a-meta");
    assert_eq!(stable.members[0].assignment, b"all");
    assert!(c.take_records().is_empty(), "taken once");

    // The record goes through the offsets log's fold.
    let folded = CommittedOffsets::fold([encoded.as_slice()]).unwrap();
    let mut next = Coordinator::new(8, folded);
    let replies = next.restore_classic(t(100));
    assert!(replies.joins.is_empty() && replies.syncs.is_empty());
    let restored = next.classic_mut();
    assert_eq!(restored.heartbeat(&g(), m(&a), 1, t(101)), Ok(()));
    let (sync, replies) = restored.sync(&g(), m(&a), 1, Vec::new(), t(102));
    assert_eq!(sync_answer(&replies, sync), Some(Ok(b"all".to_vec())));
    assert_eq!(restored.check_commit(&g(), &a, 1, t(103)), Ok(()));
    assert_eq!(restored.check_commit(&g(), &a, 2, t(103)), Err(ClassicError::IllegalGeneration));
    assert!(restored.take_records().is_empty(), "taking it back stores nothing");
    // Its session (1 s) runs from the last sign of life.
    assert!(restored.tick(t(1_100)).expired.is_empty());
    assert_eq!(restored.tick(t(1_104)).expired, vec![(g(), a.clone())]);
    assert!(!restored.is_live(&g()));
    let records: Vec<_> = restored.take_records().into_iter().map(|(r, _)| r).collect();
    assert_eq!(records, vec![ClassicGroupRecord { group: g(), stable: None }]);
    next.committed_offsets_mut().apply_record(&OffsetsRecord::Classic(records[0].clone()));
    assert_eq!(next.committed_offsets().classic_groups().count(), 0);

    // A group gone before it was ever stored leaves nothing to store.
    let mut c = ClassicGroups::new(9, 0);
    let (b, _, _) = join_new(&mut c, 0, b"");
    c.leave(&g(), m(&b), t(1)).unwrap();
    assert!(c.take_records().is_empty());
}

/// Stored state that breaks a limit, or names an instance twice, is not taken back; a group
/// restored over live ones answers their waiting requests, which join again.
#[test]
fn a_restore_skips_what_breaks_a_limit_and_answers_what_waited() {
    let member = |id: &str, instance: Option<&str>| crate::group::ClassicStoredMember {
        id: id.to_owned(),
        instance_id: instance.map(str::to_owned),
        client_id: "client".to_owned(),
        client_host: "/127.0.0.1".to_owned(),
        session_timeout_ms: 1000,
        rebalance_timeout_ms: 5000,
        metadata: Vec::new(),
        assignment: Vec::new(),
    };
    let stable = |members| crate::group::ClassicStable {
        protocol_type: "consumer".to_owned(),
        protocol: "range".to_owned(),
        generation: 4,
        leader: "gone".to_owned(),
        members,
    };
    let good = stable(vec![member("x", Some("i1")), member("y", None)]);
    let twice = stable(vec![member("x", Some("i1")), member("y", Some("i1"))]);
    let mut short = member("x", None);
    short.session_timeout_ms = 0;
    let broken = stable(vec![short]);
    let names = [GroupName::parse("good").unwrap(), GroupName::parse("twice").unwrap()];
    let broken_name = GroupName::parse("broken").unwrap();

    let mut c = ClassicGroups::new(7, 0);
    join_new(&mut c, 0, b"");
    let (_, waiting, replies) = join_new(&mut c, 0, b"");
    assert_eq!(join_answer(&replies, waiting), None, "the second member waits for the first");
    let stored = [(&names[0], &good), (&names[1], &twice), (&broken_name, &broken)];
    let replies = c.restore(stored, |_| false, t(10));
    assert_eq!(join_answer(&replies, waiting), Some(Err(ClassicError::CoordinatorMoved)));
    assert!(!c.is_live(&g()));
    assert!(c.is_live(&names[0]));
    assert!(!c.is_live(&names[1]) && !c.is_live(&broken_name));
    let described = c.describe(&names[0]).unwrap();
    assert_eq!((described.generation, described.leader.as_str()), (4, "x"), "a leader it has");
    let instance = MemberRef { member_id: "x", instance_id: Some("i1") };
    assert_eq!(c.heartbeat(&names[0], instance, 4, t(11)), Ok(()));
    let skipped = c.restore([(&names[0], &good)], |name| *name == names[0], t(12));
    assert!(skipped.joins.is_empty());
    assert!(!c.is_live(&names[0]), "a name live as a Spool group is left to it");
}
