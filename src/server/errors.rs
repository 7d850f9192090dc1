//! The service's one error type and the one place that maps an error kind to
//! an HTTP status. Every error body names the problem:
//! `{"error": {"code", "message", "type"}}` (the shape OpenAI clients read),
//! or `{"error": "code: message"}` on the KServe v2 routes (the shape Triton
//! clients read).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::chat::RecordError;
use crate::scheduler::QueueError;

/// What went wrong, as far as the status code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible.
    BadRequest,
    /// Missing or wrong API key.
    Unauthorized,
    /// An unknown model name or route.
    NotFound,
    /// The body did not arrive in time.
    RequestTimeout,
    /// The body (or the work it asks for) is over the limit.
    PayloadTooLarge,
    /// Well-formed but refused: an idempotency key reused for another request.
    Unprocessable,
    /// The queue is full: retry after a while.
    Overloaded,
    /// Shutting down, or the model is gone.
    Unavailable,
    /// The deadline passed before the scores were ready.
    Timeout,
    /// The model failed on a batch.
    Internal,
}

impl ErrorKind {
    /// The single mapping from error kind to HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `type` OpenAI clients expect.
    fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::Unprocessable
            | ErrorKind::RequestTimeout => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Overloaded => "rate_limit_error",
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Internal => "server_error",
        }
    }
}

/// An error answer: its kind (-> status), a stable code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { kind, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, code, message)
    }

    /// A record's error, with where it was in the request (`conversations[2]`).
    pub fn record(at: &str, e: &RecordError) -> ApiError {
        let kind = match e.code {
            "model_error" | "non_finite_score" => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        };
        ApiError::new(kind, e.code, format!("{at}: {}", e.message))
    }

    /// The same error, its message prefixed with where it happened.
    pub fn at(mut self, place: &str) -> ApiError {
        self.message = format!("{place}: {}", self.message);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// Render in the KServe v2 shape.
    pub fn v2(self) -> V2Error {
        V2Error(self)
    }

    fn finish(&self, body: serde_json::Value) -> Response {
        metrics::counter!("reward_worker_errors_total", "code" => self.code).increment(1);
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self.kind == ErrorKind::Overloaded {
            // The queue drains within a batch or two; a second is a fair first wait.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.kind == ErrorKind::Unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "type": self.kind.openai_type()}});
        self.finish(body)
    }
}

/// An [`ApiError`] in the KServe v2 shape `{"error": "..."}`.
#[derive(Debug)]
pub struct V2Error(pub ApiError);

impl From<ApiError> for V2Error {
    fn from(e: ApiError) -> V2Error {
        V2Error(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let body = json!({"error": format!("{}: {}", self.0.code, self.0.message)});
        self.0.finish(body)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        let (kind, code) = match e {
            QueueError::Full { .. } => (ErrorKind::Overloaded, "queue_full"),
            QueueError::ShuttingDown => (ErrorKind::Unavailable, "shutting_down"),
            QueueError::DeadlineExceeded => (ErrorKind::Timeout, "deadline_exceeded"),
            QueueError::EngineStopped => (ErrorKind::Unavailable, "engine_stopped"),
            QueueError::TooExpensive { .. } => (ErrorKind::PayloadTooLarge, "too_many_tokens"),
        };
        let message = match e {
            QueueError::TooExpensive { .. } => format!("{e} (--max-request-tokens)"),
            _ => e.to_string(),
        };
        ApiError::new(kind, code, message)
    }
}

impl From<crate::reward::RewardError> for ApiError {
    fn from(e: crate::reward::RewardError) -> ApiError {
        use crate::reward::RewardError as R;
        let kind = match e {
            R::NonFinite { .. } => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        };
        ApiError::new(kind, e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_queue_error_has_its_status() {
        let status = |e: QueueError| ApiError::from(e).status().as_u16();
        assert_eq!(status(QueueError::Full { waiting: 3, limit: 3 }), 429);
        assert_eq!(status(QueueError::ShuttingDown), 503);
        assert_eq!(status(QueueError::DeadlineExceeded), 504);
        assert_eq!(status(QueueError::EngineStopped), 503);
    }

    #[test]
    fn record_errors_are_client_errors_unless_the_model_failed() {
        let bad = ApiError::record("conversations[1]", &RecordError::new("unknown_role", "messages[0].role: `robot`"));
        assert_eq!((bad.status().as_u16(), bad.code), (400, "unknown_role"));
        assert_eq!(bad.message, "conversations[1]: messages[0].role: `robot`");
        let failed = ApiError::record("conversations[0]", &RecordError::new("model_error", "out of memory"));
        assert_eq!(failed.status().as_u16(), 500);
    }

    #[test]
    fn overload_says_when_to_retry() {
        let response = ApiError::from(QueueError::Full { waiting: 1, limit: 1 }).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
