//! Every bound the server alone sets, in one place: per-partition writer queues, stream and
//! connection limits, subscriber buffers, the browser listener, groups' queues, and the
//! server's own timings. The wire contract's limits (request and response sizes, the HTTP/2
//! frame, fetch and session bounds) are in [`spool_proto::limits`]; the limits on topics,
//! groups and producers in [`spool_broker::limits`]; storage's in [`spool_storage::limits`].
//! The `const` assertions pin how these relate to each other and to the others.

use std::time::Duration;

pub use spool_broker::limits::PARTITIONS_TOTAL_MAX;

use spool_proto::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, GROUP_SESSION_TIMEOUT_MS_DEFAULT,
    PRODUCE_STREAM_IN_FLIGHT_MAX,
};

// Open files.

/// Open files a start or a topic create leaves free beside the partitions' segment files: for
/// connections, listeners, the internal logs and files opened for a moment (an index being
/// grown, a file being replaced). Past it, a start or create is refused up front; a connection
/// past what is left fails at accept, is logged and is retried.
pub const OPEN_FILES_RESERVED: u64 = 256;

/// Memory a partition is budgeted when the partition limit is sized from the machine: its
/// writer queue's batches, its buffered subscriptions' share and its bookkeeping, taken
/// generously (an idle partition uses far less).
pub const PARTITION_MEMORY_BYTES: u64 = 1024 * 1024;

// Partition writers.

/// Appends waiting for one partition's writer. Producers beyond this wait (backpressure).
pub const WRITER_QUEUE_DEPTH: usize = 1024;
/// The most batches a writer appends before one group commit.
pub const WRITER_GROUP_BATCHES_MAX: usize = 256;
/// Fsyncs one blocking thread runs back to back for a busy `always` partition before it
/// hands the partition back to the writer (which starts another at once if needed): a
/// bound on how long a partition keeps one of the runtime's blocking threads.
pub const SYNC_ROUNDS_MAX: u32 = 16;
/// A group of batches this small or smaller is appended on the writer's own task, without a
/// hop to a blocking thread, when the log says the append is one write into the page cache
/// and nothing else (see `Log::append_is_light`). One batch to each of 3,000 partitions on
/// the 2-core VM: 24-34 k batches/s through a blocking thread, 40-50 k on the writer's task.
/// Larger groups go to a blocking thread, where a long copy into the page cache holds no
/// task of the runtime's.
pub const LIGHT_APPEND_BYTES_MAX: usize = 64 * 1024;
/// How often each partition applies its retention limits.
pub const RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How fast a scrub (`partition::scrub`) reads a node's partitions: 16 MiB/s, about 1% of
/// what this class of disk reads (a pass over 1 TiB takes about 18 hours).
pub const SCRUB_BYTES_PER_SECOND: u64 = 16 * 1024 * 1024;
/// How long after a scrub pass ends (and after a start) the next begins.
pub const SCRUB_PASS_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How much a scrub reads at a time.
pub const SCRUB_READ_BYTES: u32 = 1024 * 1024;
/// How long a read past what this node's replica of a partition has applied, but within
/// what its leader has committed, waits for the replica to catch up before it is answered
/// UNAVAILABLE naming the leader (a follower is usually one heartbeat behind; one under
/// repair may be minutes).
pub const FOLLOWER_READ_PATIENCE: Duration = Duration::from_secs(5);
/// How large the log of one of the cluster's own groups (the metadata, the consumer groups'
/// offsets) may grow before it is compacted (a snapshot of its folded state, and the log
/// purged behind it), and how often that is checked; the compaction waits this long for the
/// snapshot.
pub const INTERNAL_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
pub const INTERNAL_COMPACT_CHECK_INTERVAL: Duration = Duration::from_secs(60);
pub const INTERNAL_COMPACT_PATIENCE: Duration = Duration::from_secs(30);
/// Repairs of this node's replicas of the cluster's own groups waiting to start (one per
/// group; damage found while one waits is repaired by it).
pub const INTERNAL_REPAIRS_QUEUED: usize = 2;
/// How often a node looks for groups it leads whose preferred leader is another node, to
/// hand them back; and how many it hands back at once.
pub const LEADER_HAND_BACK_INTERVAL: Duration = Duration::from_secs(10);
pub const LEADER_HAND_BACKS_AT_ONCE: usize = 8;
/// How long each partition's hand-back may take when a gRPC ElectLeaders names no timeout.
pub const ELECT_LEADERS_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a replicated partition's retention waits for its replica to save a snapshot of
/// the partition's state (a small file) before it gives up until the next check.
pub const RETENTION_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes one read takes while rebuilding a partition's producer table at start-up.
pub const PRODUCER_REBUILD_READ_BYTES: u32 = 8 * 1024 * 1024;
/// Damaged batches a partition remembers having reported (logged and counted), so that
/// readers retrying one do not report it again; past this, the oldest is forgotten (and
/// would be reported again).
pub const DAMAGED_BATCHES_REMEMBERED: usize = 64;

// gRPC streams and connections.

/// Connections the gRPC listener holds open at once; past it, it accepts nothing more until
/// one closes (each holds a file handle and HTTP/2 state).
pub const GRPC_CONNECTIONS_MAX: usize = 4096;
/// How long the listener waits after a failed accept (out of file handles, say) before it
/// tries again, so a lasting failure is a log line every interval, not a busy loop.
pub const ACCEPT_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How long a new connection, gRPC or browser, may take to make its first request: TCP, the
/// TLS handshake and the first request's head. Past it the connection is closed.
pub const CONNECTION_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may move no byte either way once it has made a request. The gRPC
/// listener pings its clients at a third of this, and browser streams send keep-alives
/// ([`HTTP_KEEP_ALIVE`]), so only a stalled or idle connection reaches it.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a closing connection, having sent everything and its end, goes on reading (and
/// dropping) what the client still sends, waiting for the client's own end. Closing a socket
/// with unread bytes makes the kernel reset it, and a reset can destroy answers the client has
/// received but not yet read (a stream's closing status, say).
pub const CONNECTION_LINGER: Duration = Duration::from_secs(2);
/// Concurrent gRPC streams (calls) per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Answers queued toward one ProduceStream client.
pub const PRODUCE_STREAM_ANSWERS_QUEUED_MAX: usize = 64;
/// Bytes of log one subscription reads per message (a single larger batch is sent whole).
pub const SUBSCRIBE_READ_BYTES: u32 = 1024 * 1024;
/// Messages queued toward one subscriber: when they are not taken, the subscription stops
/// reading the log. With the message being built, a subscriber holds at most
/// [`SUBSCRIBER_BUFFERED_BYTES_MAX`] of log on the server.
pub const SUBSCRIBE_QUEUE_DEPTH: usize = 2;
/// The most log bytes one subscriber holds on the server, queued or being built.
pub const SUBSCRIBER_BUFFERED_BYTES_MAX: u64 =
    (SUBSCRIBE_QUEUE_DEPTH as u64 + 1) * BATCH_BYTES_MAX as u64;
/// Stored batches up to this size are copied in behind a subscribe answer's head: one frame
/// instead of two costs less than the copy.
pub const REPLY_INLINE_BYTES_MAX: usize = 16 * 1024;

// Consumer groups.

/// Messages queued toward one group member, in each of its two queues: records, and control
/// messages (assignments, commit results), which go first. When the member does not take
/// records, its partitions stop reading the log.
pub const GROUP_MEMBER_QUEUE_DEPTH: usize = 4;
/// Bytes of log one group member's partition reads per message.
pub const GROUP_READ_BYTES: u32 = 1024 * 1024;
/// Commits in flight or answered but not yet sent, before a member's task stops reading
/// messages. Commits are decided as they are read, so reading far ahead of their fsyncs lets
/// a `RevocationDone` behind many commits move its partitions without waiting for them; each
/// holds a few hundred bytes.
pub const MEMBER_COMMITS_UNANSWERED_MAX: usize = 1024;
/// How long a new member stream may take to send its `join`.
pub const JOIN_WAIT: Duration = Duration::from_millis(GROUP_SESSION_TIMEOUT_MS_DEFAULT);

// The browser listener (`--http`): Server-Sent Events, WebSocket and plain HTTP.

/// The largest HTTP request body or WebSocket message the listener reads: one record as JSON,
/// whose value may be base64 (4 bytes for every 3), plus room for its key and headers.
pub const HTTP_REQUEST_BYTES_MAX: usize = BATCH_BYTES_MAX as usize / 3 * 4 + 1024 * 1024;
/// Bytes of log one browser subscription reads per chunk. Smaller than gRPC's read: a chunk
/// becomes JSON text, which may be several times the size of the bytes it was read from.
pub const HTTP_SUBSCRIBE_READ_BYTES: u32 = 256 * 1024;
/// Chunks queued toward one browser subscription; when they are not taken, it stops reading
/// the log. With the chunk being built, a browser holds at most
/// [`HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX`] of log on the server (plus the socket's buffer).
pub const HTTP_SUBSCRIBE_QUEUE_DEPTH: usize = 2;
/// The most log bytes one browser subscription holds on the server, queued or being built
/// (a single batch larger than a read is read whole).
pub const HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX: u64 =
    (HTTP_SUBSCRIBE_QUEUE_DEPTH as u64 + 1) * BATCH_BYTES_MAX as u64;
/// Subscriptions (SSE streams and WebSockets) the listener serves at once; one more is
/// answered 503.
pub const HTTP_STREAMS_MAX: usize = 1024;
/// Bytes of records being produced through the listener at once (POST bodies and WebSocket
/// produce messages, from the moment they are read until they are acknowledged); a request
/// beyond it waits, reading nothing more, until there is room.
pub const HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;
/// The most records one history request (`GET .../records`) answers.
pub const HTTP_HISTORY_RECORDS_MAX: u32 = 1000;
/// Connections the browser listener holds open at once; past it, it accepts nothing more
/// until one closes.
pub const HTTP_CONNECTIONS_MAX: usize = 2048;
/// Of [`HTTP_STREAMS_MAX`], the most one token may hold at once, so one token cannot take
/// every stream (without tokens there is one caller, the listener is on loopback, and the
/// share does not apply).
pub const HTTP_STREAMS_PER_TOKEN_MAX: usize = HTTP_STREAMS_MAX / 4;
/// How long an idle subscription waits before it sends a keep-alive (an SSE comment, a
/// WebSocket ping), so proxies and browsers see the connection is alive.
pub const HTTP_KEEP_ALIVE: Duration = Duration::from_secs(15);

// The Kafka listener (`--kafka`).

/// Connections the Kafka listener holds open at once; past it, it accepts nothing more until
/// one closes.
pub const KAFKA_CONNECTIONS_MAX: usize = 1024;
/// The largest request frame the Kafka listener reads (Kafka's `socket.request.max.bytes`):
/// a larger 4-byte length prefix closes the connection before the body is read. Room for two
/// largest batches, as one produce request may carry batches for several partitions.
pub const KAFKA_REQUEST_BYTES_MAX: usize = 2 * BATCH_BYTES_MAX as usize + 1024 * 1024;
/// The largest request frame read from a Kafka connection that has not authenticated yet
/// (with tokens): ApiVersions and SASL/PLAIN need little, and a stranger gets no more memory.
pub const KAFKA_UNAUTHENTICATED_REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Requests one Kafka connection has read but not yet answered; past it, the connection reads
/// nothing more until the oldest is answered (clients pipeline, answers go in order).
pub const KAFKA_REQUESTS_IN_FLIGHT_MAX: usize = 16;
/// Bytes the whole Kafka listener holds for requests read and answers being built: each
/// request takes its frame's size from this budget before its body is read, and a fetch also
/// takes its answer's largest size before it reads the log (not while it waits for records);
/// both are given back once the answer is written. A request that finds no room waits, reading nothing more.
pub const KAFKA_BYTES_IN_FLIGHT_MAX: usize = 256 * 1024 * 1024;
/// The most log bytes one Kafka fetch answers, over all its partitions (a client's larger
/// `max_bytes` is served as this; the first batch is sent whole even past it, as Kafka does).
pub const KAFKA_FETCH_BYTES_MAX: u32 = spool_proto::limits::FETCH_BYTES_MAX;
/// The longest a Kafka fetch waits for records (a client's larger `max_wait_ms` waits this).
pub const KAFKA_FETCH_WAIT_MAX: Duration =
    Duration::from_millis(spool_proto::limits::FETCH_WAIT_MS_MAX as u64);
/// The most topics one Kafka CreateTopics or DeleteTopics names, and the most resources one
/// DescribeConfigs or IncrementalAlterConfigs names: a larger count closes the connection
/// (a describe answers about a hundred bytes per byte asked, so the frame's size alone would
/// not bound its answer). One more than the topics a server holds, for the broker.
pub const KAFKA_ADMIN_RESOURCES_MAX: usize = spool_broker::limits::TOPICS_MAX + 1;
/// The most members one Kafka LeaveGroup (v3 and later) names: as many as a group may have. A
/// larger count closes the connection (each member named costs about a hundred bytes decoded
/// and answered for the few bytes it takes in the frame).
pub const KAFKA_LEAVE_GROUP_MEMBERS_MAX: usize = spool_broker::limits::CLASSIC_GROUP_MEMBERS_MAX;

// The server as a whole.

/// Connections the metrics listener holds open at once (scrapers are few).
pub const METRICS_CONNECTIONS_MAX: usize = 64;

/// How often the token file is checked for changes (a changed file is reloaded, so a
/// revoked token stops working within this time; SIGHUP or `Authenticator::reload` is
/// immediate).
pub const TOKENS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How often a cluster node reads its peer revocation list's file again (a certificate it
/// revokes is refused, and its connections end, within this time).
pub const PEER_CRL_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long shutdown waits for calls in flight, gRPC and browser alike (for example a
/// subscriber whose client does not read), before it closes their connections. One deadline
/// covers both listeners. Work already queued is finished regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often metrics' histogram samples are folded into their buckets, so they never pile up
/// between scrapes.
pub const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

// Every batch an idempotent producer may have in flight is remembered for its retry.
const _: () = assert!(
    spool_broker::limits::PRODUCER_BATCHES_RETAINED
        >= spool_proto::limits::IDEMPOTENT_BATCHES_IN_FLIGHT_MAX
);
const _: () = assert!(WRITER_GROUP_BATCHES_MAX <= WRITER_QUEUE_DEPTH);
const _: () = assert!(SYNC_ROUNDS_MAX >= 1);
const _: () = assert!(PRODUCER_REBUILD_READ_BYTES >= BATCH_BYTES_MAX);
const _: () = assert!(SUBSCRIBE_READ_BYTES <= BATCH_BYTES_MAX);
const _: () = assert!(SUBSCRIBE_QUEUE_DEPTH >= 1);
const _: () = assert!(PRODUCE_STREAM_IN_FLIGHT_MAX <= STREAMS_PER_CONNECTION_MAX as usize);
const _: () = assert!(GROUP_MEMBER_QUEUE_DEPTH >= 1);
const _: () = assert!(GROUP_READ_BYTES <= BATCH_BYTES_MAX);
// A browser can send one record of a largest batch's size, base64-encoded.
const _: () = assert!(HTTP_REQUEST_BYTES_MAX > BATCH_BYTES_MAX as usize / 3 * 4);
const _: () = assert!(HTTP_SUBSCRIBE_READ_BYTES <= BATCH_BYTES_MAX);
// One largest request fits in the budget, which a semaphore counts in u32 permits.
const _: () = assert!(HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX >= HTTP_REQUEST_BYTES_MAX);
const _: () = assert!(HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX <= u32::MAX as usize);
const _: () = assert!(HTTP_SUBSCRIBE_QUEUE_DEPTH >= 1);
const _: () = assert!(HTTP_HISTORY_RECORDS_MAX <= BATCH_RECORDS_MAX);
const _: () =
    assert!(HTTP_STREAMS_PER_TOKEN_MAX >= 1 && HTTP_STREAMS_PER_TOKEN_MAX <= HTTP_STREAMS_MAX);
// A live connection moves bytes within the idle timeout: gRPC keep-alive pings at a third of
// it, browser streams' keep-alives well inside it.
const _: () = assert!(HTTP_KEEP_ALIVE.as_secs() * 2 <= CONNECTION_IDLE_TIMEOUT.as_secs());
const _: () = assert!(CONNECTION_HANDSHAKE_TIMEOUT.as_secs() < CONNECTION_IDLE_TIMEOUT.as_secs());
// A Kafka request that carries a largest batch fits in a frame, and the largest frame and the
// largest fetch answer (its budget and one whole batch past it) each fit in the listener's
// budget, so no single request waits for room that can never exist.
const _: () = assert!(KAFKA_REQUEST_BYTES_MAX > BATCH_BYTES_MAX as usize);
const _: () = assert!(KAFKA_BYTES_IN_FLIGHT_MAX >= KAFKA_REQUEST_BYTES_MAX);
const _: () =
    assert!(KAFKA_BYTES_IN_FLIGHT_MAX >= (KAFKA_FETCH_BYTES_MAX + BATCH_BYTES_MAX) as usize);
const _: () = assert!(KAFKA_BYTES_IN_FLIGHT_MAX <= u32::MAX as usize);
const _: () = assert!(KAFKA_REQUESTS_IN_FLIGHT_MAX >= 1);

// Replication's peer listener (`crate::cluster`).

/// Connections the peer listener holds open at once; past it, it accepts nothing more until
/// one closes.
pub const PEER_CONNECTIONS_MAX: usize = 64;
/// Idle connections a node keeps open to each peer; a replica with more messages in flight
/// opens more and closes them when done.
pub const PEER_POOL_PER_NODE: usize = 8;
/// The peer listener warns of a refused caller (a failed TLS handshake) at most this often;
/// the others are logged at debug.
pub const PEER_REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The longest Raft group name a peer request may carry.
pub const GROUP_NAME_BYTES_MAX: usize = 512;
/// The largest frame of the peer protocol: the largest replication message with its group's
/// name in front.
pub const PEER_FRAME_BYTES_MAX: usize =
    spool_replication::limits::MESSAGE_BYTES_MAX + 2 + GROUP_NAME_BYTES_MAX;
/// How long a partition's new leader waits for a quorum to confirm it leads, and to apply
/// what earlier terms committed, before it checks an idempotent producer's batch; past it the
/// batch is answered `UNAVAILABLE` and the producer retries it.
pub const LEADERSHIP_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a request waits for an election to end when its node knows no leader of the
/// group it needs (nothing was done yet): a plain producer's batch before it is answered
/// `FAILED_PRECONDITION`, a group call before `UNAVAILABLE`. Five of the longest election
/// timeouts: a new partition's first election may take a few rounds while its replicas start
/// on every node.
pub const LEADER_ELECTION_PATIENCE: std::time::Duration =
    spool_replication::limits::ELECTION_TIMEOUT_MAX.saturating_mul(5);
/// How long a node that holds no replica of a partition waits for one replica's answer to
/// who leads it, when it must name the leader (a description, Kafka's Metadata).
pub const REMOTE_LEADER_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How many of those questions one request asks at once.
pub const REMOTE_LEADER_LOOKUPS_MAX: usize = 16;
/// How long a topic's creation through gRPC waits for its partitions' first elections, so
/// that its answer names their leaders: the node chosen to lead each stands at once, so this
/// passes only when one lost its first election to another node's timeout.
pub const NEW_TOPIC_LEADERS_PATIENCE: std::time::Duration =
    spool_replication::limits::ELECTION_TIMEOUT_MAX.saturating_mul(2);
/// How old what a replica said of the leader may be for such a node to name it to a client
/// without asking again.
pub const REMOTE_LEADER_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a node that holds no replica of a partition waits for a replica's answer to a
/// read for its clients (beside the time the read may wait there).
pub const REMOTE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a replica holds such a node's question for the log's end until it moves.
pub const REMOTE_READ_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
const _: () = assert!(
    REMOTE_READ_WAIT.as_millis() <= spool_replication::limits::PEER_READ_WAIT_MAX.as_millis()
);
/// How many such questions wait on one node at once: each holds a peer connection open.
/// Past it, the replica answers at once.
pub const REMOTE_READS_WAITING_MAX: usize = 8;
/// How often such a node asks again when the replica answered at once.
pub const REMOTE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
/// How long a group call to a new group coordinator waits for it to apply what the previous
/// coordinators committed (the offsets group's log since its last compaction, at most
/// [`INTERNAL_COMPACT_BYTES`] and what came since) before it is answered `UNAVAILABLE`;
/// a Kafka group call does not wait (`COORDINATOR_LOAD_IN_PROGRESS`).
pub const GROUPS_LOAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long `DescribeCluster` waits for a connection to each peer before it reports the peer
/// unreachable.
pub const PEER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// How often a node asks the others which peer protocol version they speak (and logs an
/// error for one that speaks another).
pub const PEER_PROTOCOL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// A node that started on an empty data directory asks the others again this often whether
/// the cluster already exists, until a majority has answered.
pub const EMPTY_START_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a cluster node waits to learn of a producer id it does not know (another node may
/// have handed it out just now) before it refuses it as never handed out.
pub const PRODUCER_ID_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a cluster node that does not know a topic (or one of its partitions) a request
/// names takes to catch up with the metadata the cluster committed before it answers
/// `NOT_FOUND`: a topic created or grown through another node a moment ago is then found.
/// Past it (no leader reachable), it answers from what it has applied.
pub const METADATA_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Commits, resets and deletions of consumer groups queued on a cluster node for the offsets
/// group; past it a commit is refused with `UNAVAILABLE` until the queue drains.
pub const REPLICATED_OFFSETS_QUEUE_MAX: usize = 4096;
/// The most of those one proposal to the offsets group carries (one batch, one fsync on each
/// replica).
pub const REPLICATED_OFFSETS_BATCH_RECORDS_MAX: usize = 256;
