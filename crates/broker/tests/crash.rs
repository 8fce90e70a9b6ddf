//! Crash tests of the broker's file protocols on the simulated disk: topic create, grow and
//! delete, and an internal log's compaction. Each scenario runs once whole to count the steps
//! its operation takes on the disk (writes, syncs, creations, renames, removals); then, for
//! every step, it runs again on a fresh disk halted after that many steps, and follows the
//! halt with one of:
//!
//! - a power loss that loses everything not durable;
//! - a seeded power loss that keeps, tears or drops each unsynced change by the seed;
//! - the disk coming back without a crash, as after a disk that failed every call for a while.
//!
//! Afterwards the state must reopen without error, hold everything that was reported
//! committed (a create, grow or delete that returned `Ok`, an internal record appended and
//! synced), and show a half-done one either completed or cleaned up.
//!
//! `SPOOL_CRASH_SEEDS=N` runs N seeds of seeded power loss per step (default 4);
//! `SPOOL_CRASH_SEED=S` runs only seed S, to replay a failure.

use std::collections::BTreeMap;
use std::panic::{RefUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use spool_broker::internal_log::InternalLogStore;
use spool_broker::{OpenedTopic, Registry, TopicConfig, TopicConfigRequest, TopicName};
use spool_storage::batch::{BatchBuilder, BatchIter, ProducerStamp};
use spool_storage::fs::FileSystem;
use spool_storage::sim::SimFileSystem;
use spool_storage::{Log, Offset, TimestampMs};

/// What follows the halt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aftermath {
    PowerLoss,
    SeededPowerLoss(u64),
    DiskBack,
}

impl Aftermath {
    fn apply(self, fs: &SimFileSystem) {
        match self {
            Aftermath::PowerLoss => fs.crash(),
            Aftermath::SeededPowerLoss(seed) => fs.crash_seeded(seed),
            Aftermath::DiskBack => fs.resume(),
        }
    }
}

fn aftermaths() -> Vec<Aftermath> {
    let seeds: Vec<u64> = match std::env::var("SPOOL_CRASH_SEED") {
        Ok(seed) => vec![seed.parse().expect("SPOOL_CRASH_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SPOOL_CRASH_SEEDS").ok().and_then(|n| n.parse().ok());
            (0..count.unwrap_or(4u64)).collect()
        }
    };
    let mut aftermaths = vec![Aftermath::PowerLoss, Aftermath::DiskBack];
    aftermaths.extend(seeds.into_iter().map(Aftermath::SeededPowerLoss));
    aftermaths
}

/// Runs `scenario` whole to count its steps, then halted after each number of steps in turn,
/// with every aftermath. `scenario(halt, aftermath)` returns the steps its operation took.
fn at_every_step(name: &str, scenario: impl Fn(Option<u64>, Aftermath) -> u64 + RefUnwindSafe) {
    let steps = scenario(None, Aftermath::PowerLoss);
    assert!(steps > 0, "{name} takes steps");
    for halt in 0..=steps {
        for aftermath in aftermaths() {
            if catch_unwind(|| scenario(Some(halt), aftermath)).is_err() {
                panic!(
                    "{name} failed when halted after {halt} of its {steps} steps, then {aftermath:?}"
                );
            }
        }
    }
}

fn now() -> TimestampMs {
    TimestampMs(1_000_000)
}

fn data() -> PathBuf {
    PathBuf::from("/data")
}

fn name(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn config() -> TopicConfig {
    config_of(2)
}

fn config_of(partitions: u32) -> TopicConfig {
    TopicConfig::new(TopicConfigRequest {
        partitions: Some(partitions),
        segment_bytes: Some(64 * 1024),
        ..Default::default()
    })
    .unwrap()
}

fn shared(fs: &SimFileSystem) -> Arc<dyn FileSystem> {
    Arc::new(fs.clone())
}

/// Appends one record holding `value` and syncs it.
fn append(log: &mut Log, value: &[u8]) {
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(now(), None, Some(value), &[]);
    log.append(&builder.finish(ProducerStamp::NONE), now()).unwrap();
    log.sync(now()).unwrap();
}

/// The values of every record in `log`, oldest first.
fn values(log: &Log) -> Vec<Vec<u8>> {
    let read = log.read(Offset(0), 1024 * 1024).unwrap();
    let mut values = Vec::new();
    for batch in BatchIter::new(&read.bytes) {
        for record in batch.unwrap().records().iter() {
            values.push(record.unwrap().value.unwrap_or_default().to_vec());
        }
    }
    values
}

/// A registry with `topics` created, each holding its own name as a record in partition 0
/// (committed), and their logs still open.
fn registry_with(fs: &SimFileSystem, topics: &[&str]) -> (Registry, BTreeMap<String, Vec<Log>>) {
    let (mut registry, opened) = Registry::open(shared(fs), &data(), now()).unwrap();
    assert!(opened.is_empty());
    let mut logs = BTreeMap::new();
    for topic in topics {
        let mut created = registry.create(name(topic), config(), None, now()).unwrap();
        append(&mut created[0], topic.as_bytes());
        logs.insert(topic.to_string(), created);
    }
    (registry, logs)
}

/// Reopens the registry (which must succeed) and returns its topics by name.
fn reopen(fs: &SimFileSystem) -> (Registry, BTreeMap<String, OpenedTopic>) {
    let (registry, opened) = Registry::open(shared(fs), &data(), now()).expect("reopens");
    let opened = opened.into_iter().map(|t| (t.name.as_str().to_string(), t)).collect();
    (registry, opened)
}

/// Every partition opens unfenced, and partition 0 holds exactly `records`.
fn check_topic(topic: &OpenedTopic, records: &[&[u8]]) {
    assert_eq!(topic.logs.len(), 2, "{}: every partition", topic.name);
    assert!(topic.logs.iter().all(|log| log.fence().is_none()), "{}: fenced", topic.name);
    assert_eq!(values(&topic.logs[0]), records, "{}: its records", topic.name);
}

fn topic_dir(topic: &str) -> PathBuf {
    data().join("topics").join(topic)
}

fn create_topic(halt: Option<u64>, aftermath: Aftermath) -> u64 {
    let fs = SimFileSystem::new();
    let (mut registry, logs) = registry_with(&fs, &["keep"]);
    let before = fs.steps();
    if let Some(steps) = halt {
        fs.halt_after_steps(steps);
    }
    let created = registry.create(name("new"), config(), None, now());
    let steps = fs.steps() - before;
    let reported = created.is_ok();
    drop(created);
    aftermath.apply(&fs);
    if aftermath == Aftermath::DiskBack && !reported {
        // The registry in hand clears what the failed create left, and creates it whole.
        registry.create(name("new"), config(), None, now()).expect("a retried create");
    }
    drop((registry, logs));
    let (mut registry, opened) = reopen(&fs);
    check_topic(&opened["keep"], &[b"keep"]);
    match opened.get("new") {
        Some(new) => check_topic(new, &[]),
        None => {
            assert!(!reported, "a create that returned Ok is lost");
            assert!(!fs.exists(&topic_dir("new")).unwrap(), "a half-done create is left");
            drop(opened);
            registry.create(name("new"), config(), None, now()).expect("a create after the crash");
        }
    }
    steps
}

fn grown() -> TopicConfig {
    config_of(4)
}

fn grow_topic(halt: Option<u64>, aftermath: Aftermath) -> u64 {
    let fs = SimFileSystem::new();
    let (mut registry, logs) = registry_with(&fs, &["keep"]);
    let before = fs.steps();
    if let Some(steps) = halt {
        fs.halt_after_steps(steps);
    }
    let added = registry.alter(&name("keep"), grown(), now());
    let steps = fs.steps() - before;
    let reported = added.is_ok();
    drop(added);
    aftermath.apply(&fs);
    if aftermath == Aftermath::DiskBack && !reported {
        // The registry in hand still has two partitions; a retry clears what the failed grow
        // left and grows it whole.
        registry.alter(&name("keep"), grown(), now()).expect("a retried grow");
    }
    drop((registry, logs));
    let (mut registry, opened) = reopen(&fs);
    let keep = &opened["keep"];
    assert!(keep.logs.iter().all(|log| log.fence().is_none()), "fenced");
    assert_eq!(values(&keep.logs[0]), [b"keep"], "its records");
    match keep.logs.len() {
        4 => assert_eq!(keep.config, grown()),
        2 => {
            assert!(!reported, "a grow that returned Ok is lost");
            for partition in ["2", "3"] {
                let left = fs.exists(&topic_dir("keep").join(partition)).unwrap();
                assert!(!left, "a half-done grow left partition {partition}");
            }
            drop(opened);
            registry.alter(&name("keep"), grown(), now()).expect("a grow after the crash");
        }
        other => panic!("{other} partitions"),
    }
    steps
}

fn delete_topic(halt: Option<u64>, aftermath: Aftermath) -> u64 {
    let fs = SimFileSystem::new();
    let (mut registry, mut logs) = registry_with(&fs, &["keep", "gone"]);
    let gone = logs.remove("gone").unwrap();
    let before = fs.steps();
    if let Some(steps) = halt {
        fs.halt_after_steps(steps);
    }
    let deleted = registry.delete(&name("gone"), gone);
    let steps = fs.steps() - before;
    let reported = deleted.is_ok();
    aftermath.apply(&fs);
    drop((registry, logs));
    let (_registry, opened) = reopen(&fs);
    check_topic(&opened["keep"], &[b"keep"]);
    match opened.get("gone") {
        Some(gone) => {
            assert!(!reported, "a delete that returned Ok is undone");
            check_topic(gone, &[b"gone"]);
        }
        None => assert!(!fs.exists(&topic_dir("gone")).unwrap(), "a half-done delete is left"),
    }
    steps
}

#[test]
fn topic_create_survives_a_crash_at_every_step() {
    at_every_step("topic create", create_topic);
}

#[test]
fn topic_grow_survives_a_crash_at_every_step() {
    at_every_step("topic grow", grow_topic);
}

#[test]
fn topic_delete_survives_a_crash_at_every_step() {
    at_every_step("topic delete", delete_topic);
}

type State = BTreeMap<String, String>;

fn internal_base() -> PathBuf {
    data().join("internal").join("test")
}

/// Opens the internal log whose records are `key=value`, and folds it: the latest value of
/// each key.
fn open_internal(fs: &SimFileSystem) -> (InternalLogStore, State) {
    let mut state = State::new();
    let store = InternalLogStore::open(shared(fs), &internal_base(), now(), |value| {
        let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
        let (key, value) = text.split_once('=').ok_or("no =")?;
        state.insert(key.to_string(), value.to_string());
        Ok(())
    })
    .expect("reopens");
    (store, state)
}

/// Appends `key=value`; on `Ok` it is committed, and `state` has it.
fn put(store: &mut InternalLogStore, state: &mut State, key: &str, value: &str) -> bool {
    let record = format!("{key}={value}");
    let appended = store.append(&[(key.as_bytes(), record.as_bytes())], now()).is_ok();
    if appended {
        state.insert(key.to_string(), value.to_string());
    }
    appended
}

/// The records whose folding gives `state`.
fn snapshot(state: &State) -> Vec<(Vec<u8>, Vec<u8>)> {
    state.iter().map(|(k, v)| (k.clone().into_bytes(), format!("{k}={v}").into_bytes())).collect()
}

fn generations(fs: &SimFileSystem) -> Vec<String> {
    fs.list_dir(&internal_base()).unwrap()
}

fn compact_internal_log(halt: Option<u64>, aftermath: Aftermath) -> u64 {
    let fs = SimFileSystem::new();
    let (mut store, mut committed) = open_internal(&fs);
    // Generation 1 replaces generation 0 before the compaction under test.
    for round in 0..3 {
        for k in 0..5 {
            assert!(put(&mut store, &mut committed, &format!("k{k}"), &format!("v{round}")));
        }
    }
    store.compact(&snapshot(&committed), now()).unwrap();
    assert!(put(&mut store, &mut committed, "k0", "v3"));
    let before = fs.steps();
    if let Some(steps) = halt {
        fs.halt_after_steps(steps);
    }
    let compacted = store.compact(&snapshot(&committed), now());
    let steps = fs.steps() - before;
    // An append after the compaction, before the crash or once the disk is back: committed if
    // it returns Ok. One that fails may still have reached the disk.
    let mut maybe = committed.clone();
    maybe.insert("k1".to_string(), "after".to_string());
    if aftermath == Aftermath::DiskBack {
        aftermath.apply(&fs);
        put(&mut store, &mut committed, "k1", "after");
        drop(store);
    } else {
        put(&mut store, &mut committed, "k1", "after");
        drop(store);
        aftermath.apply(&fs);
    }
    let (store, folded) = open_internal(&fs);
    assert!(
        folded == committed || folded == maybe,
        "folded {folded:?}, but {committed:?} was committed"
    );
    assert_eq!(generations(&fs), [store.generation().to_string()], "leftovers are removed");
    if compacted.is_ok() {
        assert_eq!(store.generation(), 2, "a compaction that returned Ok is undone");
    }
    steps
}

#[test]
fn internal_log_compaction_survives_a_crash_at_every_step() {
    at_every_step("internal log compaction", compact_internal_log);
}

/// What the registry's and the internal log's files look like is not the subject here, but a
/// fresh data directory must be whole after a crash right after it is made.
#[test]
fn a_fresh_data_directory_survives_a_power_loss() {
    let fs = SimFileSystem::new();
    let (registry, _) = Registry::open(shared(&fs), &data(), now()).unwrap();
    let (store, _) = open_internal(&fs);
    drop((registry, store));
    fs.crash();
    for dir in [data().join("topics"), internal_base().join("0")] {
        assert!(fs.exists(Path::new(&dir)).unwrap(), "{} is lost", dir.display());
    }
}
