use super::*;
use spool_storage::TimestampMs;
use spool_storage::sim::Rng;

/// A time on the coordinator's clock, in milliseconds.
fn t(ms: i64) -> TimestampMs {
    TimestampMs(ms)
}

fn name(group: &str) -> GroupName {
    GroupName::parse(group).unwrap()
}

fn subscription(partitions: u32) -> Subscription {
    Subscription {
        topics: [(TopicName::parse("t").unwrap(), partitions)].into(),
        reset: OffsetReset::Earliest,
    }
}

fn tp(partition: u32) -> TopicPartition {
    TopicPartition { topic: TopicName::parse("t").unwrap(), partition }
}

fn owned(c: &Coordinator, member: &MemberId) -> Vec<u32> {
    c.view(&name("g"), member).unwrap().owned.iter().map(|p| p.partition).collect()
}

fn revoking(c: &Coordinator, member: &MemberId) -> Vec<TopicPartition> {
    c.view(&name("g"), member).unwrap().revoking.into_iter().collect()
}

/// Two members of `g` at time 0, the first having given the second half its partitions.
fn two_settled(c: &mut Coordinator) -> (MemberId, MemberId) {
    let a = join(c, 0);
    let b = join(c, 0);
    let moving = revoking(c, &a);
    c.revoked(&name("g"), &a, &moving, t(1));
    (a, b)
}

fn join(c: &mut Coordinator, now_ms: i64) -> MemberId {
    c.join(&name("g"), subscription(6), 1000, None, t(now_ms)).unwrap().0
}

#[test]
fn three_members_get_fair_shares_and_a_late_joiner_moves_only_its_share() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let a = join(&mut c, 0);
    assert_eq!(owned(&c, &a), [0, 1, 2, 3, 4, 5]);
    let b = join(&mut c, 0);
    // a keeps three partitions throughout and gives three up only once it acknowledges.
    assert_eq!(owned(&c, &a), [0, 1, 2]);
    assert_eq!(owned(&c, &b), Vec::<u32>::new());
    let moving = revoking(&c, &a);
    assert_eq!(moving.len(), 3);
    c.revoked(&g, &a, &moving, t(1));
    assert_eq!(owned(&c, &b), [3, 4, 5]);
    let d = join(&mut c, 2);
    let from_a = revoking(&c, &a);
    let from_b = revoking(&c, &b);
    assert_eq!((from_a.len(), from_b.len()), (1, 1), "each gives one to the newcomer");
    assert_eq!((owned(&c, &a).len(), owned(&c, &b).len()), (2, 2));
    c.revoked(&g, &a, &from_a, t(3));
    c.revoked(&g, &b, &from_b, t(3));
    assert_eq!(owned(&c, &d).len(), 2);
    assert_eq!(c.describe(&g).unwrap().state, GroupState::Stable);
    assert_eq!(c.describe(&g).unwrap().generation, 3);
}

#[test]
fn a_grown_topic_gives_its_new_partitions_to_the_members_and_joins_see_the_new_count() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let (a, b) = two_settled(&mut c);
    assert_eq!((owned(&c, &a), owned(&c, &b)), (vec![0, 1, 2], vec![3, 4, 5]));
    let other = TopicName::parse("other").unwrap();
    assert!(c.topic_grew(&other, 10, t(2)).wake.is_empty(), "no group reads it");
    let changes = c.topic_grew(&TopicName::parse("t").unwrap(), 8, t(2));
    assert_eq!(changes.wake.len(), 2);
    // The new partitions are free: they go to their owners at once, nothing is revoked.
    assert_eq!((owned(&c, &a).len(), owned(&c, &b).len()), (4, 4));
    assert!(revoking(&c, &a).is_empty() && revoking(&c, &b).is_empty());
    let described = c.describe(&g).unwrap();
    assert_eq!(described.subscription.unwrap().topics.values().next(), Some(&8));
    // A join sees the topic's new count; one that still names the old count is refused.
    assert!(c.join(&g, subscription(6), 1000, None, t(3)).is_err());
    assert!(c.join(&g, subscription(8), 1000, None, t(3)).is_ok());
}

#[test]
fn commits_need_membership_ownership_and_a_generation_of_the_current_tenure() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let a = join(&mut c, 0);
    assert!(c.commit(&g, &a, 1, vec![(tp(0), Offset(5))], t(0)).is_ok());
    assert_eq!(c.committed(&g, &tp(0)), Some(Offset(5)));
    let b = join(&mut c, 0);
    // a keeps partition 0 across the rebalance: its commits naming generation 1 still count.
    assert!(c.commit(&g, &a, 1, vec![(tp(0), Offset(6))], t(0)).is_ok());
    assert!(matches!(
        c.commit(&g, &a, 3, vec![(tp(0), Offset(7))], t(0)),
        Err(CommitError::FutureGeneration { generation: 3, current: 2, .. })
    ));
    // A partition being revoked may still be committed by its owner, before it acknowledges.
    let moving = revoking(&c, &a);
    assert!(c.commit(&g, &a, 2, vec![(moving[0].clone(), Offset(1))], t(0)).is_ok());
    assert!(matches!(
        c.commit(&g, &b, 2, vec![(moving[0].clone(), Offset(2))], t(0)),
        Err(CommitError::NotOwner { .. })
    ));
    c.revoked(&g, &a, &moving, t(0));
    assert!(matches!(
        c.commit(&g, &a, 2, vec![(moving[0].clone(), Offset(2))], t(0)),
        Err(CommitError::NotOwner { .. })
    ));
    // b got it at generation 2: a commit naming generation 1 is from before its tenure.
    assert_eq!(
        c.commit(&g, &b, 1, vec![(moving[0].clone(), Offset(2))], t(0)),
        Err(CommitError::StaleGeneration {
            member: b.clone(),
            partition: moving[0].clone(),
            generation: 1,
            owned_since: 2
        })
    );
    assert!(c.commit(&g, &b, 2, vec![(moving[0].clone(), Offset(2))], t(0)).is_ok());
    c.leave(&g, &a, t(1));
    assert!(matches!(c.commit(&g, &a, 3, vec![], t(1)), Err(CommitError::NotAMember { .. })));
}

#[test]
fn a_silent_member_is_removed_at_its_session_timeout_and_its_partitions_move_at_once() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let a = join(&mut c, 0);
    let b = join(&mut c, 0);
    let moving = revoking(&c, &a);
    c.revoked(&g, &a, &moving, t(0));
    assert_eq!(c.next_deadline(), Some(t(1000)));
    assert!(c.heard_from(&g, &a, t(600)));
    assert_eq!(c.tick(t(999)), Changes::default());
    let changes = c.tick(t(1000));
    assert_eq!(
        changes.removed,
        [(b.clone(), Removal::SessionTimeout { session_timeout_ms: 1000 })]
    );
    assert_eq!(owned(&c, &a), [0, 1, 2, 3, 4, 5], "nothing to revoke from a removed member");
    assert!(c.view(&g, &b).is_none());
    assert!(!c.heard_from(&g, &b, t(1001)));
    assert_eq!(c.next_deadline(), Some(t(1600)));
}

#[test]
fn a_member_that_does_not_acknowledge_a_revocation_is_removed() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let a = join(&mut c, 0);
    let b = join(&mut c, 500);
    // a keeps heartbeating but never acknowledges.
    assert!(c.heard_from(&g, &a, t(1400)));
    assert!(c.heard_from(&g, &b, t(1400)));
    let changes = c.tick(t(1500));
    assert_eq!(
        changes.removed,
        [(a.clone(), Removal::RevocationTimeout { session_timeout_ms: 1000 })]
    );
    assert_eq!(owned(&c, &b), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn joins_are_checked_and_resets_wait_for_an_empty_group() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let none = Subscription { topics: BTreeMap::new(), reset: OffsetReset::Latest };
    assert!(matches!(c.join(&g, none, 1000, None, t(0)), Err(JoinError::Topics { topics: 0 })));
    let a = c.join(&g, subscription(2), 1000, None, t(0)).unwrap().0;
    let error = c.join(&g, subscription(3), 1000, None, t(0)).unwrap_err();
    assert!(error.to_string().contains("t (2 partitions)"), "{error}");
    assert!(matches!(
        c.reset(&g, vec![(tp(0), Offset(0))]),
        Err(ResetError::LiveMembers { members: 1, .. })
    ));
    c.leave(&g, &a, t(0));
    assert_eq!(c.reset(&g, vec![(tp(0), Offset(3))]).unwrap().offsets, [(tp(0), Offset(3))]);
    let described = c.describe(&g).unwrap();
    assert_eq!(described.state, GroupState::Empty);
    assert_eq!(described.partitions[0].committed, Some(Offset(3)));
    assert_eq!(c.list().len(), 1);
    // A different subscription is fine once the group is empty.
    assert!(c.join(&g, subscription(3), 1000, None, t(0)).is_ok());
    assert!(
        GroupName::parse("a/b")
            .unwrap_err()
            .to_string()
            .starts_with("bad group name: name contains")
    );
}

#[test]
fn a_group_is_deleted_only_without_members_and_its_offsets_go_with_it() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    assert_eq!(c.delete(&g), Err(DeleteError::Unknown { group: g.clone() }));
    let a = c.join(&g, subscription(2), 1000, None, t(0)).unwrap().0;
    // A live group is refused, with or without committed offsets.
    assert!(matches!(c.delete(&g), Err(DeleteError::LiveMembers { members: 1, .. })));
    let generation = c.view(&g, &a).unwrap().generation;
    c.commit(&g, &a, generation, vec![(tp(1), Offset(4))], t(1)).unwrap();
    assert!(matches!(c.delete(&g), Err(DeleteError::LiveMembers { members: 1, .. })));
    c.leave(&g, &a, t(2));
    let (record, forgotten) = c.delete(&g).unwrap();
    assert_eq!(record, OffsetsRecord::Delete { group: g.clone() });
    assert_eq!(forgotten, [(tp(1), Offset(4))]);
    assert_eq!(c.describe(&g), None);
    assert!(c.list().is_empty());
    assert_eq!(c.committed(&g, &tp(1)), None);
    assert!(!c.committed_offsets().has_group(&g), "a compaction writes nothing for it");
    assert_eq!(c.delete(&g), Err(DeleteError::Unknown { group: g }));
}

#[test]
fn a_live_groups_offsets_are_deleted_but_of_the_topics_it_consumes() {
    let g = name("g");
    let other = TopicPartition { topic: TopicName::parse("u").unwrap(), partition: 0 };
    let mut committed = CommittedOffsets::default();
    committed.apply(&CommitRecord {
        group: g.clone(),
        offsets: vec![(tp(0), Offset(1)), (other.clone(), Offset(2))],
        metadata: BTreeMap::new(),
    });
    let mut c = Coordinator::new(1, committed);
    let unknown = name("nobody");
    let refused = c.delete_offsets(&unknown, &[tp(0)]);
    assert_eq!(refused, Err(DeleteOffsetsError::Unknown { group: unknown }));
    let a = c.join(&g, subscription(2), 1000, None, t(0)).unwrap().0;
    let deletion = c.delete_offsets(&g, &[tp(0), other.clone()]).unwrap();
    assert_eq!(deletion.consumed, [tp(0)].into(), "it consumes t");
    assert_eq!(deletion.forgotten, [(other.clone(), Offset(2))].into());
    let record = OffsetsRecord::Forget { group: g.clone(), partitions: vec![other.clone()] };
    assert_eq!(deletion.record(), Some(record));
    assert_eq!(c.committed(&g, &tp(0)), Some(Offset(1)));
    assert_eq!(c.committed(&g, &other), None);
    let topic = TopicName::parse("t").unwrap();
    let refused = c.delete_topic_offsets(&g, &topic, &[tp(0)]);
    assert_eq!(refused, Err(DeleteOffsetsError::Consumed { group: g.clone(), topic }));
    c.leave(&g, &a, t(1));
    let deletion = c.delete_offsets(&g, &[tp(0), tp(1)]).unwrap();
    assert_eq!(deletion.forgotten, [(tp(0), Offset(1))].into(), "t-1 had none");
    assert!(!c.committed_offsets().has_group(&g), "nothing left of it");
    assert_eq!(c.delete_offsets(&g, &[tp(0)]), Err(DeleteOffsetsError::Unknown { group: g }));
}

#[test]
fn a_deleted_topics_offsets_are_forgotten_in_every_group() {
    let (g, h) = (name("g"), name("h"));
    let other = TopicPartition { topic: TopicName::parse("u").unwrap(), partition: 0 };
    let mut committed = CommittedOffsets::default();
    for (group, offsets) in
        [(&g, vec![(tp(0), 1), (tp(1), 2), (other.clone(), 3)]), (&h, vec![(tp(1), 4)])]
    {
        let offsets = offsets.into_iter().map(|(p, o)| (p, Offset(o))).collect();
        committed.apply(&CommitRecord { group: group.clone(), offsets, metadata: BTreeMap::new() });
    }
    let mut c = Coordinator::new(1, committed);
    let deleted = TopicName::parse("t").unwrap();
    let records = c.forget_topics(|topic| *topic == deleted);
    let expected = [
        OffsetsRecord::Forget { group: g.clone(), partitions: vec![tp(0), tp(1)] },
        OffsetsRecord::Forget { group: h.clone(), partitions: vec![tp(1)] },
    ];
    assert_eq!(records, expected);
    assert_eq!(c.committed(&g, &tp(0)), None);
    assert_eq!(c.committed(&g, &other), Some(Offset(3)), "other topics stay");
    assert!(!c.committed_offsets().has_group(&h), "h committed nothing else");
    assert!(c.forget_topics(|topic| *topic == deleted).is_empty(), "nothing left to forget");
}

/// Every owner of every partition, owned or being revoked.
fn owners(c: &Coordinator, members: &[MemberId]) -> BTreeMap<TopicPartition, MemberId> {
    let mut owners = BTreeMap::new();
    for m in members {
        if let Some(view) = c.view(&name("g"), m) {
            for p in view.owned.iter().chain(&view.revoking) {
                let previous = owners.insert(p.clone(), m.clone());
                assert!(previous.is_none(), "{p} has two owners");
            }
        }
    }
    owners
}

/// Random joins, leaves, silences, acknowledgements, commits, takeovers by a new coordinator
/// and clock steps, against a model of who may own what: at most one owner per partition,
/// handovers only after an acknowledgement or a removal, commits accepted exactly when the
/// rules say, and a stable group always complete and balanced.
#[test]
fn model_random_membership_changes() {
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let g = name("g");
        let partitions = 1 + rng.below(12) as u32;
        let mut c = Coordinator::new(seed, CommittedOffsets::default());
        let mut now = t(0);
        let mut members: Vec<MemberId> = Vec::new();
        let mut silent: BTreeSet<MemberId> = BTreeSet::new();
        // The model's own record of each partition's tenure: (owner, revoking, since).
        let mut tenure: BTreeMap<TopicPartition, (MemberId, bool, u64)> = BTreeMap::new();
        for step in 0..200 {
            let before = owners(&c, &members);
            let mut acknowledged: Vec<(MemberId, TopicPartition)> = Vec::new();
            let mut removed: Vec<MemberId> = Vec::new();
            match rng.below(8) {
                0 if members.len() < 6 => {
                    let (m, _) = c
                        .join(&g, subscription(partitions), 100 + rng.below(200), None, now)
                        .unwrap();
                    members.push(m);
                }
                1 if !members.is_empty() => {
                    let m = members.remove(rng.below(members.len() as u64) as usize);
                    c.leave(&g, &m, now);
                    removed.push(m);
                }
                2 if !members.is_empty() => {
                    silent.insert(members[rng.below(members.len() as u64) as usize].clone());
                }
                3 | 4 => {
                    for m in members.iter().filter(|m| !silent.contains(*m)) {
                        let moving = c.view(&g, m).map(|v| v.revoking).unwrap_or_default();
                        let some: Vec<_> =
                            moving.into_iter().filter(|_| rng.below(2) == 0).collect();
                        acknowledged.extend(some.iter().map(|p| (m.clone(), p.clone())));
                        c.revoked(&g, m, &some, now);
                    }
                }
                5 if !members.is_empty() => {
                    let m = members[rng.below(members.len() as u64) as usize].clone();
                    let view = c.view(&g, &m);
                    let current = view.as_ref().map_or(0, |v| v.generation);
                    let generation = (current + 1).saturating_sub(rng.below(4));
                    let p = tp(rng.below(u64::from(partitions)) as u32);
                    let may = view.is_some_and(|v| {
                        generation <= v.generation
                            && tenure.get(&p).is_some_and(|(owner, _, since)| {
                                *owner == m && generation >= *since
                            })
                    });
                    let result = c.commit(&g, &m, generation, vec![(p.clone(), Offset(step))], now);
                    assert_eq!(result.is_ok(), may, "seed {seed} step {step}: commit {result:?}");
                    if may {
                        assert_eq!(c.committed(&g, &p), Some(Offset(step)));
                    }
                }
                // A new coordinator takes the stored members back, and every member that
                // speaks resumes by its id: nothing moves.
                6 if rng.below(3) == 0 => {
                    c = take_over(&mut c, seed, now.0);
                    for m in members.iter().filter(|m| !silent.contains(*m)) {
                        let sub = subscription(partitions);
                        let resumed = c.join(&g, sub, 100 + rng.below(200), Some(m.as_str()), now);
                        assert_eq!(resumed.unwrap().0, *m, "seed {seed} step {step}: resumed");
                    }
                }
                _ => {
                    now = now.plus_ms(1 + rng.below(150));
                    for m in members.iter().filter(|m| !silent.contains(*m)) {
                        c.heard_from(&g, m, now);
                    }
                    let changes = c.tick(now);
                    for (m, removal) in &changes.removed {
                        let deadline_passed = match removal {
                            Removal::SessionTimeout { .. } | Removal::RevocationTimeout { .. } => {
                                true
                            }
                            Removal::Left | Removal::CoordinatorMoved => false,
                        };
                        assert!(deadline_passed, "seed {seed}: tick removes only on deadlines");
                        removed.push(m.clone());
                    }
                    members.retain(|m| !removed.contains(m));
                }
            }
            let after = owners(&c, &members);
            let generation = members.iter().find_map(|m| c.view(&g, m)).map_or(0, |v| v.generation);
            let mut next_tenure = BTreeMap::new();
            for (p, owner) in &after {
                let view = c.view(&g, owner).unwrap();
                let revoking = view.revoking.contains(p);
                let since = match tenure.get(p) {
                    Some((previous, was_revoking, since))
                        if previous == owner && (revoking || !*was_revoking) =>
                    {
                        *since
                    }
                    _ => generation,
                };
                assert_eq!(view.owned_since[p], since, "seed {seed} step {step}: tenure of {p}");
                next_tenure.insert(p.clone(), (owner.clone(), revoking, since));
            }
            tenure = next_tenure;
            for (p, new_owner) in &after {
                if let Some(old_owner) = before.get(p)
                    && old_owner != new_owner
                {
                    let handed_over = acknowledged.contains(&(old_owner.clone(), p.clone()))
                        || removed.contains(old_owner);
                    assert!(handed_over, "seed {seed} step {step}: {p} moved without a handover");
                }
            }
            for m in &removed {
                assert!(c.view(&g, m).is_none(), "seed {seed}: a removed member still has a view");
            }
            if let Some(described) = c.describe(&g).filter(|d| d.state != GroupState::Empty) {
                assert!(!members.is_empty());
                if described.state == GroupState::Stable {
                    assert_eq!(
                        after.len(),
                        partitions as usize,
                        "seed {seed}: a stable group owns everything"
                    );
                    let shares: Vec<usize> =
                        described.members.iter().map(|m| m.owned.len()).collect();
                    let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                    assert!(max - min <= 1, "seed {seed} step {step}: unbalanced {shares:?}");
                }
            } else {
                assert!(members.is_empty(), "seed {seed}: members but no group");
            }
        }
    }
}

/// A coordinator taking over from `before`: what `before` stored, folded from its records.
fn take_over(before: &mut Coordinator, instance: u64, now_ms: i64) -> Coordinator {
    let records: Vec<Vec<u8>> = before.member_records().iter().map(OffsetsRecord::encode).collect();
    let folded = CommittedOffsets::fold(records.iter().map(Vec::as_slice)).unwrap();
    let mut next = Coordinator::new(instance, folded);
    next.restore_members(t(now_ms));
    next
}

#[test]
fn stored_members_keep_their_partitions_with_a_new_coordinator_and_resume_by_id() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let (a, b) = two_settled(&mut c);
    let (owned_a, owned_b) = (owned(&c, &a), owned(&c, &b));
    let generation = c.describe(&g).unwrap().generation;

    let mut next = take_over(&mut c, 2, 100);
    assert_eq!(owned(&next, &a), owned_a);
    assert_eq!(owned(&next, &b), owned_b);
    let restored = next.describe(&g).unwrap();
    assert_eq!(restored.state, GroupState::Stable);
    assert_eq!(restored.generation, generation + 1, "a takeover starts a new generation");

    // `a` resumes by id: nothing moves and nobody else is woken.
    let (id, changes) = next.join(&g, subscription(6), 1000, Some(a.as_str()), t(150)).unwrap();
    assert_eq!((id, changes.wake), (a.clone(), vec![a.clone()]));
    assert_eq!(next.describe(&g).unwrap().generation, generation + 1);
    // An id the group does not count joins as a new member.
    let (new, changes) = next.join(&g, subscription(6), 1000, Some("gone-1"), t(150)).unwrap();
    assert_ne!(new.as_str(), "gone-1");
    assert_eq!(changes.wake.len(), 3);

    // `b` never comes back: removed a session timeout after the takeover, not before.
    assert!(next.tick(t(1099)).removed.is_empty());
    next.heard_from(&g, &a, t(1099));
    next.heard_from(&g, &new, t(1099));
    let removed: Vec<MemberId> = next.tick(t(1100)).removed.into_iter().map(|(m, _)| m).collect();
    assert_eq!(removed, [b]);
}

#[test]
fn a_pending_revocation_is_stored_and_still_pending_after_a_takeover() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    let a = join(&mut c, 0);
    let b = join(&mut c, 0);
    let moving = revoking(&c, &a);
    assert_eq!(moving.len(), 3);

    let mut next = take_over(&mut c, 2, 100);
    assert_eq!(revoking(&next, &a), moving, "a still gives them up");
    assert_eq!(owned(&next, &b), Vec::<u32>::new());
    next.join(&g, subscription(6), 1000, Some(a.as_str()), t(100)).unwrap();
    next.revoked(&g, &a, &moving, t(101));
    assert_eq!(owned(&next, &b), [3, 4, 5]);
    // The revocation's deadline counts from the takeover: `a` gave them up in time.
    assert!(next.tick(t(1000)).removed.is_empty());
}

#[test]
fn member_records_store_each_change_once_and_a_group_without_members_as_none() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let g = name("g");
    assert!(c.member_records().is_empty());
    let a = join(&mut c, 0);
    let records = c.member_records();
    assert_eq!(records.len(), 1);
    let encoded = records[0].encode();
    assert_eq!(
        std::str::from_utf8(&encoded).unwrap(),
        format!(
            r#"{{"v":1,"group":"g","spool":{{"generation":1,"topics":{{"t":6}},"reset":"earliest","members":[{{"id":"{a}","session_timeout_ms":1000,"owned":[{}]}}]}}}}"#,
            (0..6)
                .map(|p| format!(r#"{{"topic_index":0,"partition":{p},"since":1}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    assert_eq!(OffsetsRecord::decode(&encoded).unwrap(), records[0]);
    // A heartbeat changes nothing stored; a resume with the same timeout neither.
    c.heard_from(&g, &a, t(5));
    c.join(&g, subscription(6), 1000, Some(a.as_str()), t(6)).unwrap();
    assert!(c.member_records().is_empty());
    c.leave(&g, &a, t(7));
    let records = c.member_records();
    assert_eq!(
        records,
        [OffsetsRecord::Members(MembersRecord { group: g.clone(), members: None })]
    );
    assert_eq!(
        OffsetsRecord::decode(&records[0].encode()).unwrap(),
        records[0],
        "stored with no members"
    );
    assert_eq!(c.committed_offsets().stored_members().count(), 0);
}

#[test]
fn a_coordinator_that_stops_coordinating_removes_every_member_and_keeps_them_stored() {
    let mut c = Coordinator::new(1, CommittedOffsets::default());
    let a = join(&mut c, 0);
    c.member_records();
    let changes = c.drop_members();
    assert_eq!(changes.removed, [(a.clone(), Removal::CoordinatorMoved)]);
    assert!(c.member_records().is_empty(), "nothing is stored for the drop");
    assert!(c.view(&name("g"), &a).is_none());
    c.restore_members(t(10));
    assert_eq!(owned(&c, &a), [0, 1, 2, 3, 4, 5], "taken back when it coordinates again");
}

#[test]
fn a_new_member_never_gets_the_id_of_a_member_taken_back() {
    let mut c = Coordinator::new(7, CommittedOffsets::default());
    let a = join(&mut c, 0);
    // The next coordinator started in the same millisecond: the same instance.
    let mut next = take_over(&mut c, 7, 100);
    let b = join(&mut next, 100);
    assert_ne!(a, b);
    assert_eq!(next.describe(&name("g")).unwrap().members.len(), 2);
}
