//! The accept loop: plain HTTP/1.1 or TLS (rustls) in front of the axum
//! router, with every way a client can hold the gateway's resources
//! bounded:
//!
//! - at most `max_connections` connections are served at once (a
//!   semaphore, as in mini-redis). When they are all taken, a small
//!   overflow lane still accepts, with short timeouts, and answers only
//!   `/v1/health` and `/v1/ready` (everything else 503), so a monitor is
//!   never locked out by clients that hold connections without a token;
//! - request headers must arrive within `header_timeout` (hyper's header
//!   read timeout, which also closes a connection that sends nothing, and
//!   a keep-alive connection idle that long after its last answer);
//! - a client that takes nothing of its answer for `write_timeout` is
//!   disconnected ([`Guarded`]);
//! - a connection serves at most `max_requests_per_connection` requests:
//!   the last answer carries `Connection: close`;
//! - TLS handshakes must finish within 10 s; accept errors back off;
//! - on shutdown, answers in flight finish (bounded), live streams end.
//!
//! Request bodies are bounded in size (an early 413 on `Content-Length`,
//! `super::limits`) and in time (`body_timeout`, where a route reads one).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// ... and finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, answers in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// Connections the overflow lane serves at once (health and readiness).
const OVERFLOW_CONNECTIONS: usize = 16;
/// Every timeout of an overflow connection.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);

/// What bounds one connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub max_requests: usize,
}

impl Limits {
    fn overflow(self) -> Self {
        Self {
            max_connections: OVERFLOW_CONNECTIONS,
            header_timeout: OVERFLOW_TIMEOUT.min(self.header_timeout),
            write_timeout: OVERFLOW_TIMEOUT.min(self.write_timeout),
            max_requests: 1,
        }
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let overflow_slots = Arc::new(tokio::sync::Semaphore::new(OVERFLOW_CONNECTIONS));
    let overflow_router = super::health_only(router.clone());
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A full house goes to the overflow lane; a full overflow lane
        // closes the connection at once rather than queueing it.
        let (slot, router, limits) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, router.clone(), limits),
            Err(_) => match overflow_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, overflow_router.clone(), limits.overflow()),
                Err(_) => {
                    tracing::debug!(%peer, "API: every connection slot is taken; closing");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shutdown, acceptor) = (shutdown.clone(), acceptor.clone());
        connections.spawn(async move {
            match acceptor {
                None => connection(Guarded::new(stream, limits), router, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            connection(Guarded::new(tls, limits), router, limits, shutdown).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "API: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "API: TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), connections.wait()).await;
}

async fn connection<S>(
    stream: Guarded<S>,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The keep-alive limit: the connection's last answer closes it.
    let served = Arc::new(AtomicUsize::new(0));
    let service = tower::service_fn(move |request: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let n = served.fetch_add(1, Relaxed) + 1;
        async move {
            let mut response: Response<Body> = router.oneshot(request.map(Body::new)).await?;
            if n >= limits.max_requests {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "API: connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// A connection's stream whose writes must progress within
/// `write_timeout`: a client that does not read its answer (or its live
/// stream) is disconnected. Reads are not timed here: hyper's header
/// timeout covers a client that sends nothing, and a route that reads a
/// body bounds it itself (a live stream's client sends nothing for hours).
pub(super) struct Guarded<S> {
    inner: S,
    write_timeout: Duration,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    fn new(inner: S, limits: Limits) -> Self {
        Self {
            inner,
            write_timeout: limits.write_timeout,
            write_deadline: None,
        }
    }
}

/// Arms `deadline` while an operation waits, disarms it when it moves;
/// an error once it passed.
fn guard<T>(
    result: Poll<io::Result<T>>,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<io::Result<T>> {
    match result {
        Poll::Ready(r) => {
            *deadline = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let sleep = deadline.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
            });
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client {what} for {timeout:?}"),
                ))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        guard(
            result,
            &mut this.write_deadline,
            this.write_timeout,
            cx,
            "took nothing of its answer",
        )
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        guard(
            result,
            &mut this.write_deadline,
            this.write_timeout,
            cx,
            "took nothing of its answer",
        )
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
