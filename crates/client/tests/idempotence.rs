//! The idempotent producer against an in-process server behind a TCP proxy the test controls:
//! the proxy holds the server's answers back (so batches are appended but not acknowledged)
//! and then cuts every connection, or the server restarts behind it. Every record must then be
//! stored exactly once, in order, at the offset its delivery reported. Also: a sequence gap is
//! reported as such, a plain producer does not retry, and retries are bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spool_client::{
    Client, Delivery, ErrorCode, Follow, Fsync, ProduceError, Producer, ProducerConfig, Record,
    StartAt, TopicSettings,
};
use spool_proto::v1::InitProducerRequest;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A failure guard only: every wait below ends on the event it waits for.
const GUARD: Duration = Duration::from_secs(60);
/// Long enough that batches are sealed only when full.
const LINGER_NEVER: Duration = Duration::from_secs(3600);
const PARTITIONS: u32 = 3;
const BATCH_RECORDS: u32 = 10;

/// The shared in-process server on 127.0.0.1:0 (`spool_server::testing`), over a data
/// directory the test owns, so a new one can start on the same directory.
struct Server(spool_server::testing::TestServer);

impl Server {
    async fn start(data: &Path) -> Server {
        Server(spool_server::testing::TestServer::start(data).await.unwrap())
    }

    fn address(&self) -> SocketAddr {
        self.0.address()
    }

    async fn client(&self) -> Client {
        Client::connect(self.0.url()).await.unwrap()
    }

    async fn shutdown(self) {
        self.0.shutdown().await.unwrap();
    }
}

/// A TCP proxy in front of the server. It can hold back what the server sends (the client's
/// requests still reach the server, whose answers wait in the proxy's socket), cut every
/// connection, and send new connections to another server.
struct Proxy {
    address: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Whether answers flow on the connections it was given to; `freeze` replaces it.
    answers_flow: Arc<Mutex<watch::Sender<bool>>>,
    /// The flags of frozen connections, kept so that those stay open.
    frozen: Mutex<Vec<watch::Sender<bool>>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let answers_flow = Arc::new(Mutex::new(watch::channel(true).0));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepting = tokio::spawn({
            let (upstream, links, answers_flow) =
                (upstream.clone(), links.clone(), answers_flow.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else { return };
                    let to = *upstream.lock().unwrap();
                    let Ok(outbound) = TcpStream::connect(to).await else { continue };
                    let flowing = answers_flow.lock().unwrap().subscribe();
                    let (inbound_read, inbound_write) = inbound.into_split();
                    let (outbound_read, outbound_write) = outbound.into_split();
                    let requests = tokio::spawn(forward(inbound_read, outbound_write, None));
                    let answers =
                        tokio::spawn(forward(outbound_read, inbound_write, Some(flowing)));
                    links.lock().unwrap().extend([requests, answers]);
                }
            }
        });
        Proxy { address, upstream, answers_flow, frozen: Mutex::default(), links, accepting }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Holds back what the server sends, on open connections and new ones.
    fn hold_answers(&self) {
        self.answers_flow.lock().unwrap().send_replace(false);
    }

    fn release_answers(&self) {
        self.answers_flow.lock().unwrap().send_replace(true);
    }

    /// Holds back, for good, what the server sends on the connections open now, without
    /// closing them; new connections work.
    fn freeze_open_connections(&self) {
        let frozen =
            std::mem::replace(&mut *self.answers_flow.lock().unwrap(), watch::channel(true).0);
        frozen.send_replace(false);
        self.frozen.lock().unwrap().push(frozen);
    }

    /// Closes every connection through the proxy, as a network failure would.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn send_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// Copies bytes from `from` to `to`; with `flowing`, only while it says `true` (a read in
/// progress is abandoned when it turns `false`, so nothing slips through).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: Option<watch::Receiver<bool>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match &mut flowing {
            None => from.read(&mut buffer).await,
            Some(flowing) => {
                if flowing.wait_for(|flowing| *flowing).await.is_err() {
                    return;
                }
                tokio::select! {
                    read = from.read(&mut buffer) => read,
                    _ = flowing.wait_for(|flowing| !*flowing) => continue,
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn idempotent() -> ProducerConfig {
    ProducerConfig {
        idempotent: true,
        batch_records_max: BATCH_RECORDS,
        linger: LINGER_NEVER,
        retry_backoff: Duration::from_millis(10),
        ..ProducerConfig::default()
    }
}

async fn create_topic(client: &Client) {
    let settings =
        TopicSettings { partitions: PARTITIONS, fsync: Fsync::Always, ..Default::default() };
    client.create_topic("t", settings).await.unwrap();
}

/// Record `n` goes to partition `n % PARTITIONS`.
async fn send_range(producer: &Producer, range: std::ops::Range<u32>) -> Vec<(u32, Delivery)> {
    let mut deliveries = Vec::new();
    for n in range {
        let value = format!("r{n:05}");
        let record = Record::value(value.as_bytes()).with_partition(n % PARTITIONS);
        deliveries.push((n, producer.send(record).await.unwrap()));
    }
    deliveries
}

/// Every stored record of a partition, as (offset, value).
async fn stored(client: &Client, partition: u32) -> Vec<(u64, String)> {
    let mut consumer =
        client.subscribe("t", partition, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let mut records = Vec::new();
    while let Some(polled) = consumer.poll().await.unwrap() {
        for record in polled.records() {
            let record = record.unwrap();
            let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
            records.push((record.offset, value));
        }
    }
    records
}

/// Waits until partition `partition` holds at least `records` records, reading it live.
async fn wait_for_records(client: &Client, partition: u32, records: usize) {
    let mut consumer =
        client.subscribe("t", partition, StartAt::Earliest, Follow::Live).await.unwrap();
    let mut seen = 0;
    let all = async {
        while seen < records {
            let polled = consumer.poll().await.unwrap().expect("a live subscription goes on");
            seen += polled.records().count();
        }
    };
    tokio::time::timeout(GUARD, all).await.expect("the records reach the log");
}

/// Every record of `0..total` is stored exactly once, in order within its partition, at the
/// offset its delivery reported.
async fn assert_exactly_once(client: &Client, deliveries: Vec<(u32, Delivery)>, total: u32) {
    let mut reported = vec![Vec::new(); PARTITIONS as usize];
    for (n, delivery) in deliveries {
        let stored = tokio::time::timeout(GUARD, delivery.wait()).await.unwrap().unwrap();
        assert_eq!(stored.partition, n % PARTITIONS);
        reported[stored.partition as usize].push((stored.offset.unwrap(), format!("r{n:05}")));
    }
    for partition in 0..PARTITIONS {
        let log = stored(client, partition).await;
        let expected: Vec<String> = (0..total)
            .filter(|n| n % PARTITIONS == partition)
            .map(|n| format!("r{n:05}"))
            .collect();
        let values: Vec<&String> = log.iter().map(|(_, value)| value).collect();
        assert_eq!(values, expected.iter().collect::<Vec<_>>(), "partition {partition}");
        assert_eq!(reported[partition as usize], log, "reported offsets, partition {partition}");
    }
}

/// Sends 300 records and waits for them; holds the answers back and sends 300 more; waits
/// until the log holds what the producer could send without answers (5 batches of 10 per
/// partition), so those batches are appended and unacknowledged.
async fn produce_until_answers_are_held(
    direct: &Client,
    proxy: &Proxy,
    producer: &Producer,
) -> Vec<(u32, Delivery)> {
    let mut deliveries = send_range(producer, 0..300).await;
    producer.flush().await.unwrap();
    proxy.hold_answers();
    deliveries.extend(send_range(producer, 300..600).await);
    let in_flight_per_partition = 5 * BATCH_RECORDS as usize;
    for partition in 0..PARTITIONS {
        wait_for_records(direct, partition, 100 + in_flight_per_partition).await;
    }
    deliveries
}

#[tokio::test]
async fn a_cut_connection_stores_every_record_once_and_in_order() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let direct = server.client().await;
    create_topic(&direct).await;
    let proxy = Proxy::start(server.address()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let producer = client.producer("t", idempotent()).await.unwrap();
    assert!(producer.producer_id().is_some());
    let deliveries = produce_until_answers_are_held(&direct, &proxy, &producer).await;
    proxy.cut();
    proxy.release_answers();
    producer.flush().await.unwrap();
    assert_exactly_once(&direct, deliveries, 600).await;
    let stats = producer.stats();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(stats.batches_resent >= 15, "the 15 unacknowledged batches were resent: {stats:?}");
    producer.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restart_behind_the_producer_stores_every_record_once_and_in_order() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let direct = server.client().await;
    create_topic(&direct).await;
    let proxy = Proxy::start(server.address()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let producer = client.producer("t", idempotent()).await.unwrap();
    let deliveries = produce_until_answers_are_held(&direct, &proxy, &producer).await;
    proxy.cut();
    server.shutdown().await;
    // The producer state is rebuilt from the log: the resent batches are duplicates.
    let server = Server::start(data.path()).await;
    proxy.send_to(server.address());
    proxy.release_answers();
    producer.flush().await.unwrap();
    let direct = server.client().await;
    assert_exactly_once(&direct, deliveries, 600).await;
    producer.close().await.unwrap();
    server.shutdown().await;
}

/// The connection stays open but its answers stop: the request timeout counts it as broken,
/// and the producer resends on a new one.
#[tokio::test]
async fn a_request_timeout_resends_on_a_new_connection() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let direct = server.client().await;
    create_topic(&direct).await;
    let proxy = Proxy::start(server.address()).await;
    // Pings find the frozen connection (what `Client::connect` does, 100 times faster).
    let channel = tonic::transport::Endpoint::from_shared(proxy.url())
        .unwrap()
        .http2_keep_alive_interval(Duration::from_millis(100))
        .keep_alive_timeout(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .unwrap();
    let client = Client::from_channel(channel);
    let config = ProducerConfig { request_timeout: Duration::from_millis(300), ..idempotent() };
    let producer = client.producer("t", config).await.unwrap();
    let mut deliveries = send_range(&producer, 0..300).await;
    producer.flush().await.unwrap();
    proxy.freeze_open_connections();
    deliveries.extend(send_range(&producer, 300..600).await);
    tokio::time::timeout(GUARD, producer.flush()).await.unwrap().unwrap();
    assert_exactly_once(&direct, deliveries, 600).await;
    assert!(producer.stats().reconnects >= 1, "{:?}", producer.stats());
    producer.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_sequence_gap_is_reported_and_the_partition_starts_a_new_epoch() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    create_topic(&server.client().await).await;
    let proxy = Proxy::start(server.address()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let config = ProducerConfig { batch_records_max: 1, ..idempotent() };
    let producer = client.producer("t", config).await.unwrap();
    assert_eq!(producer.producer_id(), Some(0), "the first id of a new data directory");
    let first = producer.send(Record::value(b"a").with_partition(0)).await.unwrap();
    producer.flush().await.unwrap();
    first.wait().await.unwrap();
    // The server loses everything (a new data directory) and allocates id 0 again, so the
    // producer's next sequence, 1, is a gap there.
    let lost = tempfile::tempdir().unwrap();
    let replacement = Server::start(lost.path()).await;
    create_topic(&replacement.client().await).await;
    let address = format!("http://{}", replacement.address());
    let mut ids = ProduceServiceClient::connect(address).await.unwrap();
    assert_eq!(
        ids.init_producer(InitProducerRequest {}).await.unwrap().into_inner().producer_id,
        0
    );
    proxy.send_to(replacement.address());
    proxy.cut();
    let gap = producer.send(Record::value(b"b").with_partition(0)).await.unwrap();
    producer.flush().await.unwrap();
    match gap.wait().await {
        Err(ProduceError::Rejected(error)) => {
            assert_eq!(error.code, ErrorCode::FailedPrecondition);
            assert!(
                error.message.contains("sent sequence 1, but this partition expects 0"),
                "{error}"
            );
        }
        other => panic!("expected the gap to be refused, got {other:?}"),
    }
    // The partition starts epoch 1 from sequence 0: later records are stored.
    let after = producer.send(Record::value(b"c").with_partition(0)).await.unwrap();
    producer.flush().await.unwrap();
    assert_eq!(after.wait().await.unwrap().offset, Some(0));
    let log = stored(&replacement.client().await, 0).await;
    assert_eq!(log, vec![(0, "c".to_owned())]);
    producer.close().await.unwrap();
    replacement.shutdown().await;
    server.shutdown().await;
}

/// A plain producer does not retry: the batches the cut left unanswered fail as
/// `Disconnected`, although the server stored them; sending them again would store them
/// twice. This is what idempotence is for.
#[tokio::test]
async fn a_plain_producer_fails_unanswered_batches_without_retrying() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let direct = server.client().await;
    create_topic(&direct).await;
    let proxy = Proxy::start(server.address()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let config = ProducerConfig { idempotent: false, ..idempotent() };
    let producer = client.producer("t", config).await.unwrap();
    assert_eq!(producer.producer_id(), None);
    proxy.hold_answers();
    let deliveries = send_range(&producer, 0..30).await;
    for partition in 0..PARTITIONS {
        wait_for_records(&direct, partition, 10).await;
    }
    proxy.cut();
    for (_, delivery) in deliveries {
        match delivery.wait().await {
            Err(ProduceError::Disconnected(_)) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    assert_eq!(producer.stats().reconnects, 0);
    for partition in 0..PARTITIONS {
        assert_eq!(stored(&direct, partition).await.len(), 10, "stored, though unanswered");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn retries_are_bounded_and_end_in_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    create_topic(&server.client().await).await;
    let proxy = Proxy::start(server.address()).await;
    let client = Client::connect(&proxy.url()).await.unwrap();
    let config = ProducerConfig { retries_max: 3, ..idempotent() };
    let producer = client.producer("t", config).await.unwrap();
    // Nothing listens there any more: every reconnect fails.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    proxy.send_to(gone);
    proxy.cut();
    let delivery = producer.send(Record::value(b"x").with_partition(0)).await.unwrap();
    producer.flush().await.unwrap_err();
    match tokio::time::timeout(GUARD, delivery.wait()).await.unwrap() {
        Err(error @ ProduceError::RetriesExhausted { attempts: 3, .. }) => {
            assert!(error.to_string().starts_with("gave up after 3 reconnect attempts"), "{error}");
        }
        other => panic!("expected RetriesExhausted after 3 attempts, got {other:?}"),
    }
    assert!(matches!(
        producer.send(Record::value(b"y")).await,
        Err(ProduceError::RetriesExhausted { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn an_idempotent_producer_refuses_acks_none() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path()).await;
    let client = server.client().await;
    create_topic(&client).await;
    let config = ProducerConfig { acks: spool_client::Acks::None, ..idempotent() };
    let error = client.producer("t", config).await.unwrap_err();
    assert!(error.to_string().contains("acks"), "{error}");
    server.shutdown().await;
}
