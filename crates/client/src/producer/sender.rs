//! The senders: one produce stream per lane (the client's own nodes, and each partition
//! leader's node), each with one task sending ready batches of the partitions routed to it
//! while fewer than `in_flight_max` wait and one receiving answers in request order; on a
//! broken stream an idempotent producer reconnects and resends every unanswered batch, a
//! plain one fails them.

use super::*;
use crate::raw::RawBody;

/// One produce stream and what is in flight on it. Lane 0 goes through the client's own
/// nodes; each other lane to the node of one or more partitions' leaders (and, should that
/// node fail, on through the client's own nodes).
#[derive(Debug)]
pub(super) struct Lane {
    /// Its place in [`State::lanes`], which partitions name it by.
    pub(super) index: usize,
    /// The leader address (`host:port`) it was opened for, and the nodes its calls go
    /// through, that address's first; `None` for lane 0.
    pub(super) leader: Option<(String, Nodes)>,
    /// No partition moves to it any more: its node failed and its calls went on to another.
    /// It ends once nothing routed to it is left.
    pub(super) retired: AtomicBool,
    /// Its task has ended: its place in [`State::lanes`] may take a new lane.
    pub(super) ended: AtomicBool,
    /// Requests the sender may still send before answers come back.
    pub(super) in_flight_permits: Semaphore,
    pub(super) in_flight: Mutex<VecDeque<InFlight>>,
    /// Tells the sender that a batch of a partition routed here became ready, a linger timer
    /// starts, or the producer is closing.
    pub(super) wake: Notify,
}

impl Lane {
    pub(super) fn new(
        index: usize,
        leader: Option<(String, Nodes)>,
        in_flight_max: usize,
    ) -> Arc<Lane> {
        Arc::new(Lane {
            index,
            leader,
            retired: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            in_flight_permits: Semaphore::new(in_flight_max),
            in_flight: Mutex::new(VecDeque::with_capacity(in_flight_max)),
            wake: Notify::new(),
        })
    }

    /// Whether partitions led at `address` may move to this lane: it was opened to that
    /// address and its calls still go there. One whose calls went on to another node is
    /// retired here, and woken to end once it has nothing left.
    pub(super) fn goes_to(&self, address: &str) -> bool {
        let Some((opened_to, nodes)) = &self.leader else { return false };
        if opened_to != address || self.retired.load(Ordering::Acquire) {
            return false;
        }
        if !nodes.on_first() {
            self.retired.store(true, Ordering::Release);
            self.wake.notify_one();
            return false;
        }
        true
    }
}

/// Marks its lane ended when the lane's task returns.
struct Ending<'a>(&'a Lane);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
    }
}

/// A request sent and not yet answered.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) correlation_id: u64,
    pub(super) partition: u32,
    /// The bytes sent, kept to send them again unchanged (idempotent producers).
    pub(super) batch: Bytes,
    pub(super) outcome: Arc<Outcome>,
    pub(super) opened_at: Instant,
    pub(super) bytes_reserved: usize,
}

impl Shared {
    /// Stops the producer: every batch not yet answered fails with `error`.
    pub(super) fn fail(&self, error: ProduceError) {
        let mut orphans: Vec<(Arc<Outcome>, usize)> = Vec::new();
        let lanes = {
            let mut state = locked(&self.state);
            if state.failed.is_none() {
                state.failed = Some(error.clone());
            }
            for buffer in &mut state.partitions {
                buffer.seal();
                buffer.in_flight = 0;
                orphans.extend(buffer.sealed.drain(..).map(|s| (s.outcome, s.bytes_reserved)));
            }
            state.lanes.clone()
        };
        for lane in &lanes {
            orphans
                .extend(locked(&lane.in_flight).drain(..).map(|f| (f.outcome, f.bytes_reserved)));
        }
        for (outcome, bytes) in orphans {
            outcome.resolve(Err(error.clone()));
            self.buffer.add_permits(bytes);
        }
        for lane in &lanes {
            lane.in_flight_permits.close();
            lane.wake.notify_one();
        }
    }

    /// Resolves a batch sent on `lane` to `partition` with its answer, and gives back its
    /// room: in the buffer, and on the lane. When it was the partition's last batch in flight
    /// and the partition has moved to another lane meanwhile, that lane may now send it.
    pub(super) fn resolve(
        &self,
        lane: &Lane,
        partition: u32,
        outcome: &Outcome,
        bytes_reserved: usize,
        result: Result<Option<u64>, ProduceError>,
    ) {
        let moved = {
            let mut state = locked(&self.state);
            let buffer = &mut state.partitions[partition as usize];
            buffer.in_flight = buffer.in_flight.saturating_sub(1);
            if self.identity.is_some() && result.is_err() {
                // The partition's sequence is in doubt after a refused batch: the batches in
                // flight behind it will be refused for the gap, so it starts over.
                buffer.sequence.restart = true;
            }
            let route = buffer.lane;
            (buffer.in_flight == 0 && route != lane.index).then(|| state.lanes[route].clone())
        };
        outcome.resolve(result);
        self.buffer.add_permits(bytes_reserved);
        lane.in_flight_permits.add_permits(1);
        lane.wake.notify_one();
        if let Some(moved) = moved {
            moved.wake.notify_one();
        }
    }

    /// Whether the producer was closed and everything it held was answered.
    pub(super) fn drained(&self) -> bool {
        let state = locked(&self.state);
        state.closing
            && state.partitions.iter().all(|b| b.open.is_none() && b.sealed.is_empty())
            && state.lanes.iter().all(|lane| locked(&lane.in_flight).is_empty())
    }

    /// Whether `lane` has nothing left to do: nothing in flight on it, and either the
    /// producer was closed and the partitions routed to it have nothing buffered, or the lane
    /// is retired and no partition is routed to it any more.
    pub(super) fn lane_drained(&self, lane: &Lane) -> bool {
        let state = locked(&self.state);
        let mut routed = state.partitions.iter().filter(|b| b.lane == lane.index);
        let settled = match state.closing {
            true => routed.all(|b| b.open.is_none() && b.sealed.is_empty()),
            false => lane.retired.load(Ordering::Acquire) && routed.next().is_none(),
        };
        settled && locked(&lane.in_flight).is_empty()
    }

    /// A lane has sent and been answered everything: the producer is done once every lane is.
    pub(super) fn lane_done(&self) {
        if self.drained() {
            self.fail(ProduceError::Closed);
        }
    }
}

pub(super) type Requests = mpsc::Sender<ProduceRequest>;

/// Opens a produce stream whose request queue holds `in_flight_max` requests.
pub(super) async fn open_stream(
    client: &mut ProduceServiceClient<crate::Transport>,
    in_flight_max: usize,
) -> Result<(Requests, Streaming<ProduceStreamResponse>), tonic::Status> {
    let (requests, requests_rx) = mpsc::channel(in_flight_max);
    // tonic gets no requests to encode: the body that frames them goes in beside (`crate::raw`).
    let mut request = tonic::Request::new(tokio_stream::empty::<ProduceRequest>());
    request.extensions_mut().insert(RawBody::produce(requests_rx));
    let answers = client.produce_stream(request).await?.into_inner();
    Ok((requests, answers))
}

/// Why a produce stream stopped.
pub(super) enum StreamEnd {
    /// The producer was closed and every batch answered.
    Drained,
    /// The stream broke, timed out, or the server answered a retriable error. `answered`:
    /// whether any request was answered on it.
    Broken { error: ServerError, answered: bool },
    /// The server refused the stream itself (a revoked token), or answered out of order (a
    /// bug on one side): retrying would not help.
    Fatal(ServerError),
}

/// Whether an error the server answered one request with may go away by itself (shutting
/// down, a full disk, a full queue), so an idempotent producer sends the same batch again.
pub(super) fn retriable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::ResourceExhausted)
        || code == ErrorCode::Other(Code::DeadlineExceeded as i32)
}

/// Whether a stream that ended (or failed to open) with `code` may work if opened again: not
/// when the server refused the caller or the request itself.
pub(super) fn transient(code: ErrorCode) -> bool {
    let refused = [Code::PermissionDenied, Code::Unauthenticated, Code::Unimplemented]
        .map(|code| ErrorCode::Other(code as i32));
    !matches!(
        code,
        ErrorCode::InvalidArgument
            | ErrorCode::NotFound
            | ErrorCode::AlreadyExists
            | ErrorCode::FailedPrecondition
            | ErrorCode::OutOfRange
            | ErrorCode::DataLoss
    ) && !refused.contains(&code)
}

/// A lane's background task: runs a sender and a receiver over a stream, and when the stream
/// breaks, either gives up (a plain producer, or an idempotent one out of retries) or opens a
/// new stream and sends every unanswered batch again, in order.
pub(super) async fn run(
    shared: Arc<Shared>,
    lane: Arc<Lane>,
    mut client: ProduceServiceClient<crate::Transport>,
    mut requests: Requests,
    mut answers: Streaming<ProduceStreamResponse>,
) {
    let _ending = Ending(&lane);
    let config = shared.config.clone();
    let mut attempts = 0u32;
    loop {
        let end = {
            let sending = run_sender(&shared, &lane, requests);
            let receiving = run_receiver(&shared, &lane, answers);
            tokio::pin!(sending, receiving);
            let mut sent_all = false;
            loop {
                tokio::select! {
                    () = &mut sending, if !sent_all => sent_all = true,
                    end = &mut receiving => break end,
                }
            }
        };
        let (mut error, answered) = match end {
            StreamEnd::Drained => return shared.lane_done(),
            StreamEnd::Fatal(error) => return shared.fail(ProduceError::Disconnected(error)),
            StreamEnd::Broken { error, answered } => (error, answered),
        };
        if shared.identity.is_none() {
            if shared.lane_drained(&lane) {
                return shared.lane_done();
            }
            return shared.fail(ProduceError::Disconnected(error));
        }
        if locked(&shared.state).failed.is_some() {
            // Everything it held was failed already: nothing to send again.
            return;
        }
        // The node may have died or stopped leading: where the partitions lead now is read
        // again while this lane reconnects (to the next node, if its own is gone).
        shared.leaders_stale.notify_one();
        if answered {
            attempts = 0;
        }
        // Reconnect, backing off, until a stream opens or the retries are used up.
        let started = Instant::now();
        let (next_requests, next_answers) = loop {
            attempts += 1;
            let oldest = locked(&lane.in_flight).front().map(|f| f.opened_at);
            let overdue = oldest.is_some_and(|at| at.elapsed() > config.delivery_timeout);
            if attempts > config.retries_max || overdue {
                let waited_ms = oldest.unwrap_or(started).elapsed().as_millis() as u64;
                return shared.fail(ProduceError::RetriesExhausted {
                    attempts: attempts - 1,
                    waited_ms,
                    last: error,
                });
            }
            let backoff = config.retry_backoff.saturating_mul(1 << (attempts - 1).min(16));
            tokio::time::sleep(backoff.min(RETRY_BACKOFF_MAX)).await;
            tracing::debug!(topic = %shared.topic, attempt = attempts, %error, "reconnecting the produce stream");
            // A server that accepts the connection but never answers must not hold the
            // producer: opening counts as a request.
            let opening = open_stream(&mut client, config.in_flight_max);
            match tokio::time::timeout(config.request_timeout, opening).await {
                Ok(Ok(opened)) => break opened,
                Ok(Err(status)) => error = ServerError::from(status),
                Err(_elapsed) => {
                    error = ServerError {
                        code: ErrorCode::Unavailable,
                        message: format!(
                            "opening a produce stream took longer than the request timeout ({} ms)",
                            config.request_timeout.as_millis()
                        ),
                    };
                }
            }
            if !transient(error.code) {
                return shared.fail(ProduceError::Disconnected(error));
            }
        };
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        requests = next_requests;
        answers = next_answers;
        resend(&shared, &lane, &requests);
    }
}

/// Sends every request in flight again on a new stream, the same bytes in the same order,
/// each under a new correlation id. The queue has room: it holds `in_flight_max` requests and
/// at most that many are in flight.
pub(super) fn resend(shared: &Shared, lane: &Lane, requests: &Requests) {
    let mut in_flight = locked(&lane.in_flight);
    for entry in in_flight.iter_mut() {
        entry.correlation_id = shared.correlation_id.fetch_add(1, Ordering::Relaxed);
        let request = shared.request(entry.correlation_id, entry.partition, entry.batch.clone());
        if requests.try_send(request).is_err() {
            // The new stream is already gone: the receiver sees it and the loop goes again.
            break;
        }
        shared.batches_resent.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(super) fn request(
        &self,
        correlation_id: u64,
        partition: u32,
        batch: Bytes,
    ) -> ProduceRequest {
        ProduceRequest {
            correlation_id,
            topic: self.topic.clone(),
            partition: Some(partition),
            acks: self.config.acks.wire() as i32,
            payload: Some(Payload::RawBatch(batch)),
            producer: None,
        }
    }
}

/// Takes ready batches of the partitions routed to `lane` and sends them, while fewer than
/// `in_flight_max` wait for answers. Returns once the producer is closed and the lane drained
/// (dropping `requests` ends the stream), or the stream is gone. Cancel-safe: a batch leaves
/// its partition's queue and joins the requests in flight with no `.await` in between, so a
/// cancelled sender loses nothing.
pub(super) async fn run_sender(shared: &Shared, lane: &Lane, requests: Requests) {
    let acks = shared.config.acks;
    loop {
        let Ok(permit) = lane.in_flight_permits.acquire().await else { return };
        let (partition, stamp, sealed) = loop {
            match shared.next_ready(lane.index, Instant::now()) {
                Next::Send(partition, stamp, sealed) => break (partition, stamp, sealed),
                Next::Stop => return,
                Next::Wait(Some(deadline)) => tokio::select! {
                    _ = lane.wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                },
                Next::Wait(None) => lane.wake.notified().await,
            }
        };
        let batch = sealed.builder.finish_compressed(stamp, shared.config.compression);
        let batch = shared.batch_buffers.share(batch);
        let correlation_id = shared.correlation_id.fetch_add(1, Ordering::Relaxed);
        let request = shared.request(correlation_id, partition, batch.clone());
        SemaphorePermit::forget(permit);
        if acks == Acks::None {
            // Nothing will be answered unless it fails: delivered on hand-off.
            shared.resolve(lane, partition, &sealed.outcome, sealed.bytes_reserved, Ok(None));
        } else {
            locked(&lane.in_flight).push_back(InFlight {
                correlation_id,
                partition,
                batch,
                outcome: sealed.outcome,
                opened_at: sealed.opened_at,
                bytes_reserved: sealed.bytes_reserved,
            });
        }
        shared.batches_sent.fetch_add(1, Ordering::Relaxed);
        if requests.send(request).await.is_err() {
            // The stream is gone; the receiver sees why.
            return;
        }
    }
}

/// Resolves each batch from its answer; answers come in request order. Returns when the
/// stream ends, breaks, times out, or (idempotent producers) answers a retriable error.
pub(super) async fn run_receiver(
    shared: &Shared,
    lane: &Lane,
    mut answers: Streaming<ProduceStreamResponse>,
) -> StreamEnd {
    let idempotent = shared.identity.is_some();
    let mut answered = false;
    loop {
        let broken = |error: ServerError| StreamEnd::Broken { error, answered };
        let next = tokio::time::timeout(shared.config.request_timeout, answers.message()).await;
        let answer = match next {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) if shared.lane_drained(lane) => return StreamEnd::Drained,
            Ok(Ok(None)) => {
                return broken(ServerError {
                    code: ErrorCode::Unavailable,
                    message: "the server ended the produce stream".into(),
                });
            }
            Ok(Err(status)) => {
                let error = ServerError::from(status);
                return if transient(error.code) { broken(error) } else { StreamEnd::Fatal(error) };
            }
            Err(_elapsed) if locked(&lane.in_flight).is_empty() => continue,
            Err(_elapsed) => {
                return broken(ServerError {
                    code: ErrorCode::Unavailable,
                    message: format!(
                        "no answer within the request timeout ({} ms)",
                        shared.config.request_timeout.as_millis()
                    ),
                });
            }
        };
        let result = match answer.result {
            Some(StreamResult::Ok(ok)) => match ok.appends.first() {
                Some(append) => Ok(Some(append.base_offset)),
                None => Ok(None),
            },
            Some(StreamResult::Error(error)) => {
                let error =
                    ServerError { code: ErrorCode::from_i32(error.code), message: error.message };
                if idempotent && retriable(error.code) {
                    // Sent again on a new stream, with every request behind it.
                    return broken(error);
                }
                Err(ProduceError::Rejected(error))
            }
            None => Err(ProduceError::Rejected(ServerError {
                code: ErrorCode::Internal,
                message: "an answer with no result".into(),
            })),
        };
        let front = {
            let mut in_flight = locked(&lane.in_flight);
            match in_flight.front() {
                Some(front) if front.correlation_id == answer.correlation_id => {
                    in_flight.pop_front()
                }
                _ => None,
            }
        };
        match front {
            Some(entry) => {
                answered = true;
                let InFlight { partition, outcome, bytes_reserved, .. } = entry;
                shared.resolve(lane, partition, &outcome, bytes_reserved, result);
            }
            None if shared.config.acks == Acks::None => {
                if let Err(error) = result {
                    shared.unacknowledged_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %shared.topic, %error, "a batch sent with acks=none failed");
                }
            }
            None => {
                return StreamEnd::Fatal(ServerError {
                    code: ErrorCode::Internal,
                    message: format!(
                        "the server answered request {} out of order",
                        answer.correlation_id
                    ),
                });
            }
        }
    }
}
