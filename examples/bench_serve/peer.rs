//! The static-padded peer: `bench/serve_peer.py`, a transformers reward server
//! that batches the way NeMo-Aligner's reward server and OpenRLHF's `serve_rm`
//! do (one HTTP request at a time, every rated turn its own prefix row, static
//! micro-batches padded to the longest), run as a child process on the same
//! weights, threads and dtype.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use reward_worker::model::DType;

pub struct PythonPeer {
    child: Child,
    pub url: String,
}

/// The peer's counters (`GET /stats`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerStats {
    pub padded_tokens: usize,
    pub forwards: usize,
}

impl PeerStats {
    pub fn since(&self, before: &PeerStats) -> PeerStats {
        PeerStats {
            padded_tokens: self.padded_tokens - before.padded_tokens,
            forwards: self.forwards - before.forwards,
        }
    }
}

impl PythonPeer {
    /// Start the peer and wait for its `listening on` line.
    pub fn start(model: &Path, dtype: DType, device: &str, threads: i32, batch: usize) -> anyhow::Result<PythonPeer> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = repo.join(".venv/bin/python");
        let mut child = Command::new(&python)
            .arg(repo.join("bench/serve_peer.py"))
            .args(["--model", &model.display().to_string(), "--dtype", dtype.name(), "--device", device])
            .args(["--threads", &threads.to_string(), "--batch-size", &batch.to_string(), "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {} bench/serve_peer.py: {e}", python.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => match line.strip_prefix("listening on ") {
                    Some(url) => break url.trim().to_string(),
                    None => eprintln!("peer: {line}"),
                },
                _ => {
                    let _ = child.kill();
                    anyhow::bail!("bench/serve_peer.py exited before listening (is transformers in .venv? `make bench-serve` installs it)");
                }
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(|l| eprintln!("peer: {}", l.unwrap_or_default())));
        Ok(PythonPeer { child, url })
    }

    pub async fn stats(&self, client: &reqwest::Client) -> anyhow::Result<PeerStats> {
        let v: serde_json::Value = client.get(format!("{}/stats", self.url)).send().await?.json().await?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
        Ok(PeerStats { padded_tokens: n("padded_tokens"), forwards: n("forwards") })
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
