//! What the server tells about itself: gauges readable in-process (tests assert on them), and
//! the Prometheus series (see the second half of this file and docs/operations.md lists them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Recorder};
use spool_broker::TopicName;
use spool_storage::RecoveryReport;
use thiserror::Error;
use tokio::sync::Notify;

/// Server-wide gauges. Every change wakes `Metrics::changed` waiters, so a test can wait
/// for a condition without sleeping.
#[derive(Debug, Default)]
pub struct Metrics {
    subscriber_buffered_bytes: AtomicU64,
    subscribers_waiting_on_client: AtomicU64,
    damaged_batches: AtomicU64,
    passed_on_batches: AtomicU64,
    changed: Notify,
}

impl Metrics {
    /// Damaged batches that reads met, each counted once (see `spool_damaged_batches_total`).
    pub fn damaged_batches(&self) -> u64 {
        self.damaged_batches.load(Ordering::SeqCst)
    }

    pub(crate) fn damaged_batch(&self) {
        self.damaged_batches.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Batches clients sent to this node that it passed on to their partition's leader (see
    /// `spool_passed_on_batches_total`).
    pub fn passed_on_batches(&self) -> u64 {
        self.passed_on_batches.load(Ordering::SeqCst)
    }

    pub(crate) fn passed_on(&self, batches: u64) {
        self.passed_on_batches.fetch_add(batches, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Log bytes read for subscribers and not yet handed to the network: queued toward them
    /// or being built. Bounded by `SUBSCRIBER_BUFFERED_BYTES_MAX` per subscriber.
    pub fn subscriber_buffered_bytes(&self) -> u64 {
        self.subscriber_buffered_bytes.load(Ordering::SeqCst)
    }

    /// Subscriptions that stopped reading the log because their client is not taking messages.
    pub fn subscribers_waiting_on_client(&self) -> u64 {
        self.subscribers_waiting_on_client.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds, re-checking after every change of a gauge.
    pub async fn wait_for(&self, condition: impl Fn(&Metrics) -> bool) {
        loop {
            let changed = self.changed.notified();
            if condition(self) {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn waiting_on_client(self: &Arc<Self>) -> WaitingOnClient {
        self.subscribers_waiting_on_client.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        WaitingOnClient(self.clone())
    }

    pub(crate) fn buffered(self: &Arc<Self>, bytes: u64) -> Buffered {
        self.subscriber_buffered_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.changed.notify_waiters();
        Buffered { metrics: self.clone(), bytes }
    }
}

/// Counts one subscription blocked on its client while it lives.
#[derive(Debug)]
pub(crate) struct WaitingOnClient(Arc<Metrics>);

impl Drop for WaitingOnClient {
    fn drop(&mut self) {
        self.0.subscribers_waiting_on_client.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Counts bytes held for a subscriber while it lives: dropped when the message is handed to
/// the network or discarded.
#[derive(Debug)]
pub(crate) struct Buffered {
    metrics: Arc<Metrics>,
    bytes: u64,
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.metrics.subscriber_buffered_bytes.fetch_sub(self.bytes, Ordering::SeqCst);
        self.metrics.changed.notify_waiters();
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus.
//
// Everything below records through the `metrics` facade. Until [`install_prometheus`] has
// installed the process-wide recorder every macro is a no-op, so a server without
// `--metrics` pays nothing. Series a partition updates on its hot path are registered once,
// when its writer starts ([`PartitionMetrics`]); gauges that describe state (end offsets,
// segments, sizes, consumer-group lag) are set when Prometheus scrapes
// ([`export_partition_gauges`]), so they cost nothing between scrapes.
//
// Series go away with what they describe: deleting a topic retires every series labelled
// with it ([`retire_topic`]), and it leaves `/metrics` within the series idle time. The
// Prometheus exporter has no call to remove a series (metrics-rs/metrics#243); what it has
// is an idle timeout, which drops a series not updated for that long. Alone, that would also
// drop the series of a live but quiet partition, and detach the handles that still point at
// them, so [`Retiring`] wraps the exporter's recorder: it keeps each counter's and gauge's
// value itself, writes it through to the exporter on every change, and rewrites every live
// one (the retired ones not) several times per idle time, so only retired series go idle. A
// series the exporter dropped anyway (the rewriting stalled) comes back, with its value,
// at the next change or rewrite. Histograms are not dropped (their samples cannot be
// rewritten): a deleted topic's latency histograms stay until the server restarts.
// ---------------------------------------------------------------------------------------------

/// Every series name Spool exports, in one place (docs/operations.md lists them).
pub mod names {
    /// Records appended, per topic and partition (counter).
    pub const PRODUCED_RECORDS: &str = "spool_produced_records_total";
    /// Bytes of stored batches appended, per topic and partition (counter).
    pub const PRODUCED_BYTES: &str = "spool_produced_bytes_total";
    /// Damaged batches that reads met, each counted once, per topic and partition (counter).
    pub const DAMAGED_BATCHES: &str = "spool_damaged_batches_total";
    /// Bytes the background scrub read and checked (counter).
    pub const SCRUB_BYTES: &str = "spool_scrub_bytes_total";
    /// Scrub passes over every partition that ended (counter).
    pub const SCRUB_PASSES: &str = "spool_scrub_passes_total";
    /// Partitions (on a cluster, and logs of the cluster's own groups) the last scrub pass
    /// found damaged (gauge).
    pub const SCRUB_DAMAGED_PARTITIONS: &str = "spool_scrub_damaged_partitions";
    /// Records read for consumers (fetch and subscribe), per topic and partition (counter).
    pub const CONSUMED_RECORDS: &str = "spool_consumed_records_total";
    /// Bytes of stored batches read for consumers, per topic and partition (counter).
    pub const CONSUMED_BYTES: &str = "spool_consumed_bytes_total";
    /// Time of one group's `append_many`, per topic and partition (histogram).
    pub const APPEND_SECONDS: &str = "spool_append_seconds";
    /// Time of one fsync of a partition's log, per topic and partition (histogram).
    pub const FSYNC_SECONDS: &str = "spool_fsync_seconds";
    /// Batches appended per group commit, per topic and partition (histogram).
    pub const GROUP_COMMIT_BATCHES: &str = "spool_group_commit_batches";
    /// The offset the next visible record gets, per topic and partition (gauge, at scrape).
    pub const LOG_END_OFFSET: &str = "spool_log_end_offset";
    /// The oldest offset still stored, per topic and partition (gauge, at scrape).
    pub const LOG_START_OFFSET: &str = "spool_log_start_offset";
    /// Segment files of the partition, the active one included (gauge, at scrape).
    pub const SEGMENTS: &str = "spool_segments";
    /// Bytes of the partition's segment files (gauge, at scrape).
    pub const LOG_BYTES: &str = "spool_log_bytes";
    /// 1 when the partition refuses writes (failed fsync or damage), else 0 (gauge, at scrape).
    pub const FENCED: &str = "spool_partition_fenced";
    /// Open Subscribe streams, per topic and partition (gauge).
    pub const SUBSCRIBERS: &str = "spool_subscribers";
    /// Open client connections (gauge).
    pub const CONNECTIONS: &str = "spool_connections";
    /// Client connections accepted since start (counter).
    pub const CONNECTIONS_ACCEPTED: &str = "spool_connections_accepted_total";
    /// Connections closed for making no first request in time (`timeout="handshake"`) or for
    /// moving no byte for too long after (`timeout="idle"`) (counter).
    pub const CONNECTIONS_TIMED_OUT: &str = "spool_connections_timed_out_total";
    /// 1 while the token file is loaded, 0 while it fails to load and every token is refused
    /// (gauge; absent without tokens).
    pub const TOKEN_FILE_LOADED: &str = "spool_token_file_loaded";
    /// Token file loads that failed since start (counter).
    pub const TOKEN_FILE_FAILURES: &str = "spool_token_file_failures_total";
    /// Requests the browser listener answered, by `route` (the matched path pattern, or
    /// `other`), `method` and `status` (counter).
    pub const HTTP_REQUESTS: &str = "spool_http_requests_total";
    /// Requests the Kafka listener read, by `api` (ApiVersions, Metadata, Produce, Fetch,
    /// ListOffsets, or `unknown`) and `outcome`: `answered` (errors inside an answer
    /// included), `unanswered` (a produce with acks=0) or `closed` (the request closed its
    /// connection) (counter).
    pub const KAFKA_REQUESTS: &str = "spool_kafka_requests_total";
    pub const KAFKA_REQUEST_SECONDS: &str = "spool_kafka_request_seconds";
    pub const KAFKA_ERRORS: &str = "spool_kafka_errors_total";
    /// Always 1, with the running build's `version` as a label (gauge).
    pub const BUILD_INFO: &str = "spool_build_info";
    /// How long opening the data directory (recovery of every partition) took (gauge).
    pub const RECOVERY_SECONDS: &str = "spool_recovery_seconds";
    /// Partitions opened at start, by `outcome`: clean, recovered (after a crash), fenced.
    pub const RECOVERY_PARTITIONS: &str = "spool_recovery_partitions";
    /// Segments whose every batch recovery checked (gauge).
    pub const RECOVERY_SEGMENTS_SCANNED: &str = "spool_recovery_segments_scanned";
    /// Index files recovery wrote anew (gauge).
    pub const RECOVERY_INDEXES_REBUILT: &str = "spool_recovery_index_files_rebuilt";
    /// Bytes of torn tails recovery cut off (gauge).
    pub const RECOVERY_TRUNCATED_BYTES: &str = "spool_recovery_truncated_bytes";
    /// Consumer-group lag in records, per group, topic and partition: the partition's end
    /// offset minus the group's committed offset (gauge, at scrape).
    pub const GROUP_LAG_RECORDS: &str = "spool_group_lag_records";
    /// On a cluster: the node id of the partition's leader as this node knows it, 0 while
    /// none is known (gauge, at scrape).
    pub const PARTITION_LEADER: &str = "spool_partition_leader";
    /// On a cluster: leaders this node has seen take the partition since it started, its
    /// first included (counter, at scrape).
    pub const LEADER_CHANGES: &str = "spool_leader_changes_total";
    /// On a cluster, on the partition's leader: how many entries (batches) the furthest
    /// follower it has heard from is behind it; 0 on the other nodes (gauge, at scrape).
    pub const REPLICATION_LAG_ENTRIES: &str = "spool_replication_lag_entries";
    /// On a cluster, on the partition's leader: time from proposing a batch to a majority
    /// having it fsynced and the leader having applied it (histogram).
    pub const REPLICATION_COMMIT_SECONDS: &str = "spool_replication_commit_seconds";
    /// On a cluster: batches clients sent to this node that it passed on to the partition's
    /// leader, a hop more than sending them there (counter).
    pub const PASSED_ON_BATCHES: &str = "spool_passed_on_batches_total";
}

/// Upper bounds of the latency histograms' buckets, in seconds: 50 µs to 2.5 s.
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];
/// Upper bounds of the group-commit size histogram's buckets, in batches.
const GROUP_BATCHES_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const _: () = assert!(crate::limits::WRITER_GROUP_BATCHES_MAX <= 256, "the last bucket");
/// How long a retired series (of a deleted topic) stays on `/metrics`, at most, before the
/// exporter drops it. Live series are rewritten every eighth of it (at most every 5 s).
pub const SERIES_IDLE_DEFAULT: Duration = Duration::from_secs(60);
/// Rewrites of live series per idle time: a rewrite may come this many times late, less one,
/// before a live series would go idle.
const REWRITES_PER_IDLE: u32 = 8;

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();
static RETIRING: std::sync::OnceLock<Arc<Retiring>> = std::sync::OnceLock::new();

#[derive(Debug, Error)]
pub enum InstallMetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot install the Prometheus recorder: another metrics recorder is installed")]
    AnotherRecorder,
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle),
/// with retired series dropped after [`SERIES_IDLE_DEFAULT`]. Call it before opening a
/// server: series registered earlier are no-ops forever.
pub fn install_prometheus()
-> Result<metrics_exporter_prometheus::PrometheusHandle, InstallMetricsError> {
    install_prometheus_with_series_idle(SERIES_IDLE_DEFAULT)
}

/// [`install_prometheus`] with another idle time for retired series (tests use a short one).
/// The first call in a process decides it.
pub fn install_prometheus_with_series_idle(
    series_idle: Duration,
) -> Result<metrics_exporter_prometheus::PrometheusHandle, InstallMetricsError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full(names::GROUP_COMMIT_BATCHES.into()),
            &GROUP_BATCHES_BUCKETS,
        )?
        .idle_timeout(MetricKindMask::COUNTER | MetricKindMask::GAUGE, Some(series_idle))
        .build_recorder();
    let handle = recorder.handle();
    let retiring = Arc::new(Retiring::new(recorder));
    metrics::set_global_recorder(Recording(retiring.clone()))
        .map_err(|_| InstallMetricsError::AnotherRecorder)?;
    let _ = RETIRING.set(retiring.clone());
    let upkeep = handle.clone();
    let rewrite_interval = series_idle / REWRITES_PER_IDLE;
    std::thread::Builder::new()
        .name("spool-metrics-upkeep".into())
        .spawn(move || {
            let mut last_upkeep = Instant::now();
            loop {
                std::thread::sleep(rewrite_interval.min(crate::limits::METRICS_UPKEEP_INTERVAL));
                retiring.rewrite_live();
                if last_upkeep.elapsed() >= crate::limits::METRICS_UPKEEP_INTERVAL {
                    upkeep.run_upkeep();
                    last_upkeep = Instant::now();
                }
            }
        })
        .expect("spawning a thread at start-up");
    describe::all();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process_collector().describe();
    Ok(PROMETHEUS.get_or_init(|| handle).clone())
}

/// The Prometheus text of every series, as `/metrics` serves it; `None` before
/// [`install_prometheus`]. The benchmark harness reads an in-process server's fsync histogram
/// with it.
pub fn rendered() -> Option<String> {
    PROMETHEUS.get().map(metrics_exporter_prometheus::PrometheusHandle::render)
}

/// Retires every series labelled `topic="{topic}"` (the topic was deleted): they leave
/// `/metrics` within the series idle time, and the lag of every group on the topic is
/// forgotten. A topic created again under the name starts new series.
pub(crate) fn retire_topic(topic: &TopicName) {
    locked(&GROUP_COMMITTED).retain(|(name, _), _| name != topic.as_str());
    if let Some(retiring) = RETIRING.get() {
        retiring
            .retire(|key| key.labels().any(|l| l.key() == "topic" && l.value() == topic.as_str()));
    }
}

/// Retires a deleted group's lag series (they leave `/metrics` within the series idle time)
/// and forgets its committed offsets. A group made again under the name starts new series.
pub(crate) fn retire_group(group: &str) {
    locked(&GROUP_COMMITTED).values_mut().for_each(|groups| {
        groups.remove(group);
    });
    if let Some(retiring) = RETIRING.get() {
        retiring.retire(|key| key.labels().any(|l| l.key() == "group" && l.value() == group));
    }
}

/// Retires one group's lag series of one partition, whose committed offset was deleted.
pub(crate) fn retire_group_partition(group: &str, topic: &str, partition: u32) {
    if let Some(groups) = locked(&GROUP_COMMITTED).get_mut(&(topic.to_owned(), partition)) {
        groups.remove(group);
    }
    if let Some(retiring) = RETIRING.get() {
        let partition = partition.to_string();
        let wanted = [("group", group), ("topic", topic), ("partition", partition.as_str())];
        retiring.retire(|key| {
            wanted
                .iter()
                .all(|(name, value)| key.labels().any(|l| l.key() == *name && l.value() == *value))
        });
    }
}

/// Sets the gauge of one consumer group's lag on one partition.
pub fn record_group_lag(group: &str, topic: &str, partition: u32, lag_records: u64) {
    metrics::gauge!(
        names::GROUP_LAG_RECORDS,
        "group" => group.to_owned(),
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
    .set(lag_records as f64);
}

/// The committed offset of each group, per (topic, partition), for the lag gauges. Process-wide
/// like the recorder; bounded by the groups and partitions the server keeps.
type CommittedByPartition =
    std::collections::HashMap<(String, u32), std::collections::BTreeMap<String, u64>>;
static GROUP_COMMITTED: std::sync::LazyLock<std::sync::Mutex<CommittedByPartition>> =
    std::sync::LazyLock::new(Default::default);

fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tells the lag gauges a group's committed offset on a partition (at start-up, on every
/// commit and reset). The lag, end offset − committed offset, is computed when Prometheus
/// scrapes, so it also follows the end as records arrive.
pub(crate) fn record_group_commit(group: &str, topic: &str, partition: u32, offset: u64) {
    if RETIRING.get().is_none() {
        return;
    }
    locked(&GROUP_COMMITTED)
        .entry((topic.to_owned(), partition))
        .or_default()
        .insert(group.to_owned(), offset);
}

/// The recorder installed process-wide: [`Retiring`] behind an `Arc` the upkeep thread shares.
struct Recording(Arc<Retiring>);

/// Wraps the exporter's recorder so that series can be retired; see the section's comment.
struct Retiring {
    prometheus: metrics_exporter_prometheus::PrometheusRecorder,
    counters: std::sync::Mutex<std::collections::HashMap<metrics::Key, Arc<KeptCounter>>>,
    gauges: std::sync::Mutex<std::collections::HashMap<metrics::Key, Arc<KeptGauge>>>,
}

/// What the exporter is told a series' metadata is (it ignores it).
const METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new("spool_server", metrics::Level::INFO, None);

/// A counter whose value Spool keeps.
struct KeptCounter {
    key: metrics::Key,
    value: AtomicU64,
    retired: std::sync::atomic::AtomicBool,
    retiring: std::sync::Weak<Retiring>,
}

/// A gauge whose value Spool keeps; under a mutex, so the value written through is the last.
struct KeptGauge {
    key: metrics::Key,
    value: std::sync::Mutex<f64>,
    retired: std::sync::atomic::AtomicBool,
    retiring: std::sync::Weak<Retiring>,
}

impl KeptCounter {
    fn write_through(&self) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        if let Some(retiring) = self.retiring.upgrade() {
            let exported = retiring.prometheus.register_counter(&self.key, &METADATA);
            exported.absolute(self.value.load(Ordering::Acquire));
        }
    }
}

impl metrics::CounterFn for KeptCounter {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::AcqRel);
        self.write_through();
    }

    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::AcqRel);
        self.write_through();
    }
}

impl KeptGauge {
    fn change(&self, change: impl FnOnce(f64) -> f64) {
        let mut value = locked(&self.value);
        *value = change(*value);
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        if let Some(retiring) = self.retiring.upgrade() {
            retiring.prometheus.register_gauge(&self.key, &METADATA).set(*value);
        }
    }
}

impl metrics::GaugeFn for KeptGauge {
    fn increment(&self, value: f64) {
        self.change(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.change(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.change(|_| value);
    }
}

impl Retiring {
    fn new(prometheus: metrics_exporter_prometheus::PrometheusRecorder) -> Retiring {
        Retiring { prometheus, counters: Default::default(), gauges: Default::default() }
    }

    /// Writes every live series' value to the exporter again, so none goes idle.
    fn rewrite_live(&self) {
        let counters: Vec<Arc<KeptCounter>> = locked(&self.counters).values().cloned().collect();
        for counter in counters {
            counter.write_through();
        }
        let gauges: Vec<Arc<KeptGauge>> = locked(&self.gauges).values().cloned().collect();
        for gauge in gauges {
            gauge.change(|v| v);
        }
    }

    fn retire(&self, retired: impl Fn(&metrics::Key) -> bool) {
        locked(&self.counters).retain(|key, counter| {
            let retire = retired(key);
            counter.retired.fetch_or(retire, Ordering::AcqRel);
            !retire
        });
        locked(&self.gauges).retain(|key, gauge| {
            let retire = retired(key);
            gauge.retired.fetch_or(retire, Ordering::AcqRel);
            !retire
        });
    }
}

impl metrics::Recorder for Recording {
    fn describe_counter(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(
        &self,
        key: metrics::KeyName,
        unit: Option<metrics::Unit>,
        description: metrics::SharedString,
    ) {
        self.0.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Counter {
        let kept = locked(&self.0.counters)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeptCounter {
                    key: key.clone(),
                    value: AtomicU64::new(0),
                    retired: Default::default(),
                    retiring: Arc::downgrade(&self.0),
                })
            })
            .clone();
        kept.write_through();
        Counter::from_arc(kept)
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> Gauge {
        let kept = locked(&self.0.gauges)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeptGauge {
                    key: key.clone(),
                    value: std::sync::Mutex::new(0.0),
                    retired: Default::default(),
                    retiring: Arc::downgrade(&self.0),
                })
            })
            .clone();
        kept.change(|v| v);
        Gauge::from_arc(kept)
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        metadata: &metrics::Metadata<'_>,
    ) -> Histogram {
        self.0.prometheus.register_histogram(key, metadata)
    }
}

mod describe {
    use super::names::*;

    /// Help texts for `# HELP` lines.
    pub(super) fn all() {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(PRODUCED_RECORDS, "Records appended.");
        describe_counter!(PRODUCED_BYTES, Unit::Bytes, "Bytes of stored batches appended.");
        describe_counter!(CONSUMED_RECORDS, "Records read for consumers.");
        describe_counter!(DAMAGED_BATCHES, "Damaged batches that reads met, each once.");
        describe_counter!(SCRUB_BYTES, Unit::Bytes, "Bytes the background scrub checked.");
        describe_counter!(SCRUB_PASSES, "Scrub passes over every partition that ended.");
        describe_gauge!(
            SCRUB_DAMAGED_PARTITIONS,
            "Partitions, and logs of the cluster's own groups, the last scrub pass found damaged."
        );
        describe_counter!(
            CONSUMED_BYTES,
            Unit::Bytes,
            "Bytes of stored batches read for consumers."
        );
        describe_histogram!(APPEND_SECONDS, Unit::Seconds, "Time of one group's append.");
        describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "Time of one fsync of a log file.");
        describe_histogram!(GROUP_COMMIT_BATCHES, "Batches appended per group commit.");
        describe_gauge!(LOG_END_OFFSET, "The offset the next visible record gets.");
        describe_gauge!(LOG_START_OFFSET, "The oldest offset still stored.");
        describe_gauge!(SEGMENTS, "Segment files of the partition.");
        describe_gauge!(LOG_BYTES, Unit::Bytes, "Bytes of the partition's segment files.");
        describe_gauge!(FENCED, "1 when the partition refuses writes.");
        describe_gauge!(PARTITION_LEADER, "The partition's leader's node id, 0 while none.");
        describe_counter!(LEADER_CHANGES, "Leaders this node saw take the partition.");
        describe_gauge!(
            REPLICATION_LAG_ENTRIES,
            "On the leader: entries the furthest follower is behind."
        );
        describe_histogram!(
            REPLICATION_COMMIT_SECONDS,
            Unit::Seconds,
            "On the leader: time from proposing a batch to its commit."
        );
        describe_counter!(PASSED_ON_BATCHES, "Client batches passed on to the leader.");
        describe_gauge!(SUBSCRIBERS, "Open Subscribe streams.");
        describe_gauge!(CONNECTIONS, "Open client connections.");
        describe_counter!(CONNECTIONS_ACCEPTED, "Client connections accepted.");
        describe_counter!(HTTP_REQUESTS, "Requests the browser listener answered.");
        describe_counter!(KAFKA_REQUESTS, "Requests the Kafka listener read, by API and outcome.");
        describe_histogram!(
            KAFKA_REQUEST_SECONDS,
            Unit::Seconds,
            "Time from reading a Kafka request to its answer being ready, by API."
        );
        describe_counter!(
            KAFKA_ERRORS,
            "Spool errors the Kafka listener answered as Kafka error codes, by code."
        );
        describe_gauge!(BUILD_INFO, "Always 1; the build's version is a label.");
        describe_gauge!(TOKEN_FILE_LOADED, "1 while the token file is loaded, 0 while it fails.");
        describe_counter!(TOKEN_FILE_FAILURES, "Token file loads that failed.");
        describe_counter!(CONNECTIONS_TIMED_OUT, "Connections closed by a timeout, by timeout.");
        describe_gauge!(RECOVERY_SECONDS, Unit::Seconds, "Time taken to open the data directory.");
        describe_gauge!(RECOVERY_PARTITIONS, "Partitions opened at start, by outcome.");
        describe_gauge!(RECOVERY_SEGMENTS_SCANNED, "Segments fully checked at start.");
        describe_gauge!(RECOVERY_INDEXES_REBUILT, "Index files rebuilt at start.");
        describe_gauge!(RECOVERY_TRUNCATED_BYTES, Unit::Bytes, "Torn-tail bytes cut at start.");
        describe_gauge!(
            GROUP_LAG_RECORDS,
            "Records between a group's committed offset and the end."
        );
    }
}

/// The series one partition updates on its hot paths, registered when its writer starts.
#[derive(Clone)]
pub(crate) struct PartitionMetrics {
    produced_records: Counter,
    produced_bytes: Counter,
    consumed_records: Counter,
    consumed_bytes: Counter,
    damaged_batches: Counter,
    append_seconds: Histogram,
    fsync_seconds: Histogram,
    group_batches: Histogram,
    subscribers: Gauge,
    commit_seconds: Histogram,
    passed_on_batches: Counter,
}

impl std::fmt::Debug for PartitionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartitionMetrics")
    }
}

impl PartitionMetrics {
    pub(crate) fn new(topic: &TopicName, partition: u32) -> PartitionMetrics {
        let labels = [("topic", topic.to_string()), ("partition", partition.to_string())];
        PartitionMetrics {
            produced_records: metrics::counter!(names::PRODUCED_RECORDS, &labels),
            produced_bytes: metrics::counter!(names::PRODUCED_BYTES, &labels),
            consumed_records: metrics::counter!(names::CONSUMED_RECORDS, &labels),
            consumed_bytes: metrics::counter!(names::CONSUMED_BYTES, &labels),
            damaged_batches: metrics::counter!(names::DAMAGED_BATCHES, &labels),
            append_seconds: metrics::histogram!(names::APPEND_SECONDS, &labels),
            fsync_seconds: metrics::histogram!(names::FSYNC_SECONDS, &labels),
            group_batches: metrics::histogram!(names::GROUP_COMMIT_BATCHES, &labels),
            subscribers: metrics::gauge!(names::SUBSCRIBERS, &labels),
            commit_seconds: metrics::histogram!(names::REPLICATION_COMMIT_SECONDS, &labels),
            passed_on_batches: metrics::counter!(names::PASSED_ON_BATCHES, &labels),
        }
    }

    /// Counts batches a client sent here that go on to the partition's leader.
    pub(crate) fn passed_on(&self, batches: u64) {
        self.passed_on_batches.increment(batches);
    }

    /// Records how long a proposed batch took to commit (on a replicated partition's leader).
    pub(crate) fn commit_took(&self, took: Duration) {
        self.commit_seconds.record(took);
    }

    /// Runs one group's append and records how long it took.
    pub(crate) fn time_append<T>(&self, append: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let appended = append();
        self.append_seconds.record(started.elapsed());
        appended
    }

    /// Records how long a sync took, from the moment it was asked for (waiting for a shared
    /// round included) to its outcome.
    pub(crate) fn fsync_took(&self, took: Duration) {
        self.fsync_seconds.record(took);
    }

    /// Counts one group commit: its size, and the records and bytes it appended.
    pub(crate) fn committed<'a>(
        &self,
        batches: usize,
        appended: impl Iterator<Item = (&'a [u8], &'a spool_storage::Appended)>,
    ) {
        self.group_batches.record(batches as f64);
        for (batch, appended) in appended {
            self.produced_records.increment(appended.last_offset.0 - appended.base_offset.0 + 1);
            self.produced_bytes.increment(batch.len() as u64);
        }
    }

    /// Counts a read for a consumer: `records` at or after the requested offset.
    pub(crate) fn consumed(&self, records: u64, bytes: usize) {
        self.consumed_records.increment(records);
        self.consumed_bytes.increment(bytes as u64);
    }

    /// Counts a damaged batch that a read met for the first time.
    pub(crate) fn damaged_batch(&self) {
        self.damaged_batches.increment(1);
    }

    /// Counts one open Subscribe stream while the guard lives.
    pub(crate) fn subscriber(&self) -> Subscriber {
        self.subscribers.increment(1.0);
        Subscriber(self.subscribers.clone())
    }
}

/// One open Subscribe stream, counted while it lives.
pub(crate) struct Subscriber(Gauge);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The state gauges of one partition, set when Prometheus scrapes.
pub(crate) struct PartitionGauges {
    pub(crate) log_start_offset: u64,
    pub(crate) log_end_offset: u64,
    pub(crate) segments: usize,
    pub(crate) size_bytes: u64,
    pub(crate) fenced: bool,
    /// On a cluster: the partition's replication, as this node sees it.
    pub(crate) replication: Option<ReplicationGauges>,
}

/// A replicated partition's state, as one node sees it.
pub(crate) struct ReplicationGauges {
    pub(crate) leader: Option<u64>,
    pub(crate) leader_changes: u64,
    /// Where this node leads: the furthest follower's distance behind it, in entries.
    pub(crate) lag_entries: u64,
}

/// Sets one partition's state gauges, and the lag of every group with an offset committed
/// on it.
pub(crate) fn export_partition_gauges(topic: &TopicName, partition: u32, gauges: PartitionGauges) {
    let labels = [("topic", topic.to_string()), ("partition", partition.to_string())];
    metrics::gauge!(names::LOG_START_OFFSET, &labels).set(gauges.log_start_offset as f64);
    metrics::gauge!(names::LOG_END_OFFSET, &labels).set(gauges.log_end_offset as f64);
    metrics::gauge!(names::SEGMENTS, &labels).set(gauges.segments as f64);
    metrics::gauge!(names::LOG_BYTES, &labels).set(gauges.size_bytes as f64);
    metrics::gauge!(names::FENCED, &labels).set(if gauges.fenced { 1.0 } else { 0.0 });
    if let Some(replication) = gauges.replication {
        let leader = replication.leader.unwrap_or(0);
        metrics::gauge!(names::PARTITION_LEADER, &labels).set(leader as f64);
        metrics::counter!(names::LEADER_CHANGES, &labels).absolute(replication.leader_changes);
        let lag = replication.lag_entries as f64;
        metrics::gauge!(names::REPLICATION_LAG_ENTRIES, &labels).set(lag);
    }
    let committed: Vec<(String, u64)> = locked(&GROUP_COMMITTED)
        .get(&(topic.to_string(), partition))
        .map(|groups| groups.iter().map(|(group, offset)| (group.clone(), *offset)).collect())
        .unwrap_or_default();
    for (group, offset) in committed {
        let lag = gauges.log_end_offset.saturating_sub(offset);
        record_group_lag(&group, topic.as_str(), partition, lag);
    }
}

/// Counts one client connection while it lives.
#[derive(Debug)]
pub(crate) struct Connection(());

impl Connection {
    pub(crate) fn opened() -> Connection {
        metrics::counter!(names::CONNECTIONS_ACCEPTED).increment(1);
        metrics::gauge!(names::CONNECTIONS).increment(1.0);
        Connection(())
    }
}

/// The process_* series' collector, made once.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Sets the process_* series (CPU seconds, resident memory, open files and their limit,
/// start time, threads) from /proc, before a scrape renders them.
pub(crate) fn collect_process() {
    process_collector().collect();
}

/// Counts one request the browser listener answered.
pub(crate) fn http_request(route: &str, method: &str, status: u16) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!(names::HTTP_REQUESTS, &labels).increment(1);
}

/// Counts one request the Kafka listener read, and the time it took to answer.
pub(crate) fn kafka_request(api: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!(names::KAFKA_REQUESTS, "api" => api, "outcome" => outcome).increment(1);
    metrics::histogram!(names::KAFKA_REQUEST_SECONDS, "api" => api).record(took.as_secs_f64());
}

/// Counts one error code in a Kafka answer (`error`: Kafka's name for it).
pub(crate) fn kafka_error(error: String) {
    metrics::counter!(names::KAFKA_ERRORS, "error" => error).increment(1);
}

/// Records whether the token file loaded, at start and at every reload.
pub(crate) fn token_file_loaded(loaded: bool) {
    metrics::gauge!(names::TOKEN_FILE_LOADED).set(if loaded { 1.0 } else { 0.0 });
    if !loaded {
        metrics::counter!(names::TOKEN_FILE_FAILURES).increment(1);
    }
}

/// Counts a connection closed by its handshake or idle timeout.
pub(crate) fn connection_timed_out(timeout: &'static str) {
    metrics::counter!(names::CONNECTIONS_TIMED_OUT, "timeout" => timeout).increment(1);
}

impl Drop for Connection {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS).decrement(1.0);
    }
}

/// What recovery did over every partition at start, for the start-up log and the gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    pub took: Duration,
    pub topics: usize,
    pub partitions: usize,
    /// Partitions whose last shutdown was clean (nothing was scanned).
    pub clean: usize,
    /// Partitions recovered after a crash.
    pub recovered: usize,
    /// Partitions that found damage they must not repair: readable, refusing writes.
    pub fenced: usize,
    pub segments_scanned: usize,
    pub index_files_rebuilt: usize,
    pub truncated_bytes: u64,
}

impl RecoverySummary {
    pub(crate) fn add(&mut self, report: &RecoveryReport, fenced: bool) {
        self.partitions += 1;
        match (fenced, report.clean_shutdown) {
            (true, _) => self.fenced += 1,
            (false, true) => self.clean += 1,
            (false, false) => self.recovered += 1,
        }
        self.segments_scanned += report.scanned.len();
        self.index_files_rebuilt += report.rebuilt_indexes.len();
        self.truncated_bytes += report.truncated.as_ref().map_or(0, |(_, bytes)| *bytes);
    }

    pub(crate) fn export(&self) {
        metrics::gauge!(names::RECOVERY_SECONDS).set(self.took.as_secs_f64());
        for (outcome, partitions) in
            [("clean", self.clean), ("recovered", self.recovered), ("fenced", self.fenced)]
        {
            metrics::gauge!(names::RECOVERY_PARTITIONS, "outcome" => outcome)
                .set(partitions as f64);
        }
        metrics::gauge!(names::RECOVERY_SEGMENTS_SCANNED).set(self.segments_scanned as f64);
        metrics::gauge!(names::RECOVERY_INDEXES_REBUILT).set(self.index_files_rebuilt as f64);
        metrics::gauge!(names::RECOVERY_TRUNCATED_BYTES).set(self.truncated_bytes as f64);
    }
}

impl std::fmt::Display for RecoverySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} topics, {} partitions in {:.3} s: {} clean, {} recovered after a crash, {} fenced; \
             {} segments scanned, {} index files rebuilt, {} torn-tail bytes cut",
            self.topics,
            self.partitions,
            self.took.as_secs_f64(),
            self.clean,
            self.recovered,
            self.fenced,
            self.segments_scanned,
            self.index_files_rebuilt,
            self.truncated_bytes
        )
    }
}
