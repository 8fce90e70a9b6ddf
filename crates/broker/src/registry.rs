//! The topic registry on disk.
//!
//! ```text
//! {data_dir}/topics/{name}/meta.json      the topic's configuration (see `config::TopicMeta`)
//! {data_dir}/topics/{name}/{partition}/   one partition log directory (spool-storage's files)
//! ```
//!
//! `meta.json` is the commit point of a topic: a topic exists exactly when its directory holds
//! it. Every path is built from a [`TopicName`] (one ordinary path component, by its rule) and
//! a partition number, so nothing a client sends can name a path outside the data directory.
//!
//! **Create**: (1) create `topics/{name}/` and fsync `topics/`; (2) open (create) every
//! partition log; (3) fsync `topics/{name}/`; (4) write `meta.json.tmp`, fsync it, rename it to
//! `meta.json`, fsync `topics/{name}/` (`spool_storage::fs::write_atomically`). A crash
//! before (4) leaves a directory without `meta.json`, which the next start removes.
//!
//! **Delete**: (1) remove `meta.json` and fsync `topics/{name}/`: from here the topic is gone;
//! (2) delete every partition log; (3) remove what is left of `topics/{name}/` and fsync
//! `topics/` (`spool_storage::fs::remove_dir_all_durably`, which refuses symbolic links). A
//! crash after (1) leaves a directory without `meta.json`: removed at next start.
//!
//! **Grow** (an alter that adds partitions; none is ever removed, since a record's partition
//! is part of its address): (1) create every new partition log, after removing whatever an
//! earlier, interrupted grow left in its directory; (2) fsync `topics/{name}/`; (3) rewrite
//! `meta.json` with the new count as an alter does: from here the topic has them. A crash
//! before (3) leaves partition directories past the count in `meta.json`, which the next
//! start removes (they can hold no record: nothing is appended to a partition before its
//! topic has it).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use spool_storage::fs::{
    EntryKind, FileSystem, OpenMode, create_dir_all_durably, remove_dir_all_durably,
    write_atomically,
};
use spool_storage::{DeleteError, Log, OpenError, TimestampMs};
use thiserror::Error;

use crate::config::{META_FORMAT_VERSION, TopicConfig, TopicConfigError, TopicMeta};
use crate::limits::{OPEN_THREADS_MAX, PARTITIONS_TOTAL_MAX, TOPICS_MAX};
use crate::name::TopicName;
use crate::placement::Placement;

const TOPICS_DIR: &str = "topics";
const META_FILE: &str = "meta.json";

/// A topic found at start-up, with its partition logs opened (and recovered).
#[derive(Debug)]
pub struct OpenedTopic {
    pub name: TopicName,
    pub config: TopicConfig,
    /// One log per partition, in partition order.
    pub logs: Vec<Log>,
    /// Which nodes of a cluster hold each partition (`None`: every node).
    pub placement: Option<Placement>,
}

/// The topics of one data directory and their configuration. The logs themselves belong to
/// whoever runs them (the server's partition writers); the registry creates and deletes them.
#[derive(Debug)]
pub struct Registry {
    fs: Arc<dyn FileSystem>,
    topics_dir: PathBuf,
    topics: BTreeMap<TopicName, TopicConfig>,
    /// The placements of the topics that have one.
    placements: BTreeMap<TopicName, Placement>,
    /// The most partitions over all topics (see [`Registry::set_partitions_max`]).
    partitions_max: u32,
}

#[derive(Debug, Error)]
pub enum OpenRegistryError {
    #[error("reading the data directory failed at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid topic metadata file: {reason}")]
    BadMeta { path: PathBuf, reason: String },
    #[error("{path} holds an invalid configuration: {source}")]
    BadConfig { path: PathBuf, source: TopicConfigError },
    #[error("opening partition {partition} of topic {topic} failed: {source}")]
    Log { topic: TopicName, partition: u32, source: OpenError },
    #[error(
        "{path} is a symbolic link: Spool never follows links inside its data directory (what it writes or deletes there could be elsewhere); put the directory itself there, or remove the link"
    )]
    Symlink { path: PathBuf },
}

/// `work` on every item, on up to [`OPEN_THREADS_MAX`] threads (opening a log is mostly
/// waiting on the file system, and after a crash reading its unsynced tail), with the results
/// in the items' order; after the first error, the items not started yet are skipped and the
/// first error in order is returned.
fn in_parallel<T: Sync, R: Send, E: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let threads = OPEN_THREADS_MAX.min(items.len()).max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<R, E>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(item);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                }
            });
        }
    });
    let mut done = Vec::with_capacity(items.len());
    for result in results {
        match result.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(Ok(value)) => done.push(value),
            Some(Err(error)) => return Err(error),
            // Skipped after an error: that error comes first or later in order, and is found.
            None => continue,
        }
    }
    Ok(done)
}

/// Refuses a symbolic link where the data directory's layout has a directory.
fn refuse_symlink(fs: &dyn FileSystem, path: &Path) -> Result<(), OpenRegistryError> {
    match fs.entry_kind(path) {
        Ok(Some(EntryKind::Symlink)) => {
            Err(OpenRegistryError::Symlink { path: path.to_path_buf() })
        }
        Ok(_) => Ok(()),
        Err(source) => Err(OpenRegistryError::Io { path: path.to_path_buf(), source }),
    }
}

#[derive(Debug, Error)]
pub enum CreateTopicError {
    #[error("topic {name} already exists")]
    AlreadyExists { name: TopicName },
    #[error("the server already holds {topics} topics, the limit")]
    TooManyTopics { topics: usize },
    #[error(
        "{requested} more partitions would make {total}, over the server's limit of {max} partitions (`spool serve --partitions-max` sets it)"
    )]
    TooManyPartitions { requested: u32, total: u32, max: u32 },
    #[error("creating topic {name} failed at {path}: {source}")]
    Io { name: TopicName, path: PathBuf, source: io::Error },
    #[error("creating partition {partition} of topic {name} failed: {source}")]
    Log { name: TopicName, partition: u32, source: OpenError },
}

#[derive(Debug, Error)]
pub enum AlterTopicError {
    #[error("topic {name} does not exist")]
    NotFound { name: TopicName },
    #[error(
        "topic {name} has {partitions} partitions and cannot have {requested}: partitions can be added, never removed (a record's partition is part of its address)"
    )]
    PartitionsShrink { name: TopicName, partitions: u32, requested: u32 },
    #[error(
        "{requested} more partitions would make {total}, over the server's limit of {max} partitions (`spool serve --partitions-max` sets it)"
    )]
    TooManyPartitions { requested: u32, total: u32, max: u32 },
    #[error("altering topic {name} failed at {path}: {source}")]
    Io { name: TopicName, path: PathBuf, source: io::Error },
    #[error("creating partition {partition} of topic {name} failed: {source}")]
    Log { name: TopicName, partition: u32, source: OpenError },
}

#[derive(Debug, Error)]
pub enum DeleteTopicError {
    #[error("topic {name} does not exist")]
    NotFound { name: TopicName },
    #[error("deleting topic {name} failed at {path}: {source}")]
    Io { name: TopicName, path: PathBuf, source: io::Error },
    #[error("deleting a partition of topic {name} failed: {source}")]
    Log { name: TopicName, source: DeleteError },
}

impl Registry {
    /// Opens the registry under `data_dir` (creating it if needed), removes what interrupted
    /// creates and deletes left, and opens every topic's partition logs.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        now: TimestampMs,
    ) -> Result<(Registry, Vec<OpenedTopic>), OpenRegistryError> {
        let topics_dir = data_dir.join(TOPICS_DIR);
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenRegistryError::Io { path, source }
        };
        refuse_symlink(fs.as_ref(), data_dir)?;
        refuse_symlink(fs.as_ref(), &topics_dir)?;
        create_dir_all_durably(fs.as_ref(), &topics_dir).map_err(io_at(&topics_dir))?;
        let mut names = fs.list_dir(&topics_dir).map_err(io_at(&topics_dir))?;
        names.sort();
        let mut registry = Registry {
            fs: fs.clone(),
            topics_dir,
            topics: BTreeMap::new(),
            placements: BTreeMap::new(),
            partitions_max: PARTITIONS_TOTAL_MAX,
        };
        // The topics first (their metadata, and what interrupted creates left), then every
        // partition log, in parallel.
        let mut topics = Vec::new();
        for entry in names {
            let Ok(name) = TopicName::parse(&entry) else {
                tracing::warn!(entry, "ignoring an entry that is not a topic directory");
                continue;
            };
            let dir = registry.topic_dir(&name);
            refuse_symlink(fs.as_ref(), &dir)?;
            let meta_path = dir.join(META_FILE);
            if !fs.exists(&meta_path).map_err(io_at(&meta_path))? {
                tracing::info!(topic = %name, "removing what an interrupted create or delete left");
                remove_dir_all_durably(fs.as_ref(), &dir).map_err(io_at(&dir))?;
                continue;
            }
            let (config, placement) = read_meta(fs.as_ref(), &meta_path, &name)?;
            remove_partitions_past(fs.as_ref(), &dir, &name, config.partitions())?;
            topics.push((name, config, placement));
        }
        let partitions: Vec<(usize, u32)> = topics
            .iter()
            .enumerate()
            .flat_map(|(topic, (_, config, _))| (0..config.partitions()).map(move |p| (topic, p)))
            .collect();
        let open = |&(topic, partition): &(usize, u32)| {
            let (name, config, _) = &topics[topic];
            let dir = registry.partition_dir(name, partition);
            refuse_symlink(fs.as_ref(), &dir)?;
            let log = Log::open(fs.clone(), &dir, config.log_config(), now).map_err(|source| {
                OpenRegistryError::Log { topic: name.clone(), partition, source }
            })?;
            // One line per partition only where recovery changed something; the server logs
            // one summary for the whole directory.
            let report = log.recovery_report();
            if report.truncated.is_some() || !report.removed.is_empty() {
                tracing::info!(topic = %name, partition, "opened: {report}");
            } else {
                tracing::debug!(topic = %name, partition, "opened: {report}");
            }
            Ok(log)
        };
        let mut logs = in_parallel(&partitions, open)?.into_iter();
        let mut opened = Vec::with_capacity(topics.len());
        for (name, config, placement) in topics {
            let logs = logs.by_ref().take(config.partitions() as usize).collect();
            registry.topics.insert(name.clone(), config);
            if let Some(placement) = &placement {
                registry.placements.insert(name.clone(), placement.clone());
            }
            opened.push(OpenedTopic { name, config, logs, placement });
        }
        Ok((registry, opened))
    }

    pub fn get(&self, name: &TopicName) -> Option<&TopicConfig> {
        self.topics.get(name)
    }

    /// Which nodes of a cluster hold each partition of topic `name`, when it says (`None`:
    /// every node).
    pub fn placement(&self, name: &TopicName) -> Option<&Placement> {
        self.placements.get(name)
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = (&TopicName, &TopicConfig)> {
        self.topics.iter()
    }

    fn topic_dir(&self, name: &TopicName) -> PathBuf {
        self.topics_dir.join(name.as_str())
    }

    fn partition_dir(&self, name: &TopicName, partition: u32) -> PathBuf {
        self.topic_dir(name).join(partition.to_string())
    }

    /// Sets the most partitions, over all topics, creates may reach (at most
    /// [`PARTITIONS_TOTAL_MAX`]; [`PARTITIONS_TOTAL_MAX`] until set). Topics that exist are
    /// kept whatever their count: a lower limit only refuses new ones.
    pub fn set_partitions_max(&mut self, partitions_max: u32) {
        self.partitions_max = partitions_max.min(PARTITIONS_TOTAL_MAX);
    }

    /// The partitions of every topic.
    pub fn partitions(&self) -> u32 {
        self.topics.values().map(TopicConfig::partitions).sum()
    }

    /// Creates a topic (placed on a cluster's nodes as `placement` says, if given) and returns
    /// its new, empty partition logs.
    pub fn create(
        &mut self,
        name: TopicName,
        config: TopicConfig,
        placement: Option<Placement>,
        now: TimestampMs,
    ) -> Result<Vec<Log>, CreateTopicError> {
        if self.topics.contains_key(&name) {
            return Err(CreateTopicError::AlreadyExists { name });
        }
        if self.topics.len() >= TOPICS_MAX {
            return Err(CreateTopicError::TooManyTopics { topics: self.topics.len() });
        }
        let total = self.partitions() + config.partitions();
        if total > self.partitions_max {
            return Err(CreateTopicError::TooManyPartitions {
                requested: config.partitions(),
                total,
                max: self.partitions_max,
            });
        }
        let fs = self.fs.clone();
        let dir = self.topic_dir(&name);
        let io_at = |path: &Path| {
            let (name, path) = (name.clone(), path.to_path_buf());
            move |source| CreateTopicError::Io { name, path, source }
        };
        // A directory without meta.json is only a leftover (see the module docs).
        remove_dir_all_durably(fs.as_ref(), &dir).map_err(io_at(&dir))?;
        create_dir_all_durably(fs.as_ref(), &dir).map_err(io_at(&dir))?;
        let mut logs = Vec::with_capacity(config.partitions() as usize);
        for partition in 0..config.partitions() {
            let log = Log::open(
                fs.clone(),
                &self.partition_dir(&name, partition),
                config.log_config(),
                now,
            )
            .map_err(|source| CreateTopicError::Log {
                name: name.clone(),
                partition,
                source,
            })?;
            logs.push(log);
        }
        fs.sync_dir(&dir).map_err(io_at(&dir))?;
        let meta = TopicMeta::new(name.as_str(), &config, placement.as_ref());
        let json = serde_json::to_vec_pretty(&meta).expect("topic metadata serializes");
        write_atomically(fs.as_ref(), &dir, META_FILE, &json)
            .map_err(io_at(&dir.join(META_FILE)))?;
        if let Some(placement) = placement {
            self.placements.insert(name.clone(), placement);
        }
        self.topics.insert(name, config);
        Ok(logs)
    }

    /// Changes a topic's settings by rewriting its `meta.json` with [`write_atomically`]:
    /// temporary file, fsync, rename, fsync of the directory. A larger partition count first
    /// creates the new partitions' logs (see the module docs), and returns them; a smaller one
    /// is refused. The existing logs are not touched: whoever runs them applies the new
    /// settings.
    pub fn alter(
        &mut self,
        name: &TopicName,
        config: TopicConfig,
        now: TimestampMs,
    ) -> Result<Vec<Log>, AlterTopicError> {
        let Some(current) = self.topics.get(name) else {
            return Err(AlterTopicError::NotFound { name: name.clone() });
        };
        let (from, to) = (current.partitions(), config.partitions());
        if to < from {
            return Err(AlterTopicError::PartitionsShrink {
                name: name.clone(),
                partitions: from,
                requested: to,
            });
        }
        let total = self.partitions() - from + to;
        if to > from && total > self.partitions_max {
            return Err(AlterTopicError::TooManyPartitions {
                requested: to - from,
                total,
                max: self.partitions_max,
            });
        }
        let fs = self.fs.clone();
        let dir = self.topic_dir(name);
        let io_at = |path: &Path| {
            let (name, path) = (name.clone(), path.to_path_buf());
            move |source| AlterTopicError::Io { name, path, source }
        };
        let mut logs = Vec::with_capacity((to - from) as usize);
        for partition in from..to {
            let partition_dir = self.partition_dir(name, partition);
            remove_dir_all_durably(fs.as_ref(), &partition_dir).map_err(io_at(&partition_dir))?;
            let log = Log::open(fs.clone(), &partition_dir, config.log_config(), now)
                .map_err(|source| AlterTopicError::Log { name: name.clone(), partition, source })?;
            logs.push(log);
        }
        if !logs.is_empty() {
            fs.sync_dir(&dir).map_err(io_at(&dir))?;
        }
        let meta = TopicMeta::new(name.as_str(), &config, self.placements.get(name));
        let json = serde_json::to_vec_pretty(&meta).expect("topic metadata serializes");
        write_atomically(fs.as_ref(), &dir, META_FILE, &json)
            .map_err(io_at(&dir.join(META_FILE)))?;
        self.topics.insert(name.clone(), config);
        Ok(logs)
    }

    /// Deletes a topic: its metadata, then `logs` (all of its partition logs, which the caller
    /// has stopped using). The registry forgets the topic even if a later step fails.
    pub fn delete(&mut self, name: &TopicName, logs: Vec<Log>) -> Result<(), DeleteTopicError> {
        let Some(config) = self.topics.remove(name) else {
            return Err(DeleteTopicError::NotFound { name: name.clone() });
        };
        self.placements.remove(name);
        assert_eq!(logs.len(), config.partitions() as usize, "every partition");
        let fs = self.fs.clone();
        let dir = self.topic_dir(name);
        let io_at = |path: &Path| {
            let (name, path) = (name.clone(), path.to_path_buf());
            move |source| DeleteTopicError::Io { name, path, source }
        };
        let meta_path = dir.join(META_FILE);
        fs.remove_file(&meta_path).map_err(io_at(&meta_path))?;
        fs.sync_dir(&dir).map_err(io_at(&dir))?;
        for log in logs {
            log.delete().map_err(|source| DeleteTopicError::Log { name: name.clone(), source })?;
        }
        remove_dir_all_durably(fs.as_ref(), &dir).map_err(io_at(&dir))?;
        Ok(())
    }
}

/// Removes the partition directories of `name` numbered `partitions` or more: what a grow
/// interrupted before its `meta.json` left (see the module docs).
fn remove_partitions_past(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &TopicName,
    partitions: u32,
) -> Result<(), OpenRegistryError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenRegistryError::Io { path, source }
    };
    for entry in fs.list_dir(dir).map_err(io_at(dir))? {
        let Ok(partition) = entry.parse::<u32>() else { continue };
        if partition >= partitions {
            let path = dir.join(&entry);
            tracing::warn!(topic = %name, partition, partitions, "removing a partition directory past the topic's count: what an interrupted grow left");
            remove_dir_all_durably(fs, &path).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn read_meta(
    fs: &dyn FileSystem,
    path: &Path,
    name: &TopicName,
) -> Result<(TopicConfig, Option<Placement>), OpenRegistryError> {
    let io = |source| OpenRegistryError::Io { path: path.to_path_buf(), source };
    let bad = |reason: String| OpenRegistryError::BadMeta { path: path.to_path_buf(), reason };
    let file = fs.open(path, OpenMode::Existing).map_err(io)?;
    let len = file.len().map_err(io)?;
    // A real meta.json is a few hundred bytes; refuse to read something else whole.
    if len > 64 * 1024 {
        return Err(bad(format!("{len} bytes is too large")));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io)?;
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if meta.format_version != META_FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} is not supported (this build reads {META_FORMAT_VERSION})",
            meta.format_version
        )));
    }
    if meta.name != name.as_str() {
        return Err(bad(format!(
            "it names topic {:?} but lies in the directory of {name}",
            meta.name
        )));
    }
    if let Some(placement) = &meta.placement {
        placement.check().map_err(|error| bad(format!("its placement: {error}")))?;
    }
    let config = meta
        .config()
        .map_err(|source| OpenRegistryError::BadConfig { path: path.to_path_buf(), source })?;
    Ok((config, meta.placement))
}

#[cfg(test)]
mod tests {
    use spool_storage::fs::StdFileSystem;

    use super::*;
    use crate::config::TopicConfigRequest;

    fn config(partitions: u32) -> TopicConfig {
        TopicConfig::new(TopicConfigRequest {
            partitions: Some(partitions),
            segment_bytes: Some(64 * 1024),
            ..Default::default()
        })
        .unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    #[test]
    fn a_placement_survives_a_reopen_and_a_grow() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, _) = Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        let placement = Placement::new("a", &[1, 2, 3, 4], 2).unwrap();
        let logs =
            registry.create(name("a"), config(2), Some(placement.clone()), TimestampMs(0)).unwrap();
        let grown = registry.alter(&name("a"), config(3), TimestampMs(0)).unwrap();
        for log in logs.into_iter().chain(grown) {
            log.close().unwrap();
        }
        let (registry, opened) = Registry::open(fs, data.path(), TimestampMs(0)).unwrap();
        assert_eq!(opened[0].placement.as_ref(), Some(&placement));
        assert_eq!(registry.placement(&name("a")), Some(&placement));
        for topic in opened {
            for log in topic.logs {
                log.close().unwrap();
            }
        }
    }

    #[test]
    fn create_reopen_delete() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, opened) =
            Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        assert!(opened.is_empty());
        let logs = registry.create(name("a"), config(3), None, TimestampMs(0)).unwrap();
        assert_eq!(logs.len(), 3);
        assert!(matches!(
            registry.create(name("a"), config(1), None, TimestampMs(0)),
            Err(CreateTopicError::AlreadyExists { .. })
        ));
        for log in logs {
            log.close().unwrap();
        }
        assert!(data.path().join("topics/a/meta.json").exists());
        assert!(data.path().join("topics/a/2").is_dir());

        let (mut registry, opened) =
            Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].config, config(3));
        let OpenedTopic { name: n, logs, .. } = opened.into_iter().next().unwrap();
        assert!(logs.iter().all(|l| l.recovery_report().clean_shutdown));
        registry.delete(&n, logs).unwrap();
        assert!(!data.path().join("topics/a").exists());
        assert!(matches!(registry.delete(&n, Vec::new()), Err(DeleteTopicError::NotFound { .. })));
    }

    #[test]
    fn in_parallel_keeps_order_and_returns_the_first_error_in_order() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = in_parallel(&items, |&i| Ok::<_, u32>(i * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let failed = in_parallel(&items, |&i| if i % 300 == 299 { Err(i) } else { Ok(i) });
        assert_eq!(failed, Err(299));
        assert_eq!(in_parallel(&[] as &[u32], |&i| Ok::<_, ()>(i)), Ok(vec![]));
    }

    #[test]
    fn creates_stop_at_the_partition_limit() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, _) = Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        registry.set_partitions_max(5);
        let logs = registry.create(name("a"), config(3), None, TimestampMs(0)).unwrap();
        let refused = registry.create(name("b"), config(3), None, TimestampMs(0)).unwrap_err();
        assert!(
            matches!(
                refused,
                CreateTopicError::TooManyPartitions { requested: 3, total: 6, max: 5 }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("--partitions-max"), "{refused}");
        assert!(!data.path().join("topics/b").exists());
        let fits = registry.create(name("c"), config(2), None, TimestampMs(0)).unwrap();
        assert_eq!(registry.partitions(), 5);
        for log in logs.into_iter().chain(fits) {
            log.close().unwrap();
        }
    }

    #[test]
    fn alter_rewrites_meta_and_never_removes_partitions() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, _) = Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        for log in registry.create(name("a"), config(2), None, TimestampMs(0)).unwrap() {
            log.close().unwrap();
        }
        let altered = TopicConfig::new(TopicConfigRequest {
            partitions: Some(2),
            retention_ms: Some(60_000),
            segment_bytes: Some(1 << 20),
            ..Default::default()
        })
        .unwrap();
        assert!(registry.alter(&name("a"), altered, TimestampMs(0)).unwrap().is_empty());
        assert_eq!(registry.get(&name("a")), Some(&altered));
        let refused = registry.alter(&name("a"), config(1), TimestampMs(0)).unwrap_err();
        assert!(
            matches!(
                refused,
                AlterTopicError::PartitionsShrink { partitions: 2, requested: 1, .. }
            ),
            "{refused}"
        );
        assert!(matches!(
            registry.alter(&name("b"), config(1), TimestampMs(0)),
            Err(AlterTopicError::NotFound { .. })
        ));
        let (_, opened) = Registry::open(fs, data.path(), TimestampMs(0)).unwrap();
        assert_eq!(opened[0].config, altered);
    }

    #[test]
    fn a_grow_creates_the_new_partitions_within_the_limit_and_survives_a_restart() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, _) = Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        registry.set_partitions_max(4);
        for log in registry.create(name("a"), config(2), None, TimestampMs(0)).unwrap() {
            log.close().unwrap();
        }
        let refused = registry.alter(&name("a"), config(5), TimestampMs(0)).unwrap_err();
        assert!(
            matches!(
                refused,
                AlterTopicError::TooManyPartitions { requested: 3, total: 5, max: 4 }
            ),
            "{refused}"
        );
        assert!(!data.path().join("topics/a/2").exists());
        let added = registry.alter(&name("a"), config(4), TimestampMs(0)).unwrap();
        assert_eq!(
            added.iter().map(|log| log.dir().to_path_buf()).collect::<Vec<_>>(),
            [data.path().join("topics/a/2"), data.path().join("topics/a/3")]
        );
        assert_eq!(registry.partitions(), 4);
        for log in added {
            log.close().unwrap();
        }
        let (_, opened) = Registry::open(fs, data.path(), TimestampMs(0)).unwrap();
        assert_eq!(opened[0].config, config(4));
        assert_eq!(opened[0].logs.len(), 4);
    }

    #[test]
    fn partitions_an_interrupted_grow_left_are_removed_at_start() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        let (mut registry, _) = Registry::open(fs.clone(), data.path(), TimestampMs(0)).unwrap();
        for log in registry.create(name("a"), config(1), None, TimestampMs(0)).unwrap() {
            log.close().unwrap();
        }
        // A grow to 3 that stopped before its meta.json: partition 1 made, 2 half-made.
        let partition_1 = data.path().join("topics/a/1");
        drop(Log::open(fs.clone(), &partition_1, config(1).log_config(), TimestampMs(0)).unwrap());
        std::fs::create_dir_all(data.path().join("topics/a/2")).unwrap();
        let (_, opened) = Registry::open(fs, data.path(), TimestampMs(0)).unwrap();
        assert_eq!(opened[0].logs.len(), 1);
        assert!(data.path().join("topics/a/0").is_dir());
        assert!(!data.path().join("topics/a/1").exists());
        assert!(!data.path().join("topics/a/2").exists());
        assert!(data.path().join("topics/a/meta.json").exists());
    }

    #[test]
    fn leftovers_are_removed_and_strangers_ignored() {
        let data = tempfile::tempdir().unwrap();
        let fs = StdFileSystem::shared();
        std::fs::create_dir_all(data.path().join("topics/half-made/0")).unwrap();
        std::fs::write(data.path().join("topics/half-made/0/junk"), b"x").unwrap();
        std::fs::create_dir_all(data.path().join("topics/not a topic")).unwrap();
        let (registry, opened) = Registry::open(fs, data.path(), TimestampMs(0)).unwrap();
        assert!(opened.is_empty());
        assert_eq!(registry.list().count(), 0);
        assert!(!data.path().join("topics/half-made").exists());
        assert!(data.path().join("topics/not a topic").exists());
    }

    #[test]
    fn damaged_meta_is_reported_with_its_path() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("topics/t")).unwrap();
        std::fs::write(data.path().join("topics/t/meta.json"), b"{nope").unwrap();
        let error = Registry::open(StdFileSystem::shared(), data.path(), TimestampMs(0))
            .unwrap_err()
            .to_string();
        assert!(error.contains("topics/t/meta.json"), "{error}");
    }

    #[test]
    fn a_symlink_in_the_data_directory_is_refused_and_its_target_untouched() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // A topic directory elsewhere, complete, and a half-made one that start-up would
        // clean up: neither may be opened or emptied through a link.
        let mut outside =
            Registry::open(StdFileSystem::shared(), elsewhere.path(), TimestampMs(0)).unwrap().0;
        outside.create(TopicName::parse("real").unwrap(), config(1), None, TimestampMs(0)).unwrap();
        drop(outside);
        std::fs::create_dir_all(elsewhere.path().join("half")).unwrap();
        std::fs::write(elsewhere.path().join("half/precious"), b"keep").unwrap();
        std::fs::create_dir_all(data.path().join("topics")).unwrap();
        for (link, target) in [("linked", "topics/real"), ("emptied", "half")] {
            let at = data.path().join("topics").join(link);
            std::os::unix::fs::symlink(elsewhere.path().join(target), &at).unwrap();
            let error = Registry::open(StdFileSystem::shared(), data.path(), TimestampMs(0))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&at.display().to_string()), "{error}");
            assert!(error.contains("symbolic link"), "{error}");
            std::fs::remove_file(&at).unwrap();
        }
        assert_eq!(std::fs::read(elsewhere.path().join("half/precious")).unwrap(), b"keep");
        assert!(elsewhere.path().join("topics/real/meta.json").exists());
    }

    #[test]
    fn what_the_registry_creates_is_private_to_the_servers_user() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("data");
        let mut registry =
            Registry::open(StdFileSystem::shared(), &data, TimestampMs(0)).unwrap().0;
        registry.create(TopicName::parse("t").unwrap(), config(1), None, TimestampMs(0)).unwrap();
        let mode =
            |path: &str| std::fs::metadata(data.join(path)).unwrap().permissions().mode() & 0o777;
        for dir in ["", "topics", "topics/t", "topics/t/0"] {
            assert_eq!(mode(dir), 0o700, "{dir:?}");
        }
        for file in ["topics/t/meta.json", "topics/t/0/00000000000000000000.log"] {
            assert_eq!(mode(file), 0o600, "{file}");
        }
    }
}
