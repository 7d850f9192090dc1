//! `reward-worker serve`: the model behind HTTP (see `server`). Prints
//! `listening on http://HOST:PORT` (and `listening on unix:PATH`) to stderr
//! once the model is loaded and the sockets are bound; SIGTERM or Ctrl-C
//! drains (every accepted request is answered) and exits 0.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use super::common::ModelArgs;
use super::reward_args::RewardArgs;
use crate::scheduler::QueueConfig;
use crate::server::state_file::StateFile;
use crate::server::{self, Listener, ServeConfig};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub reward: RewardArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Address to bind (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port; 0 picks a free one (printed on the `listening on` line).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Also serve on this Unix socket (a stale socket file there is replaced; a live one is refused).
    #[arg(long)]
    pub uds: Option<PathBuf>,
    /// Serve on the Unix socket only (needs --uds).
    #[arg(long, requires = "uds")]
    pub no_tcp: bool,
    /// A name clients may use for the model (repeatable; the first is reported).
    #[arg(long = "served-model-name")]
    pub served_model_name: Vec<String>,
    /// Environment variable holding the bearer API key every route but /health needs.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Most requests waiting for the model; more get 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub queue_limit: usize,
    /// Threads that tokenise requests while the model runs.
    #[arg(long, default_value_t = 2)]
    pub prepare_threads: usize,
    /// Deadline in seconds of a request without an `x-request-timeout` header (504 after it).
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 20.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send a request's body (408 after it).
    #[arg(long, default_value_t = 60.0)]
    pub body_timeout: f64,
    /// Seconds from SIGTERM to exit, at most: accepted requests are answered within it, then everything closes.
    #[arg(long, default_value_t = 25.0)]
    pub shutdown_grace: f64,
    /// Largest request body in bytes (413 past it, before the body is read when Content-Length says so).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Most tokens one request may cost after truncation, shared prefixes once (413 past it).
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_REQUEST_TOKENS)]
    pub max_request_tokens: usize,
    /// Most conversations (sentences, queries) in one request (400 past it).
    #[arg(long, default_value_t = 1024)]
    pub max_conversations: usize,
    /// KServe `rewards` as [B, 1] through the reward pipeline instead of the raw [B, 9]
    /// (and one `reward` output on vLLM's /classify and /pooling instead of the nine attributes).
    #[arg(long)]
    pub merge_attributes: bool,
    /// Seconds a reply to a request with an `Idempotency-Key` is kept for its retries.
    #[arg(long, default_value_t = 600.0)]
    pub idempotency_ttl: f64,
    /// Most bytes of idempotent replies kept (oldest dropped first); 0 keeps none.
    #[arg(long, default_value_t = 64 << 20)]
    pub idempotency_max_bytes: usize,
    /// Level of a `POST /sleep` without `?level=`: 1 (weights to host memory) or 2 (weights dropped, reloaded on wake).
    #[arg(long, default_value = "1", value_parser = crate::engine::SleepLevel::parse)]
    pub sleep_level: crate::engine::SleepLevel,
}

/// Longest duration flag: a week (a larger one is a typo, and past u64 nanoseconds it would panic).
const MAX_SECONDS: f64 = 7.0 * 86400.0;

/// `value` seconds as a duration within [min, MAX_SECONDS], or a clear error naming the flag.
fn seconds(flag: &str, value: f64, min: f64) -> Result<Duration, String> {
    if !(value.is_finite() && value >= min && value <= MAX_SECONDS) {
        return Err(format!("{flag} must be a number of seconds from {min} to {MAX_SECONDS} (a week), got {value}"));
    }
    Ok(Duration::from_secs_f64(value))
}

/// `value` within [min, max], or a clear error naming the flag.
fn count(flag: &str, value: usize, min: usize, max: usize) -> Result<usize, String> {
    if !(min..=max).contains(&value) {
        return Err(format!("{flag} must be from {min} to {max}, got {value}"));
    }
    Ok(value)
}

impl ServiceArgs {
    fn config(&self, args: &ServeArgs, reward: crate::reward::RewardPipeline) -> Result<ServeConfig, String> {
        count("--queue-limit", self.queue_limit, 1, 1 << 20)?;
        count("--max-conversations", self.max_conversations, 1, 1 << 20)?;
        count("--max-body-bytes", self.max_body_bytes, 1, 1 << 32)?;
        count("--max-request-tokens", self.max_request_tokens, 1, 1 << 40)?;
        count("--prepare-threads", self.prepare_threads, 1, 1024)?;
        let request_timeout = seconds("--request-timeout", self.request_timeout, 0.001)?;
        let header_timeout = seconds("--header-timeout", self.header_timeout, 0.001)?;
        let body_timeout = seconds("--body-timeout", self.body_timeout, 0.001)?;
        let shutdown_grace = seconds("--shutdown-grace", self.shutdown_grace, 0.0)?;
        if let Some(empty) = self.served_model_name.iter().find(|n| n.trim().is_empty() || n.trim() != n.as_str()) {
            return Err(format!(
                "--served-model-name must be a non-empty name without surrounding spaces, got {empty:?}"
            ));
        }
        let idempotency_ttl = seconds("--idempotency-ttl", self.idempotency_ttl, 0.0)?;
        let api_key = match &self.api_key_env {
            None => None,
            Some(name) => match std::env::var(name) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => return Err(format!("--api-key-env {name}: the environment variable is not set or empty")),
            },
        };
        let running_state = match &args.reward.running_state {
            Some(path) => Some(std::sync::Arc::new(StateFile::open(path).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(ServeConfig {
            queue: QueueConfig {
                batch_tokens: args.model.batch_tokens,
                queue_limit: self.queue_limit,
                prepare_threads: self.prepare_threads,
            },
            served_names: self.served_model_name.clone(),
            reward: std::sync::Arc::new(std::sync::Mutex::new(reward)),
            options: args.model.options(),
            max_body_bytes: self.max_body_bytes,
            max_conversations: self.max_conversations,
            request_timeout: Some(request_timeout),
            api_key,
            merge_attributes: self.merge_attributes,
            idempotency: crate::server::idempotency::IdempotencyConfig {
                ttl: idempotency_ttl,
                max_bytes: self.idempotency_max_bytes,
            },
            max_request_tokens: Some(self.max_request_tokens),
            header_timeout,
            body_timeout,
            shutdown_grace,
            running_state,
            sleep_level: self.sleep_level,
        })
    }
}

pub fn run(args: ServeArgs) -> Result<i32, String> {
    let pipeline = args.reward.build()?;
    let config = args.service.config(&args, pipeline)?;
    let reward = std::sync::Arc::clone(&config.reward);
    let state_file = config.running_state.clone();
    let scorer = args.model.load()?;
    tracing::info!(backend = %scorer.describe(), "engine ready");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let socket = runtime.block_on(async {
        // Watch the signals before the `listening on` line: a SIGTERM right after it drains too.
        let signals = shutdown_signal()?;
        let (listeners, socket) = bind(&args.service).await?;
        let served = server::run(scorer, listeners, signals, config).await;
        served.map_err(|e| format!("the server failed: {e}")).map(|()| socket)
    })?;
    if let Some(socket) = socket {
        socket.remove_if_ours();
    }
    // The engine thread may still be in a forward pass past the grace: do not wait for it.
    runtime.shutdown_background();
    if let Some(file) = state_file {
        // The rewards since the last step are committed as one more step, as `score` does.
        let mut pipeline = reward.lock().expect("the reward pipeline lock is never poisoned");
        let next = pipeline.next_step();
        file.save(&next).map_err(|e| e.to_string())?;
        pipeline.commit_step(next);
    }
    Ok(0)
}

/// Bind the sockets, then say where (the lines scripts and tests wait for):
/// every socket is bound before the first line is printed.
async fn bind(service: &ServiceArgs) -> Result<(Vec<Listener>, Option<OwnSocket>), String> {
    let mut listeners = Vec::new();
    let mut lines = Vec::new();
    if !service.no_tcp {
        let addr = format!("{}:{}", service.host, service.port);
        let tcp = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = tcp.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
        lines.push(format!("listening on http://{bound}"));
        listeners.push(Listener::Tcp(tcp));
    }
    let mut own = None;
    if let Some(path) = &service.uds {
        let (uds, socket) = bind_unix(path)?;
        lines.push(format!("listening on unix:{}", path.display()));
        listeners.push(Listener::Unix(uds));
        own = Some(socket);
    }
    for line in lines {
        eprintln!("{line}");
    }
    Ok((listeners, own))
}

/// The socket file this process created (device + inode), removed at exit only
/// if it is still that file: a later server that replaced it keeps its own.
struct OwnSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl OwnSocket {
    fn remove_if_ours(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Bind a Unix socket at `path`. A socket file there that nobody listens on
/// (left by a killed server) is replaced; one a live server answers on is
/// refused, as is any other kind of file.
fn bind_unix(path: &std::path::Path) -> Result<(tokio::net::UnixListener, OwnSocket), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let cannot = |e: String| format!("cannot listen on {}: {e}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(cannot("address in use: a running server listens there".into())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path).map_err(|e| cannot(format!("cannot remove the stale socket: {e}")))?;
            }
            Err(e) => return Err(cannot(format!("a socket file is there and connecting to it failed: {e}"))),
        },
        Ok(_) => return Err(cannot("the path exists and is not a socket".into())),
        Err(_) => {}
    }
    let uds = tokio::net::UnixListener::bind(path).map_err(|e| cannot(e.to_string()))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| cannot(e.to_string()))?;
    Ok((uds, OwnSocket { path: path.to_path_buf(), id: (meta.dev(), meta.ino()) }))
}

/// SIGTERM (what SLURM, Kubernetes and systemd send) or Ctrl-C, watched from
/// the moment this returns.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind: SignalKind, name: &str| signal(kind).map_err(|e| format!("cannot watch {name}: {e}"));
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
