//! The peer protocol's two ends (the module docs in `cluster` describe it).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::ServerName;
use spool_replication::{Call, NodeId, Replica, Transport, TransportError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::limits::{
    CONNECTION_HANDSHAKE_TIMEOUT, CONNECTION_IDLE_TIMEOUT, GROUP_NAME_BYTES_MAX,
    PEER_CONNECTIONS_MAX, PEER_FRAME_BYTES_MAX, PEER_POOL_PER_NODE, PEER_REFUSAL_WARNING_INTERVAL,
};

const ANSWERED: u8 = 0;
const REFUSED: u8 = 1;

/// A peer connection: plain TCP on loopback, or TLS over it.
trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> PeerStream for S {}
type Stream = Box<dyn PeerStream>;

/// The name a peer's question is sent under, in place of a group's, when it asks whether
/// this node has applied a node's registration: the question is the node's id (8 bytes, big
/// endian), the answer one byte (1: registered).
pub(crate) const REGISTERED_QUESTION: &str = "__registered";

/// The name a peer's question is sent under when it asks which version of the peer protocol
/// this node speaks ([`spool_replication::PROTOCOL_VERSION`]): the question is the asker's
/// version, the answer this node's (4 bytes each, big endian). A build older than the
/// question refuses it, as a group it has no replica of: it speaks version 1.
pub(crate) const PROTOCOL_QUESTION: &str = "__protocol";

/// Where the internal listener finds the replica a message is for.
pub trait Groups: Send + Sync + 'static {
    /// This node's replica of `group`, if it has one.
    fn replica(&self, group: &str) -> Option<Arc<Replica>>;

    /// Whether this node has applied a registration of node `id` (see
    /// `REGISTERED_QUESTION`).
    fn has_registered(&self, id: NodeId) -> bool;
}

/// Serves peers' messages on `listener` until `stop` is cancelled: at most
/// [`PEER_CONNECTIONS_MAX`] connections at once, each through `tls` when given (a caller
/// whose handshake fails or takes longer than [`CONNECTION_HANDSHAKE_TIMEOUT`] is dropped).
pub async fn serve_peers(
    listener: TcpListener,
    groups: Arc<dyn Groups>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let (_fixed, tls) = watch::channel(tls);
    serve_peers_reloading(listener, groups, tls, stop).await;
}

/// [`serve_peers`] whose TLS can change while it serves: each connection takes the TLS in
/// force when it is accepted, and a change ends every connection open (its caller connects
/// again, and is checked again: a revoked certificate ends its connections).
pub(crate) async fn serve_peers_reloading(
    listener: TcpListener,
    groups: Arc<dyn Groups>,
    tls_in_force: watch::Receiver<Option<TlsAcceptor>>,
    stop: CancellationToken,
) {
    let places = Arc::new(Semaphore::new(PEER_CONNECTIONS_MAX));
    let refusals = Arc::new(Refusals::new());
    loop {
        let place = tokio::select! {
            () = stop.cancelled() => return,
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer's connection failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut reloads = tls_in_force.clone();
        let tls = reloads.borrow_and_update().clone();
        let (groups, stop) = (groups.clone(), stop.clone());
        let refusals = refusals.clone();
        tokio::spawn(async move {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "a peer's connection ended");
                return;
            }
            let stream: Stream = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    match tokio::time::timeout(CONNECTION_HANDSHAKE_TIMEOUT, tls.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(error)) => return refusals.refused(peer, &error.to_string()),
                        Err(_) => return refusals.refused(peer, "the TLS handshake timed out"),
                    }
                }
            };
            if let Err(error) = serve_connection(stream, groups, stop, reloads).await {
                tracing::debug!(%peer, %error, "a peer's connection ended");
            }
            drop(place);
        });
    }
}

/// Logs refused callers: a warning at most once per [`PEER_REFUSAL_WARNING_INTERVAL`] (a
/// misconfigured node calls many times a second), the rest at debug.
struct Refusals {
    start: Instant,
    /// Milliseconds after `start` of the last warning, plus one; 0: none yet.
    warned: AtomicU64,
}

impl Refusals {
    fn new() -> Refusals {
        Refusals { start: Instant::now(), warned: AtomicU64::new(0) }
    }

    fn refused(&self, peer: SocketAddr, reason: &str) {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.warned.load(Ordering::Relaxed);
        let interval = PEER_REFUSAL_WARNING_INTERVAL.as_millis() as u64;
        if (last == 0 || now >= last + interval)
            && self.warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(%peer, reason, "refused a peer connection: its TLS handshake failed (a certificate not signed by the cluster's CA or one its revocation list names, or no TLS)");
        } else {
            tracing::debug!(%peer, reason, "refused a peer connection");
        }
    }
}

async fn serve_connection(
    mut stream: Stream,
    groups: Arc<dyn Groups>,
    stop: CancellationToken,
    mut reloads: watch::Receiver<Option<TlsAcceptor>>,
) -> io::Result<()> {
    loop {
        let reloaded = async {
            if reloads.changed().await.is_err() {
                std::future::pending::<()>().await; // the TLS never changes
            }
        };
        let frame = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = reloaded => return Ok(()),
            frame = tokio::time::timeout(CONNECTION_IDLE_TIMEOUT, read_frame(&mut stream)) => frame,
        };
        let Some(mut frame) = frame.map_err(|_| io::Error::other("idle past the timeout"))?? else {
            return Ok(());
        };
        let (status, answer) = match split_request(&mut frame) {
            Err(reason) => (REFUSED, Bytes::from(reason)),
            Ok(group) if group == REGISTERED_QUESTION => match <[u8; 8]>::try_from(&frame[..]) {
                Ok(id) => {
                    let registered = groups.has_registered(NodeId::from_be_bytes(id));
                    (ANSWERED, Bytes::from(vec![u8::from(registered)]))
                }
                Err(_) => (REFUSED, Bytes::from("a registration question of other than 8 bytes")),
            },
            Ok(group) if group == PROTOCOL_QUESTION => {
                let version = spool_replication::PROTOCOL_VERSION.to_be_bytes();
                (ANSWERED, Bytes::copy_from_slice(&version))
            }
            Ok(group) => match groups.replica(&group) {
                Some(replica) => (ANSWERED, replica.handle(frame).await),
                None => (REFUSED, Bytes::from(format!("this node has no replica of {group:?}"))),
            },
        };
        let mut head = BytesMut::with_capacity(5);
        head.put_u32(1 + answer.len() as u32);
        head.put_u8(status);
        stream.write_all(&head).await?;
        stream.write_all(&answer).await?;
        stream.flush().await?;
    }
}

/// Takes the group name off the front of a request frame.
fn split_request(frame: &mut Bytes) -> Result<String, String> {
    if frame.len() < 2 {
        return Err("a request shorter than its group name's length".into());
    }
    let length = u16::from_be_bytes([frame[0], frame[1]]) as usize;
    if length > GROUP_NAME_BYTES_MAX || 2 + length > frame.len() {
        return Err(format!("a group name of {length} bytes"));
    }
    let name = frame.split_to(2 + length).slice(2..);
    String::from_utf8(name.to_vec()).map_err(|_| "a group name that is not UTF-8".into())
}

/// Reads one frame; `None` at a clean end of the stream between frames.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Bytes>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > PEER_FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes, more than the limit of {PEER_FRAME_BYTES_MAX}"),
        ));
    }
    // Memory grows with the bytes that arrive, not with the length a peer claims.
    let mut frame = BytesMut::with_capacity(length.min(64 * 1024));
    let mut body = (&mut *stream).take(length as u64);
    while frame.len() < length {
        if body.read_buf(&mut frame).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a frame cut short"));
        }
    }
    Ok(Some(frame.freeze()))
}

/// The client side of the peer protocol: carries a replica's messages to its peers, keeping
/// up to [`PEER_POOL_PER_NODE`] idle connections per peer address.
pub struct PeerTransport {
    /// Idle connections by address, and the TLS they were opened with.
    pool: Mutex<Pool>,
}

struct Pool {
    idle: HashMap<String, Vec<Stream>>,
    /// `None`: plain TCP.
    tls: Option<TlsConnector>,
    /// Counts TLS changes: a connection opened before the last one is not kept.
    generation: u64,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = self.pool().tls.is_some();
        f.debug_struct("PeerTransport").field("tls", &tls).finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// Calls peers through `tls` when given, checking that each peer's certificate names
    /// the IP address it is called at.
    pub fn new(tls: Option<TlsConnector>) -> PeerTransport {
        PeerTransport { pool: Mutex::new(Pool { idle: HashMap::new(), tls, generation: 0 }) }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls peers through `tls` from now on: idle connections are closed, and those in use
    /// are closed once their exchange ends.
    pub(crate) fn set_tls(&self, tls: Option<TlsConnector>) {
        let mut pool = self.pool();
        pool.tls = tls;
        pool.generation += 1;
        pool.idle.clear();
    }

    /// An idle connection to `address` that is still open. A peer sends nothing unasked, so
    /// an idle connection with anything to read has been closed by the peer (a node that
    /// restarted, most often) and is dropped: a message written to it would fail, or worse,
    /// be lost with the peer's close.
    fn take_idle(&self, address: &str) -> Option<Stream> {
        let mut pool = self.pool();
        let idle = pool.idle.get_mut(address)?;
        while let Some(mut stream) = idle.pop() {
            let mut byte = [0u8; 1];
            let mut unread = tokio::io::ReadBuf::new(&mut byte);
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            if std::pin::Pin::new(&mut stream).poll_read(&mut context, &mut unread).is_pending() {
                return Some(stream);
            }
        }
        None
    }

    fn put_idle(&self, address: &str, stream: Stream, generation: u64) {
        let mut pool = self.pool();
        if pool.generation != generation {
            return;
        }
        let connections = pool.idle.entry(address.to_owned()).or_default();
        if connections.len() < PEER_POOL_PER_NODE {
            connections.push(stream);
        }
    }

    async fn exchange(&self, address: &str, group: &str, message: Bytes) -> io::Result<Bytes> {
        let (status, answer) = self.exchange_raw(address, group, message).await?;
        match status {
            ANSWERED => Ok(answer),
            _ => Err(io::Error::other(format!(
                "the peer refused the message: {}",
                String::from_utf8_lossy(&answer)
            ))),
        }
    }

    /// Sends one message and takes its answer, with its status (answered or refused).
    async fn exchange_raw(
        &self,
        address: &str,
        group: &str,
        message: Bytes,
    ) -> io::Result<(u8, Bytes)> {
        let generation = self.pool().generation;
        let mut stream = match self.take_idle(address) {
            Some(stream) => stream,
            None => self.connect(address).await?,
        };
        let mut head = BytesMut::with_capacity(6 + group.len());
        head.put_u32((2 + group.len() + message.len()) as u32);
        head.put_u16(group.len() as u16);
        head.put_slice(group.as_bytes());
        stream.write_all(&head).await?;
        stream.write_all(&message).await?;
        stream.flush().await?;
        let frame = read_frame(&mut stream).await?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection")
        })?;
        let (status, answer) = match frame.first() {
            Some(&status) => (status, frame.slice(1..)),
            None => return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty answer")),
        };
        self.put_idle(address, stream, generation);
        Ok((status, answer))
    }
}

impl PeerTransport {
    /// The peer protocol version the node at `address` speaks (see [`PROTOCOL_QUESTION`]),
    /// within `timeout`: an error when it could not be reached.
    pub(crate) async fn protocol_of(&self, address: &str, timeout: Duration) -> io::Result<u32> {
        let question = Bytes::copy_from_slice(&spool_replication::PROTOCOL_VERSION.to_be_bytes());
        let asked = self.exchange_raw(address, PROTOCOL_QUESTION, question);
        let (status, answer) = tokio::time::timeout(timeout, asked)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
        match (status, <[u8; 4]>::try_from(&answer[..])) {
            (ANSWERED, Ok(version)) => Ok(u32::from_be_bytes(version)),
            (ANSWERED, Err(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a protocol version of {} bytes", answer.len()),
            )),
            // Refused: a build from before the question.
            _ => Ok(1),
        }
    }

    async fn connect(&self, address: &str) -> io::Result<Stream> {
        let tls = self.pool().tls.clone();
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = tls else { return Ok(Box::new(stream)) };
        let ip = address.parse::<SocketAddr>().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{address} is not IP:PORT"))
        })?;
        let name = ServerName::IpAddress(ip.ip().into());
        let stream = tls.connect(name, stream).await.map_err(|error| {
            io::Error::new(error.kind(), format!("the TLS handshake failed: {error}"))
        })?;
        Ok(Box::new(stream))
    }
}

impl Transport for PeerTransport {
    fn call<'a>(
        &'a self,
        target: NodeId,
        address: &'a str,
        group: &'a str,
        message: Bytes,
        timeout: Duration,
    ) -> Call<'a> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.exchange(address, group, message)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(error)) => Err(TransportError::Unreachable {
                    node: target,
                    address: address.to_owned(),
                    reason: error.to_string(),
                }),
                Err(_) => Err(TransportError::Timeout {
                    node: target,
                    address: address.to_owned(),
                    timeout,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoGroups;

    impl Groups for NoGroups {
        fn replica(&self, _: &str) -> Option<Arc<Replica>> {
            None
        }
        fn has_registered(&self, _: NodeId) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn nodes_tell_their_peer_protocol_and_an_older_one_speaks_version_one() {
        let transport = PeerTransport::new(None);
        let timeout = Duration::from_secs(5);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        tokio::spawn(serve_peers(listener, Arc::new(NoGroups), None, stop.clone()));
        let version = transport.protocol_of(&address, timeout).await.unwrap();
        assert_eq!(version, spool_replication::PROTOCOL_VERSION);
        stop.cancel();

        // A release from before the question refuses it, as a group it has no replica of.
        let older = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = older.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = older.accept().await.unwrap();
            read_frame(&mut stream).await.unwrap();
            let answer = b"this node has no replica of \"__protocol\"";
            let mut head = BytesMut::new();
            head.put_u32(1 + answer.len() as u32);
            head.put_u8(REFUSED);
            stream.write_all(&head).await.unwrap();
            stream.write_all(answer).await.unwrap();
            stream.flush().await.unwrap();
        });
        assert_eq!(transport.protocol_of(&address, timeout).await.unwrap(), 1);
    }
}
