//! openraft's storage conformance suite over the segment log, on the simulated disk.

use std::path::Path;
use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use spool_replication::{NodeId, PartitionStateMachine, SegmentLogStore, TypeConfig};
use spool_storage::sim::SimFileSystem;
use spool_storage::{LogConfig, TimestampMs};

/// A fresh simulated disk per store, with small segments so the suite's entries span some.
struct OnSimulatedDisk;

impl StoreBuilder<TypeConfig, SegmentLogStore, PartitionStateMachine, SimFileSystem>
    for OnSimulatedDisk
{
    async fn build(
        &self,
    ) -> Result<(SimFileSystem, SegmentLogStore, PartitionStateMachine), StorageError<NodeId>> {
        let fs = SimFileSystem::new();
        let config = LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() };
        let store = SegmentLogStore::open(
            Arc::new(fs.clone()),
            Path::new("/data/p"),
            config,
            TimestampMs(0),
        )
        .expect("open");
        Ok((fs, store, PartitionStateMachine::new()))
    }
}

#[test]
fn the_segment_log_passes_openraft_s_storage_suite() {
    if let Err(error) = Suite::test_all(OnSimulatedDisk) {
        panic!("{error}");
    }
}
