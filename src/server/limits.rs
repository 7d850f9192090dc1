//! What every request passes before its handler runs: the API key, the body
//! limit, UTF-8 and JSON, and the deadline.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::time::{Duration, Instant};

use super::errors::{ApiError, ErrorKind};
use super::AppState;

/// The header a client sets to bound its wait, in seconds (a decimal number).
pub const TIMEOUT_HEADER: &str = "x-request-timeout";

/// Bearer API key check for every route behind it. The key is compared in
/// constant time, so a wrong key's timing does not tell how much of it was right.
pub async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match given {
        Some(key) if same_bytes(key.trim().as_bytes(), expected.as_bytes()) => next.run(request).await,
        Some(_) => ApiError::new(ErrorKind::Unauthorized, "invalid_api_key", "the API key is wrong").into_response(),
        None => ApiError::new(
            ErrorKind::Unauthorized,
            "missing_api_key",
            "this server needs an API key: send `Authorization: Bearer KEY`",
        )
        .into_response(),
    }
}

/// The token of `Bearer TOKEN`; the scheme's name is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body, or 413 past the limit.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorKind::PayloadTooLarge, "payload_too_large", format!("the body is over {limit} bytes"))
        } else {
            ApiError::bad_request("invalid_body", format!("cannot read the body: {e}"))
        }
    })
}

/// A UTF-8 JSON object body.
pub fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("the body is not UTF-8 (bad byte at offset {})", e.valid_up_to()))
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_request", "the body must be a JSON object"));
    }
    Ok(value)
}

/// When the request stops waiting: `x-request-timeout` seconds from now, or the
/// configured default.
pub fn deadline(headers: &HeaderMap, default: Option<Duration>) -> Result<Option<Instant>, ApiError> {
    let timeout = match headers.get(TIMEOUT_HEADER) {
        None => default,
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            let seconds: f64 = text.trim().parse().map_err(|_| bad_timeout(text))?;
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 1e6) {
                return Err(bad_timeout(text));
            }
            Some(Duration::from_secs_f64(seconds))
        }
    };
    Ok(timeout.map(|t| Instant::now() + t))
}

fn bad_timeout(text: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_timeout",
        format!("{TIMEOUT_HEADER} must be a positive number of seconds (e.g. 2.5), got `{text}`"),
    )
}

/// A string field that may be absent.
pub fn optional_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request("invalid_request", format!("`{field}` must be a string"))),
    }
}

/// The array field `field`, with at most `max` items.
pub fn bounded_array<'a>(body: &'a Value, field: &str, max: usize) -> Result<&'a Vec<Value>, ApiError> {
    let items = match body.get(field) {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::bad_request("invalid_request", format!("`{field}` must be an array"))),
        None => return Err(ApiError::bad_request("invalid_request", format!("the body needs `{field}` (an array)"))),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("invalid_request", format!("`{field}` is empty: nothing to score")));
    }
    if items.len() > max {
        return Err(ApiError::bad_request(
            "too_many_items",
            format!("`{field}` has {} items; the limit is {max} per request", items.len()),
        ));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_timeout_header_is_decimal_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(deadline(&headers, None).unwrap(), None);
        assert!(deadline(&headers, Some(Duration::from_secs(1))).unwrap().is_some());
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("0.25"));
        let d = deadline(&headers, None).unwrap().unwrap();
        assert!(d > Instant::now() && d <= Instant::now() + Duration::from_millis(250));
        for bad in ["soon", "-1", "0", "nan", "inf"] {
            headers.insert(TIMEOUT_HEADER, HeaderValue::from_static(bad));
            let err = deadline(&headers, None).unwrap_err();
            assert!(err.message.contains(bad), "{}", err.message);
        }
    }

    #[test]
    fn bodies_must_be_utf8_json_objects() {
        assert_eq!(json_body(b"\xff{}").unwrap_err().code, "invalid_utf8");
        assert_eq!(json_body(b"{\"a\": ").unwrap_err().code, "invalid_json");
        assert_eq!(json_body(b"[1]").unwrap_err().code, "invalid_request");
        assert!(json_body(b"{\"a\": 1}").is_ok());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer k", "bearer k", "BEARER k", "bEaReR k"] {
            assert_eq!(bearer_token(header), Some("k"), "{header}");
        }
        assert_eq!(bearer_token("Basic k"), None);
        assert_eq!(bearer_token("Bearerk"), None);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_bytes(b"secret", b"secret"));
        assert!(!same_bytes(b"secre", b"secret"));
        assert!(!same_bytes(b"secreT", b"secret"));
    }
}
