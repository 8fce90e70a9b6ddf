//! The accumulator: each partition's open batch and sealed batches, the buffer budget they
//! take, and the choice of the next batch to send. Records are encoded into their partition's
//! open batch as they are sent; a batch is sealed at its record or byte limit, and the sender
//! takes sealed batches first and an open one once it has lingered.

use super::*;

/// A batch being filled.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub(super) builder: BatchBuilder,
    pub(super) outcome: Arc<Outcome>,
    pub(super) opened_at: Instant,
    pub(super) bytes_reserved: usize,
}

/// A batch ready to send. Its header is written when it is sent, with the stamp it gets then.
#[derive(Debug)]
pub(super) struct Sealed {
    pub(super) builder: BatchBuilder,
    pub(super) outcome: Arc<Outcome>,
    pub(super) opened_at: Instant,
    pub(super) bytes_reserved: usize,
}

/// Where an idempotent producer's next batch to one partition stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sequence {
    pub(super) epoch: i16,
    pub(super) next: i32,
    /// A batch failed for good (or the sequence would overflow): the partition starts epoch
    /// `epoch + 1` from sequence 0 once nothing of it is in flight.
    pub(super) restart: bool,
}

#[derive(Debug, Default)]
pub(super) struct PartitionBuffer {
    pub(super) open: Option<OpenBatch>,
    pub(super) sealed: VecDeque<Sealed>,
    /// The outcome of the newest batch, open or not: [`Producer::flush`] waits for it.
    pub(super) newest: Option<Arc<Outcome>>,
    /// Batches sent and not yet answered.
    pub(super) in_flight: usize,
    /// The lane its next batches go on: its leader's node's, or 0.
    pub(super) lane: usize,
    /// The lane its batches in flight went on: a partition moves to another lane only with
    /// nothing in flight, so its batches are stored in the order they were sent.
    pub(super) sent_on: usize,
    pub(super) sequence: Sequence,
}

impl PartitionBuffer {
    pub(super) fn seal(&mut self) -> bool {
        match self.open.take() {
            Some(open) => {
                self.sealed.push_back(Sealed {
                    builder: open.builder,
                    outcome: open.outcome,
                    opened_at: open.opened_at,
                    bytes_reserved: open.bytes_reserved,
                });
                true
            }
            None => false,
        }
    }

    /// The stamp of the next batch of `records` records, advancing the sequence; `None` while
    /// the partition must wait for its batches in flight first. `Err` when the epochs are
    /// used up.
    pub(super) fn stamp(
        &mut self,
        producer_id: i64,
        records: u32,
    ) -> Result<Option<ProducerStamp>, ProduceError> {
        let overflows = i64::from(self.sequence.next) + i64::from(records) > i64::from(i32::MAX);
        if overflows {
            self.sequence.restart = true;
        }
        if self.sequence.restart {
            if self.in_flight > 0 {
                return Ok(None);
            }
            let epoch =
                self.sequence.epoch.checked_add(1).ok_or_else(|| ProduceError::InvalidRecord {
                    reason: format!(
                        "producer {producer_id} used up its epochs; start a new producer"
                    ),
                })?;
            self.sequence = Sequence { epoch, next: 0, restart: false };
        }
        let stamp = ProducerStamp {
            producer_id,
            producer_epoch: self.sequence.epoch,
            base_sequence: self.sequence.next,
        };
        self.sequence.next += records as i32;
        Ok(Some(stamp))
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) partitions: Vec<PartitionBuffer>,
    /// Every lane opened, by index; lane 0 first. A lane lives as long as the producer.
    pub(super) lanes: Vec<Arc<Lane>>,
    /// Where records without key or partition go while its batch fills.
    pub(super) sticky: u32,
    /// Where the sender looks first next time, so no partition starves.
    pub(super) next_pick: usize,
    /// No more records are taken; what is buffered is still sent.
    pub(super) closing: bool,
    /// Why the producer stopped, once it has.
    pub(super) failed: Option<ProduceError>,
}

impl Shared {
    pub(super) fn partition_count(&self) -> u32 {
        locked(&self.state).partitions.len() as u32
    }

    /// Adds partitions up to `partitions` (a topic only grows; a smaller count changes
    /// nothing); the count now.
    pub(super) fn grow_partitions(&self, partitions: u32) -> u32 {
        let sequence = Sequence {
            epoch: self.identity.map_or(0, |identity| identity.epoch),
            next: 0,
            restart: false,
        };
        let mut state = locked(&self.state);
        while (state.partitions.len() as u32) < partitions {
            state.partitions.push(PartitionBuffer { sequence, ..PartitionBuffer::default() });
        }
        state.partitions.len() as u32
    }

    /// Puts a checked record, whose buffer bytes are reserved, into its partition's batch.
    pub(super) fn append(
        &self,
        record: Record<'_>,
        bytes: usize,
    ) -> Result<Delivery, ProduceError> {
        let mut state = locked(&self.state);
        let partitions = state.partitions.len() as u32;
        if let Some(error) = state.failed.clone() {
            drop(state);
            self.buffer.add_permits(bytes);
            return Err(error);
        }
        if state.closing {
            drop(state);
            self.buffer.add_permits(bytes);
            return Err(ProduceError::Closed);
        }
        let sticky = record.partition.is_none() && record.key.is_none();
        let partition = match (record.partition, record.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => state.sticky,
        };
        let config = &self.config;
        let buffer = &mut state.partitions[partition as usize];
        let mut wake = false;
        if let Some(open) = &buffer.open
            && open.builder.encoded_bytes() + bytes > config.batch_bytes_max
        {
            wake |= buffer.seal();
        }
        let open = buffer.open.get_or_insert_with(|| {
            wake = true;
            let outcome = Outcome::new(partition);
            // Sized once for a batch of records like this one: growing a large batch by
            // doubling would copy it about once more.
            let records = (config.batch_records_max as usize).min(BATCH_BUFFER_RECORDS_INITIAL);
            let capacity = (BATCH_HEADER_BYTES + bytes * records).min(config.batch_bytes_max);
            OpenBatch {
                builder: BatchBuilder::new(self.batch_buffers.take(capacity)),
                outcome,
                opened_at: Instant::now(),
                bytes_reserved: 0,
            }
        });
        if buffer.newest.as_ref().is_none_or(|newest| !Arc::ptr_eq(newest, &open.outcome)) {
            buffer.newest = Some(open.outcome.clone());
        }
        let index = open.builder.record_count();
        let timestamp = record.timestamp_ms.map_or_else(TimestampMs::now, TimestampMs);
        push(&mut open.builder, timestamp, &record);
        open.bytes_reserved += bytes;
        let delivery = Delivery { outcome: open.outcome.clone(), index };
        let full = open.builder.record_count() >= config.batch_records_max
            || open.builder.encoded_bytes() + RECORD_BYTES_FIXED >= config.batch_bytes_max;
        if full {
            wake |= buffer.seal();
        }
        if sticky && full && partitions > 1 {
            state.sticky = (state.sticky + 1) % partitions;
        }
        // The lane's sender is woken only when a batch opens or seals, not per record.
        let lane = wake.then(|| state.lanes[state.partitions[partition as usize].lane].clone());
        drop(state);
        if let Some(lane) = lane {
            lane.wake.notify_one();
        }
        Ok(delivery)
    }

    /// The next batch to send on `lane`, sealing an open one whose linger is over, and its
    /// stamp; or, when there is none, when to look again (`None`: when woken). Only the
    /// partitions routed to the lane count, and of those, not one with batches in flight on
    /// another lane. An idempotent producer skips partitions with
    /// [`IDEMPOTENT_BATCHES_IN_FLIGHT_MAX`] batches in flight.
    pub(super) fn next_ready(&self, lane: usize, now: Instant) -> Next {
        let mut state = locked(&self.state);
        if state.failed.is_some() {
            return Next::Stop;
        }
        let in_flight_max =
            if self.identity.is_some() { IDEMPOTENT_BATCHES_IN_FLIGHT_MAX } else { usize::MAX };
        let closing = state.closing;
        let count = state.partitions.len();
        let start = state.next_pick;
        let mut deadline: Option<Instant> = None;
        let mut waiting = false;
        for step in 0..count {
            let index = (start + step) % count;
            let buffer = &mut state.partitions[index];
            if buffer.lane != lane {
                continue;
            }
            let elsewhere = buffer.in_flight > 0 && buffer.sent_on != lane;
            if elsewhere || buffer.in_flight >= in_flight_max {
                waiting |= !buffer.sealed.is_empty() || buffer.open.is_some();
                continue;
            }
            if buffer.sealed.is_empty()
                && let Some(open) = &buffer.open
            {
                let due = open.opened_at + self.config.linger;
                if closing || due <= now {
                    buffer.seal();
                } else {
                    deadline = Some(deadline.map_or(due, |d| d.min(due)));
                }
            }
            let Some(front) = buffer.sealed.front() else { continue };
            let records = front.builder.record_count();
            let stamp = match self.identity {
                None => ProducerStamp::NONE,
                Some(identity) => match buffer.stamp(identity.producer_id, records) {
                    Ok(Some(stamp)) => stamp,
                    Ok(None) => {
                        waiting = true;
                        continue;
                    }
                    Err(error) => {
                        drop(state);
                        self.fail(error);
                        return Next::Stop;
                    }
                },
            };
            let sealed = buffer.sealed.pop_front().expect("a front batch");
            buffer.in_flight += 1;
            buffer.sent_on = lane;
            state.next_pick = (index + 1) % count;
            return Next::Send(index as u32, stamp, sealed);
        }
        // Closing waits for batches held back by their partition's batches in flight; a
        // retired lane, for every partition to move off it.
        let retired = self.lane_retired(&state, lane);
        if (closing || retired) && !waiting { Next::Stop } else { Next::Wait(deadline) }
    }

    /// Whether `lane` is retired and has nothing left: no partition routed to it, nothing
    /// in flight on it.
    fn lane_retired(&self, state: &State, lane: usize) -> bool {
        let lane = &state.lanes[lane];
        lane.retired.load(Ordering::Acquire)
            && state.partitions.iter().all(|buffer| buffer.lane != lane.index)
            && locked(&lane.in_flight).is_empty()
    }

    pub(super) fn begin_close(&self) {
        let lanes = {
            let mut state = locked(&self.state);
            state.closing = true;
            state.lanes.clone()
        };
        for lane in lanes {
            lane.wake.notify_one();
        }
        // The refresher holds the producer while it waits for this: it ends now.
        self.leaders_stale.notify_one();
    }
}

/// Encodes one record into a batch.
pub(super) fn push(builder: &mut BatchBuilder, timestamp: TimestampMs, record: &Record<'_>) {
    builder.push(timestamp, record.key, record.value, record.headers);
}

pub(super) enum Next {
    Send(u32, ProducerStamp, Sealed),
    Wait(Option<Instant>),
    Stop,
}
