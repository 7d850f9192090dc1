//! Services for the tests: the binary as a child process on port 0, and the
//! server in-process over a model whose forward waits at a gate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use reward_worker::engine::{BatchScores, Forward, LocalModel, ModelSource, ReloadableModel, Scorer, SleepLevel};
use reward_worker::model::{BatchLayout, ModelError, NemotronRewardModel};
use reward_worker::parallel::SingleRank;

/// `reward-worker ARGS` as a child, once it printed `listening on http://...`.
pub struct ChildServer {
    pub child: Child,
    pub url: String,
    /// Every stderr line so far (a thread keeps reading so the pipe never fills).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ChildServer {
    pub fn start(args: &[&str]) -> ChildServer {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reward-worker"));
        command.args(args).envs(env.iter().copied());
        Self::spawn(command)
    }

    /// `command` (the binary with its arguments) started with logs on, once it listens.
    pub fn spawn(mut command: Command) -> ChildServer {
        let mut child = command
            .env("RUST_LOG", "reward_worker=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn reward-worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(format!("http://{}", url.trim()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line; stderr: {:?}", log.lock().unwrap());
            }
        };
        ChildServer { child, url, log }
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the server")
    }

    /// Wait for the exit, failing the test if it takes longer than `limit`
    /// (a shutdown that hangs is the bug these tests look for).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("no exit within {limit:?}; stderr: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A forward pass that waits until the test opens the gate, and counts calls.
pub struct Gate {
    open: Mutex<bool>,
    /// With `Some(n)`, only n more forward passes go through, then the gate shuts.
    passes: Mutex<Option<usize>>,
    changed: Condvar,
    pub calls: AtomicUsize,
}

impl Gate {
    pub fn new(open: bool) -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(open),
            passes: Mutex::new(None),
            changed: Condvar::new(),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn set(&self, open: bool) {
        *self.passes.lock().unwrap() = None;
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }

    /// Open the gate for exactly `n` more forward passes.
    pub fn allow(&self, n: usize) {
        *self.passes.lock().unwrap() = Some(n);
        *self.open.lock().unwrap() = n > 0;
        self.changed.notify_all();
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Wait (politely) until `calls` forward passes have started.
    pub async fn entered(&self, calls: usize) {
        for _ in 0..600 {
            if self.calls() >= calls {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine never started forward pass {calls}");
    }
}

struct GatedModel {
    inner: ReloadableModel,
    gate: Arc<Gate>,
}

impl Forward for GatedModel {
    fn forward(&self, batches: &[BatchLayout]) -> Vec<Result<BatchScores, ModelError>> {
        self.gate.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.changed.wait(open).unwrap();
        }
        if let Some(left) = self.gate.passes.lock().unwrap().as_mut() {
            *left -= 1;
            *open = *left > 0;
        }
        drop(open);
        self.inner.forward(batches)
    }

    fn describe(&self) -> String {
        "gated test model".into()
    }

    fn sleep(&mut self, level: SleepLevel) -> Result<(), ModelError> {
        self.inner.sleep(level)
    }

    fn wake(&mut self) -> Result<(), ModelError> {
        self.inner.wake()
    }
}

/// The fixture model behind a gate.
pub fn gated_scorer(gate: Arc<Gate>) -> Scorer {
    let source = ModelSource::Dir(super::fixture("tiny-nemotron-rm"));
    let (config, tokenizer, weights) = source.load().unwrap();
    let model =
        NemotronRewardModel::load(&config, &weights, tch::Kind::Float, tch::Device::Cpu, Arc::new(SingleRank)).unwrap();
    Scorer::from_parts(
        "tiny-nemotron-rm".into(),
        config,
        tokenizer,
        Box::new(GatedModel { inner: ReloadableModel::new(LocalModel { model }, source), gate }),
    )
}
