//! [`MetadataFold`]: the cluster's metadata (topics, node registrations, producer-id blocks)
//! folded from the metadata group's committed commands as its replica applies them, so that
//! its log can be compacted behind a snapshot that holds it (see `spool_replication::Fold`).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use spool_broker::limits::PRODUCER_ID_BLOCK;
use spool_storage::Offset;
use spool_storage::batch::BatchView;
use tokio::sync::watch;

use super::node::{Command, TopicSpec, producer_id_block};

/// What the metadata group's commands up to `next` made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Metadata {
    /// Every topic that exists, by name, with its settings.
    pub(crate) topics: BTreeMap<String, TopicSpec>,
    /// Each registered node's client address and Kafka listener (if it has one), by id.
    pub(crate) nodes: BTreeMap<u64, (String, Option<String>)>,
    /// Every producer id below this was handed out by some node.
    pub(crate) producer_ids_end: i64,
    /// The offset after the last command folded.
    pub(crate) next: u64,
}

impl Metadata {
    fn apply(&mut self, command: Command, at: Offset) {
        match command {
            Command::RegisterNode { id, address, kafka } => {
                self.nodes.insert(id, (address, kafka));
            }
            Command::AllocateProducerIds { .. } => {
                let end = producer_id_block(at) + PRODUCER_ID_BLOCK as i64;
                self.producer_ids_end = self.producer_ids_end.max(end);
            }
            // The first create of a name wins, as applying them does.
            Command::CreateTopic { name, spec, .. } => {
                self.topics.entry(name).or_insert(spec);
            }
            Command::AlterTopic { name, spec } => {
                if let Some(topic) = self.topics.get_mut(&name) {
                    *topic = spec;
                }
            }
            Command::DeleteTopic { name } => {
                self.topics.remove(&name);
            }
        }
    }
}

/// The cluster's metadata as the metadata group's log holds it.
#[derive(Debug, Default)]
pub(crate) struct MetadataFold {
    state: Mutex<Metadata>,
    /// Bumped each time a snapshot replaced the state (at the start after a compaction, or
    /// when this replica was too far behind the leader's compacted log).
    installed: watch::Sender<u64>,
}

impl MetadataFold {
    fn lock(&self) -> MutexGuard<'_, Metadata> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> Metadata {
        self.lock().clone()
    }

    /// How many snapshots replaced the state; marked changed at each.
    pub(crate) fn installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }
}

impl spool_replication::Fold for MetadataFold {
    fn apply(&self, kafka: &[u8], base: Offset, next: Offset) {
        let mut state = self.lock();
        let command = BatchView::new(kafka).ok().and_then(|view| {
            let records = view.records();
            let record = records.iter().next()?.ok()?;
            serde_json::from_slice::<Command>(record.value?).ok()
        });
        match command {
            Some(command) => state.apply(command, base),
            None => tracing::error!(
                offset = base.0,
                "a metadata command does not decode; skipped (every node skips it alike)"
            ),
        }
        state.next = next.0;
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.lock()).expect("the metadata encodes")
    }

    fn install(&self, snapshot: &[u8], next: Offset) -> Result<(), String> {
        let mut metadata: Metadata = serde_json::from_slice(snapshot)
            .map_err(|error| format!("a metadata snapshot is not valid JSON: {error}"))?;
        metadata.next = next.0;
        *self.lock() = metadata;
        self.installed.send_modify(|installs| *installs += 1);
        Ok(())
    }

    fn reset(&self) {
        *self.lock() = Metadata::default();
    }
}
