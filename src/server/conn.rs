//! Connections, and how they end. hyper serves each accepted socket (HTTP/1.1);
//! this file bounds what a client can hold and makes a shutdown finish:
//!
//! - headers must arrive within `header_timeout` (hyper's header read timer,
//!   which also closes a keep-alive connection idle that long);
//! - a body must arrive within `body_timeout` (408 `body_timeout`), and a
//!   `Content-Length` over `max_body_bytes` is 413 at once, before a byte of
//!   the body is read, so `Expect: 100-continue` never gets `100 Continue`;
//! - on shutdown ([`Lifecycle::stop`]): no new connections; a request that
//!   arrives on an open one is answered 503 `shutting_down` with
//!   `Connection: close`; one whose body has not fully arrived is answered the
//!   same at once; requests already received run to their end (their
//!   deadlines bound them). When none is left, or `grace` is over, every
//!   connection is closed: idle keep-alive ones, and ones that never delivered
//!   a full request.
//!
//! Both timeouts are counted in `reward_worker_client_timeouts_total{stage}`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::errors::{ApiError, ErrorKind};
use super::Listener;

/// How long a closing connection may take to flush what it already wrote.
const FLUSH: Duration = Duration::from_secs(1);

/// The time limits of a connection and the shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
    /// From the shutdown signal to the last connection closed.
    pub shutdown_grace: Duration,
}

/// What every connection and request shares about the server's life.
pub struct Lifecycle {
    limits: ConnLimits,
    /// The shutdown began.
    stopping: CancellationToken,
    /// Every connection closes now (drained, or the grace is over).
    closing: CancellationToken,
    /// When the grace is over (set by [`Lifecycle::stop`]).
    exit_by: OnceLock<Instant>,
    /// Requests received and not yet fully answered.
    in_flight: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    pub fn new(limits: ConnLimits) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            limits,
            stopping: CancellationToken::new(),
            closing: CancellationToken::new(),
            exit_by: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Begin the shutdown: stop accepting, refuse new requests.
    pub fn stop(&self) {
        let _ = self.exit_by.set(Instant::now() + self.limits.shutdown_grace);
        self.stopping.cancel();
    }

    /// Wait until no request is in flight or the grace is over (true: drained),
    /// then close every connection.
    pub async fn drain(&self) -> bool {
        let exit_by = *self.exit_by.get().expect("drain only after stop: this is a bug");
        let drained = tokio::time::timeout_at(exit_by.into(), async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok();
        self.closing.cancel();
        drained
    }

    /// Requests received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Time left of the grace (all of it before the shutdown began).
    pub fn grace_left(&self) -> Duration {
        match self.exit_by.get() {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => self.limits.shutdown_grace,
        }
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One request in flight, until its response body is dropped (written or abandoned).
struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn timed_out(stage: &'static str) {
    metrics::counter!("reward_worker_client_timeouts_total", "stage" => stage).increment(1);
}

/// An error answer after which the connection closes (its body was not read).
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn shutting_down(message: &str) -> Response {
    closing(ApiError::new(ErrorKind::Unavailable, "shutting_down", message))
}

/// The layer in front of every route: the shutdown check, the body limit and
/// the body timeout; it counts the request in flight until its response is written.
pub async fn guard(State(life): State<Arc<Lifecycle>>, request: Request, next: Next) -> Response {
    let in_flight = life.enter();
    let limits = life.limits;
    if life.is_stopping() {
        return shutting_down("the server is shutting down and takes no new requests");
    }
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&n| n > limits.max_body_bytes as u64) {
        return closing(ApiError::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            format!(
                "the body is {length} bytes (Content-Length); the limit is {} bytes (--max-body-bytes)",
                limits.max_body_bytes
            ),
        ));
    }
    let (parts, body) = request.into_parts();
    let read = tokio::select! {
        read = tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limits.max_body_bytes)) => read,
        _ = life.stopping.cancelled() => {
            return shutting_down("the server began shutting down before the request's body arrived");
        }
    };
    let bytes = match read {
        Err(_) => {
            timed_out("body");
            return closing(ApiError::new(
                ErrorKind::RequestTimeout,
                "body_timeout",
                format!("the body did not arrive within {} s (--body-timeout)", limits.body_timeout.as_secs_f64()),
            ));
        }
        Ok(Err(e)) if is_length_limit(&e) => {
            return closing(ApiError::new(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                format!("the body is over {} bytes (--max-body-bytes)", limits.max_body_bytes),
            ));
        }
        Ok(Err(e)) => return closing(ApiError::bad_request("invalid_body", format!("cannot read the body: {e}"))),
        Ok(Ok(bytes)) => bytes,
    };
    let mut response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if life.is_stopping() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.map(|inner| Body::new(Tracked { inner, _guard: in_flight }))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The routes behind [`guard`].
pub fn service(app: Router, life: &Arc<Lifecycle>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(Arc::clone(life), guard))
}

/// Accept connections on `listener` until the shutdown begins; each is served
/// on its own task until it ends or [`Lifecycle::drain`] closes it.
pub async fn serve(listener: Listener, app: Router, life: Arc<Lifecycle>) -> std::io::Result<()> {
    match listener {
        Listener::Tcp(l) => accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, app, life).await,
        Listener::Unix(l) => accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, app, life).await,
    }
}

async fn accept_loop<IO, F, Fut>(accept: F, app: Router, life: Arc<Lifecycle>) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<IO>>,
{
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            _ = life.stopping.cancelled() => return Ok(()),
        };
        match accepted {
            Ok(io) => connection(io, app.clone(), Arc::clone(&life)),
            Err(e) if is_transient(&e) => {
                // Out of file descriptors, a connection reset before accept: wait a
                // little rather than spin; the listener itself is fine.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock)
        || matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

fn connection<IO>(io: IO, app: Router, life: Arc<Lifecycle>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, request.map(Body::new)).await }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(life.limits.header_timeout);
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    if e.is_timeout() {
                        timed_out("headers");
                    }
                    tracing::debug!(error = %e, "connection ended");
                }
            }
            _ = life.closing.cancelled() => {
                // Let it flush what it wrote; an idle or half-sent one closes now.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(FLUSH.min(life.grace_left()), conn).await;
            }
        }
    });
}
