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
    /// Also serve on this Unix socket (a stale socket file there is replaced).
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
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
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
}

impl ServiceArgs {
    fn config(&self, args: &ServeArgs, reward: crate::reward::RewardPipeline) -> Result<ServeConfig, String> {
        if self.queue_limit == 0 || self.max_conversations == 0 || self.max_body_bytes == 0 {
            return Err("--queue-limit, --max-conversations and --max-body-bytes must be at least 1".into());
        }
        if !(self.request_timeout.is_finite() && self.request_timeout > 0.0) {
            return Err(format!(
                "--request-timeout must be a positive number of seconds, got {}",
                self.request_timeout
            ));
        }
        if !(self.idempotency_ttl.is_finite() && self.idempotency_ttl >= 0.0 && self.idempotency_ttl <= 1e7) {
            return Err(format!(
                "--idempotency-ttl must be a number of seconds from 0 to 1e7, got {}",
                self.idempotency_ttl
            ));
        }
        let api_key = match &self.api_key_env {
            None => None,
            Some(name) => match std::env::var(name) {
                Ok(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
                _ => return Err(format!("--api-key-env {name}: the environment variable is not set or empty")),
            },
        };
        Ok(ServeConfig {
            queue: QueueConfig {
                batch_tokens: args.model.batch_tokens,
                queue_limit: self.queue_limit,
                prepare_threads: self.prepare_threads.max(1),
            },
            served_names: self.served_model_name.clone(),
            reward: std::sync::Arc::new(std::sync::Mutex::new(reward)),
            options: args.model.options(),
            max_body_bytes: self.max_body_bytes,
            max_conversations: self.max_conversations,
            request_timeout: Some(Duration::from_secs_f64(self.request_timeout)),
            api_key,
            merge_attributes: self.merge_attributes,
            idempotency: crate::server::idempotency::IdempotencyConfig {
                ttl: Duration::from_secs_f64(self.idempotency_ttl),
                max_bytes: self.idempotency_max_bytes,
            },
        })
    }
}

pub fn run(args: ServeArgs) -> Result<i32, String> {
    let pipeline = args.reward.build()?;
    let config = args.service.config(&args, pipeline)?;
    let reward = std::sync::Arc::clone(&config.reward);
    let scorer = args.model.load()?;
    tracing::info!(backend = %scorer.describe(), "engine ready");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let listeners = bind(&args.service).await?;
        server::run(scorer, listeners, shutdown_signal(), config).await.map_err(|e| format!("the server failed: {e}"))
    })?;
    if let Some(path) = &args.service.uds {
        let _ = std::fs::remove_file(path);
    }
    let mut pipeline = reward.lock().expect("the reward pipeline lock is never poisoned");
    args.reward.save_running_state(&mut pipeline)?;
    Ok(0)
}

/// Bind the sockets and say where (the one line scripts and tests wait for).
async fn bind(service: &ServiceArgs) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::new();
    if !service.no_tcp {
        let addr = format!("{}:{}", service.host, service.port);
        let tcp = tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = tcp.local_addr().map_err(|e| format!("cannot read the bound address: {e}"))?;
        eprintln!("listening on http://{bound}");
        listeners.push(Listener::Tcp(tcp));
    }
    if let Some(path) = &service.uds {
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let uds =
            tokio::net::UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        eprintln!("listening on unix:{}", path.display());
        listeners.push(Listener::Unix(uds));
    }
    Ok(listeners)
}

/// SIGTERM (what SLURM, Kubernetes and systemd send) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
