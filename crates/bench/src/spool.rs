//! The workloads against Spool, through `spool-client`: a running server, or one started
//! in-process on a temporary directory.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spool_client::{
    Acks, Client, Delivery, Follow, Producer, ProducerConfig, Record, StartAt, TopicSettings,
};
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_server::ClusterSetup;
use spool_server::cluster::ClusterOptions;
use spool_server::testing::{StartError, TestServer};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::payload::{Payloads, age_nanos, stamp};
use crate::stats::{Meter, new_histogram};
use crate::workload::{Budget, Measured, Pacer, Timed, parse_fsync};
use crate::{AcksArg, BenchError, Settings, StoredBytes, Workload};

/// How long e2e consumers may lag behind the last acknowledged message before the harness
/// gives up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the topic may take to show every produced message (with `--acks none` or
/// `leader` the last ones may still be on their way to the log, or to its fsync, when the
/// producers are done) before its bytes on disk are read.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the topic is described while waiting for that.
const VISIBLE_POLL: Duration = Duration::from_millis(10);

/// Installs the server's Prometheus recorder in this process, before an in-process server
/// opens, so that the sampler can read its fsync histogram (see `FsyncTotals`). Without it
/// (another recorder is installed) the results carry no server fsyncs.
fn record_fsyncs() {
    if let Err(error) = spool_server::metrics::install_prometheus() {
        eprintln!("note: the in-process server's fsyncs will not be reported: {error}");
    }
}

/// A Spool server started by the harness (the shared in-process server of
/// `spool_server::testing`) in a directory of its own under the data root, stopped when the
/// workload is done.
pub(crate) struct InProcess {
    server: TestServer,
    _data: tempfile::TempDir,
}

impl InProcess {
    pub(crate) async fn start(data_root: &Path) -> Result<InProcess, BenchError> {
        record_fsyncs();
        let data =
            tempfile::Builder::new().prefix("spool-bench-").tempdir_in(data_root).map_err(|e| {
                BenchError::io(format!("creating a directory in {}", data_root.display()), e)
            })?;
        let server = TestServer::start(data.path()).await.map_err(|error| match error {
            StartError::Bind(e) => BenchError::io("binding 127.0.0.1:0".into(), e),
            other => BenchError::Server(other.to_string()),
        })?;
        Ok(InProcess { server, _data: data })
    }

    pub(crate) fn url(&self) -> &str {
        self.server.url()
    }

    pub(crate) async fn stop(self) -> Result<(), BenchError> {
        self.server.shutdown().await.map_err(|error| BenchError::Server(error.to_string()))
    }
}

/// Three cluster nodes started by the harness in one process, on 127.0.0.1-3, each in a
/// directory of its own under the data root.
struct InProcessCluster {
    nodes: Vec<TestServer>,
    _data: tempfile::TempDir,
}

impl InProcessCluster {
    const NODES: u8 = 3;

    async fn start(data_root: &Path) -> Result<InProcessCluster, BenchError> {
        record_fsyncs();
        let data =
            tempfile::Builder::new().prefix("spool-bench-cluster-").tempdir_in(data_root).map_err(
                |e| BenchError::io(format!("creating a directory in {}", data_root.display()), e),
            )?;
        let ip = |id: u8| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, id));
        let mut listeners = Vec::new();
        for id in 1..=Self::NODES {
            let listener = tokio::net::TcpListener::bind((ip(id), 0))
                .await
                .map_err(|e| BenchError::io(format!("binding {}:0", ip(id)), e))?;
            listeners.push(listener);
        }
        let mut peers = Vec::new();
        for (id, listener) in (1u64..).zip(&listeners) {
            let address =
                listener.local_addr().map_err(|e| BenchError::io("a bound port".into(), e))?;
            peers.push((id, address));
        }
        let mut nodes = Vec::new();
        for (id, listener) in (1u8..).zip(listeners) {
            let options = ClusterOptions::new(u64::from(id), &peers, None)
                .map_err(|error| BenchError::Server(error.to_string()))?;
            let setup = ClusterSetup { options, listener: Some(listener) };
            let dir = data.path().join(format!("node-{id}"));
            let node = TestServer::start_cluster_node(&dir, ip(id), setup)
                .await
                .map_err(|error| BenchError::Server(error.to_string()))?;
            nodes.push(node);
        }
        for node in &nodes {
            node.wait_until_serving()
                .await
                .map_err(|error| BenchError::Server(error.to_string()))?;
        }
        Ok(InProcessCluster { nodes, _data: data })
    }

    /// Every node's URL, comma-separated, once every partition of `topic` has a leader: so
    /// the producer sends each partition's batches to its leader from the first one.
    async fn once_led(&self, client: &Client, topic: &str) -> Result<String, BenchError> {
        let deadline = Instant::now() + VISIBLE_TIMEOUT;
        loop {
            let described = client.describe_topic(topic).await?;
            if described.partition_states.iter().all(|p| p.leader_address.is_some()) {
                let urls: Vec<&str> = self.nodes.iter().map(|node| node.url()).collect();
                return Ok(urls.join(","));
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Timeout(format!("no leader of {topic} was elected")));
            }
            tokio::time::sleep(VISIBLE_POLL).await;
        }
    }

    async fn stop(self) -> Result<(), BenchError> {
        for node in self.nodes {
            node.shutdown().await.map_err(|error| BenchError::Server(error.to_string()))?;
        }
        Ok(())
    }
}

/// Runs the workload against three in-process cluster nodes (see
/// [`crate::TargetKind::SpoolCluster`]).
pub async fn measure_cluster(
    settings: &Settings,
    data_root: &Path,
) -> Result<Measured, BenchError> {
    let cluster = InProcessCluster::start(data_root).await?;
    let url = cluster.nodes[0].url().to_owned();
    let measured = measure_at(settings, &url, Some(&cluster)).await;
    cluster.stop().await?;
    let mut measured = measured?;
    measured.target = format!("spool-cluster-{}", InProcessCluster::NODES);
    let replicas = settings.replication_factor.unwrap_or(InProcessCluster::NODES as u32);
    let plural = if replicas == 1 { "" } else { "s" };
    measured.durability = format!("{}, {replicas} replica{plural}", measured.durability);
    Ok(measured)
}

fn durability(settings: &Settings) -> String {
    let acks = match settings.acks {
        AcksArg::None => "none",
        AcksArg::Leader => "leader",
        AcksArg::All => "all",
    };
    let idempotent = if settings.idempotent { ", idempotent" } else { "" };
    format!("fsync {}, acks {acks}{idempotent}", settings.fsync)
}

/// Runs the workload against `server`, or an in-process server under `data_root`.
pub async fn measure(
    settings: &Settings,
    server: Option<&str>,
    data_root: &Path,
) -> Result<Measured, BenchError> {
    let in_process = match server {
        Some(_) => None,
        None => Some(InProcess::start(data_root).await?),
    };
    let url = server.map_or_else(
        || in_process.as_ref().map(|s| s.url().to_owned()).unwrap_or_default(),
        str::to_owned,
    );
    let measured = measure_at(settings, &url, None).await;
    if let Some(in_process) = in_process {
        in_process.stop().await?;
    }
    measured
}

/// Runs the workload against the server at `url`, or, on a cluster, against every node once
/// `url` has created the topic and each partition has a leader: producers send each
/// partition's batches to its leader.
async fn measure_at(
    settings: &Settings,
    url: &str,
    cluster: Option<&InProcessCluster>,
) -> Result<Measured, BenchError> {
    let client = Client::connect(url).await?;
    let topic = format!(
        "spool-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let topic_settings = TopicSettings {
        partitions: settings.partitions,
        fsync: parse_fsync(&settings.fsync)?,
        replication_factor: settings.replication_factor,
        ..TopicSettings::default()
    };
    // Made before the clock starts: for `json`, thousands of events.
    let payloads = Arc::new(Payloads::new(settings.payload, settings.message_size, settings.batch));
    client.create_topic(&topic, topic_settings).await?;
    let client = match cluster {
        Some(cluster) => Client::connect(&cluster.once_led(&client, &topic).await?).await?,
        None => client,
    };
    let measured = async {
        let (mut measured, produced) = match settings.workload {
            Workload::Produce => produce(&client, &topic, settings, &payloads).await?,
            Workload::Consume => consume(&client, &topic, settings, &payloads).await?,
            Workload::E2e => e2e(&client, &topic, settings, &payloads).await?,
        };
        let disk_bytes = disk_bytes(&client, &topic, produced).await?;
        let payload_bytes = produced * settings.message_size as u64;
        measured.stored = Some(StoredBytes::new(payload_bytes, disk_bytes));
        Ok::<_, BenchError>(measured)
    }
    .await;
    let deleted = client.delete_topic(&topic).await;
    drop(client);
    let measured = measured?;
    deleted?;
    Ok(measured)
}

/// The bytes of the topic's segment files, once all `produced` messages are visible.
pub(crate) async fn disk_bytes(
    client: &Client,
    topic: &str,
    produced: u64,
) -> Result<u64, BenchError> {
    let deadline = Instant::now() + VISIBLE_TIMEOUT;
    loop {
        let partitions = client.describe_topic(topic).await?.partition_states;
        let visible: u64 =
            partitions.iter().map(|p| p.log_end_offset.saturating_sub(p.log_start_offset)).sum();
        if visible >= produced {
            return Ok(partitions.iter().map(|p| p.size_bytes).sum());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Timeout(format!(
                "the topic shows {visible} of the {produced} messages produced"
            )));
        }
        tokio::time::sleep(VISIBLE_POLL).await;
    }
}

fn producer_config(settings: &Settings) -> ProducerConfig {
    let acks = match settings.acks {
        AcksArg::None => Acks::None,
        AcksArg::Leader => Acks::Leader,
        AcksArg::All => Acks::All,
    };
    let record_bytes = settings.message_size + 64;
    let batch_bytes = (settings.batch as usize * record_bytes + 1024).min(BATCH_BYTES_MAX as usize);
    ProducerConfig {
        acks,
        batch_records_max: settings.batch,
        batch_bytes_max: batch_bytes,
        linger: Duration::from_millis(settings.linger_ms),
        in_flight_max: settings.in_flight,
        buffer_bytes_max: batch_bytes * (settings.in_flight + 2),
        compression: settings.compression,
        idempotent: settings.idempotent,
        ..ProducerConfig::default()
    }
}

/// What one producer task did.
struct Produced {
    histogram: Histogram<u64>,
}

/// One producer task: sends its share, keeps `in_flight` batches outstanding, records each
/// batch's latency (first send to acknowledgement) and counts acknowledged messages.
async fn produce_task(
    producer: Producer,
    settings: Settings,
    payloads: Arc<Payloads>,
    budget: Budget,
    meter: Arc<Meter>,
    epoch: Instant,
) -> Result<Produced, BenchError> {
    // e2e: a copy of the next value, with its send time.
    let mut stamped_value = Vec::with_capacity(settings.message_size);
    let mut histogram = new_histogram();
    let mut window: VecDeque<(Instant, u64, Delivery)> =
        VecDeque::with_capacity(settings.in_flight + 1);
    let mut pacer =
        settings.rate.map(|rate| Pacer::new(rate as f64 / f64::from(settings.producers)));
    let stamped = settings.workload == Workload::E2e;
    let size = settings.message_size as u64;
    let (mut sent, mut in_batch, mut batch_started) = (0u64, 0u64, Instant::now());
    while !budget.done(sent) {
        if let Some(pacer) = &mut pacer {
            // Until the next message is due, take acknowledgements as they come, so a paced
            // run times each batch when it is acknowledged, not when the window is full.
            let due = pacer.due();
            while let Some((.., front)) = window.front() {
                let front = front.clone();
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(due.into()) => break,
                    _ = front.wait() => {
                        let entry = window.pop_front().expect("not empty");
                        settle(entry, &mut histogram, &meter, size).await?;
                    }
                }
            }
            pacer.wait().await;
        }
        if in_batch == 0 {
            batch_started = Instant::now();
        }
        let mut value = payloads.get(sent);
        if stamped {
            stamped_value.clear();
            stamped_value.extend_from_slice(value);
            stamp(settings.payload, &mut stamped_value, epoch);
            value = stamped_value.as_slice();
        }
        let delivery = producer.send(Record::value(value)).await?;
        sent += 1;
        in_batch += 1;
        // A batch ends when full, or with the last message of the run.
        if in_batch == u64::from(settings.batch) || budget.done(sent) {
            window.push_back((batch_started, in_batch, delivery));
            in_batch = 0;
            while window.len() >= settings.in_flight {
                let front = window.pop_front().expect("not empty");
                settle(front, &mut histogram, &meter, size).await?;
            }
        }
    }
    producer.flush().await?;
    for entry in window {
        settle(entry, &mut histogram, &meter, size).await?;
    }
    Ok(Produced { histogram })
}

/// Waits for one batch's acknowledgement and records it.
async fn settle(
    (started, records, delivery): (Instant, u64, Delivery),
    histogram: &mut Histogram<u64>,
    meter: &Meter,
    size: u64,
) -> Result<(), BenchError> {
    delivery.wait().await?;
    let nanos = started.elapsed().as_nanos() as u64;
    histogram.saturating_record(nanos);
    meter.latency(nanos);
    meter.add(records, records * size);
    Ok(())
}

/// Starts `settings.producers` producer tasks on their own produce streams.
async fn start_producers(
    client: &Client,
    topic: &str,
    settings: &Settings,
    payloads: &Arc<Payloads>,
    meter: &Arc<Meter>,
    epoch: Instant,
) -> Result<Vec<JoinHandle<Result<Produced, BenchError>>>, BenchError> {
    let config = producer_config(settings);
    let mut producers = Vec::new();
    for _ in 0..settings.producers {
        producers.push(client.producer(topic, config.clone()).await?);
    }
    let started = Instant::now();
    Ok(producers
        .into_iter()
        .enumerate()
        .map(|(index, producer)| {
            let budget = Budget::share(settings, index as u32, settings.producers, started);
            tokio::spawn(produce_task(
                producer,
                settings.clone(),
                payloads.clone(),
                budget,
                meter.clone(),
                epoch,
            ))
        })
        .collect())
}

async fn join_producers(
    tasks: Vec<JoinHandle<Result<Produced, BenchError>>>,
) -> Result<Histogram<u64>, BenchError> {
    let mut histogram = new_histogram();
    for task in tasks {
        let produced = task
            .await
            .map_err(|e| BenchError::Server(format!("a producer task failed: {e}")))??;
        histogram.add(&produced.histogram).expect("histograms of one kind add");
    }
    Ok(histogram)
}

/// A workload's measurement, and how many messages it produced into the topic.
type Outcome = (Measured, u64);

async fn produce(
    client: &Client,
    topic: &str,
    settings: &Settings,
    payloads: &Arc<Payloads>,
) -> Result<Outcome, BenchError> {
    let timed = Timed::start("produce spool", settings.messages);
    let tasks =
        start_producers(client, topic, settings, payloads, &timed.meter, timed.started).await?;
    let histogram = join_producers(tasks).await?;
    let measured = measured(timed, settings, histogram).await;
    let produced = measured.messages;
    Ok((measured, produced))
}

async fn join_consumers(
    tasks: Vec<JoinHandle<Result<Histogram<u64>, BenchError>>>,
) -> Result<Histogram<u64>, BenchError> {
    let mut histogram = new_histogram();
    for task in tasks {
        let h = task
            .await
            .map_err(|e| BenchError::Server(format!("a consumer task failed: {e}")))??;
        histogram.add(&h).expect("histograms of one kind add");
    }
    Ok(histogram)
}

/// What a timed workload against Spool measured, once its last message is counted.
async fn measured(timed: Timed, settings: &Settings, histogram: Histogram<u64>) -> Measured {
    let messages = timed.meter.read().0;
    let finished = timed.finish().await;
    Measured {
        target: "spool".into(),
        durability: durability(settings),
        messages,
        seconds: finished.seconds,
        histogram,
        timeline: finished.timeline,
        server_fsyncs: finished.server_fsyncs,
        compression: settings.compression,
        stored: None,
    }
}

/// The partitions consumer `index` of `consumers` reads.
pub fn assigned(index: u32, consumers: u32, partitions: u32) -> Vec<u32> {
    if consumers >= partitions {
        vec![index % partitions]
    } else {
        (0..partitions).filter(|p| p % consumers == index).collect()
    }
}

async fn consume(
    client: &Client,
    topic: &str,
    settings: &Settings,
    payloads: &Arc<Payloads>,
) -> Result<Outcome, BenchError> {
    // Fill the topic first; this is not timed.
    let fill_meter = Arc::new(Meter::default());
    let tasks =
        start_producers(client, topic, settings, payloads, &fill_meter, Instant::now()).await?;
    join_producers(tasks).await?;
    let produced = fill_meter.read().0;

    let deadline = settings.replay_deadline();
    let timed = Timed::start("consume spool", deadline.is_none().then_some(produced));
    let size = settings.message_size as u64;
    let mut tasks = Vec::new();
    for index in 0..settings.consumers {
        let partitions = assigned(index, settings.consumers, settings.partitions);
        let (client, topic, meter) = (client.clone(), topic.to_owned(), timed.meter.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            loop {
                for &partition in &partitions {
                    let mut consumer = client
                        .subscribe(&topic, partition, StartAt::Earliest, Follow::UntilEnd)
                        .await?;
                    let mut asked = Instant::now();
                    while let Some(polled) = consumer.poll().await? {
                        let nanos = asked.elapsed().as_nanos() as u64;
                        histogram.saturating_record(nanos);
                        meter.latency(nanos);
                        let records = polled.record_count();
                        meter.add(records, records * size);
                        asked = Instant::now();
                    }
                }
                if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
                    break;
                }
            }
            Ok::<_, BenchError>(histogram)
        }));
    }
    let histogram = join_consumers(tasks).await?;
    Ok((measured(timed, settings, histogram).await, produced))
}

async fn e2e(
    client: &Client,
    topic: &str,
    settings: &Settings,
    payloads: &Arc<Payloads>,
) -> Result<Outcome, BenchError> {
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let timed = Timed::start("e2e spool", settings.messages);
    let mut consumers = Vec::new();
    for partition in 0..settings.partitions {
        // Subscribed before anything is produced, so `latest` is the empty end.
        let mut consumer =
            client.subscribe(topic, partition, StartAt::Latest, Follow::Live).await?;
        let (received, arrived, meter, mut stopped) =
            (received.clone(), arrived.clone(), timed.meter.clone(), stopped.clone());
        let (size, kind) = (settings.message_size as u64, settings.payload);
        consumers.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            loop {
                let polled = tokio::select! {
                    polled = consumer.poll() => polled?,
                    _ = stopped.wait_for(|s| *s) => break,
                };
                let Some(polled) = polled else { break };
                let mut count = 0u64;
                for record in polled.records() {
                    let record = record?;
                    if let Some(age) = record.value.and_then(|v| age_nanos(kind, v, epoch)) {
                        let nanos = age;
                        histogram.saturating_record(nanos);
                        meter.latency(nanos);
                    }
                    count += 1;
                }
                // Counted as received, not as produced: the meter shows what consumers see.
                meter.add(count, count * size);
                received.fetch_add(count, Ordering::Relaxed);
                arrived.notify_waiters();
            }
            Ok::<_, BenchError>(histogram)
        }));
    }
    // The producers count acknowledged messages on their own meter.
    let produced_meter = Arc::new(Meter::default());
    let tasks = start_producers(client, topic, settings, payloads, &produced_meter, epoch).await?;
    join_producers(tasks).await?;
    let produced = produced_meter.read().0;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        loop {
            let notified = arrived.notified();
            if received.load(Ordering::Relaxed) >= produced {
                break;
            }
            notified.await;
        }
    })
    .await;
    let _ = stop.send(true);
    let histogram = join_consumers(consumers).await?;
    if drained.is_err() {
        return Err(BenchError::Timeout(format!(
            "consumers received {} of {produced} messages",
            received.load(Ordering::Relaxed)
        )));
    }
    Ok((measured(timed, settings, histogram).await, produced))
}
