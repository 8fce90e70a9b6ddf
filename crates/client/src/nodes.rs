//! Several nodes behind one connection. A client given more than one address
//! (`http://127.0.0.1:7070,http://127.0.0.2:7070`, a cluster's nodes) sends each call to one
//! of them, the node it reached last, and moves on to the next when a call there fails in
//! the transport (refused, reset, unreachable): so a client of a cluster rides out the death
//! of the node it talks to. Every node of a cluster takes every request, so any will do.
//!
//! A call that failed is not sent again here: whether to send it again is the caller's, as
//! after any lost connection (an idempotent producer resends its batches, a reconnecting
//! consumer subscribes again, both after a backoff), and that next call goes to the next
//! node. A call that only reads is sent again at once, through [`Nodes::read`]: a
//! subscription or a describe fails only when no node can be reached. A node that answers,
//! even with an error, keeps the calls.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{Context, Future, Pin, Poll, Service};
use tonic::transport::Channel;

use crate::raw::RawBody;

/// One connection per node, and the node calls go to now (see the module docs).
#[derive(Clone)]
pub struct Nodes {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each node's URL and connection (opened when first used, but for the one reached at
    /// connect).
    nodes: Vec<(String, Channel)>,
    /// The index in `nodes` of the node calls go to.
    current: AtomicUsize,
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.inner.nodes.iter().map(|(url, _)| url.as_str()).collect();
        f.debug_struct("Nodes").field("urls", &urls).field("current", &self.current_url()).finish()
    }
}

impl Nodes {
    /// `nodes` (URL and connection each), calls going to the one at `current` first.
    pub(crate) fn new(nodes: Vec<(String, Channel)>, current: usize) -> Nodes {
        assert!(current < nodes.len(), "calls go to one of the nodes");
        Nodes { inner: Arc::new(Inner { nodes, current: AtomicUsize::new(current) }) }
    }

    /// These nodes with the one at `url` first and taking the calls: through the connection
    /// these nodes have to it, or else through `connect`'s.
    pub(crate) fn preferring(&self, url: &str, connect: impl FnOnce() -> Channel) -> Nodes {
        let mut nodes = self.inner.nodes.clone();
        let first = match nodes.iter().position(|(known, _)| known == url) {
            Some(at) => nodes.remove(at),
            None => (url.to_owned(), connect()),
        };
        nodes.insert(0, first);
        Nodes::new(nodes, 0)
    }

    /// Whether calls still go to the first node.
    pub(crate) fn on_first(&self) -> bool {
        self.inner.current.load(Ordering::Acquire) == 0
    }

    /// Runs `call`, a call that reads and changes nothing, again at once each time it fails
    /// in the transport and the calls move on to the next node: at most once per node.
    pub(crate) async fn read<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        for _ in 1..self.inner.nodes.len() {
            let at = self.inner.current.load(Ordering::Acquire);
            match call().await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && self.inner.current.load(Ordering::Acquire) != at => {}
                answer => return answer,
            }
        }
        call().await
    }

    /// The URL of the node calls go to now.
    pub fn current_url(&self) -> &str {
        let at = self.inner.current.load(Ordering::Acquire);
        &self.inner.nodes[at].0
    }
}

impl Service<http::Request<Body>> for Nodes {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    /// Always ready: the chosen node's connection is waited for in the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // A produce stream's body, framed without copying its batches (see `crate::raw`).
        if let Some(body) = request.extensions_mut().remove::<RawBody>().and_then(|raw| raw.take())
        {
            *request.body_mut() = body;
        }
        let inner = self.inner.clone();
        let at = inner.current.load(Ordering::Acquire);
        let mut channel = inner.nodes[at].1.clone();
        Box::pin(async move {
            let answer = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(error) => Err(error),
            };
            if let Err(error) = &answer
                && inner.nodes.len() > 1
            {
                let next = (at + 1) % inner.nodes.len();
                // Of the calls that saw this node fail, the first moves the others on.
                let moved =
                    inner.current.compare_exchange(at, next, Ordering::AcqRel, Ordering::Acquire);
                if moved.is_ok() {
                    tracing::warn!(
                        failed = %inner.nodes[at].0,
                        next = %inner.nodes[next].0,
                        %error,
                        "a call to a node failed; the next calls go to the next node"
                    );
                }
            }
            answer
        })
    }
}
