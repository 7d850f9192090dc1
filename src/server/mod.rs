//! The HTTP service (axum) on top of the queue ([`crate::scheduler`]): one file
//! per protocol, all answering from the same queue and the same reward pipeline.
//!
//! - [`rewards`]: `POST /v1/rewards` (this project's own API; `score`'s JSON per record),
//!   `POST /v1/rewards/step` (end a training step for running normalisation)
//! - [`openai`]: `POST /v1/chat/completions` (NVIDIA's hosted nemotron-4-340b-reward shape), `GET /v1/models`
//! - [`openrlhf`]: `POST /get_reward` (OpenRLHF's remote reward model)
//! - [`kserve`]: KServe v2 / Triton HTTP `reward_model` (NeMo-Aligner's reward server), JSON and binary tensors
//! - [`vllm`]: `POST /classify`, `POST /pooling` (vLLM's pooling routes, what veRL's reward loop posts)
//! - [`health`]: `/health`, `/ready`, `/metrics`
//! - [`idempotency`]: `Idempotency-Key` on every POST route (a retried request is answered once)
//! - [`limits`]: API key, body limit, deadlines; [`errors`]: the error -> status mapping
//! - [`conn`]: connections: header and body timeouts, the shutdown that always ends
//! - [`state_file`]: the running statistics on disk, written durably per committed step
//! - [`sleep`]: vLLM's `/sleep`, `/wake_up`, `/is_sleeping` (co-location with a rollout engine)
//!
//! [`run`] serves listeners until a shutdown future resolves, then drains:
//! no new connections or requests, every admitted request answered within
//! `shutdown_grace`, then return.

pub mod conn;
pub mod errors;
pub mod health;
pub mod idempotency;
pub mod kserve;
mod kserve_binary;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod openrlhf;
pub mod rewards;
pub mod sleep;
pub mod state_file;
pub mod vllm;

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{ScoreOptions, Scorer};
use crate::reward::RewardPipeline;
use crate::scheduler::{Input, QueueConfig, QueueHandle, Reply, Request, Worker};
use errors::ApiError;

/// Everything the service is configured with (the model comes separately).
pub struct ServeConfig {
    pub queue: QueueConfig,
    /// Names clients may use for the model (the first is the one reported);
    /// the model directory's own name is always accepted.
    pub served_names: Vec<String>,
    /// Shared with the caller, which may save running statistics after `run`.
    pub reward: Arc<Mutex<RewardPipeline>>,
    pub options: ScoreOptions,
    /// Largest request body in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Most conversations (or sentences, queries) per request (400 past it).
    pub max_conversations: usize,
    /// Deadline of a request that sends no `x-request-timeout`.
    pub request_timeout: Option<Duration>,
    /// Bearer key every route but `/health` needs, if set.
    pub api_key: Option<String>,
    /// KServe `rewards` as [B, 1] through the reward pipeline instead of the raw [B, 9]
    /// (and vLLM's `/classify` one `reward` output instead of the nine attributes).
    pub merge_attributes: bool,
    /// How long and how much `Idempotency-Key` replies are kept.
    pub idempotency: idempotency::IdempotencyConfig,
    /// Most tokens one request may cost after truncation, shared prefixes once (413 past it).
    pub max_request_tokens: Option<usize>,
    /// Time a client has to send a request's headers (also closes idle keep-alive connections).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body (408 after it).
    pub body_timeout: Duration,
    /// From the shutdown signal to `run` returning, at most (about a second more to flush).
    pub shutdown_grace: Duration,
    /// Where `POST /v1/rewards/step` saves each committed step, durably, before answering.
    pub running_state: Option<Arc<state_file::StateFile>>,
    /// The level of a `POST /sleep` without `?level=`.
    pub sleep_level: crate::engine::SleepLevel,
}

impl ServeConfig {
    /// Defaults around a reward pipeline.
    pub fn new(reward: RewardPipeline) -> ServeConfig {
        ServeConfig {
            queue: QueueConfig::default(),
            served_names: Vec::new(),
            reward: Arc::new(Mutex::new(reward)),
            options: ScoreOptions::default(),
            max_body_bytes: 16 << 20,
            max_conversations: 1024,
            request_timeout: Some(Duration::from_secs(300)),
            api_key: None,
            merge_attributes: false,
            idempotency: idempotency::IdempotencyConfig::default(),
            max_request_tokens: Some(DEFAULT_MAX_REQUEST_TOKENS),
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            running_state: None,
            sleep_level: crate::engine::SleepLevel::One,
        }
    }
}

/// The default of `--max-request-tokens`: 256 sequences of a 4096-token context.
pub const DEFAULT_MAX_REQUEST_TOKENS: usize = 1 << 20;

/// A bound socket to serve on.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// What handlers share.
pub struct App {
    pub queue: QueueHandle,
    pub pipeline: Arc<Mutex<RewardPipeline>>,
    pub config: ServeConfig,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub idempotency: Arc<idempotency::IdempotencyStore>,
}

pub type AppState = Arc<App>;

impl App {
    /// The name responses report.
    pub fn model_name(&self) -> &str {
        self.config.served_names.first().map(String::as_str).unwrap_or(&self.queue.model().name)
    }

    /// Every name a client may ask for.
    pub fn model_names(&self) -> Vec<String> {
        let mut names = self.config.served_names.clone();
        if !names.contains(&self.queue.model().name) {
            names.push(self.queue.model().name.clone());
        }
        names
    }

    /// 404 for a model this server does not serve (`None` is fine).
    pub fn check_model(&self, asked: Option<&str>) -> Result<(), ApiError> {
        match asked {
            Some(name) if !self.model_names().iter().any(|n| n == name) => Err(ApiError::new(
                errors::ErrorKind::NotFound,
                "model_not_found",
                format!("unknown model `{name}`; this server serves {:?}", self.model_names()),
            )),
            _ => Ok(()),
        }
    }

    /// Queue `inputs` (all or nothing: an invalid item refuses the request)
    /// and wait for their scores within the request's deadline.
    pub async fn score(
        &self,
        headers: &HeaderMap,
        inputs: Vec<Input>,
        options: ScoreOptions,
        item_name: &str,
    ) -> Result<Reply, ApiError> {
        let deadline = limits::deadline(headers, self.config.request_timeout)?;
        let request =
            Request { inputs, options, deadline, all_or_nothing: true, max_tokens: self.config.max_request_tokens };
        let reply = self.queue.score(request).await?;
        if let Some((i, e)) = reply.first_error() {
            return Err(ApiError::record(&format!("{item_name}[{i}]"), e));
        }
        Ok(reply)
    }
}

/// Record how long a handler took from the engine's reply to its response.
pub fn responded(reply: &Reply) {
    ::metrics::histogram!("reward_worker_stage_seconds", "stage" => "respond")
        .record(reply.sent.elapsed().as_secs_f64());
}

/// The routes, with the API key in front of all but the liveness probes.
pub fn router(state: AppState) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.config.max_body_bytes);
    let protected = Router::new()
        .route("/v1/rewards", post(rewards::handle))
        .route("/v1/rewards/step", post(rewards::step))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/get_reward", post(openrlhf::get_reward))
        .route("/classify", post(vllm::classify))
        .route("/pooling", post(vllm::pooling))
        .route("/sleep", post(sleep::sleep))
        .route("/wake_up", post(sleep::wake_up))
        .route("/is_sleeping", get(sleep::is_sleeping))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(kserve::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::layer))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limits::require_api_key));
    Router::new()
        .route("/health", get(health::live))
        .route("/v2/health/live", get(health::live))
        .merge(protected)
        .fallback(health::not_found)
        .layer(body_limit)
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// Serve `listeners` until `shutdown` resolves, then drain: stop accepting,
/// refuse new requests with 503, answer every admitted one, close every
/// connection, join the threads; all within `config.shutdown_grace` (past it
/// the engine thread is left to the process's exit).
pub async fn run(
    scorer: Scorer,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: ServeConfig,
) -> std::io::Result<()> {
    let metrics = metrics::handle();
    let worker = Worker::start(scorer, config.queue.clone());
    let pipeline = Arc::clone(&config.reward);
    let idempotency = idempotency::IdempotencyStore::new(config.idempotency);
    let life = conn::Lifecycle::new(conn::ConnLimits {
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        max_body_bytes: config.max_body_bytes,
        shutdown_grace: config.shutdown_grace,
    });
    let state = Arc::new(App { queue: worker.handle(), pipeline, config, metrics: metrics.clone(), idempotency });
    let app = conn::service(router(state), &life);

    let queue = worker.handle();
    let stopping = Arc::clone(&life);
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; answering those already accepted");
        queue.close();
        stopping.stop();
        let _ = stopped_tx.send(());
    });
    let upkeep = Arc::clone(&life);
    tokio::spawn(async move {
        while !upkeep.is_stopping() {
            metrics.run_upkeep();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });

    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        servers.spawn(conn::serve(listener, app.clone(), Arc::clone(&life)));
    }
    drop(app);
    let mut result = Ok(());
    while let Some(done) = servers.join_next().await {
        if let Err(e) = done.map_err(std::io::Error::other).and_then(|r| r) {
            tracing::error!(error = %e, "a listener failed");
            result = Err(e);
            life.stop();
        }
    }
    if !life.is_stopping() {
        let _ = stopped.await;
    }
    let started = Instant::now();
    if !life.drain().await {
        tracing::warn!(
            in_flight = life.in_flight(),
            "the shutdown grace is over: closing the connections of requests still running"
        );
    }
    let joined = tokio::task::spawn_blocking(move || worker.shutdown());
    if tokio::time::timeout(life.grace_left() + Duration::from_millis(100), joined).await.is_err() {
        tracing::warn!("the shutdown grace is over: the engine is still in a forward pass; leaving it");
    }
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "drained");
    result
}
