//! `/metrics`: Prometheus text from the `metrics` facade. The scheduler records
//! queue depth, batch tokens (requested vs computed), batch fill, stage
//! latencies, raw attribute scores and dropped requests; this file adds
//! requests by route and status and their latency. Errors by code are counted
//! where an error becomes a response (`errors.rs`).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

const SECONDS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0];
const FILL: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
const REQUESTS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Raw attribute scores (typical range 0..4, random models much wider).
const RAW: [f64; 14] = [-50.0, -10.0, -4.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 10.0];

/// The process-wide Prometheus recorder (installed once; every server and
/// in-process worker of the process records into it).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("reward_worker_batch_fill".into()), &FILL))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("reward_worker_batch_requests".into()), &REQUESTS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("reward_worker_raw_score".into()), &RAW))
                .expect("bucket lists are non-empty constants");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!("reward_worker_queue_depth", "requests admitted and not yet in a batch");
    metrics::describe_counter!("reward_worker_http_requests_total", "HTTP requests by route and status");
    metrics::describe_histogram!("reward_worker_http_request_seconds", "HTTP request latency by route");
    metrics::describe_histogram!("reward_worker_stage_seconds", "time per stage: prepare, queue, forward, respond");
    metrics::describe_counter!(
        "reward_worker_batch_tokens_requested_total",
        "tokens of the batched records laid out alone"
    );
    metrics::describe_counter!("reward_worker_batch_tokens_computed_total", "tokens the forward passes computed");
    metrics::describe_histogram!(
        "reward_worker_batch_fill",
        "tokens computed per batch (shared prefixes once) / token budget"
    );
    metrics::describe_histogram!("reward_worker_batch_requests", "requests per batch");
    metrics::describe_histogram!("reward_worker_raw_score", "raw attribute scores per scored turn");
    metrics::describe_counter!(
        "reward_worker_requests_dropped_total",
        "requests dropped unscored (disconnected, deadline)"
    );
    metrics::describe_counter!("reward_worker_errors_total", "error responses by code");
    metrics::describe_gauge!("reward_worker_sleeping", "0 awake, else the sleep level of the weights (1 or 2)");
    metrics::describe_counter!("reward_worker_sleep_transitions_total", "sleeps (sleep1, sleep2) and wakes done");
    metrics::describe_histogram!("reward_worker_sleep_seconds", "time of each sleep or wake, by transition");
    metrics::describe_counter!(
        "reward_worker_prefix_cache_hit_tokens_total",
        "tokens whose keys and values the forward passes read from the prefix cache instead of computing"
    );
    metrics::describe_counter!("reward_worker_prefix_cache_evictions_total", "prefix-cache entries evicted");
    metrics::describe_gauge!("reward_worker_prefix_cache_bytes", "bytes of keys and values the prefix cache holds");
    metrics::describe_gauge!(
        "reward_worker_prefix_cache_bound_bytes",
        "the prefix cache's bound (--prefix-cache-bytes)"
    );
}

/// Count and time every request by its route pattern (not its raw path, so
/// label sets stay bounded).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let span = tracing::info_span!("request", route = %route, method = %request.method());
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("reward_worker_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("reward_worker_http_request_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}
