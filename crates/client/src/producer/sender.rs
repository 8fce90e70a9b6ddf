//! The sender: the produce stream, with one task sending ready batches while fewer than
//! `in_flight_max` wait and one receiving answers in request order; on a broken stream an
//! idempotent producer reconnects and resends every unanswered batch, a plain one fails them.

use super::*;

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
        {
            let mut state = locked(&self.state);
            if state.failed.is_none() {
                state.failed = Some(error.clone());
            }
            for buffer in &mut state.partitions {
                buffer.seal();
                buffer.in_flight = 0;
                orphans.extend(buffer.sealed.drain(..).map(|s| (s.outcome, s.bytes_reserved)));
            }
        }
        orphans.extend(locked(&self.in_flight).drain(..).map(|f| (f.outcome, f.bytes_reserved)));
        for (outcome, bytes) in orphans {
            outcome.resolve(Err(error.clone()));
            self.buffer.add_permits(bytes);
        }
        self.in_flight_permits.close();
        self.sender_wake.notify_one();
    }

    /// Resolves the oldest request in flight with its answer.
    pub(super) fn resolve_front(&self, entry: InFlight, result: Result<Option<u64>, ProduceError>) {
        {
            let mut state = locked(&self.state);
            let buffer = &mut state.partitions[entry.partition as usize];
            buffer.in_flight = buffer.in_flight.saturating_sub(1);
            if self.identity.is_some() && result.is_err() {
                // The partition's sequence is in doubt after a refused batch: the batches in
                // flight behind it will be refused for the gap, so it starts over.
                buffer.sequence.restart = true;
            }
        }
        entry.outcome.resolve(result);
        self.buffer.add_permits(entry.bytes_reserved);
        self.in_flight_permits.add_permits(1);
        self.sender_wake.notify_one();
    }

    /// Whether the producer was closed and everything it held was answered.
    pub(super) fn drained(&self) -> bool {
        let state = locked(&self.state);
        state.closing
            && state.partitions.iter().all(|b| b.open.is_none() && b.sealed.is_empty())
            && locked(&self.in_flight).is_empty()
    }
}

pub(super) type Requests = mpsc::Sender<ProduceRequest>;

/// Opens a produce stream whose request queue holds `in_flight_max` requests.
pub(super) async fn open_stream(
    client: &mut ProduceServiceClient<crate::Transport>,
    in_flight_max: usize,
) -> Result<(Requests, Streaming<ProduceStreamResponse>), tonic::Status> {
    let (requests, requests_rx) = mpsc::channel(in_flight_max);
    let answers = client.produce_stream(ReceiverStream::new(requests_rx)).await?.into_inner();
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

/// The producer's one background task: runs a sender and a receiver over a stream, and when
/// the stream breaks, either gives up (a plain producer, or an idempotent one out of retries)
/// or opens a new stream and sends every unanswered batch again, in order.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut client: ProduceServiceClient<crate::Transport>,
    mut requests: Requests,
    mut answers: Streaming<ProduceStreamResponse>,
) {
    let config = shared.config.clone();
    let mut attempts = 0u32;
    loop {
        let end = {
            let sending = run_sender(&shared, requests);
            let receiving = run_receiver(&shared, answers);
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
            StreamEnd::Drained => return shared.fail(ProduceError::Closed),
            StreamEnd::Fatal(error) => return shared.fail(ProduceError::Disconnected(error)),
            StreamEnd::Broken { error, answered } => (error, answered),
        };
        if shared.identity.is_none() {
            if shared.drained() {
                return shared.fail(ProduceError::Closed);
            }
            return shared.fail(ProduceError::Disconnected(error));
        }
        if answered {
            attempts = 0;
        }
        // Reconnect, backing off, until a stream opens or the retries are used up.
        let started = Instant::now();
        let (next_requests, next_answers) = loop {
            attempts += 1;
            let oldest = locked(&shared.in_flight).front().map(|f| f.opened_at);
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
        resend(&shared, &requests);
    }
}

/// Sends every request in flight again on a new stream, the same bytes in the same order,
/// each under a new correlation id. The queue has room: it holds `in_flight_max` requests and
/// at most that many are in flight.
pub(super) fn resend(shared: &Shared, requests: &Requests) {
    let mut in_flight = locked(&shared.in_flight);
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

/// Takes ready batches and sends them, while fewer than `in_flight_max` wait for answers.
/// Returns once the producer is closed and drained (dropping `requests` ends the stream), or
/// the stream is gone. Cancel-safe: a batch leaves its partition's queue and joins the
/// requests in flight with no `.await` in between, so a cancelled sender loses nothing.
pub(super) async fn run_sender(shared: &Shared, requests: Requests) {
    let acks = shared.config.acks;
    loop {
        let Ok(permit) = shared.in_flight_permits.acquire().await else { return };
        let (partition, stamp, sealed) = loop {
            match shared.next_ready(Instant::now()) {
                Next::Send(partition, stamp, sealed) => break (partition, stamp, sealed),
                Next::Stop => return,
                Next::Wait(Some(deadline)) => tokio::select! {
                    _ = shared.sender_wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                },
                Next::Wait(None) => shared.sender_wake.notified().await,
            }
        };
        let batch = sealed.builder.finish_compressed(stamp, shared.config.compression).freeze();
        let correlation_id = shared.correlation_id.fetch_add(1, Ordering::Relaxed);
        let request = shared.request(correlation_id, partition, batch.clone());
        SemaphorePermit::forget(permit);
        if acks == Acks::None {
            // Nothing will be answered unless it fails: delivered on hand-off.
            locked(&shared.state).partitions[partition as usize].in_flight -= 1;
            sealed.outcome.resolve(Ok(None));
            shared.buffer.add_permits(sealed.bytes_reserved);
            shared.in_flight_permits.add_permits(1);
        } else {
            locked(&shared.in_flight).push_back(InFlight {
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
    mut answers: Streaming<ProduceStreamResponse>,
) -> StreamEnd {
    let idempotent = shared.identity.is_some();
    let mut answered = false;
    loop {
        let broken = |error: ServerError| StreamEnd::Broken { error, answered };
        let next = tokio::time::timeout(shared.config.request_timeout, answers.message()).await;
        let answer = match next {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) if shared.drained() => return StreamEnd::Drained,
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
            Err(_elapsed) if locked(&shared.in_flight).is_empty() => continue,
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
            let mut in_flight = locked(&shared.in_flight);
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
                shared.resolve_front(entry, result);
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
