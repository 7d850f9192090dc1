//! `Idempotency-Key` on the POST routes: a retried request is answered once,
//! from the first computation.
//!
//! A client that times out, loses its connection or fails over to another
//! URL cannot know whether its request was scored; it sends the request again
//! with the same key. Here:
//!
//! - same key, same body (and route): the stored reply, byte for byte, with
//!   `idempotent-replayed: true`; while the first is still running, the retry
//!   waits for that same computation (it is never computed twice);
//! - same key, another body or route: 422 `idempotency_key_reused`;
//! - the first request runs to its end even when its client went away, so the
//!   retry finds its answer;
//! - a reply worth retrying (429, 5xx) is handed to the requests waiting on it
//!   but not kept: the next retry computes again;
//! - replies are kept for `ttl` and within `max_bytes` (oldest first out);
//!   a reply larger than the whole bound is answered and not kept.
//!
//! Counted in `/metrics`: `reward_worker_idempotency_requests_total{outcome=
//! first|replayed|joined|conflict}`, `reward_worker_idempotency_evicted_total
//! {reason=expired|memory}`, `reward_worker_idempotency_stored` and `_stored_bytes`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::errors::{ApiError, ErrorKind};
use super::AppState;

pub const HEADER: &str = "idempotency-key";
/// Set on an answer that was stored earlier (or computed for another request with the key).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted (a UUID is 36 bytes).
pub const MAX_KEY_BYTES: usize = 255;
/// What an entry costs besides its key and body (maps, queue, headers).
const ENTRY_OVERHEAD: usize = 256;

/// How long and how much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdempotencyConfig {
    /// How long a finished reply is kept.
    pub ttl: Duration,
    /// Most bytes of keys and replies kept (0 turns the store off: every key is a first).
    pub max_bytes: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig { ttl: Duration::from_secs(600), max_bytes: 64 << 20 }
    }
}

/// A reply as sent: status, content type, body.
#[derive(Debug, Clone)]
pub struct Stored {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    extra: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Stored {
    fn response(&self, replayed: bool) -> Response {
        let mut response = (self.status, self.body.clone()).into_response();
        let headers = response.headers_mut();
        if let Some(ct) = &self.content_type {
            headers.insert(header::CONTENT_TYPE, ct.clone());
        }
        for (name, value) in &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        if replayed {
            headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }

    /// Worth keeping: a retry would get the same answer.
    fn final_answer(&self) -> bool {
        !(self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error())
    }
}

enum Slot {
    Running(watch::Receiver<Option<Arc<Stored>>>),
    Done(Arc<Stored>),
}

struct Entry {
    fingerprint: [u8; 32],
    state: Slot,
    generation: u64,
    size: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished entries in the order they finished: (when, key, generation).
    finished: VecDeque<(Instant, String, u64)>,
    bytes: usize,
    next_generation: u64,
}

/// What the store says about a keyed request.
enum Begin {
    /// Compute it; the guard publishes the reply.
    Lead(Lead),
    Replay(Arc<Stored>),
    Wait(watch::Receiver<Option<Arc<Stored>>>),
    Conflict,
}

/// The process-wide store of keyed replies (one per server).
pub struct IdempotencyStore {
    config: IdempotencyConfig,
    inner: Mutex<Inner>,
}

impl IdempotencyStore {
    pub fn new(config: IdempotencyConfig) -> Arc<IdempotencyStore> {
        Arc::new(IdempotencyStore { config, inner: Mutex::new(Inner::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("the idempotency lock is never poisoned")
    }

    fn begin(self: &Arc<Self>, key: &str, fingerprint: [u8; 32]) -> Begin {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        if let Some(entry) = inner.entries.get(key) {
            if entry.fingerprint != fingerprint {
                return Begin::Conflict;
            }
            return match &entry.state {
                Slot::Done(stored) => Begin::Replay(Arc::clone(stored)),
                Slot::Running(rx) => Begin::Wait(rx.clone()),
            };
        }
        let (tx, rx) = watch::channel(None);
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let size = key.len() + ENTRY_OVERHEAD;
        inner.bytes += size;
        inner.entries.insert(key.to_owned(), Entry { fingerprint, state: Slot::Running(rx), generation, size });
        self.gauges(&inner);
        Begin::Lead(Lead { store: Arc::clone(self), key: key.to_owned(), generation, tx: Some(tx) })
    }

    /// Keep `stored` under `key` (if it is a final answer and fits), or forget the key.
    fn finish(&self, key: &str, generation: u64, stored: Option<Arc<Stored>>) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get(key).filter(|e| e.generation == generation) else {
            return;
        };
        let old_size = entry.size;
        let keep = stored.filter(|s| s.final_answer()).map(|s| {
            let size = key.len() + ENTRY_OVERHEAD + s.body.len();
            (s, size)
        });
        match keep {
            Some((stored, size)) if size <= self.config.max_bytes => {
                inner.bytes = inner.bytes - old_size + size;
                let entry = inner.entries.get_mut(key).expect("looked up above");
                entry.state = Slot::Done(stored);
                entry.size = size;
                inner.finished.push_back((Instant::now(), key.to_owned(), generation));
                self.shrink(&mut inner);
            }
            _ => {
                inner.entries.remove(key);
                inner.bytes -= old_size;
            }
        }
        self.gauges(&inner);
    }

    /// Drop finished entries older than the TTL.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _, _)) = inner.finished.front() {
            if now.duration_since(*at) < self.config.ttl {
                break;
            }
            self.evict_front(inner, "expired");
        }
    }

    /// Drop the oldest finished entries until the store fits its byte bound.
    fn shrink(&self, inner: &mut Inner) {
        while inner.bytes > self.config.max_bytes && !inner.finished.is_empty() {
            self.evict_front(inner, "memory");
        }
    }

    fn evict_front(&self, inner: &mut Inner, reason: &'static str) {
        let Some((_, key, generation)) = inner.finished.pop_front() else { return };
        if inner.entries.get(&key).is_some_and(|e| e.generation == generation) {
            let entry = inner.entries.remove(&key).expect("looked up above");
            inner.bytes -= entry.size;
            metrics::counter!("reward_worker_idempotency_evicted_total", "reason" => reason).increment(1);
        }
    }

    fn gauges(&self, inner: &Inner) {
        metrics::gauge!("reward_worker_idempotency_stored").set(inner.entries.len() as f64);
        metrics::gauge!("reward_worker_idempotency_stored_bytes").set(inner.bytes as f64);
    }

    /// Entries and bytes held now (for tests and `/metrics`).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }
}

/// The first request with a key. Dropped without [`Lead::publish`] (the
/// handler panicked): the key is forgotten and its waiters told.
struct Lead {
    store: Arc<IdempotencyStore>,
    key: String,
    generation: u64,
    tx: Option<watch::Sender<Option<Arc<Stored>>>>,
}

impl Lead {
    fn publish(mut self, stored: Arc<Stored>) {
        self.store.finish(&self.key, self.generation, Some(Arc::clone(&stored)));
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(stored));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.store.finish(&self.key, self.generation, None);
        }
    }
}

fn outcome(what: &'static str) {
    metrics::counter!("reward_worker_idempotency_requests_total", "outcome" => what).increment(1);
}

/// The middleware on the POST routes (a request without the header passes untouched).
pub async fn layer(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let key = match request.headers().get(HEADER).map(check_key) {
        None => return next.run(request).await,
        Some(Err(e)) => return e.into_response(),
        Some(Ok(key)) => key,
    };
    let (parts, body) = request.into_parts();
    let limit = app.config.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::new(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                format!("the body is over {limit} bytes"),
            )
            .into_response()
        }
    };
    let fingerprint = fingerprint(parts.uri.path(), parts.uri.query().unwrap_or(""), &bytes);
    match app.idempotency.begin(&key, fingerprint) {
        Begin::Conflict => {
            outcome("conflict");
            ApiError::new(
                ErrorKind::Unprocessable,
                "idempotency_key_reused",
                format!("{HEADER} `{key}` was used for a different request (another body or route); use a new key"),
            )
            .into_response()
        }
        Begin::Replay(stored) => {
            outcome("replayed");
            stored.response(true)
        }
        Begin::Wait(rx) => {
            outcome("joined");
            // The retry waits within its own deadline, as any request does.
            let deadline = match super::limits::deadline(&parts.headers, app.config.request_timeout) {
                Ok(d) => d,
                Err(e) => return e.into_response(),
            };
            match deadline {
                None => wait_for(rx).await,
                Some(at) => match tokio::time::timeout_at(at.into(), wait_for(rx)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::from(crate::scheduler::QueueError::DeadlineExceeded).into_response(),
                },
            }
        }
        Begin::Lead(lead) => {
            outcome("first");
            let request = Request::from_parts(parts, Body::from(bytes));
            // On its own task: the computation and its publication finish even
            // if this client disconnects, so a retry finds the answer.
            let task = tokio::spawn(async move {
                let stored = Arc::new(buffer(next.run(request).await).await);
                lead.publish(Arc::clone(&stored));
                stored
            });
            match task.await {
                Ok(stored) => stored.response(false),
                Err(_) => {
                    ApiError::new(ErrorKind::Internal, "internal_error", "the request's handler failed").into_response()
                }
            }
        }
    }
}

async fn wait_for(mut rx: watch::Receiver<Option<Arc<Stored>>>) -> Response {
    loop {
        if let Some(stored) = rx.borrow_and_update().clone() {
            return stored.response(true);
        }
        if rx.changed().await.is_err() {
            if let Some(stored) = rx.borrow().clone() {
                return stored.response(true);
            }
            return ApiError::new(
                ErrorKind::Internal,
                "internal_error",
                "the first request with this idempotency key failed; retry",
            )
            .into_response();
        }
    }
}

/// A response read whole (the handlers' answers are already in memory).
async fn buffer(response: Response) -> Stored {
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return Stored {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: None,
                extra: Vec::new(),
                body: Bytes::from(format!("cannot read the response: {e}")),
            }
        }
    };
    let mut extra = Vec::new();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            extra.push((name.clone(), value.clone()));
        }
    }
    Stored { status: parts.status, content_type: parts.headers.get(header::CONTENT_TYPE).cloned(), extra, body }
}

fn check_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad_request("invalid_idempotency_key", format!("{HEADER}: {why}"));
    let text = value.to_str().map_err(|_| bad("must be visible ASCII"))?.trim();
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    if text.len() > MAX_KEY_BYTES {
        return Err(bad(&format!("is {} bytes; the limit is {MAX_KEY_BYTES}", text.len())));
    }
    Ok(text.to_owned())
}

fn fingerprint(path: &str, query: &str, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [path.as_bytes(), b"?", query.as_bytes(), b"\0", body] {
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Arc<Stored> {
        Arc::new(Stored {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: None,
            extra: Vec::new(),
            body: Bytes::from(body.to_owned()),
        })
    }

    fn store(ttl_ms: u64, max_bytes: usize) -> Arc<IdempotencyStore> {
        IdempotencyStore::new(IdempotencyConfig { ttl: Duration::from_millis(ttl_ms), max_bytes })
    }

    fn lead(s: &Arc<IdempotencyStore>, key: &str, fp: u8) -> Lead {
        match s.begin(key, [fp; 32]) {
            Begin::Lead(l) => l,
            _ => panic!("{key} should be new"),
        }
    }

    #[test]
    fn a_key_is_computed_once_then_replayed_and_another_body_conflicts() {
        let s = store(60_000, 1 << 20);
        let first = lead(&s, "k", 1);
        assert!(matches!(s.begin("k", [1; 32]), Begin::Wait(_)));
        assert!(matches!(s.begin("k", [2; 32]), Begin::Conflict));
        first.publish(reply(200, "{}"));
        assert!(matches!(s.begin("k", [1; 32]), Begin::Replay(r) if r.body == "{}"));
        assert!(matches!(s.begin("k", [2; 32]), Begin::Conflict));
    }

    #[test]
    fn retryable_answers_are_not_kept_and_a_failed_lead_forgets_its_key() {
        let s = store(60_000, 1 << 20);
        lead(&s, "busy", 1).publish(reply(429, "later"));
        lead(&s, "busy", 1).publish(reply(503, "down"));
        drop(lead(&s, "panicked", 1));
        lead(&s, "panicked", 1);
        lead(&s, "bad", 1).publish(reply(400, "bad request"));
        assert!(matches!(s.begin("bad", [1; 32]), Begin::Replay(r) if r.status == 400));
    }

    #[test]
    fn entries_expire_and_the_byte_bound_drops_the_oldest() {
        let s = store(0, 1 << 20);
        lead(&s, "old", 1).publish(reply(200, "x"));
        assert!(matches!(s.begin("old", [1; 32]), Begin::Lead(_)), "expired after its ttl");

        let entry = |body: usize| "k".len() + ENTRY_OVERHEAD + body;
        let s = store(60_000, 2 * entry(100) + 10);
        for k in ["a", "b", "c"] {
            lead(&s, k, 1).publish(reply(200, &"x".repeat(100)));
        }
        assert_eq!(s.usage(), (2, 2 * entry(100)));
        assert!(matches!(s.begin("a", [1; 32]), Begin::Lead(_)), "the oldest went first");
        // A reply larger than the whole bound is answered, not kept.
        let s = store(60_000, entry(10));
        lead(&s, "big", 1).publish(reply(200, &"x".repeat(100)));
        assert_eq!(s.usage(), (0, 0));
    }

    #[test]
    fn keys_are_short_visible_ascii() {
        assert_eq!(check_key(&HeaderValue::from_static(" abc ")).unwrap(), "abc");
        assert!(check_key(&HeaderValue::from_static("")).is_err());
        let long = HeaderValue::from_str(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap();
        assert!(check_key(&long).unwrap_err().message.contains("limit"));
        assert_ne!(fingerprint("/a", "", b"x"), fingerprint("/b", "", b"x"));
        assert_ne!(fingerprint("/a", "", b"x"), fingerprint("/a", "", b"y"));
    }
}
