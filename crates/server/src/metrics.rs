//! Gauges the server keeps about itself, readable in-process (tests assert on them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Server-wide gauges. Every change wakes [`Metrics::changed`] waiters, so a test can wait
/// for a condition without sleeping.
#[derive(Debug, Default)]
pub struct Metrics {
    subscriber_buffered_bytes: AtomicU64,
    subscribers_waiting_on_client: AtomicU64,
    changed: Notify,
}

impl Metrics {
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
