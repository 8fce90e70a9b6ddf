//! Which nodes of a cluster hold each partition of a topic.
//!
//! A placement is a rule, not a list: the cluster's nodes when the topic was created, the
//! replication factor, and the node the first partition starts at. Partition `p` is held by
//! `factor` consecutive nodes from `nodes[(first + p) % nodes.len()]`, the first of them its
//! preferred leader, so replicas and leaders spread evenly, partitions added later follow the
//! same rule, and a topic's `meta.json` stays a few bytes whatever its partition count.

use serde::{Deserialize, Serialize};

/// The nodes that hold each partition of a topic (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Every node of the cluster when the topic was created, by id, sorted.
    nodes: Vec<u64>,
    /// How many nodes hold each partition: 1 to `nodes.len()`.
    factor: u32,
    /// The index in `nodes` of partition 0's first replica.
    first: u32,
}

/// Why a placement cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor {factor}: a partition is held by at least 1 node")]
    Zero { factor: u32 },
    #[error("replication factor {factor} is more than the {nodes} nodes of the cluster")]
    MoreThanNodes { factor: u32, nodes: usize },
}

impl Placement {
    /// Places a topic named `topic` with `factor` replicas over `nodes`: partition 0 starts
    /// at a node chosen from the topic's name (FNV-1a), so topics do not all start at the
    /// same node.
    pub fn new(topic: &str, nodes: &[u64], factor: u32) -> Result<Placement, PlacementError> {
        if factor == 0 {
            return Err(PlacementError::Zero { factor });
        }
        if factor as usize > nodes.len() {
            return Err(PlacementError::MoreThanNodes { factor, nodes: nodes.len() });
        }
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let first = (hash % nodes.len() as u64) as u32;
        Ok(Placement { nodes, factor, first })
    }

    /// The nodes that hold `partition`, its preferred leader first.
    pub fn replicas(&self, partition: u32) -> Vec<u64> {
        let count = self.nodes.len();
        if count == 0 {
            return Vec::new();
        }
        let start = (self.first as usize + partition as usize) % count;
        (0..(self.factor as usize).min(count)).map(|i| self.nodes[(start + i) % count]).collect()
    }

    /// How many nodes hold each partition.
    pub fn factor(&self) -> u32 {
        self.factor
    }

    /// Whether the placement reads as one this build makes: a factor within its nodes.
    pub(crate) fn check(&self) -> Result<(), PlacementError> {
        if self.factor == 0 {
            return Err(PlacementError::Zero { factor: self.factor });
        }
        if self.factor as usize > self.nodes.len() {
            return Err(PlacementError::MoreThanNodes {
                factor: self.factor,
                nodes: self.nodes.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_preferred_leaders_spread_evenly() {
        let placement = Placement::new("orders", &[3, 1, 5, 2, 4], 3).unwrap();
        let mut leaders = [0; 6];
        let mut held = [0; 6];
        for partition in 0..10 {
            let replicas = placement.replicas(partition);
            assert_eq!(replicas.len(), 3);
            let mut distinct = replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            leaders[replicas[0] as usize] += 1;
            for node in replicas {
                held[node as usize] += 1;
            }
        }
        assert_eq!(&leaders[1..], &[2, 2, 2, 2, 2]);
        assert_eq!(&held[1..], &[6, 6, 6, 6, 6]);
    }

    #[test]
    fn a_factor_outside_the_nodes_is_refused() {
        assert_eq!(
            Placement::new("t", &[1, 2], 3),
            Err(PlacementError::MoreThanNodes { factor: 3, nodes: 2 })
        );
        assert_eq!(Placement::new("t", &[1, 2], 0), Err(PlacementError::Zero { factor: 0 }));
    }

    #[test]
    fn every_node_holds_every_partition_at_the_full_factor() {
        let placement = Placement::new("t", &[1, 2, 3], 3).unwrap();
        for partition in 0..5 {
            let mut replicas = placement.replicas(partition);
            replicas.sort_unstable();
            assert_eq!(replicas, vec![1, 2, 3]);
        }
    }
}
