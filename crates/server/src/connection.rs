//! Every connection the gRPC, browser and metrics listeners accept: counted in the connection gauges,
//! holding one of its listener's bounded places, and closed when it stalls.
//!
//! A connection must make its first request within the handshake timeout of being accepted
//! (TCP, then TLS, then HTTP/2's preface or an HTTP/1 request head): a raw TCP connection, a
//! TLS handshake that never finishes, a TLS connection that never starts HTTP/2 and a first
//! request sent halfway are all closed then, holding no place for longer. After its first
//! request, a connection on which no byte has moved either way for the idle timeout, and
//! that has no request being served ([`Serving`]), is closed. A live connection is never idle
//! that long: the gRPC listener pings every client (HTTP/2 keep-alive, which also closes a
//! client that stops answering), browser streams send keep-alives, and a Kafka client's
//! request that waits (a JoinGroup waits for the other members, up to their rebalance
//! timeout) keeps its connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tokio_util::sync::PollSemaphore;

use crate::limits::{
    ACCEPT_RETRY_INTERVAL, CONNECTION_HANDSHAKE_TIMEOUT, CONNECTION_IDLE_TIMEOUT, CONNECTION_LINGER,
};
use crate::metrics::Connection;

/// How long a connection may take to make its first request, and stay silent after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// From accept to the first request's head, TLS included.
    pub handshake: Duration,
    /// With no byte read or written, after the first request.
    pub idle: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> ConnectionTimeouts {
        ConnectionTimeouts {
            handshake: CONNECTION_HANDSHAKE_TIMEOUT,
            idle: CONNECTION_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionTimeouts {
    /// How often the gRPC listener pings a client, and how long it waits for the answer: a
    /// third of the idle timeout each, so a live client always moves bytes within it.
    pub(crate) fn keep_alive(&self) -> Duration {
        self.idle / 3
    }
}

/// Set once the connection's first request arrived; the listener's service sets it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    pub(crate) fn arrived(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn has_arrived(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts a connection's requests being served; the listener's service counts them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Serving(Arc<AtomicUsize>);

impl Serving {
    /// One request being served, until the returned guard is dropped.
    pub(crate) fn begin(&self) -> ServingOne {
        self.0.fetch_add(1, Ordering::Relaxed);
        ServingOne(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// A request being served (see [`Serving::begin`]).
#[derive(Debug)]
pub(crate) struct ServingOne(Arc<AtomicUsize>);

impl Drop for ServingOne {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection.
pub(crate) struct Guarded {
    stream: TcpStream,
    _connection: Connection,
    _place: OwnedSemaphorePermit,
    timeouts: ConnectionTimeouts,
    accepted: Instant,
    last_active: Instant,
    first_request: FirstRequest,
    serving: Serving,
    /// Wakes the task that reads at the next deadline, and `write_timer` the one that
    /// writes: a Sleep wakes only the task that polled it last, and where reading and
    /// writing are two tasks (the Kafka listener's), the writer sleeps between answers.
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    /// Set once the write half is shut: the end of the linger.
    lingering: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    /// The client's address, if the socket still knows it.
    pub(crate) fn peer(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// What the listener's service sets when the connection's first request arrives.
    pub(crate) fn first_request(&self) -> FirstRequest {
        self.first_request.clone()
    }

    /// What the listener's service counts its requests being served in.
    pub(crate) fn serving(&self) -> Serving {
        self.serving.clone()
    }

    /// An error once the connection has stalled past its timeout; otherwise arms the
    /// reading (or the writing) side's timer to wake its task at the next deadline.
    fn check(&mut self, cx: &mut Context<'_>, writing: bool) -> io::Result<()> {
        loop {
            let timer = if writing { &mut self.write_timer } else { &mut self.read_timer };
            if timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            // A request being served counts as the connection moving.
            if self.serving.any() {
                self.last_active = Instant::now();
            }
            let (deadline, what) = if self.first_request.has_arrived() {
                (self.last_active + self.timeouts.idle, "idle")
            } else {
                (self.accepted + self.timeouts.handshake, "handshake")
            };
            if Instant::now() >= deadline {
                crate::metrics::connection_timed_out(what);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the connection's {what} timeout passed"),
                ));
            }
            let timer = if writing { &mut self.write_timer } else { &mut self.read_timer };
            timer.as_mut().reset(deadline);
        }
    }

    fn moved(&mut self, result: &Poll<io::Result<()>>) {
        if matches!(result, Poll::Ready(Ok(()))) {
            self.last_active = Instant::now();
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx, false)?;
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.moved(&read);
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx, true)?;
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, buf));
        self.moved(&Poll::Ready(Ok(())));
        Poll::Ready(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx, true)?;
        let written = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, bufs));
        self.moved(&Poll::Ready(Ok(())));
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Sends the connection's end, then reads and drops what the client still sends until it
    /// closes its side or [`CONNECTION_LINGER`] passes, so that the socket is not closed with
    /// unread bytes (which resets it, and a reset may destroy what the client has yet to read).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.lingering = Some(Box::pin(tokio::time::sleep(CONNECTION_LINGER)));
        }
        let mut dropped = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut dropped);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // The client's end, or a connection already gone: nothing left to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let lingering = this.lingering.as_mut().expect("set above");
                    ready!(lingering.as_mut().poll(cx));
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// The connections a listener accepts, at most `places` at once: past it the listener
/// accepts nothing more (the kernel's backlog holds or refuses the rest) until one closes.
/// A failed accept (out of file handles, say) is logged and retried after
/// [`ACCEPT_RETRY_INTERVAL`], never in a busy loop.
pub(crate) struct Accepting {
    listener: TcpListener,
    places: PollSemaphore,
    place: Option<OwnedSemaphorePermit>,
    retry: Option<Pin<Box<Sleep>>>,
    timeouts: ConnectionTimeouts,
}

impl Accepting {
    pub(crate) fn new(
        listener: TcpListener,
        places: usize,
        timeouts: ConnectionTimeouts,
    ) -> Accepting {
        Accepting {
            listener,
            places: PollSemaphore::new(Arc::new(tokio::sync::Semaphore::new(places))),
            place: None,
            retry: None,
            timeouts,
        }
    }
}

impl Stream for Accepting {
    type Item = io::Result<Guarded>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(retry) = &mut this.retry {
                ready!(retry.as_mut().poll(cx));
                this.retry = None;
            }
            if this.place.is_none() {
                match ready!(this.places.poll_acquire(cx)) {
                    Some(place) => this.place = Some(place),
                    None => return Poll::Ready(None),
                }
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    // Small answers (acknowledgements) should not wait for Nagle's algorithm;
                    // a socket that refuses the option still serves.
                    let _ = stream.set_nodelay(true);
                    let place = this.place.take().expect("a place was taken above");
                    let now = Instant::now();
                    return Poll::Ready(Some(Ok(Guarded {
                        stream,
                        _connection: Connection::opened(),
                        _place: place,
                        timeouts: this.timeouts,
                        accepted: now,
                        last_active: now,
                        first_request: FirstRequest::default(),
                        serving: Serving::default(),
                        read_timer: Box::pin(tokio::time::sleep_until(
                            now + this.timeouts.handshake,
                        )),
                        write_timer: Box::pin(tokio::time::sleep_until(
                            now + this.timeouts.handshake,
                        )),
                        lingering: None,
                    })));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_ms = ACCEPT_RETRY_INTERVAL.as_millis() as u64, "accepting a connection failed");
                    this.retry = Some(Box::pin(tokio::time::sleep(ACCEPT_RETRY_INTERVAL)));
                }
            }
        }
    }
}

/// Serves `router` over HTTP/1 on `listener` until `stop` is cancelled, then waits for the
/// connections to finish what they are doing (the caller bounds that wait). At most `places`
/// connections at once, each closed when it stalls, each request's head read within the
/// handshake timeout (so a request sent halfway does not hold its connection). The browser
/// and metrics listeners use it; axum's own `serve` has neither bound.
pub(crate) async fn serve_http1(
    listener: TcpListener,
    router: axum::Router,
    places: usize,
    timeouts: ConnectionTimeouts,
    stop: tokio_util::sync::CancellationToken,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tokio_stream::StreamExt;
    use tower::ServiceExt;

    let mut accepting = Accepting::new(listener, places, timeouts);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            accepted = accepting.next() => match accepted {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => return Err(error),
                None => break,
            },
            () = stop.cancelled() => break,
        };
        let first_request = connection.first_request();
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                first_request.arrived();
                router.clone().oneshot(request)
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.handshake);
            let served = builder.serve_connection_with_upgrades(TokioIo::new(connection), service);
            if let Err(error) = watcher.watch(served.into_owned()).await {
                tracing::debug!(%error, "an HTTP connection ended with an error");
            }
        });
    }
    drop(accepting);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    use super::*;

    const SHORT: ConnectionTimeouts = ConnectionTimeouts {
        handshake: Duration::from_millis(300),
        idle: Duration::from_millis(600),
    };

    #[tokio::test]
    async fn a_listener_holds_at_most_its_places_and_frees_one_when_a_connection_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepting = Accepting::new(listener, 1, ConnectionTimeouts::default());
        let _first = TcpStream::connect(address).await.unwrap();
        let held = accepting.next().await.unwrap().unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), accepting.next());
        assert!(waiting.await.is_err(), "no second place while the first connection is open");
        drop(held);
        let second = tokio::time::timeout(Duration::from_secs(30), accepting.next());
        assert!(second.await.unwrap().unwrap().is_ok(), "the freed place takes the next one");
    }

    async fn accepted(timeouts: ConnectionTimeouts) -> (Guarded, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepting = Accepting::new(listener, 1, timeouts);
        let client = TcpStream::connect(address).await.unwrap();
        (accepting.next().await.unwrap().unwrap(), client)
    }

    #[tokio::test]
    async fn a_connection_without_a_first_request_ends_at_the_handshake_timeout() {
        let (mut server, _client) = accepted(SHORT).await;
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= SHORT.handshake, "{took:?}");
    }

    #[tokio::test]
    async fn after_its_first_request_a_connection_ends_when_idle_and_not_before() {
        let (mut server, mut client) = accepted(SHORT).await;
        server.first_request().arrived();
        // Bytes moving keep it open past both timeouts.
        for _ in 0..4 {
            tokio::time::sleep(SHORT.idle / 2).await;
            tokio::io::AsyncWriteExt::write_all(&mut server, b"ping").await.unwrap();
            let mut got = [0u8; 4];
            client.read_exact(&mut got).await.unwrap();
        }
        let quiet = Instant::now();
        let mut buf = [0u8; 16];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let took = quiet.elapsed();
        // Measured from after the last write, so a little less than the timeout.
        assert!(took >= SHORT.idle / 2, "{took:?}");
    }
}
