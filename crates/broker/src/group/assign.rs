//! Spreading a group's partitions over its members: balanced, and sticky so that a
//! rebalance moves as few partitions as it can.
//!
//! With `n` partitions and `k` members, `n % k` members get `n / k + 1` partitions and the
//! others `n / k`. The larger shares go to the members that hold the most partitions now (ties
//! by member id), each member keeps as many of its current partitions as its share allows
//! (lowest first), and only the rest move: to the members below their share, in member-id
//! order. A member that holds no more than its share therefore loses nothing, which is what
//! makes the rebalance cooperative: partitions that stay put keep being consumed.

use std::collections::{BTreeMap, BTreeSet};

use super::{MemberId, TopicPartition};

/// The target owner of every partition in `partitions`. `held` is what each member holds
/// now (partitions being revoked are not held). Empty when there are no members.
pub(crate) fn assign(
    members: &BTreeSet<MemberId>,
    partitions: &BTreeSet<TopicPartition>,
    held: &BTreeMap<TopicPartition, MemberId>,
) -> BTreeMap<TopicPartition, MemberId> {
    let mut target = BTreeMap::new();
    if members.is_empty() {
        return target;
    }
    let mut holdings: BTreeMap<&MemberId, Vec<&TopicPartition>> =
        members.iter().map(|m| (m, Vec::new())).collect();
    for (partition, member) in held {
        if partitions.contains(partition)
            && let Some(list) = holdings.get_mut(member)
        {
            list.push(partition);
        }
    }
    let (base, extra) = (partitions.len() / members.len(), partitions.len() % members.len());
    let mut by_holding: Vec<&MemberId> = members.iter().collect();
    by_holding.sort_by(|a, b| holdings[b].len().cmp(&holdings[a].len()).then(a.cmp(b)));
    let quota: BTreeMap<&MemberId, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, member)| (*member, base + usize::from(rank < extra)))
        .collect();
    for (member, held) in &holdings {
        for partition in held.iter().take(quota[member]) {
            target.insert((*partition).clone(), (*member).clone());
        }
    }
    let free: Vec<&TopicPartition> =
        partitions.iter().filter(|p| !target.contains_key(*p)).collect();
    let mut free = free.into_iter();
    for member in members {
        let have = holdings[member].len().min(quota[member]);
        for partition in free.by_ref().take(quota[member] - have) {
            target.insert(partition.clone(), member.clone());
        }
    }
    assert_eq!(target.len(), partitions.len(), "every partition has a target owner");
    target
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicName;

    fn member(n: u64) -> MemberId {
        MemberId::new(0, n)
    }

    fn partitions(n: u32) -> BTreeSet<TopicPartition> {
        let topic = TopicName::parse("t").unwrap();
        (0..n).map(|p| TopicPartition { topic: topic.clone(), partition: p }).collect()
    }

    fn counts(target: &BTreeMap<TopicPartition, MemberId>) -> BTreeMap<MemberId, usize> {
        let mut counts = BTreeMap::new();
        for member in target.values() {
            *counts.entry(member.clone()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn fresh_members_get_fair_shares() {
        let members: BTreeSet<_> = (1..=3).map(member).collect();
        let target = assign(&members, &partitions(10), &BTreeMap::new());
        let shares: Vec<usize> = counts(&target).into_values().collect();
        assert_eq!(shares, [4, 3, 3]);
        assert!(assign(&BTreeSet::new(), &partitions(4), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_joining_member_takes_only_the_excess() {
        let all = partitions(12);
        let two: BTreeSet<_> = (1..=2).map(member).collect();
        let before = assign(&two, &all, &BTreeMap::new());
        let three: BTreeSet<_> = (1..=3).map(member).collect();
        let after = assign(&three, &all, &before);
        let moved: Vec<_> = all.iter().filter(|p| before[*p] != after[*p]).collect();
        assert_eq!(moved.len(), 4, "only the new member's share moves");
        assert!(moved.iter().all(|p| after[*p] == member(3)));
        assert!(counts(&after).values().all(|&c| c == 4));
    }

    #[test]
    fn a_leaving_members_partitions_are_spread_and_nothing_else_moves() {
        let all = partitions(9);
        let three: BTreeSet<_> = (1..=3).map(member).collect();
        let before = assign(&three, &all, &BTreeMap::new());
        let held: BTreeMap<_, _> = before
            .iter()
            .filter(|(_, m)| **m != member(2))
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        let two: BTreeSet<_> = [member(1), member(3)].into();
        let after = assign(&two, &all, &held);
        for (partition, owner) in &held {
            assert_eq!(&after[partition], owner, "a surviving member keeps what it held");
        }
        let mut shares: Vec<usize> = counts(&after).into_values().collect();
        shares.sort();
        assert_eq!(shares, [4, 5]);
    }

    /// Over random holdings, the target is balanced and moves the fewest partitions possible:
    /// a member keeps min(held, share) of what it holds.
    #[test]
    fn balanced_and_minimal_over_random_holdings() {
        let mut rng = spool_storage::sim::Rng::new(1);
        let mut next = |n: u64| rng.below(n);
        for case in 0..500 {
            let all = partitions(1 + next(40) as u32);
            let members: BTreeSet<_> = (0..1 + next(8)).map(member).collect();
            let mut held = BTreeMap::new();
            for p in &all {
                if next(3) > 0 {
                    held.insert(p.clone(), member(next(10)));
                }
            }
            let target = assign(&members, &all, &held);
            let shares = counts(&target);
            let (min, max) = (shares.values().min(), shares.values().max());
            if members.len() <= all.len() {
                assert!(max.unwrap() - min.unwrap() <= 1, "case {case}: unbalanced {shares:?}");
                assert_eq!(shares.len(), members.len(), "case {case}");
            }
            for m in &members {
                let kept = held.iter().filter(|(p, h)| *h == m && target[*p] == *m).count();
                let had = held.values().filter(|h| *h == m).count();
                assert_eq!(kept, had.min(shares.get(m).copied().unwrap_or(0)), "case {case}");
            }
        }
    }
}
